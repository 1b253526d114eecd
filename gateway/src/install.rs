//! `install`: copies the running binary into a directory shared with the app container (an
//! emptyDir), together with a fresh local drain token, so the app's preStop hook can run
//! `DIR/longconn-gateway drain --wait` against 127.0.0.1 without any token in the pod spec.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// File name of the installed binary.
pub const BINARY_NAME: &str = "longconn-gateway";
/// File name of the local drain token beside it.
pub const TOKEN_NAME: &str = "longconn-gateway.token";

/// Copies the current executable to `dir/longconn-gateway` (atomically, by rename) and writes a
/// new random token to `dir/longconn-gateway.token`. Returns the token.
pub fn install(dir: &Path) -> Result<String> {
    let err = |source| Error::Install {
        dir: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let exe = std::env::current_exe().map_err(err)?;
    let tmp = dir.join(format!(".{BINARY_NAME}.tmp"));
    fs::copy(&exe, &tmp).map_err(err)?;
    set_mode(&tmp, 0o755).map_err(err)?;
    fs::rename(&tmp, dir.join(BINARY_NAME)).map_err(err)?;

    let mut raw = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(err)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{TOKEN_NAME}.tmp"));
    {
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(token.as_bytes()).map_err(err)?;
    }
    // Readable by the app container, which may run under another user; the emptyDir is private
    // to the pod.
    set_mode(&tmp, 0o644).map_err(err)?;
    fs::rename(&tmp, dir.join(TOKEN_NAME)).map_err(err)?;
    Ok(token)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The local token file beside the running binary, if the binary was installed.
pub fn local_token_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(TOKEN_NAME);
    path.exists().then_some(path)
}

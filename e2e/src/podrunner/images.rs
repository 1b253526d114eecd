//! The image table: which host binary stands for which container image. There is no registry and
//! no container runtime, so an image name (tag and digest ignored) maps to a binary of the
//! workspace, and a container's `command` may also name an absolute host path (`/bin/sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Maps image names to host binaries.
#[derive(Debug, Clone, Default)]
pub struct ImageTable {
    entries: BTreeMap<String, PathBuf>,
}

/// What runs for a container: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl ImageTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the binary for `image` (any tag or digest is ignored).
    pub fn with(mut self, image: &str, binary: impl Into<PathBuf>) -> Self {
        self.entries
            .insert(image_name(image).to_string(), binary.into());
        self
    }

    /// The binary for `image`, if the table has one.
    pub fn binary(&self, image: &str) -> Option<&Path> {
        self.entries.get(image_name(image)).map(PathBuf::as_path)
    }

    /// What to run for a container, as Kubernetes combines image and spec: `command` replaces the
    /// image's entrypoint (here: the mapped binary) and `args` its arguments. A `command` whose
    /// first word is the mapped binary's file name (`longconn-gateway` or `/longconn-gateway`)
    /// runs the mapped binary; any other first word must be an absolute path on the host.
    pub fn entrypoint(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<Entrypoint, String> {
        let mapped = self.binary(image);
        let Some(first) = command.first() else {
            let program =
                mapped.ok_or_else(|| format!("image {image} is not in the image table"))?;
            return Ok(Entrypoint {
                program: program.to_path_buf(),
                args: args.to_vec(),
            });
        };
        let mut full = command[1..].to_vec();
        full.extend_from_slice(args);
        let named = first.trim_start_matches('/');
        if let Some(binary) = mapped
            && binary.file_name().and_then(|name| name.to_str()) == Some(named)
        {
            return Ok(Entrypoint {
                program: binary.to_path_buf(),
                args: full,
            });
        }
        let host = Path::new(first);
        if host.is_absolute() && host.is_file() {
            return Ok(Entrypoint {
                program: host.to_path_buf(),
                args: full,
            });
        }
        Err(format!(
            "command {first} of image {image} is neither the mapped binary nor a host program"
        ))
    }
}

/// The images longconn's operator and examples use, each with the workspace binary standing in
/// for it (found in `bin_dir`, e.g. `target/debug`).
pub const WORKSPACE_IMAGES: [(&str, &str); 3] = [
    ("ghcr.io/longconn/longconn-gateway", "longconn-gateway"),
    ("ghcr.io/longconn/longconn-operator", "longconn-operator"),
    ("ghcr.io/longconn/longconn-echo", "longconn-echo"),
];

impl ImageTable {
    /// [`WORKSPACE_IMAGES`] mapped to the binaries in `bin_dir`.
    pub fn workspace(bin_dir: &Path) -> Self {
        WORKSPACE_IMAGES
            .iter()
            .fold(Self::new(), |table, (image, binary)| {
                table.with(image, bin_dir.join(binary))
            })
    }
}

/// Where cargo puts the workspace's debug binaries: `$CARGO_TARGET_DIR/debug`, else
/// `<repository>/target/debug`.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tools::repository_root().join("target"))
        .join("debug")
}

/// `registry/name:tag@sha256:...` without tag and digest.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn image_names_ignore_tags_digests_but_not_registry_ports() {
        assert_eq!(image_name("longconn/gateway:0.1.0"), "longconn/gateway");
        assert_eq!(
            image_name("longconn/gateway@sha256:abc"),
            "longconn/gateway"
        );
        assert_eq!(image_name("localhost:5000/echo"), "localhost:5000/echo");
        assert_eq!(image_name("localhost:5000/echo:dev"), "localhost:5000/echo");
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_follow_it() {
        let table = ImageTable::new().with("longconn/gateway", "/work/bin/longconn-gateway");
        let plain = table
            .entrypoint(
                "longconn/gateway:dev",
                &[],
                &strings(&["--listen", "0.0.0.0:80"]),
            )
            .expect("plain");
        assert_eq!(plain.program, Path::new("/work/bin/longconn-gateway"));
        assert_eq!(plain.args, strings(&["--listen", "0.0.0.0:80"]));

        let named = table
            .entrypoint(
                "longconn/gateway:dev",
                &strings(&["/longconn-gateway", "drain"]),
                &strings(&["--wait"]),
            )
            .expect("named");
        assert_eq!(named.program, Path::new("/work/bin/longconn-gateway"));
        assert_eq!(named.args, strings(&["drain", "--wait"]));

        let shell = table
            .entrypoint(
                "longconn/gateway",
                &strings(&["/bin/sh", "-c", "true"]),
                &[],
            )
            .expect("host program");
        assert_eq!(shell.program, Path::new("/bin/sh"));

        assert!(table.entrypoint("unknown/image", &[], &[]).is_err());
        assert!(
            table
                .entrypoint("longconn/gateway", &strings(&["relative"]), &[])
                .is_err()
        );
    }
}

//! A mount namespace per container, so volumes appear at their `mountPath` without touching the
//! host's file system. A helper thread unshares a private mount namespace, bind-mounts each
//! volume's folder onto its mount path (read-only when the mount says so), and opens the
//! namespace; the container (and its exec probes and hooks) `setns` into it before `exec`.
//!
//! A mount path whose folder does not exist on the host (`/etc/longconn/tls`, `/longconn/bin`)
//! is made inside the namespace only: its nearest existing parent is covered by a tmpfs that
//! holds a bind mount of each of the parent's entries, so the parent looks unchanged and the new
//! folders live in the tmpfs. Nothing is created on the host outside the pod's folder, and the
//! namespace, its tmpfs and its mounts vanish with the last process in it and the open handle.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

/// One bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The volume's folder on the host.
    pub source: PathBuf,
    /// The container's `mountPath`.
    pub target: PathBuf,
    pub read_only: bool,
}

/// An open mount namespace.
#[derive(Debug)]
pub struct MountNamespace {
    file: File,
}

impl MountNamespace {
    /// A new private mount namespace with `mounts`; `scratch` (inside the pod's folder) holds the
    /// tmpfs mount points used to make missing folders.
    pub fn create(mounts: &[Mount], scratch: &Path) -> Result<Self, String> {
        let mounts = mounts.to_vec();
        let scratch = scratch.to_path_buf();
        std::fs::create_dir_all(&scratch)
            .map_err(|err| format!("create {}: {err}", scratch.display()))?;
        std::thread::spawn(move || build(&mounts, &scratch))
            .join()
            .unwrap_or_else(|_| Err("mount namespace thread panicked".into()))
            .map(|file| Self { file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Runs in a thread of its own: the new namespace is the thread's, never the runner's.
fn build(mounts: &[Mount], scratch: &Path) -> Result<File, String> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(|err| format!("unshare the mount namespace: {err}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|err| format!("make / private: {err}"))?;
    // Folders that live in a tmpfs of ours: new folders may be made directly in them.
    let mut ours: Vec<PathBuf> = Vec::new();
    for (index, item) in mounts.iter().enumerate() {
        ensure_dir(&item.target, scratch, &mut ours, index)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(
            Some(&item.source),
            &item.target,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|err| {
            format!(
                "bind {} on {}: {err}",
                item.source.display(),
                item.target.display()
            )
        })?;
        if item.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(
                None::<&str>,
                &item.target,
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|err| format!("make {} read-only: {err}", item.target.display()))?;
        }
    }
    File::open("/proc/thread-self/ns/mnt").map_err(|err| format!("open the namespace: {err}"))
}

/// Makes `path` exist inside the namespace, creating folders only in tmpfs covers.
fn ensure_dir(
    path: &Path,
    scratch: &Path,
    ours: &mut Vec<PathBuf>,
    index: usize,
) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    if path.exists() {
        return Err(format!("{} exists and is not a folder", path.display()));
    }
    let parent = path
        .parent()
        .ok_or_else(|| format!("{} has no parent", path.display()))?;
    ensure_dir(parent, scratch, ours, index)?;
    let parent = parent
        .canonicalize()
        .map_err(|err| format!("resolve {}: {err}", parent.display()))?;
    if !ours.contains(&parent) {
        cover(
            &parent,
            &scratch.join(format!("cover-{index}-{}", ours.len())),
        )?;
        ours.push(parent.clone());
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} has no name", path.display()))?;
    let made = parent.join(name);
    std::fs::create_dir(&made).map_err(|err| format!("create {}: {err}", made.display()))?;
    ours.push(made);
    Ok(())
}

/// Covers `dir` with a tmpfs that shows the same entries (each bind-mounted from the original).
fn cover(dir: &Path, stage: &Path) -> Result<(), String> {
    let fail = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
        format!("{what} {}: {err}", path.display())
    };
    std::fs::create_dir_all(stage).map_err(|err| fail("create", stage, &err))?;
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|err| fail("mount a tmpfs on", stage, &err))?;
    let entries = std::fs::read_dir(dir).map_err(|err| fail("read", dir, &err))?;
    for entry in entries.flatten() {
        let from = entry.path();
        let to = stage.join(entry.file_name());
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            let link = std::fs::read_link(&from).map_err(|err| fail("read link", &from, &err))?;
            std::os::unix::fs::symlink(&link, &to).map_err(|err| fail("link", &to, &err))?;
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir(&to).map_err(|err| fail("create", &to, &err))?;
        } else {
            File::create(&to).map_err(|err| fail("create", &to, &err))?;
        }
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        if let Err(err) = mount(Some(&from), &to, None::<&str>, flags, None::<&str>) {
            // An entry that cannot be bound (gone meanwhile) stays an empty placeholder.
            tracing::debug!(from = %from.display(), %err, "cannot bind an entry of a covered folder");
        }
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(stage), dir, None::<&str>, flags, None::<&str>)
        .map_err(|err| fail("cover", dir, &err))?;
    if dir == Path::new("/") {
        // The thread's own root still is the covered one; move it onto the cover.
        nix::unistd::chdir("/").map_err(|err| fail("chdir", dir, &err))?;
        nix::unistd::chroot(".").map_err(|err| fail("chroot", dir, &err))?;
    }
    Ok(())
}

/// Namespaces a process joins before `exec`: the pod's network and the container's mounts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Enter<'a> {
    pub network: Option<&'a File>,
    pub mounts: Option<&'a File>,
}

impl Enter<'_> {
    /// Makes `command` join the namespaces in its child, then change to `workdir` (joining a
    /// mount namespace resets the working folder to its root).
    #[allow(unsafe_code)] // `pre_exec` is the only way to join namespaces between fork and exec.
    pub fn apply(&self, command: &mut std::process::Command, workdir: &Path) -> Result<(), String> {
        if self.network.is_none() && self.mounts.is_none() {
            return Ok(());
        }
        let network = self
            .network
            .map(|file| file.try_clone())
            .transpose()
            .map_err(|err| format!("duplicate the network namespace handle: {err}"))?;
        let mounts = self
            .mounts
            .map(|file| file.try_clone())
            .transpose()
            .map_err(|err| format!("duplicate the mount namespace handle: {err}"))?;
        let workdir = CString::new(workdir.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", workdir.display()))?;
        // SAFETY: the closure only makes system calls (setns, chdir) on values prepared before
        // the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some(file) = &network {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                }
                if let Some(file) = &mounts {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNS)?;
                }
                nix::unistd::chdir(workdir.as_c_str())?;
                Ok(())
            });
        }
        Ok(())
    }
}

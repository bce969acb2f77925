//! Small filesystems a test fills and frees: a size-capped tmpfs per node
//! data directory (mounting needs root, as the gate runs), a filler file
//! written until a chosen amount of space is left, and the unmount that
//! always follows, even after a run that was killed.
//!
//! Every mount's source is `lockstep-chaos-<pid>` (`mount -t tmpfs
//! lockstep-chaos-<pid> DIR`), so a later run finds the mounts of a run
//! that died without unmounting (SIGKILL) in `/proc/self/mounts` and
//! removes them, as the partition rules of such a run are removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The source name of every tmpfs mounted here; the process id follows.
const MOUNT_TAG: &str = "lockstep-chaos-";
/// The filler is written in pieces of at most this many bytes, the last
/// one cut to land on the space asked to be left.
const FILL_CHUNK_BYTES: u64 = 1024 * 1024;
/// Bound on the writes of one fill: more than a tmpfs of this harness
/// holds (a 256 MiB disk takes 256 of them), so a filesystem that never
/// fills (not the tmpfs it should be) stops the fill instead of hanging.
const FILL_CHUNKS_MAX: u64 = 64 * 1024;

/// What went wrong with a small filesystem, naming the path.
#[derive(Debug)]
pub enum TmpfsError {
    /// `mount` needs root; the caller runs as another user.
    NotRoot,
    /// `mount -t tmpfs` failed (or could not be run) at `dir`.
    Mount { dir: PathBuf, detail: String },
    /// Free space could not be read on the filesystem of `dir`.
    Statvfs { dir: PathBuf, detail: String },
    /// The filler `path` could not be written or removed.
    Filler { path: PathBuf, detail: String },
}

impl std::fmt::Display for TmpfsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TmpfsError::NotRoot => f.write_str(
                "mounting a size-capped tmpfs per node needs root (the gate runs as root)",
            ),
            TmpfsError::Mount { dir, detail } => {
                write!(f, "mount a tmpfs at {}: {detail}", dir.display())
            }
            TmpfsError::Statvfs { dir, detail } => {
                write!(f, "read the free space of {}: {detail}", dir.display())
            }
            TmpfsError::Filler { path, detail } => {
                write!(f, "filler file {}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for TmpfsError {}

/// A tmpfs of a fixed size mounted at a directory, unmounted when dropped
/// (so also on an error path, a panic, or a run dropped on Ctrl-C). Drop
/// it after the processes that write to it are gone: a busy filesystem is
/// then only detached (`umount -l`), and freed when they exit.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size_bytes` there. Removes
    /// first the mounts of runs whose process is gone.
    pub fn mount(dir: &Path, size_bytes: u64) -> Result<Tmpfs, TmpfsError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(TmpfsError::NotRoot);
        }
        remove_orphaned_mounts();
        std::fs::create_dir_all(dir).map_err(|e| TmpfsError::Mount {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}")])
            .arg(format!("{MOUNT_TAG}{}", std::process::id()))
            .arg(dir)
            .output()
            .map_err(|e| TmpfsError::Mount {
                dir: dir.to_path_buf(),
                detail: format!("run `mount`: {e}"),
            })?;
        if !out.status.success() {
            return Err(TmpfsError::Mount {
                dir: dir.to_path_buf(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Unmounts `dir`; if something still holds it, detaches it instead
/// (freed when the last holder exits), so no mount outlives its run.
fn unmount(dir: &Path) {
    let done = Command::new("umount")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !done {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}

/// Free bytes for an unprivileged writer on the filesystem of `dir`, as
/// the node reads them.
pub fn free_bytes(dir: &Path) -> Result<u64, TmpfsError> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(|e| TmpfsError::Statvfs {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Writes zeros to the filler `path` on the filesystem of `dir` until
/// about `left` bytes are free there, and returns the free bytes after.
/// `left` 0 writes until the filesystem refuses (ENOSPC): really full. A
/// tmpfs counts only pages written, so the file is written, not allocated.
pub fn fill(dir: &Path, path: &Path, left: u64) -> Result<u64, TmpfsError> {
    let filler_err = |detail: String| TmpfsError::Filler {
        path: path.to_path_buf(),
        detail,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| filler_err(e.to_string()))?;
    let chunk = vec![0u8; FILL_CHUNK_BYTES as usize];
    for _ in 0..FILL_CHUNKS_MAX {
        let free = free_bytes(dir)?;
        if free <= left {
            break;
        }
        let len = (free - left).min(FILL_CHUNK_BYTES);
        match file.write_all(&chunk[..len as usize]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => return Err(filler_err(e.to_string())),
        }
    }
    free_bytes(dir)
}

/// Deletes the filler `path` (no filler is no error), giving its space
/// back.
pub fn unfill(path: &Path) -> Result<(), TmpfsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TmpfsError::Filler {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Unmounts the tmpfs of runs whose process no longer exists (killed with
/// SIGKILL, so no drop ran). Mounts of live runs, side by side, stay.
pub fn remove_orphaned_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for dir in orphaned_mounts(&mounts, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
        unmount(&dir);
    }
}

/// The mount points in `mounts` (the text of `/proc/self/mounts`) of tmpfs
/// mounted by a process for which `alive` is false.
fn orphaned_mounts(mounts: &str, alive: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (source, dir, kind) = (words.next()?, words.next()?, words.next()?);
            let pid: u32 = source.strip_prefix(MOUNT_TAG)?.parse().ok()?;
            (kind == "tmpfs" && !alive(pid)).then(|| PathBuf::from(unescape(dir)))
        })
        .collect()
}

/// `/proc/self/mounts` writes a space, tab, newline or backslash in a path
/// as a backslash and three octal digits.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tmpfs_of_dead_runs_are_orphaned() {
        let mounts = "\
/dev/sda1 / ext4 rw 0 0
lockstep-chaos-10 /tmp/a/disk-1 tmpfs rw,size=262144k 0 0
lockstep-chaos-20 /tmp/b/disk-1 tmpfs rw,size=262144k 0 0
lockstep-chaos-10 /tmp/with\\040space tmpfs rw 0 0
lockstep-chaos-x /tmp/c tmpfs rw 0 0
tmpfs /tmp/d tmpfs rw 0 0
lockstep-chaos-30 /tmp/e ext4 rw 0 0
";
        let orphaned = orphaned_mounts(mounts, |pid| pid == 20);
        assert_eq!(
            orphaned,
            vec![
                PathBuf::from("/tmp/a/disk-1"),
                PathBuf::from("/tmp/with space")
            ]
        );
    }
}

//! Private working folders that say whether their owner is still alive.
//!
//! A [`WorkDir`] is a `0700` folder in the system temp dir whose owner holds
//! an exclusive `flock` on it for as long as it lives. The kernel drops the
//! lock when the owner dies, however it dies (SIGKILL, OOM kill, power
//! loss), so [`sweep_orphans`] can tell a crashed predecessor's folder from
//! a live neighbour's without looking at ages or PIDs (which wrap and are
//! reused): if the lock can be taken, nobody owns the folder, and it goes at
//! once, whatever its age. Folders of the same prefix made by an older build
//! (which held no lock) count as orphans too.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A private working folder, locked while this value lives and removed
/// with everything in it when it is dropped.
#[derive(Debug)]
pub struct WorkDir {
    /// Declared first: the folder goes before the lock is released.
    dir: tempfile::TempDir,
    /// The open folder holding the exclusive lock.
    _lock: File,
}

impl WorkDir {
    /// Creates `<temp dir>/<prefix><random>` (mode `0700`) and locks it.
    pub fn create(prefix: &str) -> io::Result<Self> {
        Self::create_in(&std::env::temp_dir(), prefix)
    }

    /// Like [`WorkDir::create`], inside `root`.
    pub fn create_in(root: &Path, prefix: &str) -> io::Result<Self> {
        // A sweeper in another process may take the lock of a folder made
        // a moment ago, before its creator locked it, and remove it: then
        // the folder we locked is no longer the one at that path. Retry.
        for _ in 0..8 {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(root)?;
            // Gone already (a sweeper removed it), or locked by a sweeper
            // that is about to: make another.
            let lock = match File::open(dir.path()) {
                Ok(lock) => lock,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if lock.try_lock().is_err() {
                continue;
            }
            if same_file(&lock, dir.path())? {
                return Ok(Self { dir, _lock: lock });
            }
        }
        Err(io::Error::other(format!(
            "cannot keep a working folder in {}: it is removed as soon as it is made",
            root.display()
        )))
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(unix)]
fn same_file(open: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (held, named) = (open.metadata()?, std::fs::metadata(path));
    Ok(named.is_ok_and(|named| named.dev() == held.dev() && named.ino() == held.ino()))
}

#[cfg(not(unix))]
fn same_file(_open: &File, path: &Path) -> io::Result<bool> {
    Ok(path.exists())
}

/// Removes every folder in the system temp dir whose name starts with one
/// of `prefixes` and that no live process owns (see the module docs).
/// Returns the folders removed.
pub fn sweep_orphans(prefixes: &[&str]) -> Vec<PathBuf> {
    sweep_orphans_in(&std::env::temp_dir(), prefixes)
}

/// Like [`sweep_orphans`], inside `root`.
pub fn sweep_orphans_in(root: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        // Never follow a link someone planted under our prefix.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(lock) = File::open(&path) else {
            continue;
        };
        // Held by a live owner: keep. Taken: the owner is gone; remove the
        // folder while holding its lock, so no one can adopt it meanwhile.
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_dead_owners_folder_of_any_age_goes_and_a_live_ones_stays() {
        let root = tempfile::tempdir().unwrap();
        // A crashed predecessor's folder, made a moment ago (a fresh mtime:
        // an age rule would keep it), still holding a plain file.
        let dead = root.path().join("breakglass-renderer-dead1");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("workbook.xlsx"), b"PK\x03\x04 plain").unwrap();
        // A live neighbour's folder.
        let live = WorkDir::create_in(root.path(), "breakglass-renderer-").unwrap();
        std::fs::write(live.path().join("work"), b"in use").unwrap();
        // Someone else's folder, and a planted link, are not ours to touch.
        let other = root.path().join("other-dir");
        std::fs::create_dir(&other).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&other, root.path().join("breakglass-renderer-link")).unwrap();

        let removed = sweep_orphans_in(root.path(), &["breakglass-renderer-"]);

        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists(), "the dead owner's folder is removed");
        assert!(live.path().join("work").exists(), "the live folder is kept");
        assert!(other.exists());
    }

    #[test]
    fn a_folder_is_swept_once_its_owner_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let owner = WorkDir::create_in(root.path(), "breakglass-run-once-").unwrap();
        let path = owner.path().to_path_buf();
        assert!(sweep_orphans_in(root.path(), &["breakglass-run-once-"]).is_empty());
        // What a SIGKILL does: the lock goes with the process, the folder
        // stays.
        let WorkDir { dir, _lock } = owner;
        let kept = dir.keep();
        drop(_lock);
        assert_eq!(kept, path);
        assert_eq!(
            sweep_orphans_in(root.path(), &["breakglass-run-once-"]),
            vec![path.clone()]
        );
        assert!(!path.exists());
    }
}

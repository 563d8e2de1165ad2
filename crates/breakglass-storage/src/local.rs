//! A local or mounted folder as destination.
//!
//! Every write goes to a hidden temp file in the same folder (so the final
//! rename is atomic on one file system), is hashed while copied, fsynced,
//! checked against the expected size and SHA-256, and only then renamed
//! into place; the folder is fsynced so the rename survives a crash. A
//! reader therefore always sees a whole file, and a failed run leaves the
//! previous file in place. Files are created `0600`: they hold passwords.

use crate::naming::{self, is_rotated_name};
use crate::{Destination, Receipt, StorageError, Upload};
use breakglass_config::Rotation;
use breakglass_core::private_fs;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A folder destination.
#[derive(Clone, Debug)]
pub struct LocalFolder {
    dir: PathBuf,
    rotation: Rotation,
}

impl LocalFolder {
    /// The folder `root/prefix`, created on first upload.
    pub fn new(root: PathBuf, prefix: &str, rotation: Rotation) -> Self {
        let dir = if prefix.is_empty() {
            root
        } else {
            root.join(prefix)
        };
        Self { dir, rotation }
    }

    /// The folder files go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn fail(&self, action: &'static str, err: impl std::fmt::Display) -> StorageError {
        StorageError::Io {
            destination: self.describe(),
            action,
            reason: err.to_string(),
        }
    }

    fn upload_blocking(
        &self,
        source: &Path,
        name: &str,
        size: u64,
        sha256: &str,
        run_id: &str,
    ) -> Result<Receipt, StorageError> {
        private_fs::create_dir_all(&self.dir)
            .map_err(|err| self.fail("creating the folder", err))?;
        let final_path = self.dir.join(name);
        let temp_path = self.dir.join(format!(".{name}.{run_id}.tmp"));
        let result = self
            .write_verified(source, &temp_path, size, sha256)
            .and_then(|()| {
                match self.rotation {
                    Rotation::Overwrite => fs::rename(&temp_path, &final_path)
                        .map_err(|err| self.fail("renaming into place", err)),
                    // Never replace: a hard link fails when the name exists.
                    Rotation::Unique | Rotation::Prune => {
                        match fs::hard_link(&temp_path, &final_path) {
                            Ok(()) => fs::remove_file(&temp_path)
                                .map_err(|err| self.fail("removing the temp file", err)),
                            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                                Err(StorageError::Exists {
                                    destination: self.describe(),
                                    name: name.into(),
                                })
                            }
                            Err(err) => Err(self.fail("linking into place", err)),
                        }
                    }
                }
            });
        if result.is_err() {
            let _ = fs::remove_file(&temp_path);
        }
        result?;
        sync_dir(&self.dir).map_err(|err| self.fail("syncing the folder", err))?;
        let pruned = if self.rotation == Rotation::Prune {
            self.prune_older_than(name)?
        } else {
            Vec::new()
        };
        Ok(Receipt {
            location: final_path.display().to_string(),
            size,
            sha256: sha256.into(),
            pruned,
        })
    }

    fn write_verified(
        &self,
        source: &Path,
        temp: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), StorageError> {
        let mut input = File::open(source).map_err(|err| self.fail("opening the workbook", err))?;
        let mut output =
            private_fs::create_new(temp).map_err(|err| self.fail("creating the temp file", err))?;
        let mut hasher = Sha256::new();
        let mut copied: u64 = 0;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buffer)
                .map_err(|err| self.fail("reading the workbook", err))?;
            if n == 0 {
                break;
            }
            output
                .write_all(&buffer[..n])
                .map_err(|err| self.fail("writing", err))?;
            hasher.update(&buffer[..n]);
            copied += n as u64;
        }
        output
            .sync_all()
            .map_err(|err| self.fail("syncing the file", err))?;
        drop(output);
        // Verify what is on disk, not what we meant to write.
        let (stored_size, stored_sha) =
            hash_file(temp).map_err(|err| self.fail("reading back", err))?;
        let sent_sha = hex::encode(hasher.finalize());
        if copied != size || stored_size != size || stored_sha != sha256 || sent_sha != sha256 {
            return Err(StorageError::Verification {
                destination: self.describe(),
                reason: format!(
                    "expected {size} bytes with SHA-256 {sha256}, stored {stored_size} bytes with SHA-256 {stored_sha}"
                ),
            });
        }
        Ok(())
    }

    /// Deletes older rotated files; only names breakglass writes, never the
    /// one just written.
    fn prune_older_than(&self, newest: &str) -> Result<Vec<String>, StorageError> {
        let mut pruned = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|err| self.fail("listing for prune", err))?;
        for entry in entries {
            let entry = entry.map_err(|err| self.fail("listing for prune", err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_rotated_name(&name) && name.as_str() < newest {
                fs::remove_file(entry.path())
                    .map_err(|err| self.fail("pruning an older copy", err))?;
                pruned.push(name);
            }
        }
        pruned.sort();
        Ok(pruned)
    }
}

impl Destination for LocalFolder {
    fn describe(&self) -> String {
        format!("local:{}", self.dir.display())
    }

    async fn upload(&self, upload: &Upload<'_>) -> Result<Receipt, StorageError> {
        let name = naming::object_name(self.rotation, upload.created_at, upload.run_id);
        let folder = self.clone();
        let source = upload.file.to_path_buf();
        let (size, sha256, run_id) = (
            upload.size,
            upload.sha256.to_owned(),
            upload.run_id.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            folder.upload_blocking(&source, &name, size, &sha256, &run_id)
        })
        .await
        .map_err(|err| self.fail("the upload task", err))?
    }
}

pub use breakglass_core::private_fs::hash_file;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn workbook(dir: &Path, content: &[u8]) -> (PathBuf, u64, String) {
        let path = dir.join("in.xlsx");
        fs::write(&path, content).unwrap();
        let (size, sha) = hash_file(&path).unwrap();
        (path, size, sha)
    }

    async fn put(
        folder: &LocalFolder,
        src: &Path,
        size: u64,
        sha: &str,
        hour: u32,
        run: &str,
    ) -> Result<Receipt, StorageError> {
        let upload = Upload {
            file: src,
            size,
            sha256: sha,
            run_id: run,
            created_at: Utc.with_ymd_and_hms(2026, 11, 27, hour, 0, 0).unwrap(),
        };
        folder.upload(&upload).await
    }

    #[tokio::test]
    async fn overwrite_replaces_the_fixed_file_with_private_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = LocalFolder::new(tmp.path().join("out"), "team/a", Rotation::Overwrite);
        let (src, size, sha) = workbook(tmp.path(), b"first");
        put(&folder, &src, size, &sha, 1, "r1").await.unwrap();
        let (src, size, sha) = workbook(tmp.path(), b"second");
        let receipt = put(&folder, &src, size, &sha, 2, "r2").await.unwrap();
        let stored = tmp.path().join("out/team/a").join(naming::FIXED_NAME);
        assert_eq!(receipt.location, stored.display().to_string());
        assert_eq!(fs::read(&stored).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::read_dir(folder.dir()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[tokio::test]
    async fn a_failed_verification_keeps_the_previous_file() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = LocalFolder::new(tmp.path().join("out"), "", Rotation::Overwrite);
        let (src, size, sha) = workbook(tmp.path(), b"good");
        put(&folder, &src, size, &sha, 1, "r1").await.unwrap();
        let (src, size, _) = workbook(tmp.path(), b"newer");
        let err = put(&folder, &src, size, &"0".repeat(64), 2, "r2")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("verification failed"), "{err}");
        assert_eq!(
            fs::read(folder.dir().join(naming::FIXED_NAME)).unwrap(),
            b"good"
        );
        assert_eq!(
            fs::read_dir(folder.dir()).unwrap().count(),
            1,
            "temp file removed"
        );
    }

    #[tokio::test]
    async fn unique_never_overwrites_and_prune_keeps_only_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, size, sha) = workbook(tmp.path(), b"data");
        let unique = LocalFolder::new(tmp.path().join("u"), "", Rotation::Unique);
        put(&unique, &src, size, &sha, 1, "r1").await.unwrap();
        let err = put(&unique, &src, size, &sha, 1, "r1").await.unwrap_err();
        assert!(matches!(err, StorageError::Exists { .. }), "{err}");
        put(&unique, &src, size, &sha, 2, "r2").await.unwrap();
        assert_eq!(fs::read_dir(unique.dir()).unwrap().count(), 2);

        let prune = LocalFolder::new(tmp.path().join("p"), "", Rotation::Prune);
        fs::create_dir_all(prune.dir()).unwrap();
        fs::write(prune.dir().join("notes.txt"), b"not ours").unwrap();
        put(&prune, &src, size, &sha, 1, "r1").await.unwrap();
        let receipt = put(&prune, &src, size, &sha, 2, "r2").await.unwrap();
        assert_eq!(
            receipt.pruned,
            vec!["breakglass-backup-20261127T010000Z-r1.xlsx".to_string()]
        );
        let mut left: Vec<_> = fs::read_dir(prune.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["breakglass-backup-20261127T020000Z-r2.xlsx", "notes.txt"]
        );
    }
}

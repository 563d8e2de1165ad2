//! A local or mounted folder as destination.
//!
//! Every write goes to a hidden temp file in the same folder (so the final
//! rename is atomic on one file system), is hashed while copied, fsynced,
//! checked against the expected size and SHA-256, and only then renamed
//! into place; the folder is fsynced so the rename survives a crash. A
//! reader therefore always sees a whole file, and a failed run leaves the
//! previous file in place. Files are created `0600`: they hold passwords.

use crate::archive::{Downloaded, HashingFile, StoredObject};
use crate::manifest::{self, Manifest};
use crate::naming::{self, is_rotated_name};
use crate::{Destination, Receipt, StorageError, Upload};
use breakglass_config::Rotation;
use breakglass_core::private_fs;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const TEMP_PREFIX: &str = ".breakglass-";
const TEMP_SUFFIX: &str = ".tmp";

/// What the blocking upload needs, owned so it can move to another thread.
struct OwnedUpload {
    size: u64,
    sha256: String,
    created_at: SystemTime,
    manifest: Manifest,
}

/// The modification time of `path` when it is later than `than`.
fn modified_after(path: &Path, than: SystemTime) -> Option<SystemTime> {
    let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    (modified > than).then_some(modified)
}

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
        upload: &OwnedUpload,
    ) -> Result<Receipt, StorageError> {
        private_fs::create_dir_all(&self.dir)
            .map_err(|err| self.fail("creating the folder", err))?;
        self.sweep_stale_temp_files();
        let final_path = self.dir.join(name);
        // A fresh, random, 0600 temp file of our own: concurrent attempts
        // never touch each other's, and it is deleted on any early return.
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(|err| self.fail("creating the temp file", err))?;
        let temp_path = temp.path().to_path_buf();
        self.write_verified(
            source,
            temp.as_file_mut(),
            &temp_path,
            upload.size,
            &upload.sha256,
        )?;
        // The file's modification time records when its run collected the
        // inventory, so an older run can never replace a newer copy.
        temp.as_file()
            .set_modified(upload.created_at)
            .map_err(|err| self.fail("stamping the file", err))?;
        match self.rotation {
            Rotation::Overwrite => {
                if let Some(newer) = modified_after(&final_path, upload.created_at) {
                    return Err(StorageError::Superseded {
                        destination: self.describe(),
                        newer: chrono::DateTime::<chrono::Utc>::from(newer).to_rfc3339(),
                    });
                }
                temp.persist(&final_path)
                    .map_err(|err| self.fail("renaming into place", err.error))?;
            }
            Rotation::Unique | Rotation::Prune => match temp.persist_noclobber(&final_path) {
                Ok(_) => {}
                Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    // The same run delivered again: identical bytes are done.
                    let same = hash_file(&final_path)
                        .map(|(size, sha)| size == upload.size && sha == upload.sha256)
                        .unwrap_or(false);
                    if !same {
                        return Err(StorageError::Exists {
                            destination: self.describe(),
                            name: name.into(),
                        });
                    }
                }
                Err(err) => return Err(self.fail("linking into place", err.error)),
            },
        }
        sync_dir(&self.dir).map_err(|err| self.fail("syncing the folder", err))?;
        let mut receipt = Receipt {
            location: final_path.display().to_string(),
            size: upload.size,
            sha256: upload.sha256.clone(),
            pruned: Vec::new(),
            warnings: Vec::new(),
        };
        // The sidecar follows the verified file; without it the backup is
        // still whole, and `fetch` says the manifest is missing.
        if let Err(err) = self.write_sidecar(name, &upload.manifest) {
            receipt.warnings.push(format!(
                "the new copy is stored, but its sidecar manifest was not: {err}"
            ));
        }
        if self.rotation == Rotation::Prune {
            // The new copy is stored and verified; a failure to delete an
            // old one is worth a warning, not a failed run.
            match self.prune_older_than(name) {
                Ok(pruned) => receipt.pruned = pruned,
                Err(err) => receipt.warnings.push(err.to_string()),
            }
        }
        Ok(receipt)
    }

    /// Removes temp files left by crashed attempts (older than an hour, so a
    /// concurrent attempt's file is never touched).
    fn sweep_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) && stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn write_verified(
        &self,
        source: &Path,
        output: &mut File,
        temp: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), StorageError> {
        let mut input = File::open(source).map_err(|err| self.fail("opening the workbook", err))?;
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
                match fs::remove_file(self.dir.join(manifest::sidecar_name(&name))) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(self.fail("pruning an older manifest", err));
                    }
                    _ => {}
                }
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
        let name = naming::object_name(
            self.rotation,
            upload.created_at,
            upload.run_id,
            upload.extension,
        );
        let folder = self.clone();
        let source = upload.file.to_path_buf();
        let owned = OwnedUpload {
            size: upload.size,
            sha256: upload.sha256.to_owned(),
            created_at: upload.created_at.into(),
            manifest: Manifest::for_upload(upload, &name),
        };
        tokio::task::spawn_blocking(move || folder.upload_blocking(&source, &name, &owned))
            .await
            .map_err(|err| self.fail("the upload task", err))?
    }
}

impl LocalFolder {
    /// Writes `name`'s sidecar manifest atomically (temp file + rename).
    fn write_sidecar(&self, name: &str, manifest: &Manifest) -> Result<(), StorageError> {
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(|err| self.fail("creating the manifest", err))?;
        temp.write_all(&manifest.to_json())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|err| self.fail("writing the manifest", err))?;
        temp.persist(self.dir.join(manifest::sidecar_name(name)))
            .map_err(|err| self.fail("renaming the manifest into place", err.error))?;
        Ok(())
    }

    /// Every file in the folder, for `fetch`.
    pub fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let entries = fs::read_dir(&self.dir).map_err(|err| self.fail("listing", err))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| self.fail("listing", err))?;
            let metadata = entry.metadata().map_err(|err| self.fail("listing", err))?;
            if !metadata.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            found.push(StoredObject {
                key: name.clone(),
                name,
                size: metadata.len(),
                last_modified: metadata.modified().ok().map(chrono::DateTime::from),
            });
        }
        Ok(found)
    }

    /// Copies `key` into `to` (created new, `0600`), hashing on the way.
    /// A folder keeps no object metadata: the sidecar is the manifest.
    pub fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        let mut input =
            File::open(self.dir.join(key)).map_err(|err| self.fail("opening the backup", err))?;
        let mut sink =
            HashingFile::create(to).map_err(|err| self.fail("creating the copy", err))?;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buffer)
                .map_err(|err| self.fail("reading the backup", err))?;
            if n == 0 {
                break;
            }
            sink.write(&buffer[..n])
                .map_err(|err| self.fail("writing the copy", err))?;
        }
        let (size, sha256) = sink
            .finish()
            .map_err(|err| self.fail("writing the copy", err))?;
        Ok(Downloaded {
            size,
            sha256,
            metadata: Default::default(),
        })
    }

    /// A small file's bytes (at most `limit`), or `None` when there is no
    /// such file.
    pub fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        use breakglass_core::limits::{ReadError, read_file};
        match read_file(&self.dir.join(key), limit, "the file") {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ReadError::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            }) => Ok(None),
            Err(err) => Err(self.fail("reading", err)),
        }
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
            extension: ".xlsx",
            encryption: "none",
            key_id: "",
            projects: &[],
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
            2,
            "the file and its manifest, no temp file left behind"
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
            2,
            "temp file removed"
        );
        // The manifest still describes the good copy.
        let manifest = Manifest::from_json(
            &fs::read(
                folder
                    .dir()
                    .join(manifest::sidecar_name(naming::FIXED_NAME)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!((manifest.run_id.as_str(), manifest.size), ("r1", 4));
    }

    #[tokio::test]
    async fn an_older_run_never_replaces_a_newer_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = LocalFolder::new(tmp.path().join("out"), "", Rotation::Overwrite);
        let (src, size, sha) = workbook(tmp.path(), b"newer");
        put(&folder, &src, size, &sha, 5, "r5").await.unwrap();
        let (src, size, sha) = workbook(tmp.path(), b"older");
        let err = put(&folder, &src, size, &sha, 4, "r4").await.unwrap_err();
        assert!(matches!(err, StorageError::Superseded { .. }), "{err}");
        assert_eq!(
            fs::read(folder.dir().join(naming::FIXED_NAME)).unwrap(),
            b"newer"
        );
        // The same run again (a redelivery) may store its bytes again.
        let (src, size, sha) = workbook(tmp.path(), b"newer");
        put(&folder, &src, size, &sha, 5, "r5").await.unwrap();
        assert_eq!(
            fs::read_dir(folder.dir()).unwrap().count(),
            2,
            "the file and its manifest, no temp file left behind"
        );
    }

    #[tokio::test]
    async fn unique_never_overwrites_and_prune_keeps_only_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, size, sha) = workbook(tmp.path(), b"data");
        let unique = LocalFolder::new(tmp.path().join("u"), "", Rotation::Unique);
        put(&unique, &src, size, &sha, 1, "r1").await.unwrap();
        // A redelivered run with identical bytes is done, not an error...
        put(&unique, &src, size, &sha, 1, "r1").await.unwrap();
        // ...but different bytes under a taken name are never written.
        let (other, other_size, other_sha) = workbook(tmp.path(), b"other");
        let err = put(&unique, &other, other_size, &other_sha, 1, "r1")
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Exists { .. }), "{err}");
        let (src, size, sha) = workbook(tmp.path(), b"data");
        put(&unique, &src, size, &sha, 2, "r2").await.unwrap();
        assert_eq!(
            fs::read_dir(unique.dir()).unwrap().count(),
            4,
            "two files, two manifests"
        );

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
            vec![
                "breakglass-backup-20261127T020000Z-r2.xlsx",
                "breakglass-backup-20261127T020000Z-r2.xlsx.manifest.json",
                "notes.txt"
            ],
            "the pruned copy's manifest went with it"
        );
    }
}

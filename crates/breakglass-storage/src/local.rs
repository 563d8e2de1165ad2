//! A local or mounted folder as destination.
//!
//! Every write goes to a hidden temp file in the same folder (so the final
//! rename is atomic on one file system), is copied, fsynced, read back and
//! checked against the expected size and SHA-256, and only then renamed
//! into place; the folder is fsynced so the rename survives a crash. A
//! reader therefore always sees a whole file, and a failed run leaves the
//! previous file in place. Files are created `0600`: they hold passwords.

use crate::archive::{Downloaded, HashingFile, StoredObject};
use crate::{Backend, ObjectMeta, PutMode, StorageError, Upload};
use breakglass_config::Rotation;
use breakglass_core::private_fs;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const TEMP_PREFIX: &str = ".breakglass-";
const TEMP_SUFFIX: &str = ".tmp";

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
            destination: self.describe_folder(),
            action,
            reason: err.to_string(),
        }
    }

    /// Writes `source` to `key`, verified on disk, stamped with the run's
    /// creation time (so `head` can tell an older run from a newer one).
    fn put_file_blocking(
        &self,
        source: &Path,
        key: &str,
        size: u64,
        sha256: &str,
        created_at: SystemTime,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        private_fs::create_dir_all(&self.dir)
            .map_err(|err| self.fail("creating the folder", err))?;
        self.sweep_stale_temp_files();
        // A fresh, random, 0600 temp file of our own: concurrent attempts
        // never touch each other's, and it is deleted on any early return.
        let mut temp = self.temp_file("creating the temp file")?;
        let temp_path = temp.path().to_path_buf();
        self.write_verified(source, temp.as_file_mut(), &temp_path, size, sha256)?;
        temp.as_file()
            .set_modified(created_at)
            .map_err(|err| self.fail("stamping the file", err))?;
        self.persist(temp, key, mode)
    }

    fn temp_file(&self, action: &'static str) -> Result<tempfile::NamedTempFile, StorageError> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(|err| self.fail(action, err))
    }

    /// Renames a finished temp file into place (atomically; never over a
    /// taken name under [`PutMode::CreateOnly`]) and syncs the folder so
    /// the rename survives a crash.
    fn persist(
        &self,
        temp: tempfile::NamedTempFile,
        key: &str,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let final_path = self.dir.join(key);
        match mode {
            PutMode::Overwrite => {
                temp.persist(&final_path)
                    .map_err(|err| self.fail("renaming into place", err.error))?;
            }
            PutMode::CreateOnly => match temp.persist_noclobber(&final_path) {
                Ok(_) => {}
                Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::Exists {
                        destination: self.describe_folder(),
                        name: key.into(),
                    });
                }
                Err(err) => return Err(self.fail("linking into place", err.error)),
            },
        }
        sync_dir(&self.dir).map_err(|err| self.fail("syncing the folder", err))
    }

    fn put_small_blocking(
        &self,
        key: &str,
        bytes: &[u8],
        mode: PutMode,
    ) -> Result<(), StorageError> {
        private_fs::create_dir_all(&self.dir)
            .map_err(|err| self.fail("creating the folder", err))?;
        let mut temp = self.temp_file("creating the manifest")?;
        temp.write_all(bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|err| self.fail("writing the manifest", err))?;
        self.persist(temp, key, mode)
    }

    fn head_blocking(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.dir.join(key);
        let metadata = match fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => metadata,
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.fail("reading the existing copy", err)),
        };
        let (size, sha256) = match hash_file(&path) {
            Ok(found) => found,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.fail("reading the existing copy", err)),
        };
        Ok(Some(ObjectMeta {
            size,
            sha256: Some(sha256),
            created_at: metadata.modified().ok().map(chrono::DateTime::from),
        }))
    }

    fn delete_blocking(&self, key: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.dir.join(key)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(self.fail("deleting", err))
            }
            _ => Ok(()),
        }
    }

    fn describe_folder(&self) -> String {
        format!("local:{}", self.dir.display())
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Self) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let folder = self.clone();
        tokio::task::spawn_blocking(move || work(&folder))
            .await
            .map_err(|err| self.fail("the file task", err))?
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
        // File to file: the kernel copies (copy_file_range) without the
        // bytes passing through here; the read-back below is the check.
        let copied = std::io::copy(&mut input, output)
            .map_err(|err| self.fail("copying the workbook", err))?;
        output
            .sync_all()
            .map_err(|err| self.fail("syncing the file", err))?;
        // Verify what the file holds once synced, not what we meant to write.
        let (stored_size, stored_sha) =
            hash_file(temp).map_err(|err| self.fail("reading back", err))?;
        if copied != size || stored_size != size || stored_sha != sha256 {
            return Err(StorageError::Verification {
                destination: self.describe_folder(),
                reason: format!(
                    "expected {size} bytes with SHA-256 {sha256}, stored {stored_size} bytes with SHA-256 {stored_sha}"
                ),
            });
        }
        Ok(())
    }
}

impl Backend for LocalFolder {
    fn describe(&self) -> String {
        self.describe_folder()
    }

    fn rotation(&self) -> Rotation {
        self.rotation
    }

    fn key(&self, name: &str) -> String {
        name.to_owned()
    }

    fn location(&self, key: &str) -> String {
        self.dir.join(key).display().to_string()
    }

    async fn put_file(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let (key, source, sha256) = (
            key.to_owned(),
            upload.file.to_path_buf(),
            upload.sha256.to_owned(),
        );
        let (size, created_at) = (upload.size, SystemTime::from(upload.created_at));
        self.blocking(move |folder| {
            folder.put_file_blocking(&source, &key, size, &sha256, created_at, mode)
        })
        .await
    }

    async fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        _content_type: &'static str,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let key = key.to_owned();
        self.blocking(move |folder| folder.put_small_blocking(&key, &bytes, mode))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let key = key.to_owned();
        self.blocking(move |folder| folder.head_blocking(&key))
            .await
    }

    async fn list(&self) -> Result<Vec<StoredObject>, StorageError> {
        self.blocking(|folder| folder.list_objects()).await
    }

    async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        let (key, to) = (key.to_owned(), to.to_path_buf());
        self.blocking(move |folder| LocalFolder::download(folder, &key, &to))
            .await
    }

    async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let key = key.to_owned();
        self.blocking(move |folder| LocalFolder::get_small(folder, &key, limit))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = key.to_owned();
        self.blocking(move |folder| folder.delete_blocking(&key))
            .await
    }
}

impl LocalFolder {
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
            sink.write_all(&buffer[..n])
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
    use crate::manifest::{self, Manifest};
    use crate::{Destination, Receipt, naming};
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

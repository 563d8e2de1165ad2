//! Files that may hold credentials: created `0600`, in `0700` folders, and
//! hashed the same way everywhere (size + SHA-256).

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// Creates a new file readable only by this user; fails if it exists.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    restrict(&mut options);
    options.open(path)
}

/// Creates or truncates a file readable only by this user.
pub fn create_or_truncate(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    restrict(&mut options);
    options.open(path)
}

/// Creates a folder (and parents) accessible only by this user.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Removes this program's working folders in the system temp dir that were
/// left by a crash (a SIGKILL skips the clean-up): folders whose name starts
/// with one of `prefixes` and that nobody touched for `older_than`, so a
/// concurrent process's folder is never removed. Returns how many went.
pub fn sweep_stale_dirs(prefixes: &[&str], older_than: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let Some(cutoff) = std::time::SystemTime::now().checked_sub(older_than) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = prefixes.iter().any(|prefix| name.starts_with(prefix));
        let stale = entry
            .metadata()
            .is_ok_and(|m| m.is_dir() && m.modified().is_ok_and(|t| t < cutoff));
        if ours && stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Size and lowercase hex SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// A new private file that hashes what is written to it, so a download
/// or a decryption is written and hashed in one pass.
pub struct HashingFile {
    file: std::io::BufWriter<File>,
    hasher: Sha256,
    size: u64,
}

impl HashingFile {
    /// Creates `path` new ([`create_new`]: readable only by this user).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: std::io::BufWriter::with_capacity(1 << 16, create_new(path)?),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Flushes and syncs; returns size and lowercase hex SHA-256.
    pub fn finish(self) -> std::io::Result<(u64, String)> {
        let file = self.file.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }

    /// Flushes without syncing, for a scratch file that is read once and
    /// removed (forcing it to disk would only cost time); returns size and
    /// lowercase hex SHA-256.
    pub fn finish_unsynced(self) -> std::io::Result<(u64, String)> {
        self.file.into_inner().map_err(|err| err.into_error())?;
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }
}

impl Write for HashingFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn restrict(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = options;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::io::Write::write_all(&mut create_new(&path).unwrap(), b"abc").unwrap();
        assert!(create_new(&path).is_err(), "create_new must not replace");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (size, sha) = hash_file(&path).unwrap();
        let mut hashing = HashingFile::create(&dir.path().join("g")).unwrap();
        hashing.write_all(b"abc").unwrap();
        assert_eq!(hashing.finish().unwrap(), (size, sha.clone()));
        assert!(
            HashingFile::create(&path).is_err(),
            "create_new must not replace"
        );
        assert_eq!(size, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

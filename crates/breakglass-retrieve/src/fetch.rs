//! Finding, downloading and checking the newest backup.
//!
//! The download goes to a hidden partial file in the output folder and is
//! renamed to the object's name only after it matched its manifest, so a
//! file under the real name is always a verified one. The manifest is
//! written beside it (`<name>.manifest.json`) for a later `verify`.

use crate::RetrieveError;
use crate::unseal::{OpenKey, open_sealed};
use breakglass_storage::archive::{self, StoredObject, check_download};
use breakglass_storage::manifest::{Manifest, sidecar_name};
use breakglass_storage::{AnyDestination, Destination};
use chrono::{DateTime, TimeDelta, Utc};
use std::path::{Path, PathBuf};

/// A verified download.
#[derive(Debug)]
pub struct Fetched {
    /// The object as listed.
    pub object: StoredObject,
    /// The stored bytes, verified, under the object's name.
    pub stored: PathBuf,
    /// The manifest written beside it.
    pub manifest_path: PathBuf,
    /// The manifest the bytes matched.
    pub manifest: Manifest,
    /// How long ago the run collected the inventory.
    pub age: TimeDelta,
    /// Older than the allowed age.
    pub stale: bool,
    /// Things worth telling that did not stop the fetch.
    pub warnings: Vec<String>,
}

/// Lists the prefix, downloads the newest backup into `dir` and checks it
/// against its manifest. `max_age` marks it stale (a warning for the
/// caller to act on), it does not stop the download: an old copy is better
/// than none at 3 a.m.
pub async fn fetch_latest(
    destination: &AnyDestination,
    dir: &Path,
    max_age: Option<TimeDelta>,
    now: DateTime<Utc>,
) -> Result<Fetched, RetrieveError> {
    breakglass_core::private_fs::create_dir_all(dir)
        .map_err(|err| RetrieveError::io("creating", dir, err))?;
    let listing = destination.list_objects().await?;
    let object =
        archive::latest_backup(&listing)
            .cloned()
            .ok_or_else(|| RetrieveError::NoBackup {
                place: destination.describe(),
            })?;
    let partial = dir.join(format!(".{}.partial", object.name));
    let _ = std::fs::remove_file(&partial);
    let downloaded = destination.download(&object.key, &partial).await?;
    let checked = async {
        let mut sidecar_problem = None;
        let sidecar = match destination.sidecar(&object.key).await {
            Ok(sidecar) => sidecar,
            // The object's own metadata can still verify the bytes.
            Err(err) if !downloaded.metadata.is_empty() => {
                sidecar_problem = Some(format!("the sidecar manifest could not be used: {err}"));
                None
            }
            Err(err) => return Err(err.into()),
        };
        let mut checked = check_download(&object.name, &downloaded, sidecar)?;
        checked.warnings.extend(sidecar_problem);
        Ok::<_, RetrieveError>(checked)
    }
    .await;
    let checked = match checked {
        Ok(checked) => checked,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
    };
    let stored = dir.join(&object.name);
    std::fs::rename(&partial, &stored)
        .map_err(|err| RetrieveError::io("renaming the download to", &stored, err))?;
    let manifest_path = dir.join(sidecar_name(&object.name));
    write_private(&manifest_path, &checked.manifest.to_json())?;
    let age = now - checked.manifest.created_at;
    let stale = max_age.is_some_and(|max| age > max);
    let mut warnings = checked.warnings;
    if stale {
        warnings.push(format!(
            "the newest backup is {} old (collected {}), older than the allowed {}: check that the scheduled runs succeed",
            human(age),
            checked.manifest.created_at.to_rfc3339(),
            human(max_age.unwrap_or_default())
        ));
    }
    Ok(Fetched {
        object,
        stored,
        manifest_path,
        manifest: checked.manifest,
        age,
        stale,
        warnings,
    })
}

/// Decrypts a fetched file next to it as `<stem>.decrypted.xlsx` (or, for
/// an unencrypted one, returns the stored file itself).
pub fn decrypt_fetched(fetched: &Fetched, key: &OpenKey) -> Result<PathBuf, RetrieveError> {
    if fetched.manifest.encryption == "none" {
        return Ok(fetched.stored.clone());
    }
    let name = &fetched.object.name;
    let stem = name
        .strip_suffix(".xlsx.age")
        .or_else(|| name.strip_suffix(".xlsx"))
        .unwrap_or(name);
    let out = fetched
        .stored
        .with_file_name(format!("{stem}.decrypted.xlsx"));
    // A wrong passphrase must not cost the copy decrypted earlier: decrypt
    // beside it and replace it only on success.
    let partial = fetched
        .stored
        .with_file_name(format!(".{stem}.decrypted.partial"));
    let _ = std::fs::remove_file(&partial);
    open_sealed(
        &fetched.stored,
        &partial,
        &fetched.manifest.encryption,
        &fetched.manifest.key_id,
        key,
    )?;
    std::fs::rename(&partial, &out)
        .map_err(|err| RetrieveError::io("renaming the decrypted workbook to", &out, err))?;
    Ok(out)
}

/// Checks a file on disk against a manifest file (`verify`).
pub fn verify_file(file: &Path, manifest_path: &Path) -> Result<Manifest, RetrieveError> {
    let bytes = breakglass_core::limits::read_file(
        manifest_path,
        breakglass_core::limits::MAX_MANIFEST_BYTES,
        "the manifest",
    )?;
    let manifest = Manifest::from_json(&bytes)
        .map_err(|err| RetrieveError::io("reading the manifest", manifest_path, err))?;
    let (size, sha256) = breakglass_core::private_fs::hash_file(file)
        .map_err(|err| RetrieveError::io("reading", file, err))?;
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    archive::verify_bytes(&name, &manifest, size, &sha256)?;
    Ok(manifest)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RetrieveError> {
    use std::io::Write;
    let mut file = breakglass_core::private_fs::create_or_truncate(path)
        .map_err(|err| RetrieveError::io("creating", path, err))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| RetrieveError::io("writing", path, err))
}

/// `3 h 05 min`, `2 d 4 h`: ages for people.
pub fn human(delta: TimeDelta) -> String {
    let minutes = delta.num_minutes().max(0);
    match minutes {
        m if m < 60 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h {:02} min", m / 60, m % 60),
        m => format!("{} d {} h", m / (24 * 60), (m / 60) % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_config::Rotation;
    use breakglass_storage::Upload;
    use breakglass_storage::manifest::ProjectRows;

    async fn store(dir: &Path, content: &[u8], hour: u32) -> AnyDestination {
        let source = dir.join(format!("src-{hour}"));
        std::fs::write(&source, content).unwrap();
        let (size, sha) = breakglass_core::private_fs::hash_file(&source).unwrap();
        let destination =
            breakglass_storage::local_destination(&dir.join("store"), Rotation::Unique);
        let projects = [ProjectRows {
            project: "p".into(),
            sheets: vec!["p".into()],
            rows: 1,
        }];
        use chrono::TimeZone;
        destination
            .upload(&Upload {
                file: &source,
                size,
                sha256: &sha,
                run_id: &format!("run-{hour}"),
                created_at: Utc.with_ymd_and_hms(2026, 11, 27, hour, 0, 0).unwrap(),
                extension: ".xlsx",
                encryption: "none",
                key_id: "",
                projects: &projects,
            })
            .await
            .unwrap();
        destination
    }

    #[tokio::test]
    async fn the_newest_copy_is_fetched_verified_and_aged() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), b"old", 1).await;
        let destination = store(dir.path(), b"newer", 2).await;
        let now = DateTime::parse_from_rfc3339("2026-11-28T03:00:00Z")
            .unwrap()
            .to_utc();
        let out = dir.path().join("out");
        let fetched = fetch_latest(&destination, &out, Some(TimeDelta::hours(24)), now)
            .await
            .unwrap();
        assert_eq!(fetched.manifest.run_id, "run-2");
        assert_eq!(fetched.manifest.projects[0].rows, 1);
        assert_eq!(std::fs::read(&fetched.stored).unwrap(), b"newer");
        assert_eq!(fetched.age, TimeDelta::hours(25));
        assert!(fetched.stale);
        assert!(
            fetched.warnings.iter().any(|w| w.contains("25 h 00 min")),
            "{:?}",
            fetched.warnings
        );
        // Fetching again replaces the earlier download; 25 h is fresh under 26 h.
        let fetched = fetch_latest(&destination, &out, Some(TimeDelta::hours(26)), now)
            .await
            .unwrap();
        assert!(
            !fetched.stale && fetched.warnings.is_empty(),
            "{:?}",
            fetched.warnings
        );
        verify_file(&fetched.stored, &fetched.manifest_path).unwrap();
        // A tampered copy fails `verify`.
        std::fs::write(&fetched.stored, b"newes").unwrap();
        let err = verify_file(&fetched.stored, &fetched.manifest_path).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_prefix_says_there_is_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let destination =
            breakglass_storage::local_destination(&dir.path().join("store"), Rotation::Unique);
        let err = fetch_latest(&destination, &dir.path().join("out"), None, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, RetrieveError::NoBackup { .. }), "{err}");
    }
}

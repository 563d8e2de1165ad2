//! The storage contract: ONE list of cases, run against every backend (a
//! local folder, S3 on moto, Azure Blob on Azurite), the model being
//! object_store's `integration.rs`. Each case is a plain async function of
//! an [`Env`]; [`contract!`] makes one test per case and backend
//! (`local::rotation_modes`, `s3::rotation_modes`, `azure::...`).
//!
//! Backend-specific cases (multipart and blocks, SAS forms, TLS, regions)
//! stay in `s3.rs` and `azure.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_config::{
    BlobCredential, BlobSettings, ChecksumMode, Protocol, Rotation, S3Settings,
};
use breakglass_core::Secret;
use breakglass_e2e::{Azurite, Moto, OutageProxy};
use breakglass_storage::archive::{self, StoredObject};
use breakglass_storage::deliver::{self, RetryBudget, Status};
use breakglass_storage::{
    AnyDestination, Backend, Destination, PutMode, Receipt, StorageError, Upload, manifest,
};
use breakglass_storage::{azure as blob_backend, local as folder_backend, s3 as s3_backend};
use chrono::TimeZone;
use std::path::PathBuf;
use std::time::Duration;

const BUCKET: &str = "contract";

/// Which backend a case runs against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Local,
    S3,
    Blob,
}

/// One backend's server (if any) and a scratch folder.
struct Env {
    kind: Kind,
    moto: Option<Moto>,
    azurite: Option<Azurite>,
    dir: tempfile::TempDir,
}

impl Env {
    fn start(kind: Kind) -> Self {
        let (moto, azurite) = match kind {
            Kind::Local => (None, None),
            Kind::S3 => {
                let moto = Moto::start();
                moto.tool(&["create-bucket", BUCKET]);
                (Some(moto), None)
            }
            Kind::Blob => {
                let azurite = Azurite::start();
                azurite.tool(&["create-container", BUCKET]);
                (None, Some(azurite))
            }
        };
        Self {
            kind,
            moto,
            azurite,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn s3_settings(&self, endpoint: &str, key: &str, secret: &str) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            endpoint: Some(endpoint.to_owned()),
            protocol: Protocol::Http,
            region: "us-east-1".into(),
            region_configured: true,
            access_key_id: key.into(),
            secret_access_key: Secret::new(secret),
            checksum: ChecksumMode::WhenRequired,
        }
    }

    fn blob_settings(&self, endpoint: &str, credential: BlobCredential) -> BlobSettings {
        BlobSettings {
            endpoint: endpoint.to_owned(),
            protocol: Protocol::Http,
            container: BUCKET.into(),
            credential,
        }
    }

    fn account_key() -> BlobCredential {
        BlobCredential::AccountKey {
            account: Azurite::ACCOUNT.into(),
            key: Secret::new(Azurite::KEY),
        }
    }

    /// The destination under `prefix` with full rights.
    fn at(&self, prefix: &str, rotation: Rotation) -> AnyDestination {
        match self.kind {
            Kind::Local => AnyDestination::Local(folder_backend::LocalFolder::new(
                self.dir.path().join("out"),
                prefix,
                rotation,
            )),
            Kind::S3 => {
                let moto = self.moto.as_ref().unwrap();
                AnyDestination::S3(Box::new(s3_backend::S3Bucket::new(
                    &self.s3_settings(&moto.endpoint, "AKIACONTRACT", "contract-secret-key"),
                    prefix,
                    rotation,
                    None,
                )))
            }
            Kind::Blob => {
                let azurite = self.azurite.as_ref().unwrap();
                AnyDestination::Blob(Box::new(blob_backend::AzureContainer::new(
                    &self.blob_settings(&azurite.endpoint, Self::account_key()),
                    prefix,
                    rotation,
                    None,
                )))
            }
        }
    }

    /// A file with `content`, and its size and SHA-256.
    fn file(&self, name: &str, content: &[u8]) -> File {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let (size, sha256) = breakglass_core::private_fs::hash_file(&path).unwrap();
        File { path, size, sha256 }
    }
}

struct File {
    path: PathBuf,
    size: u64,
    sha256: String,
}

impl File {
    /// The upload of this file by run `run`, collected at `hour`.
    fn upload<'a>(&'a self, hour: u32, run: &'a str) -> Upload<'a> {
        Upload {
            file: &self.path,
            size: self.size,
            sha256: &self.sha256,
            run_id: run,
            created_at: chrono::Utc
                .with_ymd_and_hms(2026, 11, 27, hour, 0, 0)
                .unwrap(),
            extension: ".xlsx",
            encryption: "none",
            key_id: "",
            projects: &[],
        }
    }
}

async fn put(
    destination: &AnyDestination,
    file: &File,
    hour: u32,
    run: &str,
) -> Result<Receipt, StorageError> {
    destination.upload(&file.upload(hour, run)).await
}

/// Every name under the destination's prefix, sorted.
async fn names(destination: &AnyDestination) -> Vec<String> {
    let mut names: Vec<String> = listing(destination)
        .await
        .into_iter()
        .map(|o| o.name)
        .filter(|n| !n.starts_with(".breakglass-"))
        .collect();
    names.sort();
    names
}

async fn listing(destination: &AnyDestination) -> Vec<StoredObject> {
    destination.list_objects().await.unwrap()
}

/// The bytes stored under `name`.
async fn read(env: &Env, destination: &AnyDestination, name: &str) -> Vec<u8> {
    let to = env.dir.path().join(format!("read-{}", unique_number()));
    destination
        .download(&destination.key(name), &to)
        .await
        .unwrap();
    std::fs::read(&to).unwrap()
}

/// What `fetch` does: the newest backup, downloaded and checked.
async fn fetch(env: &Env, destination: &AnyDestination) -> (String, Vec<u8>, Vec<String>) {
    let objects = listing(destination).await;
    let newest = archive::latest_backup(&objects)
        .expect("fetch finds a backup")
        .clone();
    let to = env.dir.path().join(format!("fetch-{}", unique_number()));
    let downloaded = destination.download(&newest.key, &to).await.unwrap();
    let sidecar = destination.sidecar(&newest.key).await.unwrap();
    let checked = archive::check_download(&newest.name, &downloaded, sidecar).unwrap();
    (newest.name, std::fs::read(&to).unwrap(), checked.warnings)
}

/// A number not used before in this process, for scratch file names.
fn unique_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const OLD: &str = "breakglass-backup-20261127T010000Z-run-1.xlsx";
const MID: &str = "breakglass-backup-20261127T020000Z-run-2.xlsx";
const NEW: &str = "breakglass-backup-20261127T050000Z-run-5.xlsx";

fn sidecar(name: &str) -> String {
    manifest::sidecar_name(name)
}

// ---------------------------------------------------------------- cases

/// overwrite replaces one name; unique keeps every run; prune keeps the
/// newest only, with its sidecar.
async fn rotation_modes(env: &mut Env) {
    let first = env.file("first", b"first workbook");
    let second = env.file("second", b"second workbook, longer");

    let overwrite = env.at("o", Rotation::Overwrite);
    put(&overwrite, &first, 1, "run-1").await.unwrap();
    let receipt = put(&overwrite, &second, 2, "run-2").await.unwrap();
    assert!(!receipt.already_stored);
    assert!(
        receipt.location.ends_with("breakglass-backup.xlsx"),
        "{receipt:?}"
    );
    assert_eq!(
        names(&overwrite).await,
        vec![
            "breakglass-backup.xlsx".to_owned(),
            sidecar("breakglass-backup.xlsx")
        ]
    );
    assert_eq!(
        read(env, &overwrite, "breakglass-backup.xlsx").await,
        b"second workbook, longer"
    );
    let (name, bytes, warnings) = fetch(env, &overwrite).await;
    assert_eq!(
        (name.as_str(), bytes.as_slice()),
        ("breakglass-backup.xlsx", &b"second workbook, longer"[..])
    );
    assert!(warnings.is_empty(), "{warnings:?}");

    let unique = env.at("u", Rotation::Unique);
    put(&unique, &first, 1, "run-1").await.unwrap();
    put(&unique, &second, 2, "run-2").await.unwrap();
    let other = env.file("other", b"different bytes");
    let err = put(&unique, &other, 1, "run-1").await.unwrap_err();
    assert!(
        matches!(err, StorageError::Exists { .. }),
        "a taken name is never replaced: {err}"
    );
    assert_eq!(
        names(&unique).await,
        vec![OLD.to_owned(), sidecar(OLD), MID.to_owned(), sidecar(MID)]
    );
    assert_eq!(read(env, &unique, OLD).await, b"first workbook");

    let prune = env.at("p", Rotation::Prune);
    put(&prune, &first, 1, "run-1").await.unwrap();
    let receipt = put(&prune, &second, 2, "run-2").await.unwrap();
    assert_eq!(receipt.pruned, vec![prune.key(OLD)]);
    assert!(receipt.warnings.is_empty(), "{:?}", receipt.warnings);
    assert_eq!(names(&prune).await, vec![MID.to_owned(), sidecar(MID)]);
    assert_eq!(fetch(env, &prune).await.0, MID);
}

/// The same run delivered again: nothing is sent, the receipt says so.
async fn redelivery_is_skipped(env: &mut Env) {
    let data = env.file("data", b"the run's workbook");
    for (prefix, rotation) in [
        ("o", Rotation::Overwrite),
        ("u", Rotation::Unique),
        ("p", Rotation::Prune),
    ] {
        let destination = env.at(prefix, rotation);
        let first = put(&destination, &data, 2, "run-2").await.unwrap();
        assert!(!first.already_stored, "{rotation:?}");
        let before = listing(&destination).await;
        let inode = local_inode(env, &destination, &before);
        // Past the storage's one-second time resolution: a rewrite would
        // show in the listing's modification times.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = put(&destination, &data, 2, "run-2").await.unwrap();
        assert!(again.already_stored, "{rotation:?}: {again:?}");
        assert_eq!(
            (again.location.as_str(), again.size, again.sha256.as_str()),
            (first.location.as_str(), first.size, first.sha256.as_str())
        );
        assert_eq!(
            listing(&destination).await,
            before,
            "{rotation:?}: nothing was written again"
        );
        assert_eq!(local_inode(env, &destination, &before), inode);
        // The same bytes from another run are that run's copy: stored.
        let later = put(&destination, &data, 3, "run-3").await.unwrap();
        assert!(!later.already_stored, "{rotation:?}: {later:?}");
    }
}

/// A local file's inode (the same file, not a rewrite); 0 elsewhere.
fn local_inode(env: &Env, destination: &AnyDestination, objects: &[StoredObject]) -> u64 {
    #[cfg(unix)]
    if let AnyDestination::Local(folder) = destination {
        use std::os::unix::fs::MetadataExt;
        let backup = archive::latest_backup(objects).unwrap();
        let _ = env;
        return std::fs::metadata(folder.dir().join(&backup.name))
            .unwrap()
            .ino();
    }
    let _ = (env, destination, objects);
    0
}

/// An older run arriving late never replaces a newer copy.
async fn an_older_run_arriving_late_never_replaces_a_newer_copy(env: &mut Env) {
    let newer = env.file("newer", b"run 5, collected later");
    let older = env.file("older", b"run 4, collected earlier");

    let overwrite = env.at("o", Rotation::Overwrite);
    put(&overwrite, &newer, 5, "run-5").await.unwrap();
    let err = put(&overwrite, &older, 4, "run-4").await.unwrap_err();
    assert!(
        matches!(err, StorageError::Superseded { .. }),
        "under overwrite: {err}"
    );
    assert!(!err.is_transient(), "not worth retrying: {err}");
    assert_eq!(
        fetch(env, &overwrite).await.1,
        b"run 5, collected later",
        "the newer copy and its manifest are kept"
    );

    for (prefix, rotation) in [("u", Rotation::Unique), ("p", Rotation::Prune)] {
        let destination = env.at(prefix, rotation);
        put(&destination, &newer, 5, "run-5").await.unwrap();
        let receipt = put(&destination, &older, 4, "run-4").await.unwrap();
        assert!(receipt.pruned.is_empty(), "{rotation:?}: {receipt:?}");
        assert!(names(&destination).await.contains(&NEW.to_owned()));
        let (name, bytes, _) = fetch(env, &destination).await;
        assert_eq!(
            (name.as_str(), bytes.as_slice()),
            (NEW, &b"run 5, collected later"[..]),
            "{rotation:?}: the newer copy stays the newest"
        );
    }
}

/// What is sent must be the run's bytes: a mismatch stores nothing and the
/// previous copy stays.
async fn a_verification_failure_keeps_the_previous_copy(env: &mut Env) {
    let good = env.file("good", b"the last good backup");
    let mut bad = env.file("bad", b"a newer workbook");
    bad.sha256 = "0".repeat(64);
    for (prefix, rotation) in [("o", Rotation::Overwrite), ("u", Rotation::Unique)] {
        let destination = env.at(prefix, rotation);
        put(&destination, &good, 1, "run-1").await.unwrap();
        let before = names(&destination).await;
        let err = put(&destination, &bad, 2, "run-2").await.unwrap_err();
        assert!(
            matches!(err, StorageError::Verification { .. }),
            "{rotation:?}: {err}"
        );
        assert_eq!(names(&destination).await, before, "{rotation:?}");
        let (_, bytes, warnings) = fetch(env, &destination).await;
        assert_eq!(bytes, b"the last good backup", "{rotation:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

/// prune deletes nothing unless the new copy is stored and verified.
async fn prune_never_deletes_before_the_new_copy_is_verified(env: &mut Env) {
    let prune = env.at("p", Rotation::Prune);
    let data = env.file("data", b"older copies");
    // Older copies left by earlier runs (e.g. written under unique).
    let unique = env.at("p", Rotation::Unique);
    put(&unique, &data, 1, "run-1").await.unwrap();
    put(&unique, &data, 2, "run-2").await.unwrap();
    let before = names(&prune).await;
    assert_eq!(before.len(), 4);
    let mut bad = env.file("bad", b"newest, but not what the run made");
    bad.sha256 = "f".repeat(64);
    let err = put(&prune, &bad, 5, "run-5").await.unwrap_err();
    assert!(matches!(err, StorageError::Verification { .. }), "{err}");
    assert_eq!(
        names(&prune).await,
        before,
        "every older copy is still there"
    );
}

/// A crash between the object and its sidecar: `fetch` still finds the
/// backup, and the next delivery completes (and writes the sidecar).
async fn a_crash_between_object_and_sidecar_is_recovered(env: &mut Env) {
    let data = env.file("data", b"stored, sidecar lost");
    for (prefix, rotation) in [("o", Rotation::Overwrite), ("u", Rotation::Unique)] {
        let destination = env.at(prefix, rotation);
        let upload = data.upload(3, "run-3");
        let name = breakglass_storage::naming::object_name(
            rotation,
            upload.created_at,
            upload.run_id,
            upload.extension,
        );
        // The first half of the sequence only, as a crash would leave it.
        destination
            .put_file(
                &destination.key(&name),
                &upload,
                PutMode::for_rotation(rotation),
            )
            .await
            .unwrap();
        assert_eq!(names(&destination).await, vec![name.clone()]);
        let objects = listing(&destination).await;
        assert_eq!(
            archive::latest_backup(&objects).map(|o| o.name.as_str()),
            Some(name.as_str()),
            "fetch finds the backup without its sidecar"
        );
        // The next delivery of that run completes it.
        let receipt = destination.upload(&upload).await.unwrap();
        assert!(receipt.already_stored, "{receipt:?}");
        assert!(receipt.warnings.is_empty(), "{:?}", receipt.warnings);
        assert_eq!(
            names(&destination).await,
            vec![name.clone(), sidecar(&name)]
        );
        let (_, bytes, warnings) = fetch(env, &destination).await;
        assert_eq!(bytes, b"stored, sidecar lost");
        assert!(warnings.is_empty(), "{warnings:?}");
        // And the next run completes as usual.
        let next = env.file("next", b"the next run");
        put(&destination, &next, 4, "run-4").await.unwrap();
        assert_eq!(fetch(env, &destination).await.1, b"the next run");
    }
}

/// Names breakglass did not write are never taken for a backup, nor
/// pruned: a look-alike, a lone sidecar, another prefix.
async fn foreign_names_are_never_backups_nor_pruned(env: &mut Env) {
    let prune = env.at("p", Rotation::Prune);
    let other_prefix = env.at("q", Rotation::Prune);
    for (destination, name) in [
        (&prune, "breakglass-backup-notes.xlsx"),
        (&prune, "notes.txt"),
        (
            &prune,
            "breakglass-backup-20200101T000000Z-gone.xlsx.manifest.json",
        ),
        (&other_prefix, "breakglass-backup-20200101T000000Z-x.xlsx"),
    ] {
        destination
            .put_small(
                &destination.key(name),
                b"not a breakglass backup".to_vec(),
                "text/plain",
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    if env.kind != Kind::Local {
        // A deeper "folder" under the prefix is not the prefix's.
        prune
            .put_small(
                &prune.key("sub/breakglass-backup-20200101T000000Z-y.xlsx"),
                b"another folder".to_vec(),
                "text/plain",
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    let objects = listing(&prune).await;
    assert!(
        archive::latest_backup(&objects).is_none(),
        "no backup among {objects:?}"
    );
    let data = env.file("data", b"the real backup");
    put(&prune, &data, 1, "run-1").await.unwrap();
    let receipt = put(&prune, &data, 2, "run-2").await.unwrap();
    assert_eq!(receipt.pruned, vec![prune.key(OLD)]);
    assert_eq!(
        names(&prune).await,
        vec![
            "breakglass-backup-20200101T000000Z-gone.xlsx.manifest.json".to_owned(),
            MID.to_owned(),
            sidecar(MID),
            "breakglass-backup-notes.xlsx".to_owned(),
            "notes.txt".to_owned(),
        ]
    );
    assert_eq!(
        names(&other_prefix).await,
        vec!["breakglass-backup-20200101T000000Z-x.xlsx".to_owned()],
        "another prefix is never touched"
    );
    assert_eq!(fetch(env, &prune).await.0, MID);
    if env.kind != Kind::Local {
        let to = env.dir.path().join("sub-read");
        prune
            .download(
                &prune.key("sub/breakglass-backup-20200101T000000Z-y.xlsx"),
                &to,
            )
            .await
            .expect("the deeper folder's object is untouched");
    }
}

/// A create-only credential (S3: `s3:PutObject` alone; Azure: a SAS with
/// `c` and no `w`) is enough for unique, which never replaces anything. A
/// folder has no such credential: the case checks nothing there.
async fn create_only_credentials_work_with_unique(env: &mut Env) {
    let (writer, reader) = match env.kind {
        Kind::Local => return,
        Kind::S3 => {
            let moto = env.moto.as_mut().unwrap();
            let writer = moto.iam_user(
                "creator",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":"arn:aws:s3:::contract/*"}]}"#,
            );
            let reader = moto.iam_user(
                "reader",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::contract","arn:aws:s3:::contract/*"]}]}"#,
            );
            moto.enforce_iam();
            let endpoint = moto.endpoint.clone();
            let at = |(key, secret): &(String, String)| {
                AnyDestination::S3(Box::new(s3_backend::S3Bucket::new(
                    &env.s3_settings(&endpoint, key, secret),
                    "c",
                    Rotation::Unique,
                    None,
                )))
            };
            (at(&writer), at(&reader))
        }
        Kind::Blob => {
            let azurite = env.azurite.as_ref().unwrap();
            let at = |permissions: &str| {
                AnyDestination::Blob(Box::new(blob_backend::AzureContainer::new(
                    &env.blob_settings(
                        &azurite.endpoint,
                        BlobCredential::Sas(Secret::new(azurite.sas(BUCKET, permissions))),
                    ),
                    "c",
                    Rotation::Unique,
                    None,
                )))
            };
            (at("c"), at("rl"))
        }
    };
    let first = env.file("first", b"create only, run 1");
    let second = env.file("second", b"create only, run 2");
    let receipt = put(&writer, &first, 1, "run-1").await.unwrap();
    assert!(receipt.warnings.is_empty(), "{:?}", receipt.warnings);
    put(&writer, &second, 2, "run-2").await.unwrap();
    // A redelivery of run 2 through a credential that cannot read: its
    // unique name is taken, so it is this run's copy already stored; nothing
    // is replaced (the bytes below are still run 2's first upload).
    let other = env.file("other", b"never replaces");
    let again = put(&writer, &other, 2, "run-2").await.unwrap();
    assert!(again.already_stored, "{again:?}");
    assert!(
        again
            .warnings
            .iter()
            .any(|w| w.contains("not verified again")),
        "{:?}",
        again.warnings
    );
    assert_eq!(
        names(&reader).await,
        vec![OLD.to_owned(), sidecar(OLD), MID.to_owned(), sidecar(MID)]
    );
    let (name, bytes, warnings) = fetch(env, &reader).await;
    assert_eq!(
        (name.as_str(), bytes.as_slice()),
        (MID, &b"create only, run 2"[..])
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// The one run outcome: every destination independently, the status
/// decided once.
async fn the_delivery_decides_the_run(env: &mut Env) {
    let data = env.file("data", b"delivered");
    let upload = data.upload(2, "run-2");
    let ok = [env.at("d", Rotation::Overwrite)];
    let delivery = deliver::store_all(&ok, &upload, RetryBudget::none()).await;
    assert_eq!(delivery.status, Status::Succeeded, "{delivery:?}");
    assert_eq!(delivery.error, "");
    let delivery = deliver::store_all(&ok, &upload, RetryBudget::none()).await;
    let receipt = delivery.outcomes[0].result.as_ref().unwrap();
    assert!(receipt.already_stored, "{receipt:?}");

    let none: [AnyDestination; 0] = [];
    let delivery = deliver::store_all(&none, &upload, RetryBudget::none()).await;
    assert_eq!(delivery.status, Status::Failed);
    assert_eq!(delivery.error, "no destination is configured");

    // A newer copy in one destination, none in the other.
    let newer = env.file("newer", b"newer");
    let mixed = [
        env.at("m1", Rotation::Overwrite),
        env.at("m2", Rotation::Overwrite),
    ];
    mixed[0].upload(&newer.upload(9, "run-9")).await.unwrap();
    let delivery = deliver::store_all(&mixed, &upload, RetryBudget::none()).await;
    assert_eq!(delivery.status, Status::PartiallyFailed, "{delivery:?}");
    assert!(
        delivery.error.contains("a newer backup"),
        "{}",
        delivery.error
    );
    assert_eq!(
        delivery.outcomes[0].attempts, 1,
        "Superseded is not retried"
    );
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&mut super::Env::start(super::Kind::Local)).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&mut super::Env::start(super::Kind::S3)).await;
                }
            )*
        }
        mod azure {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&mut super::Env::start(super::Kind::Blob)).await;
                }
            )*
        }
    };
}

contract!(
    rotation_modes,
    redelivery_is_skipped,
    an_older_run_arriving_late_never_replaces_a_newer_copy,
    a_verification_failure_keeps_the_previous_copy,
    prune_never_deletes_before_the_new_copy_is_verified,
    a_crash_between_object_and_sidecar_is_recovered,
    foreign_names_are_never_backups_nor_pruned,
    create_only_credentials_work_with_unique,
    the_delivery_decides_the_run,
);

// ---------------------------------------------------- the retry budget

/// moto behind an [`OutageProxy`], and an overwrite destination through it.
async fn s3_behind_a_proxy(moto: &Moto) -> (OutageProxy, AnyDestination) {
    let port: u16 = moto.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = OutageProxy::start(([127, 0, 0, 1], port).into()).await;
    let env_settings = S3Settings {
        bucket: BUCKET.into(),
        endpoint: Some(format!("http://127.0.0.1:{}", proxy.port)),
        protocol: Protocol::Http,
        region: "us-east-1".into(),
        region_configured: true,
        access_key_id: "AKIACONTRACT".into(),
        secret_access_key: Secret::new("contract-secret-key"),
        checksum: ChecksumMode::WhenRequired,
    };
    let destination = AnyDestination::S3(Box::new(s3_backend::S3Bucket::new(
        &env_settings,
        "",
        Rotation::Overwrite,
        None,
    )));
    (proxy, destination)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_budget_is_ridden_out_inside_one_delivery() {
    let env = Env::start(Kind::S3);
    let (mut proxy, destination) = s3_behind_a_proxy(env.moto.as_ref().unwrap()).await;
    let data = env.file("data", b"after the outage");
    proxy.down();
    // Longer than the SDK's own retries of one request (4 attempts, at most
    // about 7 s of back-off against a refused connection), so only the
    // retry budget can ride it out.
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(12)).await;
        proxy.up().await;
        proxy
    });
    let destinations = [destination];
    let delivery = deliver::store_all(
        &destinations,
        &data.upload(1, "run-1"),
        RetryBudget::new(Duration::from_secs(40)),
    )
    .await;
    let _proxy = back.await.unwrap();
    assert_eq!(delivery.status, Status::Succeeded, "{delivery:?}");
    let outcome = &delivery.outcomes[0];
    assert!(outcome.attempts > 1, "{outcome:?}");
    assert!(outcome.waited > Duration::ZERO, "{outcome:?}");
    assert!(outcome.waited <= Duration::from_secs(40), "{outcome:?}");
    assert_eq!(fetch(&env, &destinations[0]).await.1, b"after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_budget_fails_the_destination_naming_it() {
    let env = Env::start(Kind::S3);
    let (mut proxy, destination) = s3_behind_a_proxy(env.moto.as_ref().unwrap()).await;
    let data = env.file("data", b"never sent");
    proxy.down();
    let destinations = [destination];
    let started = std::time::Instant::now();
    let delivery = deliver::store_all(
        &destinations,
        &data.upload(1, "run-1"),
        RetryBudget::new(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(delivery.status, Status::Failed, "{delivery:?}");
    let outcome = &delivery.outcomes[0];
    let err = outcome.result.as_ref().unwrap_err();
    assert!(err.is_transient(), "{err}");
    let port = format!("127.0.0.1:{}", proxy.port);
    assert!(
        delivery.error.contains(&port) || delivery.error.contains("refused"),
        "names the outage: {}",
        delivery.error
    );
    assert_eq!(outcome.waited, Duration::from_secs(2), "the whole budget");
    assert!(started.elapsed() < Duration::from_secs(60));
    proxy.up().await;
}

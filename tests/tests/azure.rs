//! The Azure Blob destination against a real Azure Blob server (Azurite),
//! over HTTP and HTTPS with a CA the test generates, read back with the
//! Python `azure-storage-blob` client. The cases every backend shares
//! (rotation, redelivery, older runs, prune, foreign names) are in
//! `storage_contract.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_config::{
    BlobCredential, BlobSettings, CaBundle, Protocol, RawConfig, Rotation, Settings,
};
use breakglass_core::Secret;
use breakglass_e2e::{Azurite, TestCa};
use breakglass_storage::azure::AzureContainer;
use breakglass_storage::{AnyDestination, Destination, Receipt, StorageError, Upload};
use chrono::TimeZone;
use std::io::Write;
use std::path::{Path, PathBuf};

fn protocol(azurite: &Azurite) -> Protocol {
    if azurite.endpoint.starts_with("https") {
        Protocol::Https
    } else {
        Protocol::Http
    }
}

fn with_key(azurite: &Azurite, container: &str, key: &str) -> BlobSettings {
    BlobSettings {
        endpoint: azurite.endpoint.clone(),
        protocol: protocol(azurite),
        container: container.into(),
        credential: BlobCredential::AccountKey {
            account: Azurite::ACCOUNT.into(),
            key: Secret::new(key),
        },
    }
}

fn with_sas(azurite: &Azurite, container: &str, sas: &str) -> BlobSettings {
    BlobSettings {
        credential: BlobCredential::Sas(Secret::new(sas)),
        ..with_key(azurite, container, Azurite::KEY)
    }
}

fn container(settings: &BlobSettings, prefix: &str, rotation: Rotation) -> AzureContainer {
    AzureContainer::new(settings, prefix, rotation, None)
}

fn ca(azurite: &Azurite) -> Option<CaBundle> {
    azurite
        .ca_pem
        .as_ref()
        .map(|p| breakglass_config::remote::read_ca_bundle(p.to_str().unwrap()).unwrap())
}

struct File {
    path: PathBuf,
    size: u64,
    sha256: String,
}

fn file(dir: &Path, name: &str, content: &[u8]) -> File {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    let (size, sha256) = breakglass_core::private_fs::hash_file(&path).unwrap();
    File { path, size, sha256 }
}

async fn put(
    destination: &impl Destination,
    file: &File,
    hour: u32,
    run: &str,
) -> Result<Receipt, StorageError> {
    destination
        .upload(&Upload {
            file: &file.path,
            size: file.size,
            sha256: &file.sha256,
            run_id: run,
            created_at: chrono::Utc
                .with_ymd_and_hms(2026, 11, 27, hour, 0, 0)
                .unwrap(),
            extension: ".xlsx",
            encryption: "none",
            key_id: "",
            projects: &[],
        })
        .await
}

fn get(azurite: &Azurite, container: &str, blob: &str, out: &Path) -> serde_json::Value {
    serde_json::from_str(&azurite.tool(&["get", container, blob, out.to_str().unwrap()])).unwrap()
}

/// The backups under `prefix`, without their sidecar manifests.
fn list(azurite: &Azurite, container: &str, prefix: &str) -> Vec<String> {
    list_all(azurite, container, prefix)
        .into_iter()
        .filter(|name| !name.ends_with(".manifest.json"))
        .collect()
}

/// Every blob under `prefix`.
fn list_all(azurite: &Azurite, container: &str, prefix: &str) -> Vec<String> {
    serde_json::from_str(&azurite.tool(&["list", container, prefix])).unwrap()
}

#[tokio::test]
async fn overwrite_replaces_one_blob_and_the_python_client_reads_it_back() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "backups"]);
    let dir = tempfile::tempdir().unwrap();
    let backups = container(
        &with_key(&azurite, "backups", Azurite::KEY),
        "mavis/prod",
        Rotation::Overwrite,
    );
    put(
        &backups,
        &file(dir.path(), "a", b"first workbook"),
        1,
        "run-1",
    )
    .await
    .unwrap();
    let second = file(dir.path(), "b", b"second workbook, longer");
    let receipt = put(&backups, &second, 2, "run-2").await.unwrap();
    assert_eq!(
        receipt.location,
        format!(
            "{}/backups/mavis/prod/breakglass-backup.xlsx",
            azurite.endpoint
        )
    );

    assert_eq!(
        list(&azurite, "backups", ""),
        vec!["mavis/prod/breakglass-backup.xlsx"]
    );
    let out = dir.path().join("read-back");
    let props = get(
        &azurite,
        "backups",
        "mavis/prod/breakglass-backup.xlsx",
        &out,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"second workbook, longer");
    assert_eq!(
        props["metadata"]["breakglass_sha256"],
        second.sha256.as_str()
    );
    assert_eq!(props["metadata"]["breakglass_run_id"], "run-2");
    assert_eq!(
        props["metadata"]["breakglass_size"],
        second.size.to_string().as_str()
    );
    assert_eq!(props["metadata"]["breakglass_format"], "xlsx");
    assert_eq!(
        props["content_type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    // The whole file's MD5 is stored as the blob's Content-MD5 property.
    assert_eq!(props["content_md5"], props["downloaded_md5"]);
}

/// Settings as an admin writes them, through the config crate.
fn destination_from_config(lines: &str) -> AnyDestination {
    let raw = RawConfig::parse(lines, "test.conf").unwrap();
    let settings = Settings::from_raw(&raw).unwrap_or_else(|err| panic!("{err}"));
    let mut all = breakglass_storage::destinations(&settings);
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[tokio::test]
async fn account_key_connection_string_and_sas_all_work() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "forms"]);
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"three ways in");
    let endpoint = &azurite.endpoint;
    let key = Azurite::KEY;
    let account = Azurite::ACCOUNT;
    let sas = azurite.sas("forms", "cw");

    let by_key = destination_from_config(&format!(
        "storage_provider: blob\nblob_container: forms\nblob_account_name: {account}\nblob_account_key: {key}\nblob_protocol: http\nblob_endpoint: {endpoint}\npath_prefix: key\n"
    ));
    let by_connection_string = destination_from_config(&format!(
        "storage_provider: blob\nblob_container: forms\nblob_connection_string: DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};\npath_prefix: connection-string\n"
    ));
    let by_sas = destination_from_config(&format!(
        "storage_provider: blob\nblob_container: forms\nblob_sas_token: ?{sas}\nblob_protocol: http\nblob_endpoint: {endpoint}/\npath_prefix: sas\n"
    ));
    let by_sas_connection_string = destination_from_config(&format!(
        "storage_provider: blob\nblob_container: forms\nblob_connection_string: BlobEndpoint={endpoint};SharedAccessSignature={sas}\npath_prefix: sas-connection-string\n"
    ));
    for destination in [
        &by_key,
        &by_connection_string,
        &by_sas,
        &by_sas_connection_string,
    ] {
        assert!(matches!(destination, AnyDestination::Blob(_)));
        put(destination, &data, 1, "run-1")
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", destination.describe()));
    }
    assert_eq!(
        list(&azurite, "forms", ""),
        vec![
            "connection-string/breakglass-backup.xlsx",
            "key/breakglass-backup.xlsx",
            "sas-connection-string/breakglass-backup.xlsx",
            "sas/breakglass-backup.xlsx",
        ]
    );
}

#[tokio::test]
async fn least_privilege_sas_tokens_are_enough_and_too_little_is_explained() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "locked"]);
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"least privilege");

    // Create-only: unique works and never replaces.
    let create_only = with_sas(&azurite, "locked", &azurite.sas("locked", "c"));
    let unique = container(&create_only, "c", Rotation::Unique);
    put(&unique, &data, 1, "run-1").await.unwrap();
    put(&unique, &data, 2, "run-2").await.unwrap();
    // A redelivery of run 2 through the create-only SAS (it may not read):
    // the run's unique name is taken, so its copy counts as stored, said so,
    // and nothing is replaced (the listing below still holds three copies).
    let other = file(dir.path(), "b", b"another file");
    let again = put(&unique, &other, 2, "run-2").await.unwrap();
    assert!(again.already_stored, "{again:?}");
    assert!(
        again
            .warnings
            .iter()
            .any(|w| w.contains("not verified again")),
        "{:?}",
        again.warnings
    );
    // Bigger than the block threshold: unique still sends one Put Blob,
    // because a create-only SAS may not stage blocks.
    let bigger = file(dir.path(), "big", &vec![7u8; 3 << 20]);
    let unique_small_blocks =
        container(&create_only, "c", Rotation::Unique).with_blocks(1 << 20, 1 << 20);
    put(&unique_small_blocks, &bigger, 3, "run-3")
        .await
        .unwrap();
    assert_eq!(list(&azurite, "locked", "c/").len(), 3);
    assert_eq!(
        list_all(&azurite, "locked", "c/").len(),
        6,
        "a create-only SAS writes each sidecar manifest too"
    );

    // Create + write: overwrite works, in one piece and in blocks.
    let create_write = with_sas(&azurite, "locked", &azurite.sas("locked", "cw"));
    let overwrite = container(&create_write, "w", Rotation::Overwrite);
    put(&overwrite, &data, 1, "run-1").await.unwrap();
    put(&overwrite, &data, 2, "run-2").await.unwrap();
    put(
        &overwrite.clone().with_blocks(1 << 20, 1 << 20),
        &bigger,
        3,
        "run-3",
    )
    .await
    .unwrap();
    let out = dir.path().join("read-back");
    let props = get(&azurite, "locked", "w/breakglass-backup.xlsx", &out);
    assert_eq!(
        props["metadata"]["breakglass_sha256"],
        bigger.sha256.as_str()
    );
    assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 3 << 20]);

    // Prune without list/delete rights: the new copy is stored, the run is
    // told why nothing was pruned.
    let prune = container(&create_write, "p", Rotation::Prune);
    put(&prune, &data, 1, "run-1").await.unwrap();
    let receipt = put(&prune, &data, 2, "run-2").await.unwrap();
    assert!(receipt.pruned.is_empty());
    assert_eq!(receipt.warnings.len(), 1, "{:?}", receipt.warnings);
    assert!(
        receipt.warnings[0].contains("does not allow List Blobs"),
        "{:?}",
        receipt.warnings
    );
    assert!(
        receipt.warnings[0].contains("l (list)"),
        "{:?}",
        receipt.warnings
    );

    // Read and list only: writing is refused with the permission it needs.
    let read_only = with_sas(&azurite, "locked", &azurite.sas("locked", "rl"));
    let err = put(
        &container(&read_only, "w", Rotation::Overwrite),
        &data,
        4,
        "run-4",
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("does not allow Put Blob"), "{text}");
    assert!(text.contains("c and w"), "{text}");
    assert!(!err.is_transient());
    assert!(!text.contains("sig="), "{text}");
}

#[tokio::test]
async fn a_missing_container_a_wrong_key_and_a_dead_endpoint_are_named() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "present"]);
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"x");

    let missing = container(
        &with_key(&azurite, "no-such-container", Azurite::KEY),
        "",
        Rotation::Overwrite,
    );
    let err = put(&missing, &data, 1, "r").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("container no-such-container does not exist (ContainerNotFound)"),
        "{err}"
    );
    assert!(!err.is_transient());

    // A valid base64 key, but not the account's.
    let wrong_key = "Y2FuYXJ5LXdyb25nLWtleS1jYW5hcnktd3Jvbmcta2V5LWNhbmFyeQ==";
    let wrong = container(
        &with_key(&azurite, "present", wrong_key),
        "",
        Rotation::Overwrite,
    );
    let err = put(&wrong, &data, 1, "r").await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("AuthenticationFailed"), "{text}");
    assert!(text.contains("blob_account_key"), "{text}");
    assert!(!text.contains(wrong_key), "{text}");
    assert!(!text.contains("sig="), "{text}");
    assert!(!err.is_transient());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = with_key(&azurite, "present", Azurite::KEY);
    dead.endpoint = format!("http://127.0.0.1:{port}/{}", Azurite::ACCOUNT);
    let err = put(&container(&dead, "", Rotation::Overwrite), &data, 1, "r")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("connection refused to http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("sig="), "{text}");
    assert!(err.is_transient(), "a connection failure is worth retrying");
}

#[tokio::test]
async fn https_needs_the_ca_bundle_and_says_so() {
    let ca_files = TestCa::generate();
    let azurite = Azurite::start_tls(&ca_files);
    azurite.tool(&["create-container", "tls-backups"]);
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"over tls");
    let settings = with_key(&azurite, "tls-backups", Azurite::KEY);
    assert_eq!(settings.protocol, Protocol::Https);

    let trusted = AzureContainer::new(&settings, "", Rotation::Overwrite, ca(&azurite).as_ref());
    put(&trusted, &data, 1, "run-1").await.unwrap();
    let out = dir.path().join("read-back");
    get(&azurite, "tls-backups", "breakglass-backup.xlsx", &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"over tls");

    let untrusted = AzureContainer::new(&settings, "", Rotation::Overwrite, None);
    let err = put(&untrusted, &data, 2, "run-2")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(err.contains("set ca_bundle"), "{err}");
    assert!(!err.contains("sig="), "{err}");
}

/// Peak resident memory of this test process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_workbook_goes_up_in_blocks_with_bounded_memory() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "big"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.xlsx");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..200u32 {
            for (j, byte) in block.iter_mut().enumerate() {
                *byte = (i as usize * 31 + j * 7 + j / 251) as u8;
            }
            out.write_all(&block).unwrap();
        }
    }
    let (size, sha256) = breakglass_core::private_fs::hash_file(&path).unwrap();
    let big = File { path, size, sha256 };
    let before = peak_rss();
    let backups = container(
        &with_key(&azurite, "big", Azurite::KEY),
        "",
        Rotation::Overwrite,
    );
    put(&backups, &big, 1, "run-big").await.unwrap();
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 96 << 20,
        "uploading 200 MB grew the peak by {} MiB",
        grown >> 20
    );

    let out = dir.path().join("read-back");
    let props = get(&azurite, "big", "breakglass-backup.xlsx", &out);
    assert_eq!(props["length"], big.size);
    assert_eq!(props["metadata"]["breakglass_sha256"], big.sha256.as_str());
    assert_eq!(
        breakglass_core::private_fs::hash_file(&out).unwrap(),
        (big.size, big.sha256.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_mid_upload_leaves_the_previous_blob() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "flaky"]);
    let dir = tempfile::tempdir().unwrap();
    let port: u16 = azurite
        .endpoint
        .trim_end_matches(&format!("/{}", Azurite::ACCOUNT))
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = breakglass_e2e::cutting_proxy(([127, 0, 0, 1], port).into(), 30 << 20).await;
    let mut through_proxy = with_key(&azurite, "flaky", Azurite::KEY);
    through_proxy.endpoint = format!("http://127.0.0.1:{proxy}/{}", Azurite::ACCOUNT);
    let flaky = container(&through_proxy, "", Rotation::Overwrite);

    put(
        &flaky,
        &file(dir.path(), "good", b"the last good backup"),
        1,
        "run-good",
    )
    .await
    .unwrap();
    let big: Vec<u8> = (0..(60u32 << 20)).map(|i| (i % 251) as u8).collect();
    let err = put(&flaky, &file(dir.path(), "newer", &big), 2, "run-newer")
        .await
        .unwrap_err();
    assert!(
        err.is_transient(),
        "a vanished server is a transient failure: {err}"
    );

    let out = dir.path().join("read-back");
    get(&azurite, "flaky", "breakglass-backup.xlsx", &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"the last good backup");
    assert_eq!(list(&azurite, "flaky", ""), vec!["breakglass-backup.xlsx"]);
}

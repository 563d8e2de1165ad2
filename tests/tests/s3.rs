//! The S3 destination against a real S3-compatible server (moto), over HTTP
//! and HTTPS with a CA the test generates, read back with boto3. The cases
//! every backend shares (rotation, redelivery, older runs, prune, foreign
//! names) are in `storage_contract.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_config::{CaBundle, ChecksumMode, Protocol, Rotation, S3Settings};
use breakglass_core::Secret;
use breakglass_e2e::{Moto, TestCa};
use breakglass_storage::s3::S3Bucket;
use breakglass_storage::{Destination, Receipt, StorageError, Upload};
use chrono::TimeZone;
use std::io::Write;
use std::path::{Path, PathBuf};

fn settings(moto: &Moto, bucket: &str, key: &str, secret: &str) -> S3Settings {
    let protocol = if moto.endpoint.starts_with("https") {
        Protocol::Https
    } else {
        Protocol::Http
    };
    S3Settings {
        bucket: bucket.into(),
        endpoint: Some(moto.endpoint.clone()),
        protocol,
        region: "us-east-1".into(),
        region_configured: true,
        access_key_id: key.into(),
        secret_access_key: Secret::new(secret),
        checksum: ChecksumMode::WhenRequired,
    }
}

fn ca(moto: &Moto) -> Option<CaBundle> {
    moto.ca_pem
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
    bucket: &S3Bucket,
    file: &File,
    hour: u32,
    run: &str,
) -> Result<Receipt, StorageError> {
    bucket
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

fn get(moto: &Moto, bucket: &str, key: &str, out: &Path) -> serde_json::Value {
    serde_json::from_str(&moto.tool(&["get", bucket, key, out.to_str().unwrap()])).unwrap()
}

/// The backups under `prefix`, without their sidecar manifests.
fn list(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    list_all(moto, bucket, prefix)
        .into_iter()
        .filter(|key| !key.ends_with(".manifest.json"))
        .collect()
}

/// Every object under `prefix`.
fn list_all(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    serde_json::from_str(&moto.tool(&["list", bucket, prefix])).unwrap()
}

#[tokio::test]
async fn overwrite_replaces_one_object_and_boto3_reads_it_back() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let dir = tempfile::tempdir().unwrap();
    let bucket = S3Bucket::new(
        &settings(&moto, "backups", "any", "any-secret"),
        "mavis/prod",
        Rotation::Overwrite,
        None,
    );
    put(
        &bucket,
        &file(dir.path(), "a", b"first workbook"),
        1,
        "run-1",
    )
    .await
    .unwrap();
    let second = file(dir.path(), "b", b"second workbook, longer");
    let receipt = put(&bucket, &second, 2, "run-2").await.unwrap();
    assert_eq!(
        receipt.location,
        "s3://backups/mavis/prod/breakglass-backup.xlsx"
    );

    assert_eq!(
        list(&moto, "backups", ""),
        vec!["mavis/prod/breakglass-backup.xlsx"]
    );
    let out = dir.path().join("read-back");
    let head = get(&moto, "backups", "mavis/prod/breakglass-backup.xlsx", &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"second workbook, longer");
    assert_eq!(
        head["metadata"]["breakglass-sha256"],
        second.sha256.as_str()
    );
    assert_eq!(head["metadata"]["breakglass-run-id"], "run-2");
    assert_eq!(
        head["metadata"]["breakglass-size"],
        second.size.to_string().as_str()
    );
}

#[tokio::test]
async fn https_needs_the_ca_bundle_and_says_so() {
    let ca_files = TestCa::generate();
    let moto = Moto::start_tls(&ca_files);
    moto.tool(&["create-bucket", "tls-backups"]);
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"over tls");
    let s3 = settings(&moto, "tls-backups", "any", "any-secret");

    let trusted = S3Bucket::new(&s3, "", Rotation::Overwrite, ca(&moto).as_ref());
    put(&trusted, &data, 1, "run-1").await.unwrap();

    let untrusted = S3Bucket::new(&s3, "", Rotation::Overwrite, None);
    let err = put(&untrusted, &data, 2, "run-2")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(err.contains("set ca_bundle"), "{err}");
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
async fn a_200_mb_workbook_goes_up_in_parts_with_bounded_memory() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "big"]);
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
    let bucket = S3Bucket::new(
        &settings(&moto, "big", "k", "s"),
        "",
        Rotation::Overwrite,
        None,
    );
    put(&bucket, &big, 1, "run-big").await.unwrap();
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 96 << 20,
        "uploading 200 MB grew the peak by {} MiB",
        grown >> 20
    );

    let out = dir.path().join("read-back");
    let head = get(&moto, "big", "breakglass-backup.xlsx", &out);
    assert!(
        head["etag"].as_str().unwrap().ends_with("-25"),
        "25 parts of 8 MiB: {head}"
    );
    assert_eq!(
        breakglass_core::private_fs::hash_file(&out).unwrap(),
        (big.size, big.sha256.clone())
    );
}

#[tokio::test]
async fn a_missing_bucket_and_a_dead_endpoint_are_named() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"x");
    let missing = S3Bucket::new(
        &settings(&moto, "no-such-bucket", "k", "s"),
        "",
        Rotation::Overwrite,
        None,
    );
    let err = put(&missing, &data, 1, "r").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("bucket no-such-bucket does not exist (NoSuchBucket)"),
        "{err}"
    );
    assert!(!err.is_transient());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = settings(&moto, "b", "k", "s");
    dead.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let bucket = S3Bucket::new(&dead, "", Rotation::Overwrite, None);
    let err = put(&bucket, &data, 1, "r").await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("connection refused to http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.to_string().contains("DispatchFailure("), "{err}");
    assert!(err.is_transient(), "a connection failure is worth retrying");
}

#[tokio::test]
async fn least_privilege_credentials_work_and_bad_ones_are_explained() {
    let mut moto = Moto::start();
    moto.tool(&["create-bucket", "locked"]);
    let writer = moto.iam_user(
        "writer",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject","s3:AbortMultipartUpload"],"Resource":"arn:aws:s3:::locked/*"}]}"#,
    );
    let reader = moto.iam_user(
        "reader",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::locked","arn:aws:s3:::locked/*"]}]}"#,
    );
    moto.enforce_iam();
    let dir = tempfile::tempdir().unwrap();
    let data = file(dir.path(), "a", b"least privilege");

    // PutObject alone is enough for overwrite and for unique.
    let overwrite = S3Bucket::new(
        &settings(&moto, "locked", &writer.0, &writer.1),
        "w",
        Rotation::Overwrite,
        None,
    );
    put(&overwrite, &data, 1, "run-1").await.unwrap();
    put(&overwrite, &data, 2, "run-2").await.unwrap();
    let unique = S3Bucket::new(
        &settings(&moto, "locked", &writer.0, &writer.1),
        "w",
        Rotation::Unique,
        None,
    );
    put(&unique, &data, 3, "run-3").await.unwrap();
    assert_eq!(list(&moto, "locked", "w/").len(), 2);

    let read_only = S3Bucket::new(
        &settings(&moto, "locked", &reader.0, &reader.1),
        "w",
        Rotation::Overwrite,
        None,
    );
    let err = put(&read_only, &data, 4, "run-4")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("access denied for PutObject"), "{err}");

    let wrong_secret = S3Bucket::new(
        &settings(&moto, "locked", &writer.0, "canary-wrong-secret"),
        "w",
        Rotation::Overwrite,
        None,
    );
    let err = put(&wrong_secret, &data, 5, "run-5")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    assert!(!err.contains("canary-wrong-secret"), "{err}");

    let unknown = S3Bucket::new(
        &settings(&moto, "locked", "AKIAUNKNOWNKEY000000", "s"),
        "w",
        Rotation::Overwrite,
        None,
    );
    let err = put(&unknown, &data, 6, "run-6")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_mid_upload_leaves_the_previous_copy() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "flaky"]);
    let dir = tempfile::tempdir().unwrap();
    let moto_port: u16 = moto.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = breakglass_e2e::cutting_proxy(([127, 0, 0, 1], moto_port).into(), 30 << 20).await;
    let mut through_proxy = settings(&moto, "flaky", "k", "secret-key-value");
    through_proxy.endpoint = Some(format!("http://127.0.0.1:{proxy}"));
    let bucket = S3Bucket::new(&through_proxy, "", Rotation::Overwrite, None);

    let good = file(dir.path(), "good", b"the last good backup");
    put(&bucket, &good, 1, "run-good").await.unwrap();

    let big: Vec<u8> = (0..(60u32 << 20)).map(|i| (i % 251) as u8).collect();
    let newer = file(dir.path(), "newer", &big);
    let err = put(&bucket, &newer, 2, "run-newer").await.unwrap_err();
    assert!(
        err.is_transient(),
        "a vanished server is a transient failure: {err}"
    );
    let text = err.to_string();
    assert!(text.contains("failed"), "{text}");

    // Straight to moto: the previous object is intact and alone.
    let out = dir.path().join("read-back");
    get(&moto, "flaky", "breakglass-backup.xlsx", &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"the last good backup");
    assert_eq!(list(&moto, "flaky", ""), vec!["breakglass-backup.xlsx"]);
}

#[tokio::test]
async fn the_bucket_tells_its_region() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "in-ireland", "", "eu-west-1"]);
    let bucket = S3Bucket::new(
        &settings(&moto, "in-ireland", "k", "secret-value-1"),
        "",
        Rotation::Overwrite,
        None,
    );
    assert_eq!(
        breakglass_storage::s3::discover_region(bucket.client(), "in-ireland")
            .await
            .as_deref(),
        Some("eu-west-1")
    );
}

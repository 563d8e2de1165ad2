//! A renderer killed mid-render leaves no plaintext on disk (issue #16,
//! item 1): the plain workbook never exists as a named file, and a
//! restarted renderer sweeps its dead predecessor's working folder whatever
//! its age.
//!
//! The renderer runs with `TMPDIR` set to a folder this test owns, renders
//! a large inventory whose every password is a canary, and is SIGKILLed
//! while the workbook is being written. Right after the kill its working
//! folder holds no named file at all (the snapshot and the stored payload
//! stream through memory; the workbooks are unnamed files), and every file
//! under the folder is searched, then and after a restarted renderer
//! finished the run: none may hold a canary or be a (partial) plain zip.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Isolation, ServiceProcess, nats_url, write_config};
use breakglass_proto::v1;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CANARY: &[u8] = b"CANARY-";
const PASSPHRASE: &str = "renderer crash test passphrase 2026";

/// A CSV inventory of `rows` rows over 40 projects; every password and
/// extra credential is a canary.
fn write_inventory(path: &Path, rows: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        out,
        "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential"
    )
    .unwrap();
    for i in 0..rows {
        writeln!(
            out,
            "project-{:02},AWS,host-{i:07},SSH,203.0.113.{},10.0.{}.{},,22,password,root,CANARY-pw-{i:07}-x,,CANARY-extra-{i:07}",
            i % 40,
            i % 250,
            (i / 250) % 250,
            i % 250
        )
        .unwrap();
    }
    out.flush().unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Fails if any file under `root` holds a canary or is a plain zip (an
/// `.xlsx` is a zip; a partial one still starts with a local header).
fn assert_no_plaintext(root: &Path, when: &str) {
    for file in walk(root) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY),
            "{when}: {} holds a canary password",
            file.display()
        );
        assert!(
            !bytes.starts_with(b"PK\x03\x04"),
            "{when}: {} is a plain (partial) xlsx, readable by anyone who opens it",
            file.display()
        );
    }
}

/// Files under `root` that some process holds open, named or not (an
/// unnamed temp file shows as `<folder>/#N (deleted)`), with their sizes.
fn open_files_under(root: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.starts_with(root) {
                let size = std::fs::metadata(fd.path()).map(|m| m.len()).unwrap_or(0);
                found.push((target.display().to_string(), size));
            }
        }
    }
    found
}

/// Waits until the renderer holds open a growing file in its working
/// folder: the workbook is being rendered. (The snapshot is not on disk: it
/// is rendered as it arrives; an older renderer fetched it into the folder
/// as `snapshot.age` first, which is not the workbook.)
async fn wait_until_rendering(root: &Path, renderer: &ServiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let writing = open_files_under(root)
            .iter()
            .any(|(name, size)| !name.contains("snapshot.age") && *size > 64 * 1024);
        if writing {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the renderer never started writing the workbook:\n{}",
            renderer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn crash_mid_render_leaves_no_plaintext(encryption: &str) {
    let iso = Isolation::new("crash");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.csv");
    write_inventory(&inventory, 200_000);
    let renderer_tmp = dir.path().join("renderer-tmp");
    std::fs::create_dir_all(&renderer_tmp).unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let out = dir.path().join("out").display().to_string();
    let nats = nats_url();
    let inventory_url = inventory.display().to_string();
    let mut entries = vec![
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", key.expose()),
        ("local_dir", out.as_str()),
        ("ack_wait_seconds", "3"),
        ("max_deliver", "3"),
        ("inventory_url", inventory_url.as_str()),
        ("encryption", encryption),
    ];
    if encryption == "password" {
        entries.push(("encryption_passphrase", PASSPHRASE));
    }
    let config = write_config(dir.path(), &entries);
    let env = [("TMPDIR", renderer_tmp.as_path())];
    let bus = iso.connect_bus().await;
    let _collector = ServiceProcess::start("collector", &config, dir.path()).unwrap();
    let _uploader = ServiceProcess::start("uploader", &config, dir.path()).unwrap();
    let mut renderer =
        ServiceProcess::start_with_env("renderer", &config, dir.path(), &env).unwrap();

    let run_id = format!("crash-{}", iso.prefix);
    bus.trigger(&v1::TriggerRequested {
        run_id: run_id.clone(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "e2e".into(),
        requested_at_unix_ms: 0,
        note: "renderer crash".into(),
    })
    .await
    .unwrap();
    renderer
        .wait_for_log("rendering started", Duration::from_secs(120))
        .await
        .unwrap();
    wait_until_rendering(&renderer_tmp, &renderer).await;
    renderer.kill();
    assert!(
        !renderer.log_text().contains("workbook stored"),
        "the kill came too late to be mid-render"
    );
    let folders = std::fs::read_dir(&renderer_tmp).unwrap().count();
    assert!(
        folders > 0,
        "the killed renderer left its working folder (what the restarted one must sweep)"
    );
    // The snapshot and the stored payload stream through memory, and both
    // workbooks (plain and sealed) are unnamed: a killed renderer leaves no
    // file anyone could open, let alone one holding plaintext.
    let named = walk(&renderer_tmp);
    assert!(
        named.is_empty(),
        "the killed renderer left named files: {named:?}"
    );
    assert_no_plaintext(&renderer_tmp, "right after the kill");

    let mut restarted =
        ServiceProcess::start_with_env("renderer", &config, dir.path(), &env).unwrap();
    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(240))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("run did not finish:\n{}", restarted.log_text()));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    assert_eq!(finished.rows, 200_000);
    restarted
        .wait_for_log("\"delivery\":2", Duration::from_secs(5))
        .await
        .expect("the restarted renderer rendered the redelivered run");
    assert_no_plaintext(&renderer_tmp, "after the restarted renderer finished");
    let left = walk(&renderer_tmp);
    assert!(
        left.is_empty(),
        "the dead renderer's working folder was not swept: {left:?}"
    );
    let folders: Vec<_> = std::fs::read_dir(&renderer_tmp)
        .unwrap()
        .flatten()
        .collect();
    assert!(folders.is_empty(), "folders left: {folders:?}");
    drop(restarted);
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renderer_killed_mid_render_leaves_no_plaintext_with_a_password() {
    crash_mid_render_leaves_no_plaintext("password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renderer_killed_mid_render_leaves_no_plaintext_unencrypted_mode() {
    // `encryption: none` stores a plain workbook on purpose, but the
    // renderer's own disk must still never hold one: the payload it hands
    // on is age-encrypted.
    crash_mid_render_leaves_no_plaintext("none").await;
}

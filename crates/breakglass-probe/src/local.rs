//! The stages for a local folder: no network and no credential, so only
//! the folder and the test file are checked.

use crate::{Notes, Recorder, Stage, encryption_warning};
use breakglass_config::Settings;
use breakglass_storage::probe_support::{TEST_OBJECT_BODY, TEST_OBJECT_NAME};
use std::time::Instant;

pub(crate) async fn run(settings: &Settings, rec: &mut Recorder<'_>) {
    let dir = if settings.path_prefix.is_empty() {
        settings.local_dir.clone()
    } else {
        settings.local_dir.join(&settings.path_prefix)
    };
    rec.not_applicable(Stage::Connection, "a local folder: no network to check");
    rec.not_applicable(
        Stage::Authentication,
        "a local folder: no credential to check",
    );
    let started = Instant::now();
    let message = if dir.is_dir() {
        format!("folder {} exists", dir.display())
    } else {
        match breakglass_core::private_fs::create_dir_all(&dir) {
            Ok(()) => format!("folder {} did not exist and was created", dir.display()),
            Err(err) => {
                return rec.fail(
                    Stage::ContainerExists,
                    started,
                    format!(
                        "folder {} cannot be created ({err}): check local_dir and the service's file permissions",
                        dir.display()
                    ),
                );
            }
        }
    };
    rec.ok(Stage::ContainerExists, started, message);
    let started = Instant::now();
    let path = dir.join(TEST_OBJECT_NAME);
    let mut notes = Notes::default();
    match std::fs::write(&path, TEST_OBJECT_BODY) {
        Ok(()) => notes.note(format!(
            "wrote {} ({} bytes)",
            path.display(),
            TEST_OBJECT_BODY.len()
        )),
        Err(err) => {
            return rec.fail(
                Stage::Upload,
                started,
                format!(
                    "cannot write {} ({err}): check local_dir and the service's file permissions",
                    path.display()
                ),
            );
        }
    }
    if let Some(warning) = encryption_warning(settings) {
        notes.warn(warning);
    }
    rec.finish(Stage::Upload, started, notes);
    rec.not_applicable(
        Stage::LeastPrivilege,
        "a local folder: access is the service account's file permissions",
    );
    rec.ok(
        Stage::Retention,
        Instant::now(),
        "every rotation mode works in a local folder".into(),
    );
}

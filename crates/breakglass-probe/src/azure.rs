//! The stages for an Azure Blob container.

use crate::s3::rotation_name;
use crate::{Notes, Recorder, Stage, encryption_warning};
use breakglass_config::{BlobSettings, Protocol, Rotation, Settings};
use breakglass_storage::azure::AzureContainer;
use breakglass_storage::probe_support::{
    ABSENT_OBJECT_NAME, Failure, FailureKind, TEST_OBJECT_BODY, TEST_OBJECT_NAME, check_connection,
};
use std::time::{Duration, Instant};

pub(crate) async fn run(settings: &Settings, blob: &BlobSettings, rec: &mut Recorder<'_>) {
    let container = AzureContainer::new(
        blob,
        &settings.path_prefix,
        settings.rotation,
        settings.ca_bundle.as_ref(),
    );
    let name = blob.container.clone();

    // 1. Connection.
    let started = Instant::now();
    let check = check_connection(container.endpoint_url(), settings.ca_bundle.as_ref()).await;
    if let Some(failure) = check.failure {
        return rec.fail(
            Stage::Connection,
            started,
            format!(
                "{failure} (setting: blob_endpoint, or blob_account_name / blob_endpoint_suffix / blob_protocol)"
            ),
        );
    }
    let mut notes = Notes::default();
    if blob.protocol == Protocol::Http {
        notes.warn("plain HTTP: the SAS and the workbook travel in clear; use HTTPS (blob_protocol: https)");
    }
    notes.note(check.summary);
    rec.finish(Stage::Connection, started, notes);

    // 2. Authentication: List Blobs, whose answer also tells the list right.
    let started = Instant::now();
    let who = if container.uses_account_key() {
        "the account key"
    } else {
        "the SAS token"
    };
    let list = container.probe_list().await;
    match &list {
        Err(f)
            if matches!(
                f.kind,
                FailureKind::Authentication
                    | FailureKind::ClockSkew
                    | FailureKind::Connection
                    | FailureKind::Other
            ) =>
        {
            return rec.fail(Stage::Authentication, started, f.message.clone());
        }
        answer => rec.ok(
            Stage::Authentication,
            started,
            format!(
                "{who} is accepted (the signature is valid: List Blobs answered {}, not an authentication error)",
                match answer {
                    Ok(()) => "200".to_owned(),
                    Err(f) => f.code.clone(),
                }
            ),
        ),
    }

    // 3. Container exists.
    let started = Instant::now();
    let conditional = settings.rotation != Rotation::Overwrite;
    let mut upload: Option<(Result<String, Failure>, Duration)> = None;
    match container.probe_container().await {
        Ok(()) => rec.ok(
            Stage::ContainerExists,
            started,
            format!("container {name} exists (asked directly with Get Container Properties)"),
        ),
        Err(f) if f.kind == FailureKind::NoSuchContainer => {
            return rec.fail(
                Stage::ContainerExists,
                started,
                format!(
                    "container {name} does not exist (Get Container Properties answered {}): check blob_container and the account or endpoint",
                    f.code
                ),
            );
        }
        Err(asked) => {
            let put_started = Instant::now();
            let put = container.probe_put(conditional).await;
            let took = put_started.elapsed();
            let why = format!(
                "Get Container Properties is denied to this credential ({}), as it should be for a least-privileged writer",
                asked.code
            );
            let decided = match &put {
                Err(f) if f.kind == FailureKind::NoSuchContainer => Err(format!(
                    "container {name} does not exist: the probe upload answered {} (decided from the upload, because {why}); check blob_container and the account or endpoint",
                    f.code
                )),
                Err(f) if f.kind == FailureKind::Connection => Err(f.message.clone()),
                answer => Ok(format!(
                    "container {name} exists: decided from the probe upload, because {why}; Put Blob answered {}, not ContainerNotFound",
                    match answer {
                        Ok(_) => "201".to_owned(),
                        Err(f) => f.code.clone(),
                    }
                )),
            };
            upload = Some((put, took));
            match decided {
                Ok(message) => rec.ok(Stage::ContainerExists, started, message),
                Err(message) => return rec.fail(Stage::ContainerExists, started, message),
            }
        }
    }

    // 4. Upload. Overwrite writes twice: the second Put Blob replaces the
    // first, which is what every later overwrite run needs (`w`).
    let started = Instant::now();
    let (first, took) = match upload {
        Some(done) => done,
        None => {
            let result = container.probe_put(conditional).await;
            (result, started.elapsed())
        }
    };
    let begun = Instant::now() - took;
    let mut notes = Notes::default();
    let mut can_replace = None;
    match first {
        Ok(key) if !conditional => match container.probe_put(false).await {
            Ok(_) => {
                can_replace = Some(true);
                notes.note(format!(
                    "wrote {name}/{key} ({} bytes) and replaced it, like overwrite uploads; the service checked Content-MD5",
                    TEST_OBJECT_BODY.len()
                ));
            }
            Err(f) if f.kind == FailureKind::AccessDenied => {
                return rec.fail(
                    Stage::Upload,
                    begun,
                    format!(
                        "{who} may create {name}/{key} but not replace it ({}): overwrite rotation replaces the file every run and needs permission c and w (sp=cw); with a create-only SAS choose rotation: unique",
                        f.code
                    ),
                );
            }
            Err(f) => return rec.fail(Stage::Upload, begun, f.message),
        },
        Ok(key) => notes.note(format!(
            "wrote {name}/{key} ({} bytes) as a conditional create (If-None-Match: *), like {} uploads; the service checked Content-MD5",
            TEST_OBJECT_BODY.len(),
            rotation_name(settings.rotation)
        )),
        Err(f) if f.kind == FailureKind::Exists => notes.note(format!(
            "{name}/{} is already there from an earlier Test: the create was allowed and refused to replace it, as {} rotation needs",
            container.key(TEST_OBJECT_NAME),
            rotation_name(settings.rotation)
        )),
        Err(f) if f.kind == FailureKind::AccessDenied && !conditional => {
            return rec.fail(
                Stage::Upload,
                begun,
                format!(
                    "{}; overwrite rotation needs permission c and w (sp=cw); a create-only SAS (sp=c) works with rotation: unique",
                    f.message
                ),
            );
        }
        Err(f) => return rec.fail(Stage::Upload, begun, f.message),
    }
    if let Some(warning) = encryption_warning(settings) {
        notes.warn(warning);
    }
    rec.finish(Stage::Upload, begun, notes);

    // 5. Least privilege audit.
    let started = Instant::now();
    let mut notes = Notes::default();
    let letters = container.sas_permission_letters().unwrap_or_default();
    let (delete, list_right) = if container.uses_account_key() {
        notes.warn("the account key grants every right on the whole storage account (read, delete, list, all containers): the writer should only create; give breakglass a SAS token with sp=cw (sp=c for unique rotation) instead");
        (Some(true), Some(true))
    } else {
        let read = allowed(&container.probe_read(TEST_OBJECT_NAME).await);
        let delete = allowed(&container.probe_delete(ABSENT_OBJECT_NAME).await);
        let list_right = allowed(&list);
        let prune = settings.rotation == Rotation::Prune;
        let mut extra = Vec::new();
        if read == Some(true) {
            extra.push("read (r)");
        }
        if delete == Some(true) && !prune {
            extra.push("delete (d)");
        }
        if list_right == Some(true) && !prune {
            extra.push("list (l)");
        }
        if extra.is_empty() {
            notes.note(format!(
                "the SAS token cannot read{}: it can only write, as a backup writer should",
                if prune {
                    " (list and delete are allowed: prune rotation needs them)"
                } else {
                    ", delete or list"
                }
            ));
        } else {
            notes.warn(format!(
                "the SAS token can also {}: the writer should only create; make a SAS with only the rights the rotation needs (sp=cw for overwrite, c for unique, cwdl for prune)",
                extra.join(", ")
            ));
        }
        (delete, list_right)
    };
    rec.finish(Stage::LeastPrivilege, started, notes);

    // 6. Retention and rotation fit.
    let started = Instant::now();
    let mut notes = Notes::default();
    let has = |letter: char| container.uses_account_key() || letters.contains(letter);
    let create = has('c') || has('w');
    let replace = can_replace.unwrap_or_else(|| has('w'));
    let mut modes = Vec::new();
    if create && replace {
        modes.push("overwrite");
    }
    if create {
        modes.push("unique");
    }
    if create && replace && delete == Some(true) && list_right == Some(true) {
        modes.push("prune");
    }
    let configured = rotation_name(settings.rotation);
    if modes.contains(&configured) {
        notes.note(format!(
            "this credential allows rotation {}; the configured {configured} is among them",
            modes.join(", ")
        ));
    } else {
        notes.warn(format!(
            "this credential allows rotation {} but not the configured {configured}: overwrite needs sp=cw, unique c, prune cwdl",
            if modes.is_empty() {
                "none".to_owned()
            } else {
                modes.join(", ")
            }
        ));
    }
    notes.note("blob versioning and lifecycle management are account settings the Blob API does not show to a container credential: check them in the portal (az storage account blob-service-properties show, az storage account management-policy show); with versioning on, overwrite keeps every old copy");
    if settings.rotation == Rotation::Unique {
        notes.warn("unique rotation keeps every copy and deletes none: no lifecycle rule could be confirmed through the Blob API; add a management policy expiring breakglass-backup-* under the prefix (see docs/DESTINATIONS.md, Azure Blob destination)");
    }
    rec.finish(Stage::Retention, started, notes);
}

/// Allowed (`Some(true)`), refused (`Some(false)`) or unknown.
fn allowed<T>(answer: &Result<T, Failure>) -> Option<bool> {
    match answer {
        Ok(_) => Some(true),
        Err(f) if f.kind == FailureKind::NotFound => Some(true),
        Err(f) if f.kind == FailureKind::AccessDenied => Some(false),
        Err(_) => None,
    }
}

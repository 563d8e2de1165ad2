//! The stages for an Azure Blob container.

use crate::s3::rotation_name;
use crate::{Notes, Recorder, Stage, allowed, encryption_warning};
use breakglass_config::{BlobSettings, Protocol, Rotation, Settings};
use breakglass_storage::azure::AzureContainer;
use breakglass_storage::probe_support::{
    ABSENT_OBJECT_NAME, Failure, FailureKind, TEST_OBJECT_BODY, TEST_OBJECT_NAME, check_connection,
};
use std::time::{Duration, Instant};

/// What the stages after the first learn about the container.
struct Target<'a> {
    settings: &'a Settings,
    container: AzureContainer,
    /// `unique`/`prune` create conditionally (`If-None-Match: *`).
    conditional: bool,
    /// "the account key" or "the SAS token", for messages.
    who: &'static str,
}

/// The six stages in order; a failed stage ends the run (the recorder
/// marks the later ones as not run).
pub(crate) async fn run(settings: &Settings, blob: &BlobSettings, rec: &mut Recorder<'_>) {
    let container = AzureContainer::new(
        blob,
        &settings.path_prefix,
        settings.rotation,
        settings.ca_bundle.as_ref(),
    );
    let who = if container.uses_account_key() {
        "the account key"
    } else {
        "the SAS token"
    };
    let target = Target {
        settings,
        container,
        conditional: settings.rotation != Rotation::Overwrite,
        who,
    };
    if !connection(&target, blob, rec).await {
        return;
    }
    let Some(list) = authentication(&target, rec).await else {
        return;
    };
    let Some(early) = container_exists(&target, rec).await else {
        return;
    };
    let Some(can_replace) = upload_stage(&target, early, rec).await else {
        return;
    };
    let rights = least_privilege(&target, &list, rec).await;
    retention(&target, can_replace, &rights, rec);
}

/// Stage 1: the endpoint answers (TCP, TLS with the configured trust).
async fn connection(target: &Target<'_>, blob: &BlobSettings, rec: &mut Recorder<'_>) -> bool {
    let started = Instant::now();
    let check = check_connection(
        target.container.endpoint_url(),
        target.settings.ca_bundle.as_ref(),
    )
    .await;
    if let Some(failure) = check.failure {
        rec.fail(
            Stage::Connection,
            started,
            format!(
                "{failure} (setting: blob_endpoint, or blob_account_name / blob_endpoint_suffix / blob_protocol)"
            ),
        );
        return false;
    }
    let mut notes = Notes::default();
    if blob.protocol == Protocol::Http {
        notes.warn("plain HTTP: the SAS and the workbook travel in clear; use HTTPS (blob_protocol: https)");
    }
    notes.note(check.summary);
    rec.finish(Stage::Connection, started, notes);
    true
}

/// Stage 2: List Blobs, whose answer proves the signature and also tells
/// the list right (kept for stage 5).
async fn authentication(
    target: &Target<'_>,
    rec: &mut Recorder<'_>,
) -> Option<Result<(), Failure>> {
    let started = Instant::now();
    let list = target.container.probe_list().await;
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
            rec.fail(Stage::Authentication, started, f.message.clone());
            return None;
        }
        answer => rec.ok(
            Stage::Authentication,
            started,
            format!(
                "{} is accepted (the signature is valid: List Blobs answered {}, not an authentication error)",
                target.who,
                match answer {
                    Ok(()) => "200".to_owned(),
                    Err(f) => f.code.clone(),
                }
            ),
        ),
    }
    Some(list)
}

/// The probe upload, when stage 3 already made it (to decide whether the
/// container exists), with how long it took.
type EarlyUpload = Option<(Result<String, Failure>, Duration)>;

/// Stage 3: the container exists. Asked with Get Container Properties; a
/// least-privileged SAS may not, and then the probe upload decides (and is
/// not made twice).
async fn container_exists(target: &Target<'_>, rec: &mut Recorder<'_>) -> Option<EarlyUpload> {
    let started = Instant::now();
    let container = &target.container;
    let name = container.container_name();
    let asked = match container.probe_container().await {
        Ok(()) => {
            rec.ok(
                Stage::ContainerExists,
                started,
                format!("container {name} exists (asked directly with Get Container Properties)"),
            );
            return Some(None);
        }
        Err(f) if f.kind == FailureKind::NoSuchContainer => {
            rec.fail(
                Stage::ContainerExists,
                started,
                format!(
                    "container {name} does not exist (Get Container Properties answered {}): check blob_container and the account or endpoint",
                    f.code
                ),
            );
            return None;
        }
        Err(asked) => asked,
    };
    let put_started = Instant::now();
    let put = container.probe_put(target.conditional).await;
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
    match decided {
        Ok(message) => {
            rec.ok(Stage::ContainerExists, started, message);
            Some(Some((put, took)))
        }
        Err(message) => {
            rec.fail(Stage::ContainerExists, started, message);
            None
        }
    }
}

/// Stage 4: a small blob goes through, the way the rotation writes.
/// Overwrite writes twice: the second Put Blob replaces the first, which is
/// what every later overwrite run needs (`w`). Returns whether replacing
/// was seen to work (`None`: not tried).
async fn upload_stage(
    target: &Target<'_>,
    early: EarlyUpload,
    rec: &mut Recorder<'_>,
) -> Option<Option<bool>> {
    let started = Instant::now();
    let container = &target.container;
    let (name, who, conditional) = (container.container_name(), target.who, target.conditional);
    let rotation = rotation_name(target.settings.rotation);
    let (first, took) = match early {
        Some(done) => done,
        None => {
            let result = container.probe_put(conditional).await;
            (result, started.elapsed())
        }
    };
    let begun = Instant::now() - took;
    let mut notes = Notes::default();
    let mut can_replace = None;
    let failed = match first {
        Ok(key) if !conditional => match container.probe_put(false).await {
            Ok(_) => {
                can_replace = Some(true);
                notes.note(format!(
                    "wrote {name}/{key} ({} bytes) and replaced it, like overwrite uploads; the service checked Content-MD5",
                    TEST_OBJECT_BODY.len()
                ));
                None
            }
            Err(f) if f.kind == FailureKind::AccessDenied => Some(format!(
                "{who} may create {name}/{key} but not replace it ({}): overwrite rotation replaces the file every run and needs permission c and w (sp=cw); with a create-only SAS choose rotation: unique",
                f.code
            )),
            Err(f) => Some(f.message),
        },
        Ok(key) => {
            notes.note(format!(
                "wrote {name}/{key} ({} bytes) as a conditional create (If-None-Match: *), like {rotation} uploads; the service checked Content-MD5",
                TEST_OBJECT_BODY.len(),
            ));
            None
        }
        Err(f) if f.kind == FailureKind::Exists => {
            notes.note(format!(
                "{name}/{} is already there from an earlier Test: the create was allowed and refused to replace it, as {rotation} rotation needs",
                container.key(TEST_OBJECT_NAME),
            ));
            None
        }
        Err(f) if f.kind == FailureKind::AccessDenied && !conditional => Some(format!(
            "{}; overwrite rotation needs permission c and w (sp=cw); a create-only SAS (sp=c) works with rotation: unique",
            f.message
        )),
        Err(f) => Some(f.message),
    };
    if let Some(message) = failed {
        rec.fail(Stage::Upload, begun, message);
        return None;
    }
    if let Some(warning) = encryption_warning(target.settings) {
        notes.warn(warning);
    }
    rec.finish(Stage::Upload, begun, notes);
    Some(can_replace)
}

/// What stage 5 found the credential may do.
struct Rights {
    delete: Option<bool>,
    list: Option<bool>,
}

/// Stage 5: what else the writer may do. An account key may do everything;
/// a SAS should only create, except that prune needs list and delete.
async fn least_privilege(
    target: &Target<'_>,
    list: &Result<(), Failure>,
    rec: &mut Recorder<'_>,
) -> Rights {
    let started = Instant::now();
    let container = &target.container;
    let mut notes = Notes::default();
    let rights = if container.uses_account_key() {
        notes.warn("the account key grants every right on the whole storage account (read, delete, list, all containers): the writer should only create; give breakglass a SAS token with sp=cw (sp=c for unique rotation) instead");
        Rights {
            delete: Some(true),
            list: Some(true),
        }
    } else {
        let read = allowed(&container.probe_read(TEST_OBJECT_NAME).await);
        let delete = allowed(&container.probe_delete(ABSENT_OBJECT_NAME).await);
        let list_right = allowed(list);
        let prune = target.settings.rotation == Rotation::Prune;
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
        Rights {
            delete,
            list: list_right,
        }
    };
    rec.finish(Stage::LeastPrivilege, started, notes);
    rights
}

/// Stage 6: the rotation fits the credential's rights; versioning and
/// lifecycle rules are account settings the Blob API does not show.
fn retention(
    target: &Target<'_>,
    can_replace: Option<bool>,
    rights: &Rights,
    rec: &mut Recorder<'_>,
) {
    let started = Instant::now();
    let container = &target.container;
    let rotation = target.settings.rotation;
    let mut notes = Notes::default();
    let letters = container.sas_permission_letters().unwrap_or_default();
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
    if create && replace && rights.delete == Some(true) && rights.list == Some(true) {
        modes.push("prune");
    }
    let configured = rotation_name(rotation);
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
    if rotation == Rotation::Unique {
        notes.warn("unique rotation keeps every copy and deletes none: no lifecycle rule could be confirmed through the Blob API; add a management policy expiring breakglass-backup-* under the prefix (see docs/DESTINATIONS.md, Azure Blob destination)");
    }
    rec.finish(Stage::Retention, started, notes);
}

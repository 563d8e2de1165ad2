//! The stages for an S3 bucket.

use crate::{Notes, Recorder, Stage, allowed, encryption_warning, key_hint};
use breakglass_config::{Protocol, Rotation, S3Settings, Settings};
use breakglass_storage::probe_support::{
    ABSENT_OBJECT_NAME, Failure, FailureKind, TEST_OBJECT_BODY, TEST_OBJECT_NAME, check_connection,
};
use breakglass_storage::s3::S3Bucket;
use breakglass_storage::s3::probe::{BucketAnswer, LifecycleRule};
use std::time::{Duration, Instant};

/// What the stages after the first learn about the bucket.
struct Target<'a> {
    settings: &'a Settings,
    s3: &'a S3Settings,
    /// `unique`/`prune` create conditionally (`If-None-Match: *`).
    conditional: bool,
    /// "the access key id AKIA…" for messages.
    who: String,
}

/// The six stages in order; a failed stage ends the run (the recorder
/// marks the later ones as not run).
pub(crate) async fn run(settings: &Settings, s3: &S3Settings, rec: &mut Recorder<'_>) {
    let base = S3Bucket::new(
        s3,
        &settings.path_prefix,
        settings.rotation,
        settings.ca_bundle.as_ref(),
    );
    let target = Target {
        settings,
        s3,
        conditional: settings.rotation != Rotation::Overwrite,
        who: format!("the access key id {}", key_hint(&s3.access_key_id)),
    };
    if !connection(&target, &base, rec).await {
        return;
    }
    let Some(bucket) = authentication(&target, &base, rec).await else {
        return;
    };
    let Some(upload) = bucket_exists(&target, &bucket, rec).await else {
        return;
    };
    if !upload_stage(&target, &bucket, upload, rec).await {
        return;
    }
    let rights = least_privilege(&target, &bucket, rec).await;
    retention(&target, &bucket, &rights, rec).await;
}

/// Stage 1: the endpoint answers (TCP, TLS with the configured trust).
async fn connection(target: &Target<'_>, base: &S3Bucket, rec: &mut Recorder<'_>) -> bool {
    let started = Instant::now();
    let check = check_connection(base.endpoint_url(), target.settings.ca_bundle.as_ref()).await;
    if let Some(failure) = check.failure {
        rec.fail(
            Stage::Connection,
            started,
            format!("{failure} (setting: s3_url / s3_protocol)"),
        );
        return false;
    }
    let mut notes = Notes::default();
    if target.s3.protocol == Protocol::Http {
        notes.warn(
            "plain HTTP: the credential's signed requests and the workbook travel in clear; use HTTPS (s3_protocol: https)",
        );
    }
    notes.note(check.summary);
    rec.finish(Stage::Connection, started, notes);
    true
}

/// Stage 2: the signature is accepted (a read of an absent key answers
/// anything but a credential error). Returns the bucket with a client for
/// its own region when none was configured.
async fn authentication(
    target: &Target<'_>,
    base: &S3Bucket,
    rec: &mut Recorder<'_>,
) -> Option<S3Bucket> {
    let started = Instant::now();
    let mut notes = Notes::default();
    let bucket = if base.discovers_region() {
        match base.bucket_region().await {
            Some(region) => {
                notes.note(format!(
                    "no s3_region set: using the bucket's own region {region}"
                ));
                base.for_probe(Some(&region))
            }
            None => base.for_probe(None),
        }
    } else {
        base.for_probe(None)
    };
    match bucket.probe_get(ABSENT_OBJECT_NAME).await {
        Err(f)
            if matches!(
                f.kind,
                FailureKind::Authentication
                    | FailureKind::ClockSkew
                    | FailureKind::Connection
                    | FailureKind::Other
            ) =>
        {
            rec.fail(Stage::Authentication, started, f.message);
            return None;
        }
        answer => {
            let said = match &answer {
                Ok(()) => "200".to_owned(),
                Err(f) => f.code.clone(),
            };
            notes.note(format!(
                "{} and its secret are accepted (the signature is valid: a read of a key that does not exist answered {said}, not a credential error)",
                target.who
            ));
        }
    }
    rec.finish(Stage::Authentication, started, notes);
    Some(bucket)
}

/// The probe upload, when stage 3 already made it (to decide whether the
/// bucket exists), with how long it took.
type EarlyUpload = Option<(Result<String, Failure>, Duration)>;

/// Stage 3: the bucket exists, in the configured region. Asked with
/// HeadBucket; a least-privileged writer may not, and then the probe
/// upload decides (and is not made twice).
async fn bucket_exists(
    target: &Target<'_>,
    bucket: &S3Bucket,
    rec: &mut Recorder<'_>,
) -> Option<EarlyUpload> {
    let started = Instant::now();
    let s3 = target.s3;
    let name = &s3.bucket;
    let mut upload: EarlyUpload = None;
    let region_problem = |found: Option<&String>| -> Option<String> {
        let found = found?;
        (s3.region_configured && !found.is_empty() && *found != s3.region).then(|| {
            format!(
                "bucket {name} is in region {found}, but s3_region is {}: set s3_region: {found}",
                s3.region
            )
        })
    };
    let decided = match bucket.probe_head_bucket().await {
        BucketAnswer::Exists { region } => match region_problem(region.as_ref()) {
            Some(problem) => Err(problem),
            None => Ok(format!(
                "bucket {name} exists (asked directly with HeadBucket{})",
                region.map(|r| format!("; region {r}")).unwrap_or_default()
            )),
        },
        BucketAnswer::Missing => Err(format!(
            "bucket {name} does not exist (HeadBucket answered 404, NoSuchBucket): check s3_bucket and s3_url"
        )),
        BucketAnswer::OtherRegion { region } => Err(format!(
            "bucket {name} is in another region ({}), not s3_region {}: set s3_region to the bucket's region",
            region.as_deref().unwrap_or("the server did not say which"),
            s3.region
        )),
        BucketAnswer::Denied { region } => match region_problem(region.as_ref()) {
            Some(problem) => Err(problem),
            None => {
                infer_from_upload(bucket, target.conditional, name, "HeadBucket is denied to this credential, as it should be for a least-privileged writer", &mut upload).await
            }
        },
        BucketAnswer::Failed(f) if f.kind == FailureKind::WrongRegion => Err(f.message),
        BucketAnswer::Failed(f) => {
            let why = format!("HeadBucket gave no usable answer ({})", f.code);
            infer_from_upload(bucket, target.conditional, name, &why, &mut upload).await
        }
    };
    match decided {
        Ok(message) => {
            rec.ok(Stage::ContainerExists, started, message);
            Some(upload)
        }
        Err(message) => {
            rec.fail(Stage::ContainerExists, started, message);
            None
        }
    }
}

/// Stage 4: a small object goes through, the way the rotation writes.
async fn upload_stage(
    target: &Target<'_>,
    bucket: &S3Bucket,
    early: EarlyUpload,
    rec: &mut Recorder<'_>,
) -> bool {
    let started = Instant::now();
    let (put, took) = match early {
        Some(done) => done,
        None => {
            let result = bucket.probe_put(target.conditional).await;
            (result, started.elapsed())
        }
    };
    let name = &target.s3.bucket;
    let mut notes = Notes::default();
    let rule = if target.conditional {
        " as a conditional create (If-None-Match: *), like unique and prune uploads"
    } else {
        ", replacing it, like overwrite uploads"
    };
    match put {
        Ok(key) => notes.note(format!(
            "wrote s3://{name}/{key} ({} bytes{rule}); the server checked Content-MD5 and its ETag matches",
            TEST_OBJECT_BODY.len()
        )),
        Err(f) if f.kind == FailureKind::Exists => notes.note(format!(
            "s3://{name}/{} is already there from an earlier Test: the conditional create was allowed and refused to replace it, as {} rotation needs",
            bucket_key(bucket, TEST_OBJECT_NAME),
            rotation_name(target.settings.rotation)
        )),
        Err(f) => {
            rec.fail(Stage::Upload, Instant::now() - took, f.message);
            return false;
        }
    }
    if let Some(warning) = encryption_warning(target.settings) {
        notes.warn(warning);
    }
    rec.finish(Stage::Upload, Instant::now() - took, notes);
    true
}

/// Stage 5: what else the writer may do (read, delete, list); a writer
/// should only create, except that prune needs list and delete.
async fn least_privilege(target: &Target<'_>, bucket: &S3Bucket, rec: &mut Recorder<'_>) -> Rights {
    let started = Instant::now();
    let read = bucket.probe_get(TEST_OBJECT_NAME).await;
    let delete = bucket.probe_delete(ABSENT_OBJECT_NAME).await;
    let list = bucket.probe_list().await;
    let rights = Rights {
        read: allowed(&read),
        delete: allowed(&delete),
        list: allowed(&list),
    };
    let who = &target.who;
    let mut notes = Notes::default();
    let prune = target.settings.rotation == Rotation::Prune;
    let mut extra = Vec::new();
    if rights.read == Some(true) {
        extra.push("read (s3:GetObject)");
    }
    if rights.delete == Some(true) && !prune {
        extra.push("delete (s3:DeleteObject)");
    }
    if rights.list == Some(true) && !prune {
        extra.push("list (s3:ListBucket)");
    }
    if extra.is_empty() {
        notes.note(format!(
            "{who} cannot read{}: it can only write, as a backup writer should",
            if prune {
                " (list and delete are allowed: prune rotation needs them)"
            } else {
                ", delete or list"
            }
        ));
    } else {
        notes.warn(format!(
            "{who} can also {}: the writer should only create; remove these rights from its policy, so a leaked key cannot read or destroy the backups",
            extra.join(", ")
        ));
    }
    for (what, answer) in [("read", &read), ("delete", &delete), ("list", &list)] {
        if let Err(f) = answer
            && allowed(answer).is_none()
        {
            notes.note(format!("could not tell whether it may {what} ({})", f.code));
        }
    }
    rec.finish(Stage::LeastPrivilege, started, notes);
    rights
}

/// Stage 6: the rotation fits the credential, and versioning and
/// lifecycle rules do not keep (or pile up) old copies.
async fn retention(
    target: &Target<'_>,
    bucket: &S3Bucket,
    rights: &Rights,
    rec: &mut Recorder<'_>,
) {
    let started = Instant::now();
    let rotation = target.settings.rotation;
    let mut notes = Notes::default();
    let mut modes = vec!["overwrite", "unique"];
    if rights.list == Some(true) && rights.delete == Some(true) {
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
            "this credential allows rotation {} but not the configured prune: prune needs s3:ListBucket and s3:DeleteObject; without them each run stores its copy, older ones stay and the run warns",
            modes.join(", ")
        ));
    }
    let rules = bucket.probe_lifecycle().await;
    let covering: Vec<&LifecycleRule> = match &rules {
        Ok(rules) => rules.iter().filter(|r| r.covers(bucket.prefix())).collect(),
        Err(_) => Vec::new(),
    };
    notes.note_or_warn(versioning_note(
        bucket.probe_versioning().await,
        rotation,
        &covering,
    ));
    match &rules {
        Ok(rules) if rules.is_empty() => notes.note("the bucket has no lifecycle rules"),
        Ok(rules) => notes.note(format!(
            "lifecycle rules: {}",
            rules
                .iter()
                .map(LifecycleRule::describe)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(f) => notes.note(format!(
            "lifecycle rules could not be read ({}; this credential lacks s3:GetLifecycleConfiguration)",
            f.code
        )),
    }
    if rotation == Rotation::Unique && !covering.iter().any(|r| r.expiration_days.is_some()) {
        notes.warn("unique rotation keeps every copy and deletes none: no lifecycle rule expiring breakglass-backup-* under the prefix could be confirmed; add one (see docs/DESTINATIONS.md, S3 destination) or old copies pile up");
    }
    rec.finish(Stage::Retention, started, notes);
}

/// What stage 6 says of the bucket's versioning: `Err` for a warning.
fn versioning_note(
    answer: Result<Option<String>, Failure>,
    rotation: Rotation,
    covering: &[&LifecycleRule],
) -> Result<String, String> {
    match answer {
        Ok(Some(state)) if state == "Enabled" => {
            if rotation != Rotation::Overwrite {
                Ok("bucket versioning is Enabled".into())
            } else if covering.iter().any(|r| r.noncurrent_days.is_some()) {
                Ok("bucket versioning is Enabled; a lifecycle rule expires the old versions that overwrite leaves".into())
            } else {
                Err("bucket versioning is Enabled: every overwrite keeps the previous workbook as an old version, so old copies (with old passwords) stay; add a lifecycle rule with NoncurrentVersionExpiration, or use a bucket without versioning".into())
            }
        }
        Ok(state) => Ok(format!(
            "bucket versioning is {}",
            state.as_deref().unwrap_or("off")
        )),
        Err(f) => Ok(format!(
            "bucket versioning could not be read ({}; this credential lacks s3:GetBucketVersioning, as a writer should): if it is on, overwrite keeps old copies",
            f.code
        )),
    }
}

/// Stage 3 when the bucket cannot be asked: the probe upload's answer
/// decides, and the message says so.
async fn infer_from_upload(
    bucket: &S3Bucket,
    conditional: bool,
    name: &str,
    why: &str,
    upload: &mut Option<(Result<String, Failure>, Duration)>,
) -> Result<String, String> {
    let started = Instant::now();
    let put = bucket.probe_put(conditional).await;
    let took = started.elapsed();
    let decided = match &put {
        Err(f) if f.kind == FailureKind::NoSuchContainer => Err(format!(
            "bucket {name} does not exist: the probe upload answered {} (decided from the upload, because {why}); check s3_bucket and s3_url",
            f.code
        )),
        Err(f) if f.kind == FailureKind::WrongRegion => Err(f.message.clone()),
        Err(f) if f.kind == FailureKind::Connection => Err(f.message.clone()),
        answer => Ok(format!(
            "bucket {name} exists: decided from the probe upload, because {why}; PutObject answered {}, not NoSuchBucket",
            match answer {
                Ok(_) => "200".to_owned(),
                Err(f) => f.code.clone(),
            }
        )),
    };
    *upload = Some((put, took));
    decided
}

/// What stage 5 found the credential may do.
struct Rights {
    read: Option<bool>,
    delete: Option<bool>,
    list: Option<bool>,
}

fn bucket_key(bucket: &S3Bucket, name: &str) -> String {
    bucket.key(name)
}

pub(crate) fn rotation_name(rotation: Rotation) -> &'static str {
    match rotation {
        Rotation::Overwrite => "overwrite",
        Rotation::Unique => "unique",
        Rotation::Prune => "prune",
    }
}

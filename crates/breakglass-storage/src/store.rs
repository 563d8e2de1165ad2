//! THE upload sequence, written once above [`Backend`].
//!
//! 1. **Name** the object for the rotation ([`naming::object_name`]).
//! 2. **Head** it. The same size, SHA-256 and collection time there: this
//!    run's verified copy is already stored (a redelivery), nothing is sent
//!    again and the receipt says `already_stored`. Under `overwrite`, a copy whose run
//!    collected its inventory later than this one: [`StorageError::Superseded`],
//!    on every backend (an older run never replaces a newer copy).
//! 3. **Put** the file, verified by the backend; `unique` and `prune`
//!    create only ([`PutMode::CreateOnly`]).
//! 4. **Sidecar** manifest next to it; a failure is a warning on the
//!    receipt, never a failed upload (the object's metadata carries the
//!    summary, and `fetch` says the sidecar is missing).
//! 5. **Prune** (`prune` rotation only), after the new copy is verified:
//!    older breakglass names are deleted, object then sidecar; a failure
//!    is a warning.
//!
//! The head and the put are two requests: under `overwrite`, a newer run
//! finishing between them can still be replaced by an older one (see
//! docs/DESTINATIONS.md). A credential without read rights makes `head`
//! answer `None`: the `Superseded` rule cannot apply then, and a
//! create-only put that finds this run's unique name taken counts the copy
//! as already stored (not re-verified; the receipt says so).

use crate::manifest::{self, Manifest};
use crate::naming::{self, is_rotated_name};
use crate::{Backend, PutMode, Receipt, StorageError, Upload};
use breakglass_config::Rotation;

/// Stores `upload` in `backend` under its rotation; see the module docs.
pub async fn store<B: Backend + ?Sized>(
    backend: &B,
    upload: &Upload<'_>,
) -> Result<Receipt, StorageError> {
    let rotation = backend.rotation();
    let name = naming::object_name(rotation, upload.created_at, upload.run_id, upload.extension);
    let key = backend.key(&name);
    let mode = PutMode::for_rotation(rotation);
    let mut receipt = Receipt {
        location: backend.location(&key),
        size: upload.size,
        sha256: upload.sha256.to_owned(),
        pruned: Vec::new(),
        warnings: Vec::new(),
        already_stored: false,
    };
    let existing = backend.head(&key).await?;
    // This run's copy: the same bytes, made by the same run (its
    // collection time; the name alone does not say so under `overwrite`).
    let same = existing.as_ref().is_some_and(|meta| {
        meta.size == upload.size
            && meta
                .sha256
                .as_deref()
                .is_some_and(|sha| sha.eq_ignore_ascii_case(upload.sha256))
            && meta
                .created_at
                .is_some_and(|at| at.timestamp_millis() == upload.created_at.timestamp_millis())
    });
    if same {
        receipt.already_stored = true;
    } else {
        if rotation == Rotation::Overwrite
            && let Some(newer) = existing
                .as_ref()
                .and_then(|meta| meta.created_at)
                .filter(|at| *at > upload.created_at)
        {
            return Err(StorageError::Superseded {
                destination: backend.describe(),
                newer: newer.to_rfc3339(),
            });
        }
        match backend.put_file(&key, upload, mode).await {
            Ok(()) => {}
            // A create-only credential that may not read (the least
            // privilege a `unique`/`prune` writer gets) saw nothing at the
            // head, yet the name is taken. The name holds this run's id and
            // collection time, and a put is atomic (whole and verified, or
            // absent): it is this run's copy from an earlier delivery. Said
            // so, and not stored again; it could not be read back here.
            Err(StorageError::Exists { .. })
                if existing.is_none() && mode == PutMode::CreateOnly =>
            {
                receipt.already_stored = true;
                receipt.warnings.push(format!(
                    "{key} is already there from an earlier delivery of this run; this credential may not read it, so it was not verified again"
                ));
            }
            Err(err) => return Err(err),
        }
    }
    // The sidecar follows the verified object. On a redelivery it is
    // written only when missing (a crash between object and sidecar).
    let sidecar = manifest::sidecar_name(&key);
    let sidecar_missing =
        !receipt.already_stored || { matches!(backend.head(&sidecar).await, Ok(None)) };
    if sidecar_missing {
        let bytes = Manifest::for_upload(upload, &name).to_json();
        match backend
            .put_small(&sidecar, bytes, "application/json", mode)
            .await
        {
            // A redelivered run under `unique`/`prune`: already there.
            Ok(()) | Err(StorageError::Exists { .. }) => {}
            Err(err) => receipt.warnings.push(format!(
                "the new copy is stored, but its sidecar manifest was not: {err}"
            )),
        }
    }
    if rotation == Rotation::Prune {
        // Only now: the new copy is stored and verified.
        match prune_older_than(backend, &key).await {
            Ok(pruned) => receipt.pruned = pruned,
            Err(err) => receipt.warnings.push(format!(
                "the new copy is stored, but older ones were not pruned: {err}"
            )),
        }
    }
    Ok(receipt)
}

/// Deletes the rotated breakglass objects older than `newest_key` (object
/// first, then its sidecar); never another name, never `newest_key`.
async fn prune_older_than<B: Backend + ?Sized>(
    backend: &B,
    newest_key: &str,
) -> Result<Vec<String>, StorageError> {
    let mut older: Vec<String> = backend
        .list()
        .await?
        .into_iter()
        .filter(|object| is_rotated_name(&object.name) && object.key.as_str() < newest_key)
        .map(|object| object.key)
        .collect();
    older.sort();
    for key in &older {
        backend.delete(key).await?;
        backend.delete(&manifest::sidecar_name(key)).await?;
    }
    Ok(older)
}

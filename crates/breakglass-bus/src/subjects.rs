//! Subject, stream, consumer and bucket names (docs/BUS.md).
//!
//! With the default prefix `breakglass`:
//!
//! | subject | event |
//! | --- | --- |
//! | `breakglass.trigger` | `TriggerRequested` (the Mavis core publishes this too) |
//! | `breakglass.snapshot.ready` | `SnapshotReady` |
//! | `breakglass.workbook.ready` | `WorkbookReady` |
//! | `breakglass.run.finished.<run id>` | `RunFinished` |
//! | `breakglass.dead.<stage>` | `DeadLetter` |

/// Names derived from one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Names for `prefix` (validated by the config crate).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `prefix.>`: everything the stream holds.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The stream name: the prefix upper-cased, `_EVENTS` appended.
    pub fn stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The object-store bucket for payloads.
    pub fn payload_bucket(&self) -> String {
        format!("{}_payloads", self.prefix.replace('-', "_"))
    }

    /// The key-value bucket that carries the settings stored through the
    /// config API to every service.
    pub fn settings_bucket(&self) -> String {
        format!("{}_settings", self.prefix.replace('-', "_"))
    }

    /// Start a run.
    pub fn trigger(&self) -> String {
        format!("{}.trigger", self.prefix)
    }

    /// The collector stored a snapshot.
    pub fn snapshot_ready(&self) -> String {
        format!("{}.snapshot.ready", self.prefix)
    }

    /// The renderer stored a workbook.
    pub fn workbook_ready(&self) -> String {
        format!("{}.workbook.ready", self.prefix)
    }

    /// Run `run_id` ended: one subject per run, so "has run X finished?"
    /// is a last-message-by-subject lookup.
    pub fn run_finished(&self, run_id: &str) -> String {
        format!("{}.run.finished.{run_id}", self.prefix)
    }

    /// Every run's end (`<prefix>.run.finished.>`), for subscribers such as
    /// the Mavis core.
    pub fn run_finished_all(&self) -> String {
        format!("{}.run.finished.>", self.prefix)
    }

    /// Where `stage`'s poison messages go.
    pub fn dead_letter(&self, stage: &str) -> String {
        format!("{}.dead.{stage}", self.prefix)
    }
}

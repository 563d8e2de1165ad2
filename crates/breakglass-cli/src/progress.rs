//! A one-line progress display on a terminal for runs that take more than a
//! moment: rows collected, then rows written. Silent when stderr is not a
//! terminal (CI, pipes, cron), so logs stay clean.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Shared counters the display reads.
#[derive(Clone, Default)]
pub struct Progress {
    phase: Arc<AtomicU8>,
    /// Rows read from the inventory.
    pub collected: breakglass_collect::RowCounter,
    written: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

const COLLECTING: u8 = 0;
const SORTING: u8 = 1;
const WRITING: u8 = 2;
const DONE: u8 = 3;

impl Progress {
    /// Starts the display task (only on a terminal).
    pub fn start() -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let progress = Self::default();
        if !std::io::stderr().is_terminal() {
            return (progress, None);
        }
        let shown = progress.clone();
        let handle = tokio::spawn(async move {
            // Quick runs print nothing.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut ticker = tokio::time::interval(Duration::from_millis(250));
            loop {
                ticker.tick().await;
                let line = match shown.phase.load(Ordering::Relaxed) {
                    COLLECTING => format!("collecting: {} rows", shown.collected.get()),
                    SORTING => format!(
                        "sorting {} rows by project and device name",
                        shown.collected.get()
                    ),
                    WRITING => format!(
                        "writing: {} of {} rows",
                        shown.written.load(Ordering::Relaxed),
                        shown.total.load(Ordering::Relaxed)
                    ),
                    _ => break,
                };
                let mut stderr = std::io::stderr();
                let _ = write!(stderr, "\r\x1b[2K{line}");
                let _ = stderr.flush();
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        (progress, Some(handle))
    }

    /// Switches to the sorting phase.
    pub fn sorting(&self) {
        self.phase.store(SORTING, Ordering::Relaxed);
    }

    /// Switches to the writing phase.
    pub fn writing(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.phase.store(WRITING, Ordering::Relaxed);
    }

    /// Counts one written row.
    pub fn row_written(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends the display.
    pub fn done(&self) {
        self.phase.store(DONE, Ordering::Relaxed);
    }
}

//! Domain types shared by every breakglass crate.
//!
//! # Layout
//! - [`secret`]: [`Secret`], the wrapper every credential travels in; its
//!   `Debug` and `Display` print a mask, so a stray `{:?}` cannot leak.
//! - [`device`]: [`DeviceRow`], one device account with the 12 workbook
//!   columns, and the column headers in their fixed order.
//! - [`order`]: the workbook's row order (natural, case-insensitive device
//!   name, then account).
//! - [`inventory`]: an inventory grouped by project and sorted, plus the
//!   per-row warnings collected on the way.
//! - [`spill`]: sorting bigger-than-memory inventories through sorted runs
//!   on unnamed temp files.
//! - [`run`]: run ids.
//! - [`limits`]: every size limit on outside input, and a bounded file
//!   reader.
//! - [`private_fs`]: files that may hold credentials (0600/0700) and their hash.
//! - [`seal`]: authenticated encryption of small values with a symmetric key
//!   (secret settings at rest and on the bus).
//!
//! This crate knows nothing of NATS, databases, files or Excel.
#![warn(missing_docs)]

pub mod device;
pub mod inventory;
pub mod limits;
pub mod order;
pub mod private_fs;
pub mod run;
pub mod seal;
pub mod secret;
pub mod spill;

pub use device::{COLUMNS, DeviceRow};
pub use inventory::{Inventory, ProjectRows, RowWarning, RunSink, SortedInventory, SortedRows};
pub use run::{RunId, RunIdError};
pub use secret::Secret;
pub use spill::{MergedAhead, RunRead, SortedItem, SortedStream, sorted_run_items};

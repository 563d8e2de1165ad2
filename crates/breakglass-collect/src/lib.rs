//! Inventory sources: where the device rows come from.
//!
//! # Layout
//! - [`Source`]: the one trait every source implements: read all rows into
//!   an [`Inventory`], counting them into a shared [`RowCounter`] for
//!   progress.
//! - [`csv_file`]: a CSV file with the exact documented header; also the
//!   bundled sample inventory.
//! - [`sql`]: PostgreSQL and SQLite via sqlx, reading the view contract
//!   (see docs/WORKBOOK.md, "the inventory view contract").
//! - [`synthetic`]: deterministic large inventories for benchmarks.
//!
//! This crate knows nothing of NATS, Excel or storage.
#![warn(missing_docs)]

pub mod csv_file;
pub mod error;
pub mod sql;
pub mod synthetic;

use breakglass_config::InventoryLocation;
use breakglass_core::Inventory;
pub use error::CollectError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The inventory header, exactly as a CSV file must spell it.
pub const CSV_HEADER: [&str; 13] = [
    "Project",
    "Provider",
    "Device name",
    "Protocol",
    "Public IP address",
    "Private IP address",
    "URL",
    "Port",
    "Access type",
    "Account",
    "Password",
    "PEM file name",
    "Extra credential",
];

/// Counts rows as a source reads them; shared with a progress display.
#[derive(Clone, Debug, Default)]
pub struct RowCounter(Arc<AtomicU64>);

impl RowCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one row.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A place device rows are read from.
pub trait Source {
    /// A description safe to log and to print in the workbook (no password).
    fn describe(&self) -> String;

    /// Reads every row into a new [`Inventory`]. Bad rows that can still be
    /// written become warnings; rows that cannot be read are an error that
    /// names the place (file:line or row number) and the field.
    fn collect(
        &self,
        counter: &RowCounter,
    ) -> impl std::future::Future<Output = Result<Inventory, CollectError>> + Send {
        self.collect_into(Inventory::new(), counter)
    }

    /// Reads every row into `inventory` (one set up with a
    /// [`breakglass_core::RunSink`], say), as [`Source::collect`] does.
    fn collect_into(
        &self,
        inventory: Inventory,
        counter: &RowCounter,
    ) -> impl std::future::Future<Output = Result<Inventory, CollectError>> + Send;
}

/// Any of the supported sources, chosen by the `inventory_url` setting.
#[derive(Debug)]
pub enum AnySource {
    /// A CSV file or the bundled sample.
    Csv(csv_file::CsvSource),
    /// PostgreSQL or SQLite.
    Sql(sql::SqlSource),
}

impl AnySource {
    /// The source for a configured location; `view` is the SQL view name.
    pub fn for_location(location: &InventoryLocation, view: &str) -> Self {
        match location {
            InventoryLocation::BundledSample => Self::Csv(csv_file::CsvSource::bundled_sample()),
            InventoryLocation::Csv(path) => Self::Csv(csv_file::CsvSource::file(path.clone())),
            InventoryLocation::Sqlite(url) => Self::Sql(sql::SqlSource::sqlite(url.clone(), view)),
            InventoryLocation::Postgres(url) => {
                Self::Sql(sql::SqlSource::postgres(url.clone(), view))
            }
        }
    }
}

impl AnySource {
    /// The source `settings` name (`inventory_url`, `inventory_view`),
    /// trusting `ca_bundle` for PostgreSQL's TLS when the URL names no
    /// `sslrootcert`.
    pub fn for_settings(settings: &breakglass_config::Settings) -> Self {
        match Self::for_location(&settings.inventory, &settings.inventory_view) {
            Self::Sql(source) => Self::Sql(source.with_ca_bundle(settings.ca_bundle.clone())),
            other => other,
        }
    }
}

impl Source for AnySource {
    fn describe(&self) -> String {
        match self {
            Self::Csv(source) => source.describe(),
            Self::Sql(source) => source.describe(),
        }
    }

    async fn collect_into(
        &self,
        inventory: Inventory,
        counter: &RowCounter,
    ) -> Result<Inventory, CollectError> {
        match self {
            Self::Csv(source) => source.collect_into(inventory, counter).await,
            Self::Sql(source) => source.collect_into(inventory, counter).await,
        }
    }
}

//! PostgreSQL and SQLite inventories, read through a view.
//!
//! # The view contract
//! The source reads one view (default `breakglass_inventory`, setting
//! `inventory_view`, may be `schema.view`) with one row per device account
//! and these columns (any type that casts to text; NULL reads as empty):
//! `project, provider, device_name, protocol, public_ip, private_ip, url,
//! port, access_type, account, password, pem_file_name, extra_credential`.
//! The PostgreSQL session is set read-only: the collector never writes to
//! the inventory database. The connection follows the TLS policy of
//! `breakglass-pg` (default `verify-full` to a remote host); a weakened one
//! puts a warning on every run's inventory.

use crate::{CollectError, RowCounter, Source};
use breakglass_config::CaBundle;
use breakglass_core::{DeviceRow, Inventory, RowWarning, Secret};
use breakglass_pg::PgTarget;
use futures::TryStreamExt;
use sqlx::{Connection, Row};
use std::str::FromStr;
use std::time::Duration;

/// Columns of the view contract, in the order they are read.
pub const VIEW_COLUMNS: [&str; 13] = [
    "project",
    "provider",
    "device_name",
    "protocol",
    "public_ip",
    "private_ip",
    "url",
    "port",
    "access_type",
    "account",
    "password",
    "pem_file_name",
    "extra_credential",
];

/// How long connecting may take before the source is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An inventory in a SQL database.
#[derive(Debug, Clone)]
pub struct SqlSource {
    url: Secret,
    engine: Engine,
    view: String,
    ca_bundle: Option<CaBundle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    Sqlite,
}

impl SqlSource {
    /// A PostgreSQL source; `url` may hold a password.
    pub fn postgres(url: Secret, view: &str) -> Self {
        Self {
            url,
            engine: Engine::Postgres,
            view: view.into(),
            ca_bundle: None,
        }
    }

    /// Trusts `ca_bundle` for PostgreSQL's TLS when the URL names no
    /// `sslrootcert`.
    pub fn with_ca_bundle(mut self, ca_bundle: Option<CaBundle>) -> Self {
        self.ca_bundle = ca_bundle;
        self
    }

    /// A SQLite source (`sqlite://path`), opened read-only.
    pub fn sqlite(url: String, view: &str) -> Self {
        Self {
            url: Secret::new(url),
            engine: Engine::Sqlite,
            view: view.into(),
            ca_bundle: None,
        }
    }

    fn select(&self) -> String {
        let columns: Vec<String> = VIEW_COLUMNS
            .iter()
            .map(|c| format!("COALESCE(CAST({c} AS TEXT), '')"))
            .collect();
        // The view name was validated as `name` or `schema.name` of
        // [A-Za-z0-9_] by the config crate: no quoting issues.
        format!("SELECT {} FROM {}", columns.join(", "), self.view)
    }

    fn fail(&self, reason: impl std::fmt::Display) -> CollectError {
        let reason = breakglass_pg::scrub_password(
            &reason
                .to_string()
                .replace(self.url.expose(), "<inventory_url>"),
            self.url.expose(),
        );
        CollectError::Database {
            source_name: self.describe(),
            reason,
        }
    }

    async fn read_rows<R>(
        &self,
        mut inventory: Inventory,
        mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
        counter: &RowCounter,
    ) -> Result<Inventory, CollectError>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let mut number: u64 = 0;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|err| self.fail(format!("query on {} failed: {err}", self.view)))?
        {
            number += 1;
            let mut fields: [String; 13] = Default::default();
            for (index, slot) in fields.iter_mut().enumerate() {
                *slot = row
                    .try_get::<String, usize>(index)
                    .map_err(|err| CollectError::Row {
                        location: format!("{} row {number}", self.view),
                        field: VIEW_COLUMNS[index].into(),
                        rule: format!("cannot be read as text: {err}"),
                    })?;
            }
            let [project, cells @ ..] = fields;
            inventory
                .push(&project, DeviceRow::from_cells(cells))
                .map_err(|err| self.fail(format!("sorting needs temp space: {err}")))?;
            counter.add();
        }
        Ok(inventory)
    }
}

impl Source for SqlSource {
    fn describe(&self) -> String {
        let url = breakglass_config::file::mask_url_password(self.url.expose());
        match self.engine {
            Engine::Postgres => format!("PostgreSQL {url} view {}", self.view),
            Engine::Sqlite => format!("SQLite {url} view {}", self.view),
        }
    }

    async fn collect_into(
        &self,
        mut inventory: Inventory,
        counter: &RowCounter,
    ) -> Result<Inventory, CollectError> {
        match self.engine {
            Engine::Postgres => {
                let target =
                    PgTarget::new("inventory_url", self.url.expose(), self.ca_bundle.as_ref())
                        .map_err(|err| self.fail(err))?;
                let options = target
                    .options()
                    .clone()
                    .application_name("breakglass-collector");
                let mut conn = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    sqlx::PgConnection::connect_with(&options),
                )
                .await
                .map_err(|_| {
                    self.fail(format!(
                        "cannot connect within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|err| self.fail(format!("cannot connect: {}", target.explain(&err))))?;
                // Connected: a weakened connection is said on every run.
                if let Some(warning) = target.warning() {
                    tracing::warn!(field = "inventory_url", "{warning}");
                    inventory.warn(RowWarning {
                        project: String::new(),
                        device: String::new(),
                        field: "inventory_url".into(),
                        message: warning,
                    });
                }
                sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    .execute(&mut conn)
                    .await
                    .map_err(|err| {
                        self.fail(format!("cannot make the session read-only: {err}"))
                    })?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.select())).fetch(&mut conn);
                let inventory = self.read_rows(inventory, rows, counter).await?;
                let _ = conn.close().await;
                Ok(inventory)
            }
            Engine::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(self.url.expose())
                    .map_err(|err| {
                        self.fail(format!("inventory_url is not a valid SQLite URL: {err}"))
                    })?
                    .read_only(true)
                    .create_if_missing(false);
                let mut conn = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    sqlx::SqliteConnection::connect_with(&options),
                )
                .await
                .map_err(|_| {
                    self.fail(format!("cannot open within {}s", CONNECT_TIMEOUT.as_secs()))
                })?
                .map_err(|err| self.fail(format!("cannot open: {err}")))?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(self.select())).fetch(&mut conn);
                let inventory = self.read_rows(inventory, rows, counter).await?;
                let _ = conn.close().await;
                Ok(inventory)
            }
        }
    }
}

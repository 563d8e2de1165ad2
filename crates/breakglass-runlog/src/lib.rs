//! The run log in PostgreSQL: every run, its stage events and its
//! destination results, for `TriggerNow`/`GetRun`/`ListRuns`/`WatchRun` and
//! `breakglass runs`.
//!
//! It records the bus's events (protobuf types from `breakglass-proto`) but
//! knows nothing of NATS: the scheduler binds it to the stream. Every write
//! is idempotent, because a bus message may arrive twice. The schema lives
//! in its own PostgreSQL schema (default `breakglass`), created and migrated
//! on connect with the migrations in `migrations/` (sqlx's migrator, so the
//! applied versions are checked against the files). It holds no credential:
//! the events carry none (DESIGN.md invariant 3).
//!
//! The connection follows the TLS policy of `breakglass-pg` (default
//! `verify-full` to a remote host, `ca_bundle` trusted when `database_url`
//! names no `sslrootcert`); a weakened one is warned about on every
//! connect and kept in [`RunLog::transport_warning`].
//!
//! The same schema keeps the settings stored through the config API
//! ([`settings_store`]), their secrets sealed with `settings_key`
//! (`breakglass_core::seal`) before they are written: both are the control
//! plane's state, owned by the scheduler.

pub mod settings_store;

use breakglass_config::CaBundle;
use breakglass_pg::PgTarget;
use breakglass_proto::v1;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Row, SqlSafeStr};

/// Why the run log could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunLogError {
    /// The `database_url` or schema name is not usable.
    #[error("database_url / database_schema: {0}")]
    Config(String),
    /// PostgreSQL refused or failed a query.
    #[error("the run log database failed: {0}")]
    Database(String),
    /// The migrations could not be applied.
    #[error("the run log schema could not be migrated: {0}")]
    Migrate(String),
}

fn db(err: sqlx::Error) -> RunLogError {
    RunLogError::Database(err.to_string())
}

/// One run as the log knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// `scheduled`, `on_demand`, `catch_up`.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
    /// Free text from the trigger.
    pub note: String,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
    /// `running`, `succeeded`, `partially_failed`, `failed`.
    pub status: String,
    /// The stage that failed, if any.
    pub failed_stage: String,
    /// Why it failed, without secrets.
    pub error: String,
    /// Device rows written.
    pub rows: i64,
    /// Warnings raised.
    pub warning_count: i64,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Per destination (filled by [`RunLog::get`]).
    pub destinations: Vec<DestinationRecord>,
}

/// One destination's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRecord {
    /// The destination, without secrets.
    pub destination: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// Where the file is.
    pub location: String,
    /// Stored size.
    pub size: i64,
    /// Stored SHA-256.
    pub sha256: String,
    /// Why it failed.
    pub error: String,
}

/// The stage of the event every run gets while the run log's own
/// connection is weakened (`sslmode` `disable`, `prefer` or `require` to a
/// remote host): the warning, once per run.
pub const TRANSPORT_WARNING_STAGE: &str = "warning:run_log_connection";

/// One stage event of a run, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    /// Increasing id: watch from the last one seen.
    pub id: i64,
    /// The run.
    pub run_id: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `triggered`, `collected`, `rendered`, `finished`, `dead_letter:<stage>`,
    /// [`TRANSPORT_WARNING_STAGE`].
    pub stage: String,
    /// What happened, in a line.
    pub detail: String,
}

impl RunEvent {
    /// True for the event that ends a run.
    pub fn is_final(&self) -> bool {
        self.stage == "finished"
    }
}

/// The lower-case name of a trigger reason.
pub fn reason_name(reason: i32) -> &'static str {
    match v1::TriggerReason::try_from(reason) {
        Ok(v1::TriggerReason::Scheduled) => "scheduled",
        Ok(v1::TriggerReason::OnDemand) => "on_demand",
        Ok(v1::TriggerReason::CatchUp) => "catch_up",
        _ => "unspecified",
    }
}

/// The lower-case name of a run status.
pub fn status_name(status: i32) -> &'static str {
    match v1::RunStatus::try_from(status) {
        Ok(v1::RunStatus::Succeeded) => "succeeded",
        Ok(v1::RunStatus::PartiallyFailed) => "partially_failed",
        Ok(v1::RunStatus::Failed) => "failed",
        _ => "unspecified",
    }
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

/// The migrations in `migrations/`, embedded.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "run log".into(),
            MigrationType::Simple,
            include_str!("../migrations/0001_run_log.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "drills".into(),
            MigrationType::Simple,
            include_str!("../migrations/0002_drills.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "settings".into(),
            MigrationType::Simple,
            include_str!("../migrations/0003_settings.sql").into_sql_str(),
            false,
        ),
    ])
}

/// The last drill times of one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillTimes {
    /// The destination, without secrets.
    pub destination: String,
    /// The last passing drill.
    pub last_pass: Option<DateTime<Utc>>,
    /// The last failing drill.
    pub last_fail: Option<DateTime<Utc>>,
}

/// One recorded drill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillRecord {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The destination drilled, without secrets.
    pub destination: String,
    /// True when every step passed.
    pub passed: bool,
    /// The first failed step, empty when it passed.
    pub failed_step: String,
    /// What the failed step (or the last step) said.
    pub detail: String,
    /// The run whose backup was drilled, when one was found.
    pub backup_run_id: String,
    /// When that backup's run collected the inventory.
    pub backup_created_at: Option<DateTime<Utc>>,
}

/// A handle on the run log.
#[derive(Clone, Debug)]
pub struct RunLog {
    pool: PgPool,
    warning: Option<String>,
}

impl RunLog {
    /// Connects, creates the schema if missing and applies the migrations.
    /// `schema` must be a plain identifier (letters, digits, `_`).
    pub async fn connect(database_url: &str, schema: &str) -> Result<Self, RunLogError> {
        Self::connect_with_ca(database_url, schema, None).await
    }

    /// Like [`RunLog::connect`], trusting `ca_bundle` for TLS when
    /// `database_url` names no `sslrootcert`.
    pub async fn connect_with_ca(
        database_url: &str,
        schema: &str,
        ca_bundle: Option<&CaBundle>,
    ) -> Result<Self, RunLogError> {
        let (pool, warning) = pool(database_url, schema, 4, ca_bundle).await?;
        // The schema name was checked by `pool` to be a plain identifier.
        // Connections resolve search_path per statement, so the schema
        // created here is used by the migrations that follow.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&pool)
        .await
        .map_err(db)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|err| RunLogError::Migrate(err.to_string()))?;
        Ok(Self { pool, warning })
    }

    /// Connects to a run log the scheduler has already created, without
    /// creating or migrating anything: for `drill --record`, whose role
    /// needs only INSERT on `drills`, and whose binary may be older or newer
    /// than the scheduler's migrations.
    pub async fn connect_existing(database_url: &str, schema: &str) -> Result<Self, RunLogError> {
        Self::connect_existing_with_ca(database_url, schema, None).await
    }

    /// Like [`RunLog::connect_existing`], trusting `ca_bundle` for TLS when
    /// `database_url` names no `sslrootcert`.
    pub async fn connect_existing_with_ca(
        database_url: &str,
        schema: &str,
        ca_bundle: Option<&CaBundle>,
    ) -> Result<Self, RunLogError> {
        let (pool, warning) = pool(database_url, schema, 1, ca_bundle).await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('drills')::text")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(RunLogError::Config(format!(
                "schema {schema:?} has no run log yet: start the scheduler with this database_url (it creates the schema), or check database_schema"
            )));
        }
        Ok(Self { pool, warning })
    }

    /// The warning a weakened connection carries (`sslmode` `disable`,
    /// `prefer` or `require` to a remote host), already logged on connect.
    pub fn transport_warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// True when the database answers (for `/readyz`).
    pub async fn is_reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Records that a run was asked for (idempotent), with the
    /// [`TRANSPORT_WARNING_STAGE`] event when the connection is weakened.
    pub async fn record_trigger(&self, trigger: &v1::TriggerRequested) -> Result<(), RunLogError> {
        let at = from_ms(trigger.requested_at_unix_ms);
        sqlx::query(
            "INSERT INTO runs (run_id, reason, requested_by, note, requested_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(&trigger.run_id)
        .bind(reason_name(trigger.reason))
        .bind(&trigger.requested_by)
        .bind(&trigger.note)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let detail = format!(
            "{} run asked by {}",
            reason_name(trigger.reason),
            if trigger.requested_by.is_empty() {
                "someone"
            } else {
                &trigger.requested_by
            }
        );
        self.record_event(&trigger.run_id, "triggered", at, &detail)
            .await?;
        // Like `encryption: none`, a weakened connection is told on every
        // run, not only once in the scheduler's start-up log.
        if let Some(warning) = &self.warning {
            self.record_event(&trigger.run_id, TRANSPORT_WARNING_STAGE, at, warning)
                .await?;
        }
        Ok(())
    }

    /// Records a stage event (idempotent per run and stage). A run not seen
    /// before (its trigger expired from the stream) gets a row first.
    pub async fn record_stage(
        &self,
        trigger: &v1::TriggerRequested,
        stage: &str,
        at: DateTime<Utc>,
        detail: &str,
    ) -> Result<(), RunLogError> {
        self.record_trigger(trigger).await?;
        self.record_event(&trigger.run_id, stage, at, detail).await
    }

    async fn record_event(
        &self,
        run_id: &str,
        stage: &str,
        at: DateTime<Utc>,
        detail: &str,
    ) -> Result<(), RunLogError> {
        sqlx::query(
            "INSERT INTO run_events (run_id, at, stage, detail) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, stage) DO NOTHING",
        )
        .bind(run_id)
        .bind(at)
        .bind(stage)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Records a run's outcome, its destinations and its final event.
    pub async fn record_finished(&self, finished: &v1::RunFinished) -> Result<(), RunLogError> {
        let trigger = finished
            .trigger
            .clone()
            .unwrap_or_else(|| v1::TriggerRequested {
                run_id: finished.run_id.clone(),
                requested_at_unix_ms: finished.finished_at_unix_ms,
                ..Default::default()
            });
        self.record_trigger(&trigger).await?;
        let at = from_ms(finished.finished_at_unix_ms);
        let status = status_name(finished.status);
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "UPDATE runs SET status = $2, failed_stage = $3, error = $4, rows = $5,
             warning_count = $6, finished_at = $7 WHERE run_id = $1",
        )
        .bind(&finished.run_id)
        .bind(status)
        .bind(&finished.failed_stage)
        .bind(&finished.error)
        .bind(finished.rows as i64)
        .bind(finished.warning_count as i64)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        for destination in &finished.destinations {
            sqlx::query(
                "INSERT INTO run_destinations (run_id, destination, status, location, size, sha256, error)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (run_id, destination) DO UPDATE SET status = EXCLUDED.status,
                 location = EXCLUDED.location, size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
                 error = EXCLUDED.error",
            )
            .bind(&finished.run_id)
            .bind(&destination.destination)
            .bind(status_name(destination.status))
            .bind(&destination.location)
            .bind(destination.size as i64)
            .bind(&destination.sha256)
            .bind(&destination.error)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let detail = if finished.error.is_empty() {
            format!("{status}: {} rows", finished.rows)
        } else {
            format!("{status} in {}: {}", finished.failed_stage, finished.error)
        };
        sqlx::query(
            "INSERT INTO run_events (run_id, at, stage, detail) VALUES ($1, $2, 'finished', $3)
             ON CONFLICT (run_id, stage) DO NOTHING",
        )
        .bind(&finished.run_id)
        .bind(at)
        .bind(detail)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// One run with its destinations, or `None`.
    pub async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, RunLogError> {
        let row = sqlx::query(SELECT_RUN_WHERE_ID.as_str())
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let mut run = run_from_row(&row)?;
        let rows = sqlx::query(
            "SELECT destination, status, location, size, sha256, error FROM run_destinations
             WHERE run_id = $1 ORDER BY destination",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for row in rows {
            run.destinations.push(DestinationRecord {
                destination: row.try_get("destination").map_err(db)?,
                status: row.try_get("status").map_err(db)?,
                location: row.try_get("location").map_err(db)?,
                size: row.try_get("size").map_err(db)?,
                sha256: row.try_get("sha256").map_err(db)?,
                error: row.try_get("error").map_err(db)?,
            });
        }
        Ok(Some(run))
    }

    /// The newest runs first, at most `limit` (1..=500), asked before
    /// `before` when given (for paging).
    pub async fn list(
        &self,
        limit: i64,
        before: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunRecord>, RunLogError> {
        let rows = sqlx::query(SELECT_RUNS_BEFORE.as_str())
            .bind(before.unwrap_or(DateTime::<Utc>::MAX_UTC))
            .bind(limit.clamp(1, 500))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(run_from_row).collect()
    }

    /// A run's events after event id `after` (0 for all), in order.
    pub async fn events_after(
        &self,
        run_id: &str,
        after: i64,
    ) -> Result<Vec<RunEvent>, RunLogError> {
        let rows = sqlx::query(
            "SELECT id, run_id, at, stage, detail FROM run_events
             WHERE run_id = $1 AND id > $2 ORDER BY id",
        )
        .bind(run_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(RunEvent {
                    id: row.try_get("id").map_err(db)?,
                    run_id: row.try_get("run_id").map_err(db)?,
                    at: row.try_get("at").map_err(db)?,
                    stage: row.try_get("stage").map_err(db)?,
                    detail: row.try_get("detail").map_err(db)?,
                })
            })
            .collect()
    }
}

impl RunLog {
    /// Records a drill's result.
    pub async fn record_drill(&self, drill: &DrillRecord) -> Result<(), RunLogError> {
        sqlx::query(
            "INSERT INTO drills (at, destination, passed, failed_step, detail, backup_run_id, backup_created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(drill.at)
        .bind(&drill.destination)
        .bind(drill.passed)
        .bind(&drill.failed_step)
        .bind(&drill.detail)
        .bind(&drill.backup_run_id)
        .bind(drill.backup_created_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Per destination: when its last passing and last failing drill ran.
    pub async fn drill_times(&self) -> Result<Vec<DrillTimes>, RunLogError> {
        let rows = sqlx::query(
            "SELECT destination,
                    max(at) FILTER (WHERE passed) AS last_pass,
                    max(at) FILTER (WHERE NOT passed) AS last_fail
             FROM drills GROUP BY destination ORDER BY destination",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(DrillTimes {
                    destination: row.try_get("destination").map_err(db)?,
                    last_pass: row.try_get("last_pass").map_err(db)?,
                    last_fail: row.try_get("last_fail").map_err(db)?,
                })
            })
            .collect()
    }
}

const RUN_COLUMNS: &str = "run_id, reason, requested_by, note, requested_at, status, failed_stage, error, rows, warning_count, finished_at";

static SELECT_RUN_WHERE_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"));
static SELECT_RUNS_BEFORE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE requested_at < $1 ORDER BY requested_at DESC, run_id DESC LIMIT $2"
    )
});

fn run_from_row(row: &sqlx::postgres::PgRow) -> Result<RunRecord, RunLogError> {
    Ok(RunRecord {
        run_id: row.try_get("run_id").map_err(db)?,
        reason: row.try_get("reason").map_err(db)?,
        requested_by: row.try_get("requested_by").map_err(db)?,
        note: row.try_get("note").map_err(db)?,
        requested_at: row.try_get("requested_at").map_err(db)?,
        status: row.try_get("status").map_err(db)?,
        failed_stage: row.try_get("failed_stage").map_err(db)?,
        error: row.try_get("error").map_err(db)?,
        rows: row.try_get("rows").map_err(db)?,
        warning_count: row.try_get("warning_count").map_err(db)?,
        finished_at: row.try_get("finished_at").map_err(db)?,
        destinations: Vec::new(),
    })
}

/// A pool on `schema` (checked to be a plain identifier) of the database
/// at `database_url`; connection errors never carry the password.
async fn pool(
    database_url: &str,
    schema: &str,
    connections: u32,
    ca_bundle: Option<&CaBundle>,
) -> Result<(PgPool, Option<String>), RunLogError> {
    if schema.is_empty()
        || schema.len() > 63
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || schema.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(RunLogError::Config(format!(
            "schema {schema:?} must be 1-63 lower-case letters, digits or '_', not starting with a digit"
        )));
    }
    let target = PgTarget::new("database_url", database_url, ca_bundle)
        .map_err(|err| RunLogError::Config(err.to_string()))?;
    let options = target.options().clone().options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .map_err(|err| RunLogError::Database(target.explain(&err)))?;
    let warning = target.warning();
    if let Some(warning) = &warning {
        tracing::warn!(field = "database_url", "{warning}");
    }
    Ok((pool, warning))
}

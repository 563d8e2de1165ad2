//! The scheduler service: publishes one trigger per daily slot.
//!
//! A slot is `execute_time` on a calendar day in `time_zone`. Its run id is
//! `slot-<local date>T<HHMM>`, which is also the `Nats-Msg-Id`: two
//! scheduler replicas publishing the same slot produce one message, and the
//! stream's one-day duplicate window keeps it that way.
//!
//! Daylight-saving time: a local time that does not exist that day (spring
//! forward) runs at the first valid minute after it; a local time that
//! happens twice (fall back) runs once, at its first occurrence.

pub mod config_api;
pub mod grpc;
pub mod runlog;

use breakglass_bus::Bus;
use breakglass_bus::worker::chrono_now_ms;
use breakglass_config::DailyTime;
use breakglass_proto::v1;
use breakglass_service::ConfigSource;
use chrono::{DateTime, Duration, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

/// One scheduled run: when, and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The instant to run.
    pub at: DateTime<Utc>,
    /// `slot-YYYY-MM-DDTHHMM` in local time: the run id and dedupe key.
    pub run_id: String,
}

/// The instant of `time` on local `date` in `zone`, by the DST rules above.
pub fn slot_on(date: NaiveDate, time: DailyTime, zone: Tz) -> Slot {
    let run_id = format!(
        "slot-{}T{:02}{:02}",
        date.format("%Y-%m-%d"),
        time.hour,
        time.minute
    );
    let wanted = date
        .and_hms_opt(time.hour, time.minute, 0)
        .unwrap_or_default();
    let mut local = wanted;
    // At most a few hours are ever skipped; bound the search anyway.
    for _ in 0..(24 * 60) {
        match zone.from_local_datetime(&local) {
            LocalResult::Single(at) => {
                return Slot {
                    at: at.with_timezone(&Utc),
                    run_id,
                };
            }
            LocalResult::Ambiguous(first, _) => {
                return Slot {
                    at: first.with_timezone(&Utc),
                    run_id,
                };
            }
            LocalResult::None => local += Duration::minutes(1),
        }
    }
    // Unreachable with real zone data; fall back to reading the time as UTC.
    Slot {
        at: Utc.from_utc_datetime(&wanted),
        run_id,
    }
}

/// Connects the run log (retrying every 10 s while PostgreSQL is away, so
/// the schedule never waits for it) and records every bus event into it
/// until `shutdown`. The connected log goes to `connected` for the gRPC
/// run history. `ca_bundle` is trusted for TLS when `database_url` names no
/// `sslrootcert`.
pub async fn record_runs(
    bus: Bus,
    database_url: breakglass_core::Secret,
    schema: String,
    ca_bundle: Option<breakglass_config::CaBundle>,
    connected: tokio::sync::watch::Sender<Option<breakglass_runlog::RunLog>>,
    reachable: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    let log = loop {
        match breakglass_runlog::RunLog::connect_with_ca(
            database_url.expose(),
            &schema,
            ca_bundle.as_ref(),
        )
        .await
        {
            Ok(log) => break log,
            Err(err) => {
                tracing::error!(error = %err, "the run log is unavailable; retrying in 10 s (runs go on)");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
        }
    };
    tracing::info!(schema = %schema, "recording runs in the run log");
    let _ = connected.send(Some(log.clone()));
    reachable.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(export_drill_times(log.clone(), shutdown.clone()));
    tokio::spawn(watch_reachability(log.clone(), reachable, shutdown.clone()));
    if let Err(err) =
        breakglass_bus::worker::run(bus, runlog::RunLogStage::new(log), shutdown).await
    {
        tracing::error!(error = %err, "the run log recorder stopped");
    }
}

/// Asks PostgreSQL every 10 s whether it answers, for `/readyz`.
async fn watch_reachability(
    log: breakglass_runlog::RunLog,
    reachable: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let answers = tokio::time::timeout(std::time::Duration::from_secs(5), log.is_reachable())
            .await
            .unwrap_or(false);
        reachable.store(answers, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// Keeps the drill gauges (`breakglass_drill_last_{success,failure}_timestamp_seconds`)
/// in step with the drills recorded in the run log, once a minute: the
/// drill runs elsewhere (a CronJob), the scheduler is what Prometheus scrapes.
async fn export_drill_times(log: breakglass_runlog::RunLog, shutdown: CancellationToken) {
    let metrics = breakglass_telemetry::metrics::metrics();
    loop {
        match log.drill_times().await {
            Ok(times) => {
                for drill in times {
                    let label = breakglass_telemetry::metrics::DestinationLabel {
                        destination: drill.destination,
                    };
                    if let Some(at) = drill.last_pass {
                        metrics
                            .drill_last_success
                            .get_or_create(&label)
                            .set(at.timestamp_millis() as f64 / 1000.0);
                    }
                    if let Some(at) = drill.last_fail {
                        metrics
                            .drill_last_failure
                            .get_or_create(&label)
                            .set(at.timestamp_millis() as f64 / 1000.0);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read the drills from the run log"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

/// The first slot strictly after `now`.
pub fn next_slot(now: DateTime<Utc>, time: DailyTime, zone: Tz) -> Slot {
    let today = now.with_timezone(&zone).date_naive();
    for offset in 0..3 {
        let date = today + Duration::days(offset);
        let slot = slot_on(date, time, zone);
        if slot.at > now {
            return slot;
        }
    }
    slot_on(today + Duration::days(3), time, zone)
}

/// The most recent slot at or before `now`.
pub fn last_slot(now: DateTime<Utc>, time: DailyTime, zone: Tz) -> Slot {
    let today = now.with_timezone(&zone).date_naive();
    for offset in 0..3 {
        let slot = slot_on(today - Duration::days(offset), time, zone);
        if slot.at <= now {
            return slot;
        }
    }
    slot_on(today - Duration::days(3), time, zone)
}

/// Publishes the trigger for `slot`; returns true when it was a duplicate
/// (another replica, or an earlier attempt, already published it).
pub async fn publish_slot(
    bus: &Bus,
    slot: &Slot,
    reason: v1::TriggerReason,
) -> Result<bool, breakglass_bus::BusError> {
    let trigger = v1::TriggerRequested {
        run_id: slot.run_id.clone(),
        reason: reason as i32,
        requested_by: "scheduler".into(),
        requested_at_unix_ms: chrono_now_ms(),
        note: String::new(),
    };
    bus.trigger(&trigger).await
}

/// After downtime: when no run succeeded since the last slot, runs once now
/// (reason catch-up), not once per missed day. The catch-up run takes the
/// missed slot's run id, so a slot that was in fact triggered (within the
/// stream's one-day dedupe window) is not run twice, and two replicas
/// starting together produce one run.
pub async fn catch_up(bus: &Bus, time: DailyTime, zone: Tz, now: DateTime<Utc>) {
    let slot = last_slot(now, time, zone);
    let runs = match bus.recent_runs().await {
        Ok(runs) => runs,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read earlier runs; no catch-up check");
            return;
        }
    };
    let last_success = runs
        .iter()
        .filter(|run| run.status == v1::RunStatus::Succeeded as i32)
        .map(|run| run.finished_at_unix_ms)
        .max();
    if last_success.is_some_and(|at| at >= slot.at.timestamp_millis()) {
        tracing::info!(run_id = %slot.run_id, "the last slot has a successful run; no catch-up");
        return;
    }
    match publish_with_retries(bus, &slot, v1::TriggerReason::CatchUp).await {
        Some(duplicate) => {
            tracing::info!(run_id = %slot.run_id, duplicate, "catch-up run triggered for the missed slot")
        }
        None => tracing::error!(run_id = %slot.run_id, "catch-up trigger could not be published"),
    }
}

async fn publish_with_retries(bus: &Bus, slot: &Slot, reason: v1::TriggerReason) -> Option<bool> {
    for attempt in 1..=10u64 {
        match publish_slot(bus, slot, reason).await {
            Ok(duplicate) => return Some(duplicate),
            Err(err) => {
                tracing::warn!(error = %err, attempt, "publishing the trigger failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(attempt.min(30))).await;
            }
        }
    }
    None
}

/// How often the configuration is read again while waiting for a slot.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits [`RECHECK`] or until the settings change; false on shutdown.
async fn pause(
    shutdown: &CancellationToken,
    changes: &mut tokio::sync::watch::Receiver<breakglass_service::ApiLayer>,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(RECHECK) => true,
        _ = changes.changed() => true,
    }
}

/// Catches up once, then publishes each slot, until `shutdown`. Reads the
/// configuration again at least every minute, so a new `execute_time` or
/// `time_zone` applies without a restart; saving settings never by itself
/// starts a run.
pub async fn run(bus: Bus, config: ConfigSource, shutdown: CancellationToken) {
    // Settings saved through the config API arrive over the bus: catch-up
    // decides on them, not on their absence.
    if config.source().ok() == Some(breakglass_config::SettingsSource::Api)
        && !config.api_loaded(std::time::Duration::from_secs(30)).await
    {
        tracing::warn!(
            "the settings saved through the config API were not readable within 30 s; no catch-up this start"
        );
    }
    // Catch-up is decided once, on the settings known at start-up. Settings
    // that arrive later are a save, and a save never starts a run.
    if let Ok(settings) = config.load()
        && let Some(time) = settings.execute_time
    {
        catch_up(&bus, time, settings.time_zone, Utc::now()).await;
    }
    let mut changes = config.api_changes();
    let mut announced = None;
    loop {
        // Whatever changes from here on wakes the waits below.
        changes.borrow_and_update();
        let settings = match config.load() {
            Ok(settings) => settings,
            Err(breakglass_service::LoadError::ApiEmpty) => {
                if announced != Some(None) {
                    tracing::info!(
                        "no settings saved through the config API yet: nothing scheduled"
                    );
                    announced = Some(None);
                }
                if !pause(&shutdown, &mut changes).await {
                    return;
                }
                continue;
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "configuration is invalid; keeping the schedule paused until it is fixed");
                if !pause(&shutdown, &mut changes).await {
                    return;
                }
                continue;
            }
        };
        let Some(time) = settings.execute_time else {
            if announced != Some(None) {
                tracing::info!("no execute_time configured: on-demand runs only");
                announced = Some(None);
            }
            if !pause(&shutdown, &mut changes).await {
                return;
            }
            continue;
        };
        let slot = next_slot(Utc::now(), time, settings.time_zone);
        if announced.as_ref() != Some(&Some(slot.clone())) {
            tracing::info!(run_id = %slot.run_id, at = %slot.at, "next scheduled run");
            announced = Some(Some(slot.clone()));
        }
        let wait = (slot.at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(RECHECK);
        // Biased: when the slot's time and a settings change come together,
        // the slot is published first (below), so a save cannot skip a run.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
        }
        if Utc::now() >= slot.at {
            // Publishing is never cancelled half-way.
            match publish_with_retries(&bus, &slot, v1::TriggerReason::Scheduled).await {
                Some(duplicate) => {
                    tracing::info!(run_id = %slot.run_id, duplicate, "scheduled run triggered")
                }
                None => {
                    tracing::error!(run_id = %slot.run_id, "scheduled trigger could not be published")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> DailyTime {
        DailyTime::parse(text).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_ordinary_day_runs_at_local_time() {
        let slot = next_slot(
            utc("2026-11-27T08:00:00Z"),
            time("09:30"),
            chrono_tz::Europe::Berlin,
        );
        assert_eq!(slot.at, utc("2026-11-27T08:30:00Z"));
        assert_eq!(slot.run_id, "slot-2026-11-27T0930");
        let after = next_slot(slot.at, time("09:30"), chrono_tz::Europe::Berlin);
        assert_eq!(after.run_id, "slot-2026-11-28T0930");
    }

    #[test]
    fn a_skipped_local_time_runs_at_the_next_valid_minute() {
        // 2026-03-08 02:30 does not exist in New York (clocks jump 02:00 -> 03:00 EDT).
        let slot = slot_on(
            NaiveDate::from_ymd_opt(2026, 3, 8).unwrap(),
            time("02:30"),
            chrono_tz::America::New_York,
        );
        assert_eq!(slot.at, utc("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn a_repeated_local_time_runs_once() {
        // 2026-11-01 01:30 happens twice in New York; run at the first (EDT).
        let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let slot = slot_on(date, time("01:30"), chrono_tz::America::New_York);
        assert_eq!(slot.at, utc("2026-11-01T05:30:00Z"));
        // Right after it, the next slot is the following day, not the repeat.
        let next = next_slot(slot.at, time("01:30"), chrono_tz::America::New_York);
        assert_eq!(next.run_id, "slot-2026-11-02T0130");
    }

    #[test]
    fn the_last_slot_is_the_latest_one_not_after_now() {
        let zone = chrono_tz::Asia::Taipei; // UTC+8
        let before = last_slot(utc("2026-11-27T01:00:00Z"), time("09:30"), zone); // 09:00 local
        assert_eq!(before.run_id, "slot-2026-11-26T0930");
        let after = last_slot(utc("2026-11-27T01:30:00Z"), time("09:30"), zone); // exactly 09:30 local
        assert_eq!(after.run_id, "slot-2026-11-27T0930");
        assert_eq!(after.at, utc("2026-11-27T01:30:00Z"));
    }
}

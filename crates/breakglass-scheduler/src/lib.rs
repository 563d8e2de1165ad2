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

use breakglass_bus::Bus;
use breakglass_bus::worker::chrono_now_ms;
use breakglass_config::DailyTime;
use breakglass_proto::v1;
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

/// Publishes the trigger for `slot`; returns true when it was a duplicate
/// (another replica, or an earlier attempt, already published it).
pub async fn publish_slot(bus: &Bus, slot: &Slot) -> Result<bool, breakglass_bus::BusError> {
    let trigger = v1::TriggerRequested {
        run_id: slot.run_id.clone(),
        reason: v1::TriggerReason::Scheduled as i32,
        requested_by: "scheduler".into(),
        requested_at_unix_ms: chrono_now_ms(),
        note: String::new(),
    };
    bus.publish(&bus.subjects().trigger(), &slot.run_id, &trigger)
        .await
}

/// Sleeps until each slot and publishes it, until `shutdown`.
pub async fn run(bus: Bus, time: Option<DailyTime>, zone: Tz, shutdown: CancellationToken) {
    let Some(time) = time else {
        tracing::info!("no execute_time configured: on-demand runs only");
        shutdown.cancelled().await;
        return;
    };
    loop {
        let slot = next_slot(Utc::now(), time, zone);
        tracing::info!(run_id = %slot.run_id, at = %slot.at, "next scheduled run");
        let wait = (slot.at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Publishing is never cancelled half-way; retry until it lands.
        let mut attempt = 0u32;
        loop {
            match publish_slot(&bus, &slot).await {
                Ok(duplicate) => {
                    tracing::info!(run_id = %slot.run_id, duplicate, "scheduled run triggered");
                    break;
                }
                Err(err) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "publishing the scheduled trigger failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt).min(30)))
                        .await;
                }
                Err(err) => {
                    tracing::error!(error = %err, run_id = %slot.run_id, "scheduled trigger could not be published");
                    break;
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
}

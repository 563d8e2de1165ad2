//! One run's workbook to every configured destination, and the run's
//! outcome: the one place both the uploader and `run-once` decide it.
//!
//! Every destination is stored independently and concurrently (one failing
//! or waiting does not hold up the others). A transient failure (timeout,
//! connection, 5xx, throttling) is retried inside this call with
//! exponential back-off and jitter until the [`RetryBudget`] is spent; the
//! time waited is recorded per destination. The caller (a bus stage) keeps
//! the message alive meanwhile with in-progress acks.

use crate::{Backend, Receipt, StorageError, Upload, store};
use std::future::Future;
use std::time::Duration;
use tracing::Instrument;

/// How long, and how, a transiently failing destination is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Total time spent waiting between attempts, at most.
    pub budget: Duration,
    /// The first wait.
    pub first: Duration,
    /// No wait is longer than this (before jitter).
    pub cap: Duration,
    /// Each wait is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl RetryBudget {
    /// A budget of `budget` with the default schedule: 1 s doubling to a
    /// 60 s cap, ±20 % jitter.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            first: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.2,
        }
    }

    /// No retry at all: one attempt.
    pub fn none() -> Self {
        Self::new(Duration::ZERO)
    }

    /// The wait before retry number `retry` (0 = the first retry), given
    /// how long was already waited and a uniform random `unit` in
    /// `[0, 1)`; `None` when the budget is spent. The last wait is cut to
    /// what the budget has left.
    pub fn delay(&self, retry: u32, waited: Duration, unit: f64) -> Option<Duration> {
        let left = self.budget.checked_sub(waited)?;
        if left.is_zero() {
            return None;
        }
        let base = self
            .first
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.cap);
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64(factor.max(0.0)).min(left))
    }
}

/// How one run ended, as far as storing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every destination holds the run's verified copy.
    Succeeded,
    /// Some did, some did not.
    PartiallyFailed,
    /// None did, or none is configured.
    Failed,
}

/// One destination's part of a delivery.
#[derive(Debug)]
pub struct Outcome {
    /// The destination, described without secrets.
    pub destination: String,
    /// The receipt, or why it failed after the budget.
    pub result: Result<Receipt, StorageError>,
    /// Time spent waiting between attempts.
    pub waited: Duration,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Time from the first attempt to the result.
    pub elapsed: Duration,
    /// The `upload` span the attempts ran in (attribute `destination`),
    /// for the caller to hang its own spans under.
    pub span: tracing::Span,
}

/// The result of [`store_all`].
#[derive(Debug)]
pub struct Delivery {
    /// One outcome per destination, in the configured order.
    pub outcomes: Vec<Outcome>,
    /// The run's status.
    pub status: Status,
    /// Why it did not fully succeed, in plain words (empty on success).
    pub error: String,
}

impl Delivery {
    /// The destinations that still fail transiently after the budget: a
    /// redelivery may get through.
    pub fn transient_failures(&self) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_err_and(StorageError::is_transient))
            .collect()
    }

    fn decide(outcomes: Vec<Outcome>) -> Self {
        let succeeded = outcomes.iter().filter(|o| o.result.is_ok()).count();
        let status = if outcomes.is_empty() || succeeded == 0 {
            Status::Failed
        } else if succeeded < outcomes.len() {
            Status::PartiallyFailed
        } else {
            Status::Succeeded
        };
        let error = if outcomes.is_empty() {
            "no destination is configured".to_owned()
        } else {
            outcomes
                .iter()
                .filter_map(|o| o.result.as_ref().err().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Self {
            outcomes,
            status,
            error,
        }
    }
}

/// Stores `upload` in every destination, each retried within `budget`,
/// and decides the run's outcome. Waits with `tokio::time::sleep`.
pub async fn store_all<B: Backend>(
    destinations: &[B],
    upload: &Upload<'_>,
    budget: RetryBudget,
) -> Delivery {
    store_all_with(destinations, upload, budget, tokio::time::sleep).await
}

/// [`store_all`] with the waiting injected (tests wait for nothing).
pub async fn store_all_with<B, S, F>(
    destinations: &[B],
    upload: &Upload<'_>,
    budget: RetryBudget,
    sleep: S,
) -> Delivery
where
    B: Backend,
    S: Fn(Duration) -> F + Clone,
    F: Future<Output = ()>,
{
    let outcomes = futures::future::join_all(destinations.iter().map(|destination| {
        let sleep = sleep.clone();
        async move { store_one(destination, upload, budget, sleep).await }
    }))
    .await;
    Delivery::decide(outcomes)
}

async fn store_one<B, S, F>(
    destination: &B,
    upload: &Upload<'_>,
    budget: RetryBudget,
    sleep: S,
) -> Outcome
where
    B: Backend,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let described = destination.describe();
    let span = tracing::info_span!("upload", destination = %described, bytes = upload.size);
    let started = std::time::Instant::now();
    let mut waited = Duration::ZERO;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = store::store(destination, upload)
            .instrument(span.clone())
            .await;
        let retry = match &result {
            Err(err) if err.is_transient() => budget
                .delay(attempts - 1, waited, rand::random::<f64>())
                .map(|delay| (delay, err.to_string())),
            _ => None,
        };
        let Some((delay, error)) = retry else {
            return Outcome {
                destination: described,
                result,
                waited,
                attempts,
                elapsed: started.elapsed(),
                span,
            };
        };
        tracing::warn!(
            parent: &span,
            destination = %described,
            error = %error,
            attempt = attempts,
            retry_in_ms = delay.as_millis() as u64,
            "upload failed transiently; retrying within the budget"
        );
        sleep(delay).await;
        waited += delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_to_its_cap_with_jitter_and_stops_at_the_budget() {
        let budget = RetryBudget::new(Duration::from_secs(1200));
        // Without jitter (unit 0.5): 1, 2, 4, ... capped at 60 s.
        let mut waited = Duration::ZERO;
        let mut delays = Vec::new();
        for retry in 0.. {
            let Some(delay) = budget.delay(retry, waited, 0.5) else {
                break;
            };
            delays.push(delay);
            waited += delay;
        }
        assert_eq!(
            delays[..7]
                .iter()
                .map(Duration::as_secs)
                .collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60]
        );
        let (last, before) = delays.split_last().unwrap();
        assert!(
            before.windows(2).all(|w| w[0] <= w[1]),
            "monotone until the last wait, which is cut to the budget: {delays:?}"
        );
        assert_eq!(*last, Duration::from_secs(57));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(60)),
            "capped"
        );
        assert_eq!(
            waited,
            Duration::from_secs(1200),
            "the budget is used, not exceeded"
        );
        assert_eq!(budget.delay(99, waited, 0.5), None, "spent");
        // Jitter stays within ±20 %.
        assert_eq!(
            budget.delay(3, Duration::ZERO, 0.0),
            Some(Duration::from_millis(6400))
        );
        assert_eq!(
            budget.delay(3, Duration::ZERO, 1.0),
            Some(Duration::from_millis(9600))
        );
        let random: Vec<_> = (0..50)
            .map(|_| {
                budget
                    .delay(10, Duration::ZERO, rand::random::<f64>())
                    .unwrap()
            })
            .collect();
        assert!(
            random
                .iter()
                .all(|d| *d >= Duration::from_secs(48) && *d <= Duration::from_secs(72))
        );
        assert!(random.iter().any(|d| *d != random[0]), "jittered");
        // No budget: no retry.
        assert_eq!(RetryBudget::none().delay(0, Duration::ZERO, 0.5), None);
    }

    /// An in-memory backend whose puts fail transiently `failures` times.
    struct Flaky {
        failures: std::sync::atomic::AtomicU32,
        stored: std::sync::Mutex<Option<crate::ObjectMeta>>,
    }

    impl Flaky {
        fn new(failures: u32) -> Self {
            Self {
                failures: failures.into(),
                stored: std::sync::Mutex::new(None),
            }
        }
    }

    impl Backend for Flaky {
        fn describe(&self) -> String {
            "flaky:".into()
        }
        fn rotation(&self) -> breakglass_config::Rotation {
            breakglass_config::Rotation::Overwrite
        }
        fn key(&self, name: &str) -> String {
            name.into()
        }
        fn location(&self, key: &str) -> String {
            key.into()
        }
        async fn put_file(
            &self,
            _key: &str,
            upload: &Upload<'_>,
            _mode: crate::PutMode,
        ) -> Result<(), StorageError> {
            let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
            if left > 0 {
                self.failures
                    .store(left - 1, std::sync::atomic::Ordering::SeqCst);
                return Err(StorageError::Remote {
                    destination: self.describe(),
                    action: "PutObject",
                    code: "connection".into(),
                    reason: "connection refused".into(),
                    transient: true,
                });
            }
            *self.stored.lock().unwrap() = Some(crate::ObjectMeta {
                size: upload.size,
                sha256: Some(upload.sha256.into()),
                created_at: Some(upload.created_at),
            });
            Ok(())
        }
        async fn put_small(
            &self,
            _key: &str,
            _bytes: Vec<u8>,
            _content_type: &'static str,
            _mode: crate::PutMode,
        ) -> Result<(), StorageError> {
            Ok(())
        }
        async fn head(&self, key: &str) -> Result<Option<crate::ObjectMeta>, StorageError> {
            Ok(if key.ends_with(".json") {
                None
            } else {
                self.stored.lock().unwrap().clone()
            })
        }
        async fn list(&self) -> Result<Vec<crate::archive::StoredObject>, StorageError> {
            Ok(Vec::new())
        }
        async fn download(
            &self,
            _key: &str,
            _to: &std::path::Path,
        ) -> Result<crate::archive::Downloaded, StorageError> {
            unreachable!("not read")
        }
        async fn get_small(
            &self,
            _key: &str,
            _limit: u64,
        ) -> Result<Option<Vec<u8>>, StorageError> {
            Ok(None)
        }
        async fn delete(&self, _key: &str) -> Result<(), StorageError> {
            Ok(())
        }
    }

    fn upload() -> Upload<'static> {
        Upload {
            file: std::path::Path::new("/nonexistent"),
            size: 3,
            sha256: "abc",
            run_id: "run-1",
            created_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            extension: ".xlsx",
            encryption: "none",
            key_id: "",
            projects: &[],
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_budget_and_the_wait_recorded() {
        let slept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sleep = {
            let slept = slept.clone();
            move |delay: Duration| {
                slept.lock().unwrap().push(delay);
                std::future::ready(())
            }
        };
        // Three failures, a budget of an hour: the fourth attempt stores.
        let destinations = [Flaky::new(3), Flaky::new(0)];
        let delivery = store_all_with(
            &destinations,
            &upload(),
            RetryBudget::new(Duration::from_secs(3600)),
            sleep.clone(),
        )
        .await;
        assert_eq!(delivery.status, Status::Succeeded, "{delivery:?}");
        let flaky = &delivery.outcomes[0];
        assert_eq!(flaky.attempts, 4);
        let waits = slept.lock().unwrap().clone();
        assert_eq!(waits.len(), 3);
        assert_eq!(flaky.waited, waits.iter().sum::<Duration>());
        assert!(flaky.waited >= Duration::from_millis(800 + 1600 + 3200));
        assert_eq!(delivery.outcomes[1].attempts, 1, "the other is not held up");
        assert_eq!(delivery.outcomes[1].waited, Duration::ZERO);

        // The same run again: already stored, nothing retried or sent.
        let again = store_all_with(
            &destinations[..1],
            &upload(),
            RetryBudget::none(),
            sleep.clone(),
        )
        .await;
        let receipt = again.outcomes[0].result.as_ref().unwrap();
        assert!(receipt.already_stored);

        // A budget of 5 s against an outage that does not end: it stops.
        slept.lock().unwrap().clear();
        let down = [Flaky::new(u32::MAX)];
        let delivery = store_all_with(
            &down,
            &upload(),
            RetryBudget::new(Duration::from_secs(5)),
            sleep,
        )
        .await;
        assert_eq!(delivery.status, Status::Failed);
        assert_eq!(delivery.outcomes[0].waited, Duration::from_secs(5));
        assert!(
            delivery.error.contains("connection refused"),
            "{}",
            delivery.error
        );
        assert_eq!(delivery.transient_failures().len(), 1);
    }
}

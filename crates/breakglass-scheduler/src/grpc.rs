//! The scheduler's gRPC API: the run history (`RunHistory`) from the
//! PostgreSQL run log — `TriggerNow`, `GetRun`, `ListRuns` and `WatchRun`.
//!
//! Listening only with `--grpc ADDR` and a `database_url`, behind the
//! bearer-token check of [`breakglass_service::grpc`]. Until the run log is
//! connected (PostgreSQL may come up after the scheduler), calls answer
//! UNAVAILABLE.

use breakglass_bus::Bus;
use breakglass_core::RunId;
use breakglass_proto::v1;
use breakglass_proto::v1::run_history_server::RunHistory;
use breakglass_runlog::{RunEvent, RunLog, RunRecord};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// How often `WatchRun` looks for new events.
const WATCH_POLL: Duration = Duration::from_millis(250);
/// How long one `WatchRun` follows a run before it ends the stream.
const WATCH_LIMIT: Duration = Duration::from_secs(3600);

/// The `RunHistory` service.
#[derive(Clone, Debug)]
pub struct RunHistoryService {
    bus: Bus,
    log: watch::Receiver<Option<RunLog>>,
}

impl RunHistoryService {
    /// Serves from the run log once `log` holds it; triggers go to `bus`.
    pub fn new(bus: Bus, log: watch::Receiver<Option<RunLog>>) -> Self {
        Self { bus, log }
    }

    fn log(&self) -> Result<RunLog, Status> {
        self.log.borrow().clone().ok_or_else(|| {
            Status::unavailable("the run log (PostgreSQL) is not connected yet; try again shortly")
        })
    }
}

fn internal(err: breakglass_runlog::RunLogError) -> Status {
    tracing::error!(error = %err, "a run history call failed");
    Status::unavailable(err.to_string())
}

fn to_proto(run: RunRecord) -> v1::Run {
    let status_of = |name: &str| match name {
        "succeeded" => v1::RunStatus::Succeeded,
        "partially_failed" => v1::RunStatus::PartiallyFailed,
        "failed" => v1::RunStatus::Failed,
        _ => v1::RunStatus::Unspecified,
    };
    v1::Run {
        run_id: run.run_id,
        reason: run.reason,
        requested_by: run.requested_by,
        note: run.note,
        requested_at_unix_ms: run.requested_at.timestamp_millis(),
        status: run.status,
        failed_stage: run.failed_stage,
        error: run.error,
        rows: run.rows.max(0) as u64,
        warning_count: run.warning_count.max(0) as u64,
        finished_at_unix_ms: run.finished_at.map_or(0, |t| t.timestamp_millis()),
        destinations: run
            .destinations
            .into_iter()
            .map(|d| v1::DestinationResult {
                status: status_of(&d.status) as i32,
                destination: d.destination,
                location: d.location,
                size: d.size.max(0) as u64,
                sha256: d.sha256,
                error: d.error,
                // The run log does not keep these (run.finished does).
                ..Default::default()
            })
            .collect(),
    }
}

fn event_to_proto(event: &RunEvent) -> v1::RunEvent {
    v1::RunEvent {
        run_id: event.run_id.clone(),
        stage: event.stage.clone(),
        detail: event.detail.clone(),
        at_unix_ms: event.at.timestamp_millis(),
        ends_run: event.is_final(),
    }
}

/// Text fields from a caller end up in the run log: keep them short and
/// printable.
fn clean(text: &str, field: &str) -> Result<String, Status> {
    if text.chars().count() > 200 {
        return Err(Status::invalid_argument(format!(
            "{field}: at most 200 characters"
        )));
    }
    Ok(text.chars().filter(|c| !c.is_control()).collect())
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<v1::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RunHistory for RunHistoryService {
    async fn trigger_now(
        &self,
        request: Request<v1::TriggerNowRequest>,
    ) -> Result<Response<v1::TriggerNowResponse>, Status> {
        let log = self.log()?;
        let request = request.into_inner();
        let requested_by = clean(&request.requested_by, "requested_by")?;
        let trigger = v1::TriggerRequested {
            run_id: RunId::generate().to_string(),
            reason: v1::TriggerReason::OnDemand as i32,
            requested_by: if requested_by.is_empty() {
                "grpc".into()
            } else {
                requested_by
            },
            requested_at_unix_ms: breakglass_bus::worker::chrono_now_ms(),
            note: clean(&request.note, "note")?,
        };
        // Recorded first, so a WatchRun right after this call finds it.
        log.record_trigger(&trigger).await.map_err(internal)?;
        self.bus.trigger(&trigger).await.map_err(|err| {
            Status::unavailable(format!("the trigger could not be published: {err}"))
        })?;
        tracing::info!(run_id = %trigger.run_id, requested_by = %trigger.requested_by, "on-demand run triggered over gRPC");
        Ok(Response::new(v1::TriggerNowResponse {
            run_id: trigger.run_id,
        }))
    }

    async fn get_run(
        &self,
        request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let log = self.log()?;
        let run_id = request.into_inner().run_id;
        match log.get(&run_id).await.map_err(internal)? {
            Some(run) => Ok(Response::new(to_proto(run))),
            None => Err(Status::not_found(format!(
                "no run {run_id:?} in the run log"
            ))),
        }
    }

    async fn list_runs(
        &self,
        request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let log = self.log()?;
        let request = request.into_inner();
        let limit = if request.limit == 0 {
            20
        } else {
            i64::from(request.limit)
        };
        let before = (request.before_unix_ms > 0)
            .then(|| chrono::DateTime::from_timestamp_millis(request.before_unix_ms))
            .flatten();
        let runs = log.list(limit, before).await.map_err(internal)?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: runs.into_iter().map(to_proto).collect(),
        }))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        request: Request<v1::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let log = self.log()?;
        let run_id = request.into_inner().run_id;
        if log.get(&run_id).await.map_err(internal)?.is_none() {
            return Err(Status::not_found(format!(
                "no run {run_id:?} in the run log"
            )));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WATCH_LIMIT;
            let mut last = 0;
            loop {
                match log.events_after(&run_id, last).await {
                    Ok(events) => {
                        for event in &events {
                            last = event.id;
                            if sender.send(Ok(event_to_proto(event))).await.is_err() {
                                return; // the caller went away
                            }
                            if event.is_final() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = sender.send(Err(internal(err))).await;
                        return;
                    }
                }
                if tokio::time::Instant::now() >= deadline || sender.is_closed() {
                    return;
                }
                tokio::time::sleep(WATCH_POLL).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream_from(receiver))))
    }
}

/// A stream over an mpsc receiver.
fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<v1::RunEvent, Status>>,
) -> impl futures::Stream<Item = Result<v1::RunEvent, Status>> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

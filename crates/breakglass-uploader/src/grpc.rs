//! The uploader's gRPC API: the destination Test (`DestinationTest`), served
//! here because the Test must take the same network path as real uploads.
//!
//! Listening only with `--grpc ADDR` (`$BREAKGLASS_GRPC_ADDR`), behind the
//! bearer-token check of [`breakglass_service::grpc`]. The request's
//! settings are the settings page's fields; a secret field holding the mask
//! takes the stored value as it is now (the config file's, or the one
//! saved through the config API) only while every field that decides where
//! that secret is sent is unchanged from those stored settings
//! (`breakglass_config::mask`); otherwise the call fails with
//! INVALID_ARGUMENT naming the secret to type again, before any request
//! leaves the uploader.

use breakglass_probe::{Stage, StageResult, Status};
use breakglass_proto::v1;
use breakglass_proto::v1::destination_test_server::DestinationTest;
use breakglass_service::{ConfigSource, LoadError};
use std::pin::Pin;
use tonic::{Request, Response, Status as GrpcStatus};

/// The `DestinationTest` service.
#[derive(Clone, Debug)]
pub struct DestinationTestService {
    config: ConfigSource,
}

impl DestinationTestService {
    /// Resolves masked secrets against the file `config` points to.
    pub fn new(config: ConfigSource) -> Self {
        Self { config }
    }

    fn settings(
        &self,
        request: &v1::TestRequest,
    ) -> Result<breakglass_config::Settings, GrpcStatus> {
        // Before the first save through the API (or before it is read),
        // a Test still runs: masks then fill from the file's wiring only.
        let stored = match self.config.effective_raw() {
            Ok(raw) => Ok(raw),
            Err(LoadError::ApiEmpty | LoadError::ApiNotLoaded) => {
                self.config.raw_file().map_err(LoadError::from)
            }
            Err(err) => Err(err),
        }
        .map_err(|err| {
            tracing::warn!(error = %err, "the stored settings cannot be read for a Test");
            GrpcStatus::failed_precondition(format!(
                "the stored settings cannot be read to fill in masked secrets: {err}"
            ))
        })?;
        breakglass_probe::request::settings_from_pairs(
            request
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            Some(&stored),
        )
        .map_err(|err| {
            tracing::info!(
                problems = err.problems.len(),
                fields = ?err.problems.iter().map(|p| p.field.as_str()).collect::<Vec<_>>(),
                "a Test request has invalid settings"
            );
            invalid(&err)
        })
    }
}

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per
/// problem (values masked when secret), as the config API answers; the
/// message lists every problem too, for callers that read only it.
fn invalid(err: &breakglass_config::ConfigError) -> GrpcStatus {
    use tonic_types::StatusExt as _;
    let mut details = tonic_types::ErrorDetails::new();
    for problem in &err.problems {
        details.add_bad_request_violation(
            problem.field.clone(),
            format!("{:?}: {}", problem.shown_value, problem.rule),
        );
    }
    GrpcStatus::with_error_details(tonic::Code::InvalidArgument, err.to_string(), details)
}

/// The wire form of one stage result.
pub fn to_proto(result: &StageResult) -> v1::StageResult {
    let stage = match result.stage {
        Stage::Connection => v1::Stage::Connection,
        Stage::Authentication => v1::Stage::Authentication,
        Stage::ContainerExists => v1::Stage::ContainerExists,
        Stage::Upload => v1::Stage::Upload,
        Stage::LeastPrivilege => v1::Stage::LeastPrivilege,
        Stage::Retention => v1::Stage::Retention,
    };
    let status = match result.status {
        Status::Ok => v1::StageStatus::Ok,
        Status::Warning => v1::StageStatus::Warning,
        Status::Failed => v1::StageStatus::Failed,
        Status::Skipped => v1::StageStatus::Skipped,
    };
    v1::StageResult {
        destination: result.destination.clone(),
        stage: stage as i32,
        status: status as i32,
        duration_ms: result.duration.as_millis() as u64,
        message: result.message.clone(),
        stage_name: result.stage.name().to_owned(),
    }
}

type ResultStream =
    Pin<Box<dyn futures::Stream<Item = Result<v1::StageResult, GrpcStatus>> + Send>>;

#[tonic::async_trait]
impl DestinationTest for DestinationTestService {
    type RunStream = ResultStream;

    async fn run(
        &self,
        request: Request<v1::TestRequest>,
    ) -> Result<Response<Self::RunStream>, GrpcStatus> {
        let settings = self.settings(request.get_ref())?;
        tracing::info!(
            destinations = settings.storage.len(),
            "destination test (streaming)"
        );
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut sink = |result: &StageResult| {
                // A caller that went away just stops listening.
                let _ = sender.send(Ok(to_proto(result)));
            };
            breakglass_probe::run(&settings, &mut sink).await;
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn run_unary(
        &self,
        request: Request<v1::TestRequest>,
    ) -> Result<Response<v1::TestReport>, GrpcStatus> {
        let settings = self.settings(request.get_ref())?;
        tracing::info!(
            destinations = settings.storage.len(),
            "destination test (unary)"
        );
        let report = breakglass_probe::run(&settings, &mut |_| {}).await;
        Ok(Response::new(v1::TestReport {
            passed: !report.failed(),
            stages: report.results.iter().map(to_proto).collect(),
        }))
    }
}

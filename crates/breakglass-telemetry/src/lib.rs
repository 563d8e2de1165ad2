//! Logging and tracing for every breakglass binary, set up in one call.
//!
//! - Logs: `tracing` to stderr, human-readable on a terminal and JSON lines
//!   otherwise; `BREAKGLASS_LOG_FORMAT=json|text` forces one; `RUST_LOG`
//!   filters (default `info`).
//! - Traces: OpenTelemetry over OTLP/gRPC when the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (other `OTEL_*` variables apply
//!   as usual); otherwise none. The exporter's own transport (tonic, h2,
//!   hyper) is filtered out so it cannot trace itself into a loop.
//! - Propagation: W3C trace context, so the bus can carry a run's trace
//!   across processes ([`inject_current`], [`set_parent`]); a message that
//!   arrives without one joins a trace derived from its run id
//!   ([`set_parent_or_run_root`]), so one run is one trace.
//!
//! - Metrics: [`metrics::metrics`], the Prometheus registry `/metrics` serves.
//!
//! [`Telemetry`] is the handle that flushes spans on exit: keep it alive in
//! `main` and call [`Telemetry::shutdown`] last.
#![warn(missing_docs)]

pub mod metrics;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint...).
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("tracing subscriber: {0}")]
    Subscriber(String),
}

/// Keeps the trace exporter alive; flushes it on [`Telemetry::shutdown`] or
/// drop.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging (default level info) and, when configured, trace export
/// for `service`. Call once, inside the Tokio runtime, at the start of `main`.
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    init_with_default(service, tracing::Level::INFO)
}

/// Like [`init`], with another default log level (commands that print their
/// own results log warnings only unless `RUST_LOG` says otherwise).
pub fn init_with_default(
    service: &'static str,
    level: tracing::Level,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let env_filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(level).into())
        .from_env_lossy();
    let json = match std::env::var("BREAKGLASS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed()
    };
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty());
    // A provider is always installed, so every run gets trace ids that
    // travel between services even when nothing is exported; the exporter
    // is added only when an endpoint is configured.
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let quiet_transport = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF);
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(quiet_transport);
    let provider = Some(provider);
    tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
    Ok(Telemetry { provider })
}

/// The W3C trace-context headers (`traceparent`, `tracestate`) of the
/// current span, to send along with a message.
pub fn inject_current() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut headers = HeaderPairs(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers);
    });
    headers.0
}

/// Makes `span` a child of the trace described by received headers. A
/// message without trace headers leaves the span a new root.
pub fn set_parent<'a>(span: &tracing::Span, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let pairs = HeaderPairs(
        headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&pairs));
    // An error only means the span was already started with a parent.
    let _ = span.set_parent(context);
}

/// Like [`set_parent`], for a message that belongs to run `run_id`: when
/// the headers carry no valid trace context (the Mavis core may send a
/// trigger without `traceparent`), the span joins the run's own trace,
/// [`run_root_context`], so every delivery of that message lands in one
/// trace however often it is redelivered.
pub fn set_parent_or_run_root<'a>(
    span: &tracing::Span,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    run_id: &str,
) {
    use opentelemetry::trace::TraceContextExt;
    let pairs = HeaderPairs(
        headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&pairs));
    let context = if context.span().span_context().is_valid() || run_id.is_empty() {
        context
    } else {
        run_root_context(run_id)
    };
    // An error only means the span was already started with a parent.
    let _ = span.set_parent(context);
}

/// The deterministic root of run `run_id`'s trace: a remote, sampled parent
/// whose trace id is the first 16 bytes, and span id the next 8, of
/// SHA-256("breakglass-run:" + run id). Every process derives the same one,
/// so a run that arrived without trace context is still one trace.
pub fn run_root_context(run_id: &str) -> opentelemetry::Context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"breakglass-run:")
        .chain_update(run_id.as_bytes())
        .finalize();
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&digest[..16]);
    let mut span = [0u8; 8];
    span.copy_from_slice(&digest[16..24]);
    // An all-zero id is invalid; a hash gives one with odds of 2^-64.
    if span == [0; 8] {
        span[7] = 1;
    }
    if trace == [0; 16] {
        trace[15] = 1;
    }
    let parent = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(parent)
}

/// The OpenTelemetry trace id of `span` (32 hex digits), once it has one.
/// Recorded as a span field so every log line of a run carries it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Trace-context header names the bus must carry.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

struct HeaderPairs(Vec<(String, String)>);

impl Injector for HeaderPairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

impl Extractor for HeaderPairs {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn a_run_root_is_the_same_for_the_same_run_and_differs_between_runs() {
        let one = run_root_context("run-1");
        let again = run_root_context("run-1");
        let other = run_root_context("run-2");
        let id = |c: &opentelemetry::Context| c.span().span_context().clone();
        assert!(id(&one).is_valid());
        assert!(id(&one).is_remote());
        assert!(id(&one).is_sampled());
        assert_eq!(id(&one).trace_id(), id(&again).trace_id());
        assert_eq!(id(&one).span_id(), id(&again).span_id());
        assert_ne!(id(&one).trace_id(), id(&other).trace_id());
    }
}

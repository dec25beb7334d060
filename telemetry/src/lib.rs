//! How learnsync's processes set up tracing, in one place: the server, the workers, the demo, the
//! benchmark and the test harnesses all call [`init`] (or [`init_with`]).
//!
//! Layout:
//! - [`Output`]: where log lines go and in which form.
//! - [`Otlp`]: where spans go, when anywhere: an OTLP/gRPC collector, named by the standard
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (unset: no exporter, no
//!   cost beyond the log lines).
//! - [`init`] / [`init_with`]: install the subscriber once (`RUST_LOG` filters the log lines; later
//!   calls do nothing) and answer a [`Guard`] that flushes the exporter when dropped.
//! - The trace of a run: [`continue_trace`] parents a span on a caller's `traceparent` (the server's
//!   span per gRPC call), [`join_run`] parents a span on a run's trace (the worker's span per job),
//!   [`current_trace_id`] is the trace id of the span being exported, if any.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Where log lines go and in which form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Human-readable lines on standard output.
    Text,
    /// Human-readable lines on standard error (a program whose standard output is read by another).
    Stderr,
    /// One JSON object per line on standard output (for log shippers).
    Json,
    /// Into the test harness's captured output: a passing test stays quiet, a failing one shows
    /// what went wrong.
    Test,
}

/// An OTLP/gRPC collector to export spans to, in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Otlp {
    /// `None`: the exporter reads the standard variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// else `OTEL_EXPORTER_OTLP_ENDPOINT`, and their `_TIMEOUT`, `_HEADERS`, `_COMPRESSION`).
    endpoint: Option<String>,
}

impl Otlp {
    /// The collector the standard environment names: `Some` when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and not empty.
    pub fn from_env() -> Option<Otlp> {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
        (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .then_some(Otlp { endpoint: None })
    }

    /// A collector at `endpoint` (`http://host:4317`), whatever the environment says.
    pub fn endpoint(endpoint: impl Into<String>) -> Otlp {
        Otlp {
            endpoint: Some(endpoint.into()),
        }
    }
}

/// Whether the installed subscriber exports spans: when not, the trace helpers below do nothing.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes and stops the span exporter when dropped (the end of `main`): keep it alive as long as
/// the process runs. Empty when nothing is exported, or when a subscriber was installed before.
#[must_use = "dropping the guard stops the span exporter"]
#[derive(Debug, Default)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Exports every span that ended so far, waiting for the collector's answer. Blocks the thread:
    /// in async code, call it where blocking is allowed (a multi-threaded runtime's `block_on`
    /// thread, or `spawn_blocking`).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "spans not exported");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "span exporter did not shut down cleanly");
            }
        }
    }
}

/// Installs the tracing subscriber for `output`, filtered by `RUST_LOG` or else at
/// `default_level` (`info`, `warn`, ...), exporting spans as `service` when the standard
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables name a collector ([`Otlp::from_env`]). Only the first
/// call in a process takes effect, so every test may call it.
pub fn init(output: Output, default_level: &str, service: &str) -> Guard {
    init_with(output, default_level, service, Otlp::from_env())
}

/// [`init`] with the collector given (`None`: no export, whatever the environment says).
///
/// Spans are exported as `OTEL_SERVICE_NAME`, else `service`; sampled as `OTEL_TRACES_SAMPLER`
/// says (by default every span, parent-based). The exporter exports learnsync's spans at `info`
/// and above whatever `RUST_LOG` says of the log lines, with their warnings and errors as events,
/// and nothing of the libraries' spans. Call it inside a Tokio runtime when exporting (the gRPC
/// channel lives there).
pub fn init_with(output: Output, default_level: &str, service: &str, otlp: Option<Otlp>) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer();
    let lines = match output {
        Output::Text => fmt.boxed(),
        Output::Stderr => fmt.with_writer(std::io::stderr).boxed(),
        Output::Json => fmt.json().boxed(),
        Output::Test => fmt.with_test_writer().boxed(),
    }
    // The spans that name an `otel.kind` (one per gRPC call, one per upstream call) are for the
    // tracing backend only: log lines stay as they are without them.
    // (The hint keeps `RUST_LOG`'s level the global maximum, so disabled levels stay free.)
    .with_filter(
        filter.and(
            tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_span() && meta.fields().field("otel.kind").is_some())
            })
            .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE),
        ),
    );
    let (provider, export_error) = match otlp.map(|otlp| provider(&otlp, service)) {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("learnsync"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    if meta.is_span() {
                        meta.level() <= &tracing::Level::INFO
                            && meta.target().starts_with("learnsync")
                    } else {
                        meta.level() <= &tracing::Level::WARN
                    }
                })
                .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
            )
    });
    // An error means a subscriber is already installed: the first one stays, and so does its
    // exporter.
    let installed = tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .try_init()
        .is_ok();
    if let Some(error) = export_error {
        tracing::error!(%error, "spans will not be exported: the otlp exporter did not start");
    }
    match provider {
        Some(provider) if installed => {
            EXPORTING.store(true, Ordering::Relaxed);
            tracing::info!(service, "exporting spans over otlp");
            Guard {
                provider: Some(provider),
            }
        }
        Some(provider) => {
            let _ = provider.shutdown();
            Guard::default()
        }
        None => Guard::default(),
    }
}

fn provider(otlp: &Otlp, service: &str) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &otlp.endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|error| error.to_string())?;
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the caller's name is the
    // default only.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Parents `span` on the caller's W3C `traceparent` header, when it is there and well formed (a
/// malformed one is ignored, as the specification asks: the span starts a trace). Call it before
/// the span is first entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let Some(header) = traceparent else {
        return;
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), header.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The span id every job span of a run is parented on: derived from the run's id (its first 8
/// bytes, never zero), so that any process finds it without storing it.
pub fn run_span_id(run_id: u128) -> [u8; 8] {
    let high = (run_id >> 64) as u64;
    (if high == 0 { 1 } else { high }).to_be_bytes()
}

/// Puts `span` in the run's trace: its trace id becomes `trace_id` (the run's stored W3C trace id,
/// 32 lowercase hex digits) and its parent the run's span ([`run_span_id`]), remote and sampled.
/// Call it before the span is first entered. An unreadable trace id leaves the span as it was.
pub fn join_run(span: &tracing::Span, trace_id: &str, run_id: u128) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let Ok(trace_id) = TraceId::from_hex(trace_id) else {
        return;
    };
    let parent = SpanContext::new(
        trace_id,
        SpanId::from_bytes(run_span_id(run_id)),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if parent.is_valid() {
        let context = opentelemetry::Context::new().with_remote_span_context(parent);
        let _ = span.set_parent(context);
    }
}

/// The trace id (32 lowercase hex digits) of the current span when spans are exported, so that a
/// run started in a span belongs to its trace; `None` when nothing is exported.
pub fn current_trace_id() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_span_id_is_never_zero() {
        assert_eq!(run_span_id(0), 1u64.to_be_bytes());
        assert_eq!(
            run_span_id(0x0123_4567_89ab_cdef_0000_0000_0000_0000),
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
    }

    #[test]
    fn without_a_collector_the_log_level_bounds_every_callsite() {
        // Nothing exported: levels the log lines leave out cost a level comparison, as before.
        let guard = init_with(Output::Test, "warn", "learnsync-test", None);
        assert!(guard.provider.is_none());
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(
                tracing::level_filters::LevelFilter::current(),
                tracing::level_filters::LevelFilter::WARN
            );
        }
        assert_eq!(current_trace_id(), None);
    }

    #[test]
    fn the_environment_names_no_collector_by_default() {
        // The test runner's environment does not set the variables; an endpoint given is taken.
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            assert_eq!(Otlp::from_env(), None);
        }
        assert_eq!(
            Otlp::endpoint("http://127.0.0.1:4317").endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
    }
}

//! Prometheus metrics of the server: gRPC calls by method and code with their latency (a tower
//! layer around every service, which also makes each call's `grpc` tracing span; only the methods
//! the server serves get a label of their own, every other path counts as `unknown`), and runs and jobs by state (read from Postgres at scrape time,
//! so every server reports the same truth), served on `/metrics` of a port of its own.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use learnsync_store::Store;
use prometheus::{
    Encoder as _, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The paths of the methods this server serves: only these become `method` labels, so that
    /// requests naming anything else (before authentication) cannot grow the registry.
    known_methods: Arc<HashSet<String>>,
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    runs: IntGaugeVec,
    jobs: IntGaugeVec,
    /// Running jobs waiting for a platform's Docebo call budget.
    jobs_waiting_on_budget: IntGauge,
    /// Webhook messages recorded and not yet handled.
    webhooks_pending: IntGauge,
    /// How long the oldest pending webhook message has waited.
    webhooks_oldest_pending: Gauge,
}

impl Metrics {
    /// Registers the server's metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "learnsync_grpc_requests_total",
                "gRPC calls by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "learnsync_grpc_request_seconds",
                "time to the response headers of gRPC calls (streams: to their start)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method"],
        )?;
        let runs = IntGaugeVec::new(
            Opts::new("learnsync_runs", "runs by state, all connections"),
            &["state"],
        )?;
        let jobs = IntGaugeVec::new(
            Opts::new("learnsync_jobs", "jobs by state, all connections"),
            &["state"],
        )?;
        let known_methods = Arc::new(known_methods());
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let jobs_waiting_on_budget = IntGauge::new(
            "learnsync_jobs_waiting_on_budget",
            "running jobs waiting for their platform's docebo call budget (spent or paused), all connections",
        )?;
        let webhooks_pending = IntGauge::new(
            "learnsync_webhooks_pending",
            "webhook messages recorded and not yet handled, all connections",
        )?;
        let webhooks_oldest_pending = Gauge::new(
            "learnsync_webhooks_oldest_pending_seconds",
            "age of the oldest webhook message not yet handled (0 when none)",
        )?;
        registry.register(Box::new(jobs_waiting_on_budget.clone()))?;
        registry.register(Box::new(webhooks_pending.clone()))?;
        registry.register(Box::new(webhooks_oldest_pending.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        Ok(Metrics {
            known_methods,
            jobs_waiting_on_budget,
            webhooks_pending,
            webhooks_oldest_pending,
            registry,
            requests,
            latency,
            runs,
            jobs,
        })
    }

    /// The `/metrics` route.
    pub fn router(&self, store: Store) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state((self.clone(), store))
    }
}

async fn scrape(
    State((metrics, store)): State<(Metrics, Store)>,
) -> (axum::http::StatusCode, String) {
    let counted = async {
        let conn = store.conn().await?;
        let by_state = learnsync_store::runs::count_by_state(&conn).await?;
        let waiting = learnsync_store::worker::jobs_waiting_on_budget(&conn).await?;
        let webhooks = learnsync_store::realtime::pending_webhook_stats(&conn).await?;
        Ok::<_, learnsync_store::Error>((by_state, waiting, webhooks))
    }
    .await;
    match counted {
        Ok(((runs, jobs), waiting, (pending, oldest))) => {
            metrics.jobs_waiting_on_budget.set(waiting);
            metrics.webhooks_pending.set(pending);
            metrics.webhooks_oldest_pending.set(oldest);
            metrics.runs.reset();
            metrics.jobs.reset();
            for (state, count) in runs {
                metrics.runs.with_label_values(&[state.as_str()]).set(count);
            }
            for (state, count) in jobs {
                metrics.jobs.with_label_values(&[state.as_str()]).set(count);
            }
        }
        Err(error) => tracing::warn!(%error, "metrics: run counts unavailable"),
    }
    let mut buffer = Vec::new();
    match prometheus::TextEncoder::new().encode(&metrics.registry.gather(), &mut buffer) {
        Ok(()) => (
            axum::http::StatusCode::OK,
            String::from_utf8_lossy(&buffer).into_owned(),
        ),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        ),
    }
}

/// The tower layer that counts gRPC calls and makes the span of each.
#[derive(Clone)]
pub struct MetricsLayer(pub Metrics);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// Counts each call by its path and the `grpc-status` of its response headers (absent: OK, sent
/// in trailers), inside the call's span ([`call_span`]).
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let metrics = self.metrics.clone();
        let method = metrics.method_label(request.uri().path()).to_string();
        let started = Instant::now();
        let span = call_span(&method, &request);
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = future.await?;
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("0")
                    .to_string();
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code.as_str());
                if code != "0" {
                    span.record("otel.status_code", "ERROR");
                }
                metrics
                    .requests
                    .with_label_values(&[method.as_str(), code.as_str()])
                    .inc();
                metrics
                    .latency
                    .with_label_values(&[method.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                Ok(response)
            },
            span,
        ))
    }
}

/// The span of one gRPC call, exported when an OTLP collector is configured: named by the method
/// (its bounded label), parented on the caller's `traceparent`, with the connection the request
/// names and the run it starts recorded by the handlers, and the status code of the answer (the
/// response headers' `grpc-status`; a stream's is its start's).
fn call_span<B>(method: &str, request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        connection_id = tracing::field::Empty,
        run_id = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    learnsync_telemetry::continue_trace(&span, traceparent);
    span
}

/// The label of every method this server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

impl Metrics {
    /// The `method` label of a request path: the path of a method the server serves, or
    /// [`UNKNOWN_METHOD`].
    pub fn method_label<'p>(&self, path: &'p str) -> &'p str {
        if self.known_methods.contains(path) {
            path
        } else {
            UNKNOWN_METHOD
        }
    }
}

/// The paths (`/package.Service/Method`) of the services the server registers: learnsync's and
/// health's, read from their descriptors, and both reflection versions.
fn known_methods() -> HashSet<String> {
    let mut known: HashSet<String> = [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    for encoded in [
        learnsync_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = match <prost_types::FileDescriptorSet as prost::Message>::decode(encoded) {
            Ok(set) => set,
            Err(error) => {
                tracing::error!(%error, "an embedded descriptor set does not decode");
                continue;
            }
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let method_name = method.name.unwrap_or_default();
                    known.insert(format!("/{package}.{service_name}/{method_name}"));
                }
            }
        }
    }
    known
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_served_methods_get_a_label_of_their_own() {
        let metrics = Metrics::new().unwrap();
        for served in [
            "/learnsync.v1.SyncService/GetStatus",
            "/learnsync.v1.SyncService/StreamLogs",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(metrics.method_label(served), served);
        }
        for other in [
            "/learnsync.v1.SyncService/NoSuchMethod",
            "/x.Y/GetStatus",
            "/",
            "/learnsync.v1.SyncService/GetStatus/extra",
        ] {
            assert_eq!(metrics.method_label(other), UNKNOWN_METHOD);
        }
    }
}

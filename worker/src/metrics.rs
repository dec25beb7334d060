//! Prometheus metrics of a worker process: records written, unchanged and failed by job kind, API
//! calls and throttling per upstream, claims and their latency, lease losses, and the records in
//! flight against the worker's budget. Served on `/metrics`
//! of `--metrics-listen` by the binary; kept in one process-wide registry.

use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tokio::sync::Semaphore;

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Records by job kind and outcome (`written`, `unchanged`, `failed`).
    pub records: IntCounterVec,
    /// HTTP calls by upstream (`docebo`, `salesforce`) and status code.
    pub api_calls: IntCounterVec,
    /// Throttling answers by upstream (Docebo 429/503, Salesforce REQUEST_LIMIT_EXCEEDED/429).
    pub throttled: IntCounterVec,
    /// Jobs claimed by kind.
    pub claims: IntCounterVec,
    /// Time of one claim statement.
    pub claim_seconds: Histogram,
    /// Jobs this worker lost to another (its lease expired).
    pub lease_losses: IntCounter,
    /// Records read and not yet committed, across the process's jobs (read when scraped).
    records_in_flight: IntGauge,
    /// The records budget (`records_in_flight` setting) of the process's workers.
    records_budget: IntGauge,
}

/// The records budgets of the process's workers, read when metrics are rendered.
static ROOMS: Mutex<Vec<(Weak<Semaphore>, usize)>> = Mutex::new(Vec::new());

/// Reports a worker's records budget (`capacity` permits of `room`) in the metrics.
pub fn watch_room(room: &Arc<Semaphore>, capacity: usize) {
    let mut rooms = ROOMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    rooms.retain(|(room, _)| room.strong_count() > 0);
    rooms.push((Arc::downgrade(room), capacity));
}

/// Sets the budget gauges from the live budgets.
fn read_rooms() {
    let mut rooms = ROOMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    rooms.retain(|(room, _)| room.strong_count() > 0);
    let (mut used, mut budget) = (0usize, 0usize);
    for (room, capacity) in rooms.iter() {
        if let Some(room) = room.upgrade() {
            used += capacity.saturating_sub(room.available_permits());
            budget += capacity;
        }
    }
    METRICS.records_in_flight.set(used as i64);
    METRICS.records_budget.set(budget as i64);
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let records = IntCounterVec::new(
        Opts::new(
            "learnsync_worker_records_total",
            "records by job kind and outcome",
        ),
        &["kind", "outcome"],
    )?;
    let api_calls = IntCounterVec::new(
        Opts::new(
            "learnsync_worker_api_calls_total",
            "http calls by upstream and status code",
        ),
        &["upstream", "status"],
    )?;
    let throttled = IntCounterVec::new(
        Opts::new(
            "learnsync_worker_throttled_total",
            "throttling answers by upstream",
        ),
        &["upstream"],
    )?;
    let claims = IntCounterVec::new(
        Opts::new("learnsync_worker_claims_total", "jobs claimed by kind"),
        &["kind"],
    )?;
    let claim_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "learnsync_worker_claim_seconds",
            "time of one claim statement",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]),
    )?;
    let lease_losses = IntCounter::new(
        "learnsync_worker_lease_losses_total",
        "jobs lost to another worker",
    )?;
    registry.register(Box::new(records.clone()))?;
    registry.register(Box::new(api_calls.clone()))?;
    registry.register(Box::new(throttled.clone()))?;
    registry.register(Box::new(claims.clone()))?;
    registry.register(Box::new(claim_seconds.clone()))?;
    let records_in_flight = IntGauge::new(
        "learnsync_worker_records_in_flight",
        "records read and not yet committed, across the worker's jobs",
    )?;
    let records_budget = IntGauge::new(
        "learnsync_worker_records_budget",
        "records the worker may hold at once (its records_in_flight setting)",
    )?;
    registry.register(Box::new(lease_losses.clone()))?;
    registry.register(Box::new(records_in_flight.clone()))?;
    registry.register(Box::new(records_budget.clone()))?;
    Ok(Metrics {
        registry,
        records,
        api_calls,
        throttled,
        claims,
        claim_seconds,
        lease_losses,
        records_in_flight,
        records_budget,
    })
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    build().unwrap_or_else(|error| unreachable!("metric definitions are static: {error}"))
});

/// Renders every metric in Prometheus's text format.
pub fn render() -> String {
    read_rooms();
    let mut buffer = Vec::new();
    if let Err(error) =
        prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut buffer)
    {
        tracing::warn!(%error, "metrics could not be encoded");
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let router = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_counters_with_their_labels() {
        METRICS
            .records
            .with_label_values(&["users", "written"])
            .inc_by(3);
        METRICS
            .api_calls
            .with_label_values(&["docebo", "200"])
            .inc();
        let text = render();
        assert!(
            text.contains("learnsync_worker_records_total{kind=\"users\",outcome=\"written\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("learnsync_worker_api_calls_total{status=\"200\",upstream=\"docebo\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn reports_the_records_in_flight_against_the_budget() {
        let room = Arc::new(Semaphore::new(1000));
        watch_room(&room, 1000);
        let held = room.clone().try_acquire_many_owned(250).unwrap();
        let text = render();
        assert!(
            text.contains("learnsync_worker_records_in_flight 250"),
            "{text}"
        );
        assert!(
            text.contains("learnsync_worker_records_budget 1000"),
            "{text}"
        );
        drop(held);
        drop(room);
        let text = render();
        assert!(
            text.contains("learnsync_worker_records_in_flight 0"),
            "{text}"
        );
        assert!(text.contains("learnsync_worker_records_budget 0"), "{text}");
    }
}

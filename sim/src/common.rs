//! Pieces both simulators share: the sim clock, the server runner, call counters, fault injection and
//! small helpers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Error;

/// Locks a mutex, recovering the data when a panicking holder poisoned it: the simulators keep serving
/// rather than cascading one test's panic into every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A clock that can be moved forward (or back) so tests can expire tokens and sessions without sleeping.
#[derive(Debug, Default)]
pub struct SimClock {
    /// Seconds added to the wall clock.
    offset_secs: AtomicI64,
}

impl SimClock {
    /// Returns the simulated current time.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_secs.load(Ordering::Relaxed))
    }

    /// Sets the offset added to the wall clock, in seconds.
    pub fn set_offset(&self, secs: i64) {
        self.offset_secs.store(secs, Ordering::Relaxed);
    }

    /// Returns the offset added to the wall clock, in seconds.
    pub fn offset(&self) -> i64 {
        self.offset_secs.load(Ordering::Relaxed)
    }
}

/// Per-endpoint call counters, keyed by `"METHOD /route/{template}"`.
#[derive(Debug, Default)]
pub struct Counters {
    inner: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub(crate) fn bump(&self, key: &str) {
        let mut map = lock(&self.inner);
        if let Some(count) = map.get_mut(key) {
            *count += 1;
        } else {
            map.insert(key.to_string(), 1);
        }
    }

    /// Returns a copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.inner).clone()
    }

    /// Zeroes all counters.
    pub fn clear(&self) {
        lock(&self.inner).clear();
    }
}

/// A fault that answers the next `count` calls with `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailNext {
    /// HTTP status to answer with (429, 500, 503, ...).
    pub status: u16,
    /// How many calls still get it.
    pub count: u32,
}

/// A fault that answers a share of calls with `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailShare {
    /// HTTP status to answer with.
    pub status: u16,
    /// Probability in `0.0..=1.0` that a call gets it.
    pub share: f64,
}

/// A fault on Docebo listings: the next `count` calls of the listing at `path` (any listing when
/// `path` is absent) get it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListFault {
    /// The listing's path as requested (`/course/v1/courses/12/sessions`); absent: every listing.
    #[serde(default)]
    pub path: Option<String>,
    /// How many calls still get it.
    pub count: u32,
}

/// Which listing fault to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListFaultKind {
    NotFound,
    OmitHasMoreData,
    InflateTotalCount,
}

/// Faults both simulators understand; each is optional and they combine.
///
/// JSON form (control API `POST /__sim/faults`): every field optional, e.g.
/// `{"latency_ms": 50, "fail_next": {"status": 429, "count": 3}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Delay added before answering each API call, in milliseconds.
    pub latency_ms: u64,
    /// Answers the next N API calls with a status (Docebo: 429/503/500 bodies; Salesforce: 500/503 bodies).
    pub fail_next: Option<FailNext>,
    /// Answers a share of API calls with a status.
    pub fail_share: Option<FailShare>,
    /// Invalidates every issued token (Docebo) or session (Salesforce) after this many more API calls.
    pub expire_tokens_after_calls: Option<u32>,
    /// Docebo only: appends one malformed item (non-numeric id, missing key fields) to each of the next
    /// N list pages served.
    pub malformed_pages: u32,
    /// Docebo only: listings answering 404 `{"name": "Not Found", ...}` though what they list (the
    /// course of `/course/v1/courses/{id}/sessions`, the session of
    /// `/course/v1/sessions/{id}/enrollments`) still exists, e.g.
    /// `[{"path": "/course/v1/courses/12/sessions", "count": 1}]`.
    pub not_found_lists: Vec<ListFault>,
    /// Docebo only: list pages served without `has_more_data` (the other paging fields stay).
    pub omit_has_more_data: Vec<ListFault>,
    /// Docebo only: list pages served with a `total_count` one above what the listing holds (a
    /// count that does not match, as a listing that lost an item would show).
    pub inflate_total_count: Vec<ListFault>,
    /// Salesforce only: share of written rows (collections and bulk) failing with `UNABLE_TO_LOCK_ROW`.
    pub lock_row_share: f64,
    /// Salesforce only: the next N `/services/data` calls answer 403 `REQUEST_LIMIT_EXCEEDED`.
    pub request_limit_exceeded_calls: u32,
    /// Salesforce only: every `/services/data` call answers 403 `REQUEST_LIMIT_EXCEEDED` for this many
    /// seconds from when the fault is set.
    pub request_limit_exceeded_secs: u64,
    /// Salesforce only: the next N Bulk API 2.0 ingest jobs closed stay `InProgress` for ever (a
    /// stuck job: never processed, no results).
    pub stall_ingest_jobs: u32,
}

/// What the fault layer decided for one call.
#[derive(Debug, Default)]
pub(crate) struct FaultDecision {
    pub latency: Option<Duration>,
    pub status: Option<u16>,
    pub expire_tokens: bool,
}

/// Faults plus their running state.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub faults: Faults,
    /// When the `request_limit_exceeded_secs` window ends.
    pub limit_window_until: Option<DateTime<Utc>>,
}

impl FaultState {
    pub fn set(&mut self, faults: Faults, now: DateTime<Utc>) {
        self.limit_window_until = (faults.request_limit_exceeded_secs > 0)
            .then(|| now + chrono::Duration::seconds(faults.request_limit_exceeded_secs as i64));
        self.faults = faults;
    }

    /// Consumes one API call's worth of the configured faults.
    pub fn on_call(&mut self) -> FaultDecision {
        let mut decision = FaultDecision::default();
        if self.faults.latency_ms > 0 {
            decision.latency = Some(Duration::from_millis(self.faults.latency_ms));
        }
        if let Some(remaining) = self.faults.expire_tokens_after_calls.as_mut() {
            if *remaining == 0 {
                decision.expire_tokens = true;
                self.faults.expire_tokens_after_calls = None;
            } else {
                *remaining -= 1;
            }
        }
        if let Some(fail) = self.faults.fail_next.as_mut() {
            if fail.count > 0 {
                fail.count -= 1;
                decision.status = Some(fail.status);
            }
            if fail.count == 0 {
                self.faults.fail_next = None;
            }
            if decision.status.is_some() {
                return decision;
            }
        }
        if let Some(share) = &self.faults.fail_share
            && rand::rng().random_bool(share.share.clamp(0.0, 1.0))
        {
            decision.status = Some(share.status);
        }
        decision
    }

    /// Consumes one call of the Salesforce request-limit faults; true when the call must get 403.
    pub fn limit_exceeded(&mut self, now: DateTime<Utc>) -> bool {
        if self.faults.request_limit_exceeded_calls > 0 {
            self.faults.request_limit_exceeded_calls -= 1;
            return true;
        }
        matches!(self.limit_window_until, Some(until) if now < until)
    }

    /// Takes one call of the first listing fault of `kind` that applies to `path`; true when the call
    /// gets it.
    pub fn take_list_fault(&mut self, kind: ListFaultKind, path: &str) -> bool {
        let faults = match kind {
            ListFaultKind::NotFound => &mut self.faults.not_found_lists,
            ListFaultKind::OmitHasMoreData => &mut self.faults.omit_has_more_data,
            ListFaultKind::InflateTotalCount => &mut self.faults.inflate_total_count,
        };
        let Some(at) = faults
            .iter()
            .position(|f| f.count > 0 && f.path.as_deref().is_none_or(|p| p == path))
        else {
            return false;
        };
        faults[at].count -= 1;
        if faults[at].count == 0 {
            faults.remove(at);
        }
        true
    }

    /// Takes one malformed-page credit.
    pub fn take_malformed(&mut self) -> bool {
        if self.faults.malformed_pages > 0 {
            self.faults.malformed_pages -= 1;
            true
        } else {
            false
        }
    }
}

/// A running HTTP server: its address and the means to stop it.
#[derive(Debug)]
pub(crate) struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Binds `bind` (port 0 picks a free port) and serves `router` until shut down.
    pub async fn start(bind: SocketAddr, router: Router) -> Result<RunningServer, Error> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(Error::Bind)?;
        RunningServer::serve(listener, router)
    }

    /// Serves `router` on a bound listener until shut down.
    pub fn serve(
        listener: tokio::net::TcpListener,
        router: Router,
    ) -> Result<RunningServer, Error> {
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "simulator server stopped with an error");
            }
        });
        Ok(RunningServer {
            addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Open keep-alive connections would hold graceful shutdown forever: bound the wait.
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                tracing::debug!("simulator server did not drain in time");
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A small, fast, non-cryptographic hasher (the Fx hash of rustc): the simulators hash ids and
/// external ids they generate or receive from tests, so flooding resistance buys nothing and SipHash
/// would dominate bulk ingestion.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Mix the high bits down: hashbrown takes its control byte from the top bits.
        self.hash ^ (self.hash >> 29)
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;
/// A `HashSet` with [`FxHasher`].
pub type FastSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<FxHasher>>;

/// Formats a time as Docebo does: `YYYY-MM-DD HH:MM:SS`, UTC, no zone.
pub(crate) fn docebo_date(time: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // chrono's strftime interpreter is slow enough to dominate generating a million items.
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Parses Docebo's `YYYY-MM-DD HH:MM:SS` (also accepting a `T` separator and a bare date).
pub(crate) fn parse_docebo_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

/// Random lowercase hex of `bytes * 2` characters.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill(&mut buffer[..]);
    hex::encode(buffer)
}

/// What the two simulators' control APIs share: call counters, injected faults, the sim clock and
/// reset. Each state implements it once; the routes below serve it for both.
pub(crate) trait ControlState: Send + Sync + 'static {
    /// The per-endpoint call counters.
    fn counters(&self) -> &Counters;
    /// The injected faults.
    fn faults(&self) -> &Mutex<FaultState>;
    /// The sim clock's now.
    fn now(&self) -> DateTime<Utc>;
    /// Drops all data and restores the configuration.
    fn reset(&self);
}

/// A control API error as JSON, with the status its kind calls for.
pub(crate) fn control_error(error: Error) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let status = match &error {
        Error::NotFound(_) => axum::http::StatusCode::NOT_FOUND,
        Error::Conflict(_) => axum::http::StatusCode::CONFLICT,
        _ => axum::http::StatusCode::BAD_REQUEST,
    };
    (
        status,
        axum::Json(serde_json::json!({"error": error.to_string()})),
    )
        .into_response()
}

/// Reads a control API body (an empty body reads as `{}`).
#[allow(clippy::result_large_err)] // the error is the response itself, sent at once
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, axum::response::Response> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|error| control_error(Error::Invalid(format!("bad JSON body: {error}"))))
}

/// The control routes both simulators serve the same way: reset, counters, faults.
pub(crate) fn shared_control_routes<S: ControlState>() -> Router<std::sync::Arc<S>> {
    use axum::extract::State;
    use axum::response::IntoResponse as _;
    use axum::routing::{get, post};
    type Shared<S> = State<std::sync::Arc<S>>;
    async fn reset<S: ControlState>(State(state): Shared<S>) -> axum::response::Response {
        state.reset();
        axum::Json(serde_json::json!({"reset": true})).into_response()
    }
    async fn counters<S: ControlState>(State(state): Shared<S>) -> axum::response::Response {
        axum::Json(state.counters().snapshot()).into_response()
    }
    async fn clear_counters<S: ControlState>(State(state): Shared<S>) -> axum::response::Response {
        state.counters().clear();
        axum::Json(serde_json::json!({"cleared": true})).into_response()
    }
    async fn set_faults<S: ControlState>(
        State(state): Shared<S>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let faults: Faults = match parse_json(&body) {
            Ok(faults) => faults,
            Err(response) => return response,
        };
        lock(state.faults()).set(faults.clone(), state.now());
        axum::Json(faults).into_response()
    }
    async fn clear_faults<S: ControlState>(State(state): Shared<S>) -> axum::response::Response {
        lock(state.faults()).set(Faults::default(), state.now());
        axum::Json(Faults::default()).into_response()
    }
    Router::new()
        .route("/__sim/reset", post(reset::<S>))
        .route(
            "/__sim/counters",
            get(counters::<S>).delete(clear_counters::<S>),
        )
        .route(
            "/__sim/faults",
            post(set_faults::<S>).delete(clear_faults::<S>),
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn docebo_dates_round_trip() {
        let parsed = parse_docebo_date("2024-03-20 09:01:02").expect("parses");
        assert_eq!(docebo_date(parsed), "2024-03-20 09:01:02");
        assert!(parse_docebo_date("0000-00-00 00:00:00").is_none());
        assert!(parse_docebo_date("2024-03-20").is_some());
    }

    #[test]
    fn fail_next_counts_down() {
        let mut state = FaultState::default();
        state.set(
            Faults {
                fail_next: Some(FailNext {
                    status: 429,
                    count: 2,
                }),
                ..Faults::default()
            },
            Utc::now(),
        );
        assert_eq!(state.on_call().status, Some(429));
        assert_eq!(state.on_call().status, Some(429));
        assert_eq!(state.on_call().status, None);
    }
}

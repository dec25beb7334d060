//! The Salesforce simulator (API v62.0): OAuth2 (client credentials, JWT bearer), an org schema loaded
//! as data, sObject Collections, single-record upsert, SOQL, Bulk API 2.0 ingest and query jobs,
//! limits, and the `/__sim/` control API.
//!
//! Bulk API 2.0 query jobs (`POST /jobs/query`, `operation` `query` or `queryAll`) run their SOQL when
//! they complete, after [`SalesforceConfig::bulk_query_delay`] in `UploadComplete` and as long in
//! `InProgress`: results are the org as it was then. Result sets hold 50,000 rows unless `maxRecords`
//! says fewer. Soft-deleted records stay in a recycle bin that `queryAll` (Bulk and REST) reads, with
//! `IsDeleted` true. Records edited or deleted through the ordinary REST routes (`PATCH`/`DELETE
//! /sobjects/{object}/{id}`, `DELETE /composite/sobjects?ids=`) stand for changes made by someone else.
//!
//! Control routes specific to Salesforce (besides `/__sim/reset`, `/__sim/counters`, `/__sim/faults`):
//! - `GET /__sim/records/{object}[?Field=value&...]`: live records with every field, filtered.
//! - `GET|DELETE /__sim/object_calls`: API calls per sObject (a call is counted once per endpoint in
//!   `/__sim/counters` and once per object here).
//! - `GET|PUT /__sim/schema`, `GET /__sim/summary`, `POST /__sim/clock`, `POST /__sim/sessions/revoke`,
//!   `POST /__sim/limits` (`{"used": N, "max": M}`), `POST /__sim/token`.
//! - `POST /__sim/hold_writes` (`{"count": N}`): the next N write calls (any `/services/data` call
//!   but a GET or a Bulk query job's) are counted, then held before anything else happens to them
//!   until `POST /__sim/release_writes`, which lets every held write go on and holds no more: a
//!   write in flight for as long as a test needs. `GET /__sim/hold_writes` says how many wait.

// Handlers return a ready-made error response as their `Err`: it is built once per refused request,
// so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod bulk;
mod bulk_query;
mod org;
pub mod schema;
mod soql;

pub use org::{case_safe_suffix, normalize_id};
pub use schema::{FieldDef, FieldType, ObjectDef, RecordError, Schema};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

use crate::Error;
use crate::common::{ControlState, control_error, parse_json};
use crate::common::{Counters, FaultState, Faults, RunningServer, SimClock, lock};
use bulk::{BulkOp, Job, JobState, ResultKind};
use bulk_query::{QueryJob, QueryOp};
use org::{Op, Org, Outcome, RequestError};

/// The API version the simulator serves (`/services/data/v62.0/...`).
pub const API_VERSION: &str = "v62.0";
const DATA: &str = "/services/data/v62.0";
const ORG_ID: &str = "00D5g00000LsSimEAF";
const USER_ID: &str = "0055g00000SimUsAAJ";

/// Settings of a Salesforce simulator.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Connected-app consumer key (client credentials `client_id`, JWT `iss`).
    pub client_id: String,
    /// Connected-app consumer secret (client credentials).
    pub client_secret: String,
    /// Integration user (JWT `sub`).
    pub username: String,
    /// PEM public key verifying JWT bearer assertions (RS256); `None` refuses the JWT grant.
    pub jwt_public_key_pem: Option<String>,
    /// Accepted JWT `aud` values.
    pub jwt_audiences: Vec<String>,
    /// A session unused this long answers 401 `INVALID_SESSION_ID` (Salesforce: 2 h by default).
    pub session_idle_timeout: Duration,
    /// Daily API request allowance (`Sforce-Limit-Info`, 403 `REQUEST_LIMIT_EXCEEDED` past it).
    pub daily_api_limit: u64,
    /// Largest raw CSV upload of a Bulk job (Salesforce: about 100 MB).
    pub max_upload_bytes: usize,
    /// How long a Bulk API 2.0 query job stays `UploadComplete`, then `InProgress`, before it runs
    /// its query and completes (each state lasts this long).
    pub bulk_query_delay: Duration,
    /// The org schema.
    pub schema: Schema,
}

impl Default for SalesforceConfig {
    fn default() -> SalesforceConfig {
        SalesforceConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "learnsync-consumer-key".into(),
            client_secret: "learnsync-consumer-secret".into(),
            username: "integration@acme.example".into(),
            jwt_public_key_pem: None,
            jwt_audiences: vec![
                "https://login.salesforce.com".into(),
                "https://test.salesforce.com".into(),
            ],
            session_idle_timeout: Duration::from_secs(2 * 3600),
            daily_api_limit: 100_000,
            max_upload_bytes: 100 * 1024 * 1024,
            bulk_query_delay: Duration::from_millis(10),
            schema: Schema::default_org(),
        }
    }
}

#[derive(Debug)]
struct Session {
    last_used: DateTime<Utc>,
}

struct Usage {
    used: u64,
    max: u64,
}

struct QueryCursor {
    object: String,
    records: Vec<Value>,
    total_size: usize,
}

/// Bulk API 2.0 query jobs, and how many were created (against `DailyBulkV2QueryJobs`).
#[derive(Default)]
struct QueryJobs {
    jobs: HashMap<String, QueryJob>,
    created: u64,
}

struct SfState {
    config: SalesforceConfig,
    base_url: Mutex<String>,
    clock: SimClock,
    org: RwLock<Org>,
    sessions: Mutex<HashMap<String, Session>>,
    usage: Mutex<Usage>,
    faults: Mutex<FaultState>,
    counters: Counters,
    /// API calls per sObject they concern, keyed by object name.
    object_calls: Counters,
    jobs: Mutex<HashMap<String, Job>>,
    query_jobs: Mutex<QueryJobs>,
    cursors: Mutex<HashMap<String, QueryCursor>>,
    jwt_key: Option<jsonwebtoken::DecodingKey>,
    holds: Mutex<Holds>,
    /// Bumped by a release: held writes wait for it to change.
    released: tokio::sync::watch::Sender<u64>,
}

/// Writes held back by `/__sim/hold_writes` until `/__sim/release_writes`.
#[derive(Default)]
struct Holds {
    /// Write calls still to hold.
    to_hold: u32,
    /// Write calls held now.
    waiting: usize,
}

fn read(org: &RwLock<Org>) -> RwLockReadGuard<'_, Org> {
    org.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(org: &RwLock<Org>) -> RwLockWriteGuard<'_, Org> {
    org.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running Salesforce simulator. Dropping it stops the server (an org of a [`crate::Fleet`] has
/// none of its own: the fleet's server serves it under a path prefix).
pub struct SalesforceSim {
    state: Arc<SfState>,
    /// The simulator's own server; `None` for an org of a fleet.
    server: Option<RunningServer>,
    /// The address the serving server listens on.
    addr: SocketAddr,
    base_url: String,
}

impl SalesforceSim {
    /// Starts the simulator on `config.bind` and returns once it accepts connections.
    pub async fn start(config: SalesforceConfig) -> Result<SalesforceSim, Error> {
        let state = SfState::new(config)?;
        let server = RunningServer::start(state.config.bind, router(state.clone())).await?;
        let base_url = format!("http://{}", server.addr);
        *lock(&state.base_url) = base_url.clone();
        tracing::info!(%base_url, "salesforce simulator listening");
        Ok(SalesforceSim {
            state,
            addr: server.addr,
            server: Some(server),
            base_url,
        })
    }

    /// An org served by another server (a fleet's) at `base_url` (also its tokens'
    /// `instance_url`), with the router that answers its requests once the prefix is stripped.
    pub(crate) fn hosted(
        config: SalesforceConfig,
        addr: SocketAddr,
        base_url: String,
    ) -> Result<(SalesforceSim, Router), Error> {
        let state = SfState::new(config)?;
        *lock(&state.base_url) = base_url.clone();
        let router = router(state.clone());
        let sim = SalesforceSim {
            state,
            server: None,
            addr,
            base_url,
        };
        Ok((sim, router))
    }

    /// Returns `http://127.0.0.1:<port>` (also the `instance_url` of tokens), without trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the configuration the simulator runs with.
    pub fn config(&self) -> &SalesforceConfig {
        &self.state.config
    }

    /// Issues a session directly (as a successful OAuth grant would) and returns its access token.
    pub fn issue_token(&self) -> String {
        self.state.new_session()
    }

    /// Returns every live record of an object as JSON (`Id` plus every field; lookups as ids),
    /// in creation order. Unknown objects give an error.
    pub fn records(&self, object: &str) -> Result<Vec<Value>, Error> {
        let org = read(&self.state.org);
        let index = org
            .object(object)
            .ok_or_else(|| Error::NotFound(format!("object {object}")))?;
        let store = &org.objects[index];
        Ok(store.iter().map(|r| store.record_json(r)).collect())
    }

    /// Returns the live record of `object` whose external-id (or unique) field `field` holds `value`.
    pub fn record_by_external_id(&self, object: &str, field: &str, value: &str) -> Option<Value> {
        let org = read(&self.state.org);
        let store = &org.objects[org.object(object)?];
        let field = store.field(field)?;
        store
            .iter()
            .find(|record| record.vals[field].as_text().as_deref() == Some(value))
            .map(|record| store.record_json(record))
    }

    /// Returns the number of live records per object.
    pub fn record_counts(&self) -> BTreeMap<String, usize> {
        read(&self.state.org)
            .objects
            .iter()
            .map(|o| (o.def.name.clone(), o.live))
            .collect()
    }

    /// Returns the number of live records of an object (0 for an unknown object).
    pub fn record_count(&self, object: &str) -> usize {
        let org = read(&self.state.org);
        org.object(object)
            .map(|index| org.objects[index].live)
            .unwrap_or(0)
    }

    /// Runs a SOQL query (all pages) and returns its records.
    pub fn query(&self, soql: &str) -> Result<Vec<Value>, Error> {
        let org = read(&self.state.org);
        let query = soql::parse(&org, soql).map_err(|e| Error::Invalid(e.message))?;
        Ok(soql::execute(&org, &query, API_VERSION).records)
    }

    /// Replaces the org schema; every record is dropped.
    pub fn load_schema(&self, schema: Schema) -> Result<(), Error> {
        schema.validate().map_err(Error::Schema)?;
        *write(&self.state.org) = Org::new(schema);
        Ok(())
    }

    /// Returns the org schema.
    pub fn schema(&self) -> Schema {
        read(&self.state.org).schema.clone()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state.faults).set(faults, self.state.clock.now());
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Holds the next `count` write calls, counted but not yet handled, until
    /// [`SalesforceSim::release_writes`].
    pub fn hold_writes(&self, count: u32) {
        lock(&self.state.holds).to_hold = count;
    }

    /// Returns how many write calls are held now.
    pub fn held_writes(&self) -> usize {
        lock(&self.state.holds).waiting
    }

    /// Lets every held write call go on and holds no more; returns how many were held.
    pub fn release_writes(&self) -> usize {
        self.state.release_writes()
    }

    /// Returns calls per endpoint, keyed `"PATCH /services/data/v62.0/composite/sobjects/{sobject}/{field}"`, ...
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.state.counters.snapshot()
    }

    /// Returns API calls per sObject they concern (`{"Docebo_User__c": 12, ...}`): record reads and
    /// writes, describes, SOQL queries and their next pages, and every call about an ingest or query
    /// job of the object. Calls about no one object (limits, versions, jobs lists) are not in it.
    pub fn object_calls(&self) -> BTreeMap<String, u64> {
        self.state.object_calls.snapshot()
    }

    /// Zeroes the call counters, per endpoint and per object.
    pub fn clear_counters(&self) {
        self.state.counters.clear();
        self.state.object_calls.clear();
    }

    /// Revokes every session: later calls answer 401 `INVALID_SESSION_ID`.
    pub fn revoke_sessions(&self) {
        lock(&self.state.sessions).clear();
    }

    /// Returns `(used, max)` of the daily API allowance.
    pub fn api_usage(&self) -> (u64, u64) {
        let usage = lock(&self.state.usage);
        (usage.used, usage.max)
    }

    /// Sets the calls used so far and, when given, the daily allowance.
    pub fn set_api_usage(&self, used: u64, max: Option<u64>) {
        let mut usage = lock(&self.state.usage);
        usage.used = used;
        if let Some(max) = max {
            usage.max = max;
        }
    }

    /// Moves the simulator clock (session idle timeout, JWT `exp`) by `secs` from the wall clock.
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.clock.set_offset(secs);
    }

    /// Drops all records, sessions, jobs, faults and counters, restores the configured schema,
    /// allowance and clock.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.as_mut() {
            server.stop().await;
        }
    }
}

impl SfState {
    fn new(config: SalesforceConfig) -> Result<Arc<SfState>, Error> {
        config.schema.validate().map_err(Error::Schema)?;
        let jwt_key = match &config.jwt_public_key_pem {
            Some(pem) => Some(
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| Error::Key(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Arc::new(SfState {
            org: RwLock::new(Org::new(config.schema.clone())),
            usage: Mutex::new(Usage {
                used: 0,
                max: config.daily_api_limit,
            }),
            config,
            base_url: Mutex::new(String::new()),
            clock: SimClock::default(),
            sessions: Mutex::new(HashMap::new()),
            faults: Mutex::new(FaultState::default()),
            counters: Counters::default(),
            object_calls: Counters::default(),
            jobs: Mutex::new(HashMap::new()),
            query_jobs: Mutex::new(QueryJobs::default()),
            cursors: Mutex::new(HashMap::new()),
            jwt_key,
            holds: Mutex::new(Holds::default()),
            released: tokio::sync::watch::Sender::new(0),
        }))
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn base_url(&self) -> String {
        lock(&self.base_url).clone()
    }

    fn reset(&self) {
        *write(&self.org) = Org::new(self.config.schema.clone());
        lock(&self.sessions).clear();
        *lock(&self.usage) = Usage {
            used: 0,
            max: self.config.daily_api_limit,
        };
        lock(&self.faults).set(Faults::default(), self.now());
        self.counters.clear();
        self.object_calls.clear();
        lock(&self.jobs).clear();
        *lock(&self.query_jobs) = QueryJobs::default();
        lock(&self.cursors).clear();
        self.release_writes();
        self.clock.set_offset(0);
    }

    fn new_session(&self) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._";
        let mut rng = rand::rng();
        let secret: String = (0..96)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let token = format!("{ORG_ID}!AR{secret}");
        lock(&self.sessions).insert(
            token.clone(),
            Session {
                last_used: self.now(),
            },
        );
        token
    }

    fn lock_share(&self) -> f64 {
        lock(&self.faults).faults.lock_row_share
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The request-level error shape: a JSON array of `{message, errorCode, fields}`.
fn api_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(json!([{"message": message, "errorCode": code, "fields": []}])),
    )
        .into_response()
}

fn request_error(error: RequestError) -> Response {
    api_error(error.status, &error.code, &error.message)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn save_result(outcome: &Outcome, with_created: bool) -> Value {
    let mut result = json!({
        "id": outcome.id.as_deref(),
        "success": outcome.error.is_none(),
        "errors": outcome.error.iter().collect::<Vec<_>>(),
    });
    if with_created && outcome.error.is_none() {
        result["created"] = Value::Bool(outcome.created);
    }
    result
}

fn csv_response(body: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"))],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Router and guard

fn router(state: Arc<SfState>) -> Router {
    let data = Router::new()
        .route("/services/data/v62.0", get(resources))
        .route("/services/data/v62.0/limits", get(limits))
        .route("/services/data/v62.0/sobjects", get(describe_global))
        .route("/services/data/v62.0/sobjects/{sobject}", post(create_one))
        .route(
            "/services/data/v62.0/sobjects/{sobject}/describe",
            get(describe),
        )
        .route(
            "/services/data/v62.0/sobjects/{sobject}/{id}",
            get(get_one).patch(update_one).delete(delete_one),
        )
        .route(
            "/services/data/v62.0/sobjects/{sobject}/{field}/{value}",
            patch(upsert_one),
        )
        .route(
            "/services/data/v62.0/composite/sobjects",
            post(collections_create)
                .patch(collections_update)
                .delete(collections_delete),
        )
        .route(
            "/services/data/v62.0/composite/sobjects/{sobject}/{field}",
            patch(collections_upsert),
        )
        .route("/services/data/v62.0/query", get(query))
        .route("/services/data/v62.0/query/", get(query))
        .route("/services/data/v62.0/queryAll", get(query_all))
        .route("/services/data/v62.0/query/{locator}", get(query_more))
        .route(
            "/services/data/v62.0/jobs/ingest",
            post(create_job).get(list_jobs),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}",
            get(job_info).patch(change_job).delete(delete_job),
        )
        .route("/services/data/v62.0/jobs/ingest/{id}/batches", put(upload))
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/batches/",
            put(upload),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/successfulResults",
            get(successful_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/successfulResults/",
            get(successful_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/failedResults",
            get(failed_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/failedResults/",
            get(failed_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/unprocessedrecords",
            get(unprocessed_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/unprocessedrecords/",
            get(unprocessed_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/unprocessedRecords",
            get(unprocessed_results),
        )
        .route(
            "/services/data/v62.0/jobs/ingest/{id}/unprocessedRecords/",
            get(unprocessed_results),
        )
        .route(
            "/services/data/v62.0/jobs/query",
            post(create_query_job).get(list_query_jobs),
        )
        .route(
            "/services/data/{version}/jobs/query/{id}",
            get(query_job_info)
                .patch(change_query_job)
                .delete(delete_query_job),
        )
        .route(
            "/services/data/{version}/jobs/query/{id}/results",
            get(query_job_results),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), data_guard));
    let control = crate::common::shared_control_routes::<SfState>()
        .route("/__sim/records/{object}", get(control_records))
        .route("/__sim/summary", get(control_summary))
        .route(
            "/__sim/object_calls",
            get(control_object_calls).delete(control_clear_object_calls),
        )
        .route(
            "/__sim/schema",
            get(control_schema).put(control_load_schema),
        )
        .route("/__sim/clock", post(control_clock))
        .route("/__sim/sessions/revoke", post(control_revoke))
        .route("/__sim/limits", post(control_limits))
        .route(
            "/__sim/hold_writes",
            post(control_hold_writes).get(control_held_writes),
        )
        .route("/__sim/release_writes", post(control_release_writes))
        .route("/__sim/token", post(control_token));
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .merge(data)
        .merge(control)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    api_error(404, "NOT_FOUND", "The requested resource does not exist")
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("OAuth "))
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// Counts the call, applies faults, checks the session and the daily allowance, and stamps
/// `Sforce-Limit-Info` on every `/services/data` response.
async fn data_guard(
    State(state): State<Arc<SfState>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched
        .as_ref()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    state
        .counters
        .bump(&format!("{} {}", request.method(), route));
    let mut request = request;
    if request.method() != axum::http::Method::GET
        && !route.contains("/jobs/query")
        && state.holds_next_write()
    {
        // A held write is one Salesforce received whole: its body is read before it waits (a
        // client frozen halfway through sending it has not made a write yet).
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        };
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
        state.hold_write().await;
    }
    let mut response = guarded(&state, request, next).await;
    let (used, max) = {
        let usage = lock(&state.usage);
        (usage.used, usage.max)
    };
    if let Ok(value) = HeaderValue::from_str(&format!("api-usage={used}/{max}")) {
        response.headers_mut().insert("sforce-limit-info", value);
    }
    response
}

async fn guarded(state: &SfState, request: Request, next: Next) -> Response {
    let now = state.now();
    let (decision, limit_fault) = {
        let mut faults = lock(&state.faults);
        let decision = faults.on_call();
        let limit_fault = faults.limit_exceeded(now);
        (decision, limit_fault)
    };
    if decision.expire_tokens {
        lock(&state.sessions).clear();
    }
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }
    {
        let token = bearer(request.headers());
        let mut sessions = lock(&state.sessions);
        let idle = chrono::Duration::from_std(state.config.session_idle_timeout)
            .unwrap_or(chrono::Duration::hours(2));
        let valid = match token.as_deref().and_then(|t| sessions.get_mut(t)) {
            Some(session) if now - session.last_used <= idle => {
                session.last_used = now;
                true
            }
            Some(_) => {
                if let Some(token) = token.as_deref() {
                    sessions.remove(token);
                }
                false
            }
            None => false,
        };
        if !valid {
            return api_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
    }
    if let Some(status) = decision.status {
        let (code, message) = match status {
            503 => ("SERVER_UNAVAILABLE", "Server temporarily unavailable"),
            429 => ("REQUEST_LIMIT_EXCEEDED", "Too many requests"),
            _ => (
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please try again.",
            ),
        };
        return api_error(status, code, message);
    }
    {
        let mut usage = lock(&state.usage);
        if limit_fault || usage.used >= usage.max {
            return api_error(
                403,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            );
        }
        usage.used += 1;
    }
    if let Some(object) = object_of(state, &request) {
        state.object_calls.bump(&object);
    }
    next.run(request).await
}

/// The sObject a `/services/data` call concerns, when the path and query tell it; calls whose body
/// names it (collections create and update, job creation) are counted by their handlers.
fn object_of(state: &SfState, request: &Request) -> Option<String> {
    let path = request.uri().path().strip_prefix("/services/data/")?;
    let segments: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let named = |name: &str| {
        let org = read(&state.org);
        org.object(name).map(|i| org.objects[i].def.name.clone())
    };
    let param = |wanted: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(request.uri().query().unwrap_or(""))
            .ok()?
            .into_iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value)
    };
    match segments.as_slice() {
        ["sobjects", object, ..] | ["composite", "sobjects", object, _] => named(object),
        ["composite", "sobjects"] if request.method() == axum::http::Method::DELETE => {
            let ids = param("ids")?;
            let prefix = ids.split(',').next()?.get(..3)?.to_string();
            let org = read(&state.org);
            org.objects
                .iter()
                .find(|o| o.def.key_prefix == prefix)
                .map(|o| o.def.name.clone())
        }
        ["query"] | ["queryAll"] => {
            let soql = param("q")?;
            let mut words = soql.split_whitespace();
            words.find(|w| w.eq_ignore_ascii_case("FROM"))?;
            named(words.next()?)
        }
        ["query", locator] => {
            let id = locator.rsplit_once('-').map_or(*locator, |(id, _)| id);
            lock(&state.cursors).get(id).map(|c| c.object.clone())
        }
        ["jobs", "ingest", id, ..] => lock(&state.jobs).get(*id).map(|j| j.object.clone()),
        ["jobs", "query", id, ..] => lock(&state.query_jobs)
            .jobs
            .get(*id)
            .map(|j| j.object.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth

#[derive(Deserialize)]
struct JwtClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
}

async fn token(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    state.counters.bump("POST /services/oauth2/token");
    let fields: HashMap<String, String> =
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
            .unwrap_or_default()
            .into_iter()
            .collect();
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    match field("grant_type") {
        "client_credentials" => {
            if field("client_id") != state.config.client_id
                || field("client_secret") != state.config.client_secret
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "invalid client credentials",
                );
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            if let Err(response) = check_jwt(&state, field("assertion")) {
                return response;
            }
        }
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type not supported",
            );
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type not supported",
            );
        }
    }
    let access_token = state.new_session();
    let base_url = state.base_url();
    let issued_at = state.now().timestamp_millis().to_string();
    let signature = {
        use base64::Engine as _;
        let digest = sha2::Sha256::digest(format!("{access_token}{issued_at}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(digest)
    };
    axum::Json(json!({
        "access_token": access_token,
        "instance_url": base_url,
        "id": format!("{base_url}/id/{ORG_ID}/{USER_ID}"),
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature,
        "scope": "api",
    }))
    .into_response()
}

fn check_jwt(state: &SfState, assertion: &str) -> Result<(), Response> {
    let invalid =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);
    let Some(key) = &state.jwt_key else {
        return Err(invalid("user hasn't approved this consumer"));
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Expiry and audience are checked below against the sim clock and the configured audiences.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<JwtClaims>(assertion, key, &validation)
        .map_err(|e| {
            tracing::debug!(error = %e, "jwt assertion refused");
            invalid("invalid assertion")
        })?
        .claims;
    if claims.iss.as_deref() != Some(state.config.client_id.as_str()) {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    let audience_ok = match &claims.aud {
        Some(Value::String(aud)) => state.config.jwt_audiences.iter().any(|a| a == aud),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| state.config.jwt_audiences.iter().any(|a| a == aud)),
        _ => false,
    };
    if !audience_ok {
        return Err(invalid("audience is invalid"));
    }
    let now = state.now().timestamp();
    match claims.exp {
        Some(exp) if exp >= now && exp <= now + 300 => {}
        Some(exp) if exp > now + 300 => {
            return Err(invalid("expiration time is too far in the future"));
        }
        _ => return Err(invalid("expired authorization code")),
    }
    if claims.sub.as_deref() != Some(state.config.username.as_str()) {
        return Err(invalid("user hasn't approved this consumer"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resources, limits, describe

async fn versions(State(state): State<Arc<SfState>>) -> Response {
    let _ = state;
    axum::Json(json!([{"label": "Winter '25", "url": DATA, "version": "62.0"}])).into_response()
}

async fn resources() -> Response {
    axum::Json(json!({
        "sobjects": format!("{DATA}/sobjects"),
        "query": format!("{DATA}/query"),
        "queryAll": format!("{DATA}/queryAll"),
        "limits": format!("{DATA}/limits"),
        "composite": format!("{DATA}/composite"),
        "jobs": format!("{DATA}/jobs"),
    }))
    .into_response()
}

async fn limits(State(state): State<Arc<SfState>>) -> Response {
    let (used, max) = {
        let usage = lock(&state.usage);
        (usage.used, usage.max)
    };
    let batches = lock(&state.jobs).len() as u64;
    let query_jobs = lock(&state.query_jobs).created;
    axum::Json(json!({
        "DailyApiRequests": {"Max": max, "Remaining": max.saturating_sub(used)},
        "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000u64.saturating_sub(batches)},
        "DailyBulkV2QueryJobs": {
            "Max": bulk_query::DAILY_QUERY_JOBS,
            "Remaining": bulk_query::DAILY_QUERY_JOBS.saturating_sub(query_jobs),
        },
        "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
        "DataStorageMB": {"Max": 5120, "Remaining": 5120},
        "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
    }))
    .into_response()
}

fn type_name(kind: FieldType) -> &'static str {
    match kind {
        FieldType::String => "string",
        FieldType::Email => "email",
        FieldType::Boolean => "boolean",
        FieldType::Datetime => "datetime",
        FieldType::Date => "date",
        FieldType::Double => "double",
        FieldType::Percent => "percent",
        FieldType::Picklist => "picklist",
        FieldType::Reference => "reference",
    }
}

fn object_summary(def: &ObjectDef) -> Value {
    json!({
        "name": def.name,
        "label": def.label,
        "keyPrefix": def.key_prefix,
        "custom": def.name.ends_with("__c"),
        "createable": true, "updateable": true, "deletable": true, "queryable": true,
        "urls": {"sobject": format!("{DATA}/sobjects/{}", def.name),
                 "describe": format!("{DATA}/sobjects/{}/describe", def.name)},
    })
}

async fn describe_global(State(state): State<Arc<SfState>>) -> Response {
    let org = read(&state.org);
    let sobjects: Vec<Value> = org.schema.objects.iter().map(object_summary).collect();
    axum::Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects}))
        .into_response()
}

async fn describe(State(state): State<Arc<SfState>>, Path(sobject): Path<String>) -> Response {
    let org = read(&state.org);
    let Some(index) = org.object(&sobject) else {
        return api_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    let def = &org.objects[index].def;
    let mut fields = vec![json!({
        "name": "Id", "label": "Record ID", "type": "id", "length": 18, "nillable": false,
        "externalId": false, "unique": false, "idLookup": true, "createable": false, "updateable": false,
        "picklistValues": [], "referenceTo": [], "relationshipName": null,
    })];
    for field in &def.fields {
        fields.push(json!({
            "name": field.name,
            "label": field.name.trim_end_matches("__c").replace('_', " "),
            "type": type_name(field.kind),
            "length": match field.kind {
                FieldType::String | FieldType::Email => field.length.unwrap_or(255),
                FieldType::Picklist => 255,
                FieldType::Reference => 18,
                _ => 0,
            },
            "precision": field.precision.unwrap_or(0),
            "scale": field.scale.unwrap_or(0),
            "nillable": !field.required,
            "defaultedOnCreate": false,
            "externalId": field.external_id,
            "unique": field.unique,
            "idLookup": field.upsert_key(),
            "createable": true,
            "updateable": true,
            "restrictedPicklist": field.kind == FieldType::Picklist && field.restricted,
            "picklistValues": field.values.iter().map(|v| json!({"value": v, "label": v, "active": true, "defaultValue": false})).collect::<Vec<_>>(),
            "referenceTo": field.reference_to.iter().collect::<Vec<_>>(),
            "relationshipName": field.relationship_name,
        }));
    }
    let mut body = object_summary(def);
    body["fields"] = Value::Array(fields);
    axum::Json(body).into_response()
}

// ---------------------------------------------------------------------------------------------
// Records

fn lock_fault_fn(share: f64) -> impl FnMut() -> bool {
    let mut rng = rand::rng();
    move || share > 0.0 && rng.random_bool(share.clamp(0.0, 1.0))
}

#[derive(Deserialize)]
struct CollectionBody {
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
    #[serde(default)]
    records: Vec<Value>,
}

fn parse_collection(body: &[u8]) -> Result<CollectionBody, Response> {
    let parsed: CollectionBody = serde_json::from_slice(body).map_err(|e| {
        api_error(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected content: {e}"),
        )
    })?;
    if parsed.records.len() > 200 {
        return Err(api_error(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    Ok(parsed)
}

fn unsupported_type(name: &str) -> Response {
    api_error(
        400,
        "INVALID_TYPE",
        &format!("sObject type '{name}' is not supported."),
    )
}

/// Parses collection records that must all be of `object` (by `attributes.type`).
fn collection_rows(
    org: &Org,
    object: usize,
    records: &[Value],
) -> Result<Vec<org::RowInput>, Response> {
    let name = &org.objects[object].def.name;
    records
        .iter()
        .map(|record| {
            let Some(map) = record.as_object() else {
                return Err(api_error(
                    400,
                    "JSON_PARSER_ERROR",
                    "a record must be a JSON object",
                ));
            };
            let record_type = map
                .get("attributes")
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str);
            match record_type {
                None => {
                    return Err(api_error(
                        400,
                        "INVALID_TYPE",
                        "Must send a concrete entity type.",
                    ));
                }
                Some(t) if !t.eq_ignore_ascii_case(name) => return Err(unsupported_type(t)),
                Some(_) => {}
            }
            org.parse_json_record(object, map).map_err(request_error)
        })
        .collect()
}

async fn collections_upsert(
    State(state): State<Arc<SfState>>,
    Path((sobject, field)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let parsed = match parse_collection(&body) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&sobject) else {
        return unsupported_type(&sobject);
    };
    let Some(ext_field) = org.objects[object]
        .field(&field)
        .filter(|&f| org.objects[object].field_def(f).upsert_key())
    else {
        return api_error(
            400,
            "INVALID_FIELD",
            &format!("Field {field} is not an External ID or Id field"),
        );
    };
    let rows = match collection_rows(&org, object, &parsed.records) {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    let outcomes = org.write(
        object,
        Op::Upsert(ext_field),
        rows,
        parsed.all_or_none,
        &mut lock_fault_fn(share),
    );
    let results: Vec<Value> = outcomes.iter().map(|o| save_result(o, true)).collect();
    axum::Json(results).into_response()
}

async fn collections_write(state: &SfState, body: &[u8], op: Op) -> Response {
    let parsed = match parse_collection(body) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let Some(first_type) = parsed
        .records
        .first()
        .and_then(|r| r.get("attributes"))
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        if parsed.records.is_empty() {
            return axum::Json(json!([])).into_response();
        }
        return api_error(400, "INVALID_TYPE", "Must send a concrete entity type.");
    };
    if let Some(name) = {
        let org = read(&state.org);
        org.object(&first_type)
            .map(|i| org.objects[i].def.name.clone())
    } {
        state.object_calls.bump(&name);
    }
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&first_type) else {
        return unsupported_type(&first_type);
    };
    let rows = match collection_rows(&org, object, &parsed.records) {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    let outcomes = org.write(
        object,
        op,
        rows,
        parsed.all_or_none,
        &mut lock_fault_fn(share),
    );
    let results: Vec<Value> = outcomes.iter().map(|o| save_result(o, false)).collect();
    axum::Json(results).into_response()
}

async fn collections_create(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    collections_write(&state, &body, Op::Insert).await
}

async fn collections_update(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    collections_write(&state, &body, Op::Update).await
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(default)]
    ids: String,
    #[serde(rename = "allOrNone", default)]
    all_or_none: Option<String>,
}

async fn collections_delete(
    State(state): State<Arc<SfState>>,
    Query(params): Query<DeleteParams>,
) -> Response {
    let ids: Vec<String> = params
        .ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > 200 {
        return api_error(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    let all_or_none = params
        .all_or_none
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let share = state.lock_share();
    let outcomes =
        write(&state.org).delete(&ids, false, all_or_none, None, &mut lock_fault_fn(share));
    let results: Vec<Value> = outcomes.iter().map(|o| save_result(o, false)).collect();
    axum::Json(results).into_response()
}

/// Turns a per-record failure of a single-record call into the request-level shape.
fn record_error_response(error: &RecordError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!([{"message": error.message, "errorCode": error.code, "fields": error.fields}]),
        ),
    )
        .into_response()
}

fn parse_record_body(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(api_error(
            400,
            "JSON_PARSER_ERROR",
            "a record must be a JSON object",
        )),
        Err(e) => Err(api_error(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected content: {e}"),
        )),
    }
}

async fn upsert_one(
    State(state): State<Arc<SfState>>,
    Path((sobject, field, value)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let map = match parse_record_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&sobject) else {
        return unsupported_type(&sobject);
    };
    let (op, mut row) = if field.eq_ignore_ascii_case("Id") {
        let row = match org.parse_json_record(object, &map) {
            Ok(row) => row,
            Err(error) => return request_error(error),
        };
        (Op::Update, row)
    } else {
        let Some(ext_field) = org.objects[object]
            .field(&field)
            .filter(|&f| org.objects[object].field_def(f).upsert_key())
        else {
            return api_error(
                400,
                "NOT_FOUND",
                &format!("Provided external ID field does not exist or is not accessible: {field}"),
            );
        };
        let row = match org.parse_json_record(object, &map) {
            Ok(row) => row,
            Err(error) => return request_error(error),
        };
        (Op::Upsert(ext_field), row)
    };
    match op {
        Op::Update => row.id = Some(value.clone()),
        Op::Upsert(ext_field) => {
            row.sets.retain(|(f, _)| *f != ext_field);
            row.sets
                .push((ext_field, schema::Val::Str(value.as_str().into())));
        }
        Op::Insert => {}
    }
    let outcome = org
        .write(object, op, vec![row], true, &mut lock_fault_fn(share))
        .pop();
    match outcome {
        Some(Outcome {
            error: Some(error), ..
        }) => record_error_response(&error),
        Some(outcome) => {
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                axum::Json(json!({"id": outcome.id.as_deref(), "success": true, "errors": [], "created": outcome.created})),
            )
                .into_response()
        }
        None => api_error(500, "UNKNOWN_EXCEPTION", "no outcome"),
    }
}

async fn create_one(
    State(state): State<Arc<SfState>>,
    Path(sobject): Path<String>,
    body: Bytes,
) -> Response {
    let map = match parse_record_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&sobject) else {
        return api_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    let row = match org.parse_json_record(object, &map) {
        Ok(row) => row,
        Err(error) => return request_error(error),
    };
    match org
        .write(
            object,
            Op::Insert,
            vec![row],
            true,
            &mut lock_fault_fn(share),
        )
        .pop()
    {
        Some(Outcome {
            error: Some(error), ..
        }) => record_error_response(&error),
        Some(outcome) => (
            StatusCode::CREATED,
            axum::Json(json!({"id": outcome.id.as_deref(), "success": true, "errors": []})),
        )
            .into_response(),
        None => api_error(500, "UNKNOWN_EXCEPTION", "no outcome"),
    }
}

async fn get_one(
    State(state): State<Arc<SfState>>,
    Path((sobject, id)): Path<(String, String)>,
) -> Response {
    let org = read(&state.org);
    let Some(object) = org.object(&sobject) else {
        return api_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    let store = &org.objects[object];
    match normalize_id(&id).and_then(|id| store.get(&id).map(|r| store.record_json(r))) {
        Some(mut record) => {
            record["attributes"] = json!({"type": store.def.name, "url": format!("{DATA}/sobjects/{}/{id}", store.def.name)});
            axum::Json(record).into_response()
        }
        None => api_error(404, "NOT_FOUND", "The requested resource does not exist"),
    }
}

async fn update_one(
    State(state): State<Arc<SfState>>,
    Path((sobject, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let map = match parse_record_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&sobject) else {
        return api_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    let mut row = match org.parse_json_record(object, &map) {
        Ok(row) => row,
        Err(error) => return request_error(error),
    };
    row.id = Some(id);
    match org
        .write(
            object,
            Op::Update,
            vec![row],
            true,
            &mut lock_fault_fn(share),
        )
        .pop()
    {
        Some(Outcome {
            error: Some(error), ..
        }) => record_error_response(&error),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn delete_one(
    State(state): State<Arc<SfState>>,
    Path((sobject, id)): Path<(String, String)>,
) -> Response {
    let share = state.lock_share();
    let mut org = write(&state.org);
    let Some(object) = org.object(&sobject) else {
        return api_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    match org
        .delete(&[id], false, true, Some(object), &mut lock_fault_fn(share))
        .pop()
    {
        Some(Outcome {
            error: Some(error), ..
        }) => {
            let status = if error.code == "ENTITY_IS_DELETED"
                || error.code == "INVALID_CROSS_REFERENCE_KEY"
            {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            (
                status,
                axum::Json(json!([{"message": error.message, "errorCode": error.code, "fields": error.fields}])),
            )
                .into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Query

const QUERY_PAGE: usize = 2000;

#[derive(Deserialize)]
struct QueryParams {
    q: Option<String>,
}

fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().strip_prefix("batchSize="))
        })
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|size| size.clamp(200, QUERY_PAGE))
        .unwrap_or(QUERY_PAGE)
}

fn query_page(state: &SfState, locator: &str, offset: usize, page: usize) -> Response {
    let mut cursors = lock(&state.cursors);
    let Some(cursor) = cursors.get(locator) else {
        return api_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
    };
    let end = (offset + page).min(cursor.records.len());
    let records: Vec<Value> = cursor.records[offset.min(end)..end].to_vec();
    let done = end >= cursor.records.len();
    let mut body = json!({"totalSize": cursor.total_size, "done": done, "records": records});
    if done {
        cursors.remove(locator);
    } else {
        body["nextRecordsUrl"] = Value::String(format!("{DATA}/query/{locator}-{end}"));
    }
    axum::Json(body).into_response()
}

async fn query(
    State(state): State<Arc<SfState>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
) -> Response {
    run_query(&state, &headers, params, false)
}

/// `GET /queryAll`: as `/query`, with the recycle bin's records (`IsDeleted` true).
async fn query_all(
    State(state): State<Arc<SfState>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
) -> Response {
    run_query(&state, &headers, params, true)
}

fn run_query(
    state: &SfState,
    headers: &HeaderMap,
    params: QueryParams,
    with_deleted: bool,
) -> Response {
    let Some(text) = params.q.filter(|q| !q.trim().is_empty()) else {
        return api_error(400, "MALFORMED_QUERY", "A query string is required (q)");
    };
    let page = batch_size(headers);
    let (result, object) = {
        let org = read(&state.org);
        let parsed = match soql::parse(&org, &text) {
            Ok(parsed) => parsed,
            Err(error) => return request_error(error),
        };
        (
            soql::execute_all(&org, &parsed, API_VERSION, with_deleted),
            org.objects[parsed.object()].def.name.clone(),
        )
    };
    if result.records.len() <= page {
        return axum::Json(
            json!({"totalSize": result.total_size, "done": true, "records": result.records}),
        )
        .into_response();
    }
    let locator = format!("01g{}", crate::common::random_hex(8));
    lock(&state.cursors).insert(
        locator.clone(),
        QueryCursor {
            object,
            total_size: result.total_size,
            records: result.records,
        },
    );
    query_page(state, &locator, 0, page)
}

async fn query_more(
    State(state): State<Arc<SfState>>,
    headers: HeaderMap,
    Path(locator): Path<String>,
) -> Response {
    let (id, offset) = match locator.rsplit_once('-') {
        Some((id, offset)) => (id.to_string(), offset.parse::<usize>().unwrap_or(0)),
        None => (locator.clone(), 0),
    };
    query_page(&state, &id, offset, batch_size(&headers))
}

// ---------------------------------------------------------------------------------------------
// Bulk API 2.0

#[derive(Deserialize)]
struct CreateJob {
    object: Option<String>,
    operation: Option<String>,
    #[serde(rename = "externalIdFieldName")]
    external_id_field_name: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    #[serde(rename = "columnDelimiter")]
    column_delimiter: Option<String>,
    #[serde(rename = "lineEnding")]
    line_ending: Option<String>,
}

async fn create_job(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let request: CreateJob = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return api_error(
                400,
                "JSON_PARSER_ERROR",
                &format!("Unexpected content: {e}"),
            );
        }
    };
    let org = read(&state.org);
    let object_name = request.object.unwrap_or_default();
    let Some(object_index) = org.object(&object_name) else {
        return api_error(
            400,
            "INVALIDJOB",
            &format!("Unable to find object: {object_name}"),
        );
    };
    let operation_name = request.operation.unwrap_or_default();
    let Some(operation) = BulkOp::parse(&operation_name) else {
        return api_error(
            400,
            "INVALIDJOB",
            &format!("Invalid operation: {operation_name}"),
        );
    };
    if request.content_type.as_deref().is_some_and(|c| c != "CSV") {
        return api_error(400, "INVALIDJOB", "Only CSV content is supported");
    }
    let delimiter_name = request.column_delimiter.unwrap_or_else(|| "COMMA".into());
    let Some(delimiter) = bulk::delimiter(&delimiter_name) else {
        return api_error(
            400,
            "INVALIDJOB",
            &format!("Invalid column delimiter: {delimiter_name}"),
        );
    };
    let store = &org.objects[object_index];
    let external_id_field = if operation == BulkOp::Upsert {
        let name = request.external_id_field_name.unwrap_or_default();
        if name.is_empty() {
            return api_error(
                400,
                "INVALIDJOB",
                &format!(
                    "External ID was blank for {}. An External ID must be specified for upsert.",
                    store.def.name
                ),
            );
        }
        match store
            .field(&name)
            .filter(|&f| store.field_def(f).upsert_key())
        {
            Some(field) => Some(store.field_def(field).name.clone()),
            None if name.eq_ignore_ascii_case("Id") => Some("Id".into()),
            None => {
                return api_error(
                    400,
                    "INVALIDJOB",
                    &format!(
                        "The field {name} is not an external id field of {}",
                        store.def.name
                    ),
                );
            }
        }
    } else {
        None
    };
    let object = store.def.name.clone();
    drop(org);
    state.object_calls.bump(&object);
    let id = write(&state.org).new_id("750").to_string();
    let now = state.now();
    let job = Job {
        id: id.clone(),
        object,
        object_index,
        operation,
        external_id_field,
        delimiter,
        delimiter_name,
        line_ending: request.line_ending.unwrap_or_else(|| "LF".into()),
        state: JobState::Open,
        created: now,
        modified: now,
        data: None,
        processed: 0,
        failed: 0,
        error_message: None,
        outcomes: Vec::new(),
        processing_ms: 0,
    };
    let info = job.info(API_VERSION, USER_ID);
    lock(&state.jobs).insert(id, job);
    axum::Json(info).into_response()
}

async fn list_jobs(State(state): State<Arc<SfState>>) -> Response {
    let jobs = lock(&state.jobs);
    let records: Vec<Value> = jobs
        .values()
        .map(|j| j.info(API_VERSION, USER_ID))
        .collect();
    axum::Json(json!({"done": true, "records": records, "nextRecordsUrl": null})).into_response()
}

fn job_not_found() -> Response {
    api_error(404, "NOT_FOUND", "The requested resource does not exist")
}

async fn job_info(State(state): State<Arc<SfState>>, Path(id): Path<String>) -> Response {
    match lock(&state.jobs).get(&id) {
        Some(job) => axum::Json(job.info(API_VERSION, USER_ID)).into_response(),
        None => job_not_found(),
    }
}

async fn delete_job(State(state): State<Arc<SfState>>, Path(id): Path<String>) -> Response {
    let mut jobs = lock(&state.jobs);
    match jobs.get(&id).map(|j| j.state) {
        None => job_not_found(),
        Some(JobState::UploadComplete | JobState::InProgress) => api_error(
            400,
            "INVALIDJOBSTATE",
            "Job must be Aborted, JobComplete or Failed to be deleted",
        ),
        Some(_) => {
            jobs.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[derive(Deserialize)]
struct ChangeJob {
    state: String,
}

async fn change_job(
    State(state): State<Arc<SfState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let change: ChangeJob = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => {
            return api_error(
                400,
                "JSON_PARSER_ERROR",
                &format!("Unexpected content: {e}"),
            );
        }
    };
    let now = state.now();
    let info = {
        let mut jobs = lock(&state.jobs);
        let Some(job) = jobs.get_mut(&id) else {
            return job_not_found();
        };
        match (change.state.as_str(), job.state) {
            ("UploadComplete", JobState::Open) => job.state = JobState::UploadComplete,
            ("Aborted", JobState::Open | JobState::UploadComplete | JobState::InProgress) => {
                job.state = JobState::Aborted
            }
            (wanted, current) => {
                return api_error(
                    400,
                    "INVALIDJOBSTATE",
                    &format!(
                        "Cannot change the state of a job from {} to {wanted}",
                        current.name()
                    ),
                );
            }
        }
        job.modified = now;
        job.info(API_VERSION, USER_ID)
    };
    if change.state == "UploadComplete" {
        let state = state.clone();
        tokio::task::spawn_blocking(move || process_job(&state, &id));
    }
    axum::Json(info).into_response()
}

async fn upload(
    State(state): State<Arc<SfState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max = state.config.max_upload_bytes;
    let too_large = || {
        api_error(
            413,
            "EXCEEDED_QUOTA",
            &format!("The upload exceeds the limit of {max} bytes of raw data"),
        )
    };
    {
        let jobs = lock(&state.jobs);
        match jobs.get(&id) {
            None => return job_not_found(),
            Some(job) if job.state != JobState::Open => {
                return api_error(
                    400,
                    "INVALIDJOBSTATE",
                    "The job is not Open: data can no longer be uploaded",
                );
            }
            Some(job) if job.data.is_some() => {
                return api_error(
                    400,
                    "INVALIDJOBSTATE",
                    &format!(
                        "Found multiple contents for job: <{id}>, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' once on a given job."
                    ),
                );
            }
            Some(_) => {}
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > max) {
        return too_large();
    }
    // Chunked bodies have no length: read them and stop as soon as the limit is passed.
    let mut buffer = bytes::BytesMut::with_capacity(declared.unwrap_or(64 * 1024).min(max));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return api_error(400, "INVALIDBATCH", "The upload was interrupted");
        };
        if buffer.len() + chunk.len() > max {
            return too_large();
        }
        buffer.extend_from_slice(&chunk);
    }
    let mut jobs = lock(&state.jobs);
    let Some(job) = jobs.get_mut(&id) else {
        return job_not_found();
    };
    job.data = Some(buffer.freeze());
    job.modified = state.now();
    StatusCode::CREATED.into_response()
}

/// One parsed internal batch of a job.
enum Parsed {
    Rows(Vec<org::RowInput>),
    Ids(Vec<String>),
}

fn fail_job(state: &SfState, id: &str, message: String) {
    tracing::debug!(job = %id, %message, "bulk job failed");
    if let Some(job) = lock(&state.jobs).get_mut(id) {
        job.state = JobState::Failed;
        job.error_message = Some(message);
        job.modified = state.now();
    }
}

impl SfState {
    /// Whether the next ingest job stays `InProgress` for ever (the `stall_ingest_jobs` fault),
    /// counting it.
    fn take_stalled_ingest_job(&self) -> bool {
        let mut faults = lock(&self.faults);
        let stalled = faults.faults.stall_ingest_jobs > 0;
        if stalled {
            faults.faults.stall_ingest_jobs -= 1;
        }
        stalled
    }
}

/// Processes an ingest job in internal batches, releasing the org lock between batches.
fn process_job(state: &SfState, id: &str) {
    let started = Instant::now();
    let work = {
        let mut jobs = lock(&state.jobs);
        let Some(job) = jobs.get_mut(id) else { return };
        if job.state != JobState::UploadComplete {
            return;
        }
        job.state = JobState::InProgress;
        job.modified = state.now();
        if state.take_stalled_ingest_job() {
            return;
        }
        bulk::Work {
            object_index: job.object_index,
            operation: job.operation,
            external_id_field: job.external_id_field.clone(),
            delimiter: job.delimiter,
            data: job.data.clone().unwrap_or_default(),
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(work.delimiter)
        .from_reader(&work.data[..]);
    let header = match reader.headers() {
        Ok(header) => header.clone(),
        Err(e) => {
            return fail_job(
                state,
                id,
                format!("InvalidBatch : Failed to parse CSV header: {e}"),
            );
        }
    };
    if work.data.is_empty() || header.is_empty() {
        return fail_job(state, id, "InvalidBatch : No content was uploaded".into());
    }
    let prepared = bulk::prepare(&read(&state.org), &work, &header);
    let (columns, op) = match prepared {
        Ok(prepared) => prepared,
        Err(message) => return fail_job(state, id, message),
    };
    let hard = work.operation == BulkOp::HardDelete;
    let definition = read(&state.org).objects[work.object_index].def.clone();
    let picklists = org::Picklists::new(&definition);
    // Every record is one line at least: reserving for all of them avoids regrowing a vector of
    // a million outcomes.
    let lines = work.data.iter().filter(|&&b| b == b'\n').count();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(lines + 1);
    // One thread parses and converts the next internal batch while this one applies the current
    // batch under the org lock: with two cores ingestion takes about the longer of both.
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<Parsed, String>>(2);
    let applied: Result<(), String> = std::thread::scope(|scope| {
        let columns = &columns;
        let definition = &definition;
        let picklists = &picklists;
        scope.spawn(move || {
            // Records are reused from batch to batch: two allocations per row would dominate.
            let mut records: Vec<csv::StringRecord> = (0..bulk::INTERNAL_BATCH)
                .map(|_| csv::StringRecord::new())
                .collect();
            loop {
                let mut filled = 0;
                while filled < bulk::INTERNAL_BATCH {
                    match reader.read_record(&mut records[filled]) {
                        Ok(true) => filled += 1,
                        Ok(false) => break,
                        Err(e) => {
                            let _ = sender
                                .send(Err(format!("InvalidBatch : Failed to parse CSV: {e}")));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                let parsed = if op.is_some() {
                    Parsed::Rows(
                        records[..filled]
                            .iter()
                            .map(|record| {
                                org::parse_csv_row(definition, picklists, columns, record)
                            })
                            .collect(),
                    )
                } else {
                    Parsed::Ids(
                        records[..filled]
                            .iter()
                            .map(|record| record.get(0).unwrap_or("").to_string())
                            .collect(),
                    )
                };
                if sender.send(Ok(parsed)).is_err() {
                    return;
                }
            }
        });
        for parsed in receiver {
            let parsed = parsed?;
            if lock(&state.jobs)
                .get(id)
                .is_none_or(|job| job.state == JobState::Aborted)
            {
                return Err(String::new());
            }
            let mut fault = lock_fault_fn(state.lock_share());
            let batch = {
                let mut org = write(&state.org);
                match (parsed, op) {
                    (Parsed::Rows(rows), Some(op)) => {
                        org.write(work.object_index, op, rows, false, &mut fault)
                    }
                    (Parsed::Ids(ids), _) => {
                        org.delete(&ids, hard, false, Some(work.object_index), &mut fault)
                    }
                    (Parsed::Rows(_), None) => Vec::new(),
                }
            };
            let failed = batch.iter().filter(|o| o.error.is_some()).count();
            outcomes.extend(batch);
            if let Some(job) = lock(&state.jobs).get_mut(id) {
                job.processed = outcomes.len();
                job.failed += failed;
            }
        }
        Ok(())
    });
    match applied {
        Ok(()) => {}
        // Aborted: the rows not applied stay unprocessed.
        Err(message) if message.is_empty() => {
            if let Some(job) = lock(&state.jobs).get_mut(id) {
                job.outcomes = outcomes;
            }
            return;
        }
        Err(message) => return fail_job(state, id, message),
    }
    let mut jobs = lock(&state.jobs);
    if let Some(job) = jobs.get_mut(id) {
        job.processed = outcomes.len();
        job.failed = outcomes.iter().filter(|o| o.error.is_some()).count();
        job.outcomes = outcomes;
        job.processing_ms = started.elapsed().as_millis() as u64;
        job.modified = state.now();
        if job.state == JobState::InProgress {
            job.state = JobState::JobComplete;
        }
        tracing::debug!(job = %id, processed = job.processed, failed = job.failed, "bulk job complete");
    }
}

fn results(state: &SfState, id: &str, kind: ResultKind) -> Response {
    let jobs = lock(&state.jobs);
    let Some(job) = jobs.get(id) else {
        return job_not_found();
    };
    if matches!(
        job.state,
        JobState::Open | JobState::UploadComplete | JobState::InProgress
    ) && kind != ResultKind::Unprocessed
    {
        return api_error(
            400,
            "INVALIDJOBSTATE",
            "Results are available once the job is JobComplete, Failed or Aborted",
        );
    }
    match bulk::results_csv(job, kind) {
        Ok(body) => csv_response(body),
        Err(message) => api_error(500, "UNKNOWN_EXCEPTION", &message),
    }
}

async fn successful_results(State(state): State<Arc<SfState>>, Path(id): Path<String>) -> Response {
    results(&state, &id, ResultKind::Successful)
}

async fn failed_results(State(state): State<Arc<SfState>>, Path(id): Path<String>) -> Response {
    results(&state, &id, ResultKind::Failed)
}

async fn unprocessed_results(
    State(state): State<Arc<SfState>>,
    Path(id): Path<String>,
) -> Response {
    results(&state, &id, ResultKind::Unprocessed)
}

// ---------------------------------------------------------------------------------------------
// Bulk API 2.0 query jobs

#[derive(Deserialize)]
struct CreateQueryJob {
    operation: Option<String>,
    query: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    #[serde(rename = "columnDelimiter")]
    column_delimiter: Option<String>,
    #[serde(rename = "lineEnding")]
    line_ending: Option<String>,
}

async fn create_query_job(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let request: CreateQueryJob = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return api_error(
                400,
                "JSON_PARSER_ERROR",
                &format!("Unexpected content: {e}"),
            );
        }
    };
    let operation_name = request.operation.unwrap_or_default();
    let Some(operation) = QueryOp::parse(&operation_name) else {
        return api_error(
            400,
            "INVALIDJOB",
            &format!("Invalid operation: {operation_name}"),
        );
    };
    if request.content_type.as_deref().is_some_and(|c| c != "CSV") {
        return api_error(400, "INVALIDJOB", "Only CSV content is supported");
    }
    // The simulator writes results with commas and line feeds only.
    if request
        .column_delimiter
        .as_deref()
        .is_some_and(|d| d != "COMMA")
        || request.line_ending.as_deref().is_some_and(|l| l != "LF")
    {
        return api_error(
            400,
            "INVALIDJOB",
            "The simulator serves query results with columnDelimiter COMMA and lineEnding LF only",
        );
    }
    let Some(soql_text) = request.query.filter(|q| !q.trim().is_empty()) else {
        return api_error(400, "INVALIDJOB", "A query is required");
    };
    let object = {
        let org = read(&state.org);
        match soql::parse(&org, &soql_text) {
            Ok(parsed) => org.objects[parsed.object()].def.name.clone(),
            Err(error) => return request_error(error),
        }
    };
    state.object_calls.bump(&object);
    let now = state.now();
    // The id is drawn before the jobs lock is taken: the org lock may wait for an ingest batch.
    let id = write(&state.org).new_id("750").to_string();
    let info = {
        let mut query_jobs = lock(&state.query_jobs);
        if query_jobs.created >= bulk_query::DAILY_QUERY_JOBS {
            return api_error(
                400,
                "LIMIT_EXCEEDED",
                "Max number of Bulk API 2.0 query jobs per day exceeded",
            );
        }
        let job = QueryJob {
            id: id.clone(),
            operation,
            object,
            soql: soql_text,
            api_version: API_VERSION.to_string(),
            state: JobState::UploadComplete,
            created: now,
            modified: now,
            error_message: None,
            processing_ms: 0,
            results: None,
        };
        let info = job.info(USER_ID);
        query_jobs.jobs.insert(id.clone(), job);
        query_jobs.created += 1;
        let state = state.clone();
        tokio::spawn(async move { run_query_job(state, id).await });
        info
    };
    axum::Json(info).into_response()
}

/// Moves a query job through `InProgress`, runs its query (the snapshot it serves) and completes it,
/// unless it was aborted or deleted meanwhile.
async fn run_query_job(state: Arc<SfState>, id: String) {
    let delay = state.config.bulk_query_delay;
    tokio::time::sleep(delay).await;
    {
        let mut query_jobs = lock(&state.query_jobs);
        let Some(job) = query_jobs.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::UploadComplete {
            return;
        }
        job.state = JobState::InProgress;
        job.modified = state.now();
    }
    tokio::time::sleep(delay).await;
    let Some((soql_text, operation)) = lock(&state.query_jobs)
        .jobs
        .get(&id)
        .filter(|job| job.state == JobState::InProgress)
        .map(|job| (job.soql.clone(), job.operation))
    else {
        return;
    };
    let started = Instant::now();
    let worker = state.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let org = read(&worker.org);
        let parsed = soql::parse(&org, &soql_text).map_err(|e| e.message)?;
        soql::execute_csv(&org, &parsed, operation == QueryOp::QueryAll)
    })
    .await
    .unwrap_or_else(|e| Err(format!("query failed: {e}")));
    let mut query_jobs = lock(&state.query_jobs);
    let Some(job) = query_jobs.jobs.get_mut(&id) else {
        return;
    };
    if job.state != JobState::InProgress {
        return;
    }
    job.modified = state.now();
    job.processing_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(result) => {
            tracing::debug!(job = %id, records = result.row_ends.len(), "bulk query job complete");
            job.results = Some(Arc::new(result));
            job.state = JobState::JobComplete;
        }
        Err(message) => {
            tracing::debug!(job = %id, %message, "bulk query job failed");
            job.error_message = Some(message);
            job.state = JobState::Failed;
        }
    }
}

async fn list_query_jobs(State(state): State<Arc<SfState>>) -> Response {
    let query_jobs = lock(&state.query_jobs);
    let records: Vec<Value> = query_jobs.jobs.values().map(|j| j.info(USER_ID)).collect();
    axum::Json(json!({"done": true, "records": records, "nextRecordsUrl": null})).into_response()
}

/// Finds a query job for a request made with `version`: 404 when there is none, 409 when it was
/// created with another API version.
fn query_job<'a>(
    jobs: &'a mut QueryJobs,
    version: &str,
    id: &str,
) -> Result<&'a mut QueryJob, Response> {
    let job = jobs.jobs.get_mut(id).ok_or_else(job_not_found)?;
    if job.api_version != version {
        return Err(api_error(
            409,
            "API_VERSION_MISMATCH",
            &format!(
                "Job {id} was created with API version {}; use that version to read it",
                job.api_version
            ),
        ));
    }
    Ok(job)
}

async fn query_job_info(
    State(state): State<Arc<SfState>>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let mut query_jobs = lock(&state.query_jobs);
    match query_job(&mut query_jobs, &version, &id) {
        Ok(job) => axum::Json(job.info(USER_ID)).into_response(),
        Err(response) => response,
    }
}

async fn change_query_job(
    State(state): State<Arc<SfState>>,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let change: ChangeJob = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => {
            return api_error(
                400,
                "JSON_PARSER_ERROR",
                &format!("Unexpected content: {e}"),
            );
        }
    };
    let now = state.now();
    let mut query_jobs = lock(&state.query_jobs);
    let job = match query_job(&mut query_jobs, &version, &id) {
        Ok(job) => job,
        Err(response) => return response,
    };
    match (change.state.as_str(), job.state) {
        ("Aborted", JobState::UploadComplete | JobState::InProgress) => {
            job.state = JobState::Aborted;
            job.modified = now;
            axum::Json(job.info(USER_ID)).into_response()
        }
        (wanted, current) => api_error(
            400,
            "INVALIDJOBSTATE",
            &format!(
                "Cannot change the state of a job from {} to {wanted}",
                current.name()
            ),
        ),
    }
}

async fn delete_query_job(
    State(state): State<Arc<SfState>>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    let mut query_jobs = lock(&state.query_jobs);
    let current = match query_job(&mut query_jobs, &version, &id) {
        Ok(job) => job.state,
        Err(response) => return response,
    };
    match current {
        JobState::UploadComplete | JobState::InProgress => api_error(
            400,
            "INVALIDJOBSTATE",
            "Job must be Aborted, JobComplete or Failed to be deleted",
        ),
        _ => {
            query_jobs.jobs.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[derive(Deserialize)]
struct ResultsParams {
    locator: Option<String>,
    #[serde(rename = "maxRecords")]
    max_records: Option<String>,
}

async fn query_job_results(
    State(state): State<Arc<SfState>>,
    Path((version, id)): Path<(String, String)>,
    Query(params): Query<ResultsParams>,
) -> Response {
    let max = match params.max_records.as_deref() {
        None | Some("") => bulk_query::DEFAULT_MAX_RECORDS,
        Some(text) => match text.parse::<usize>() {
            Ok(max) if max > 0 => max,
            _ => {
                return api_error(
                    400,
                    "INVALIDREQUEST",
                    &format!("maxRecords must be a positive integer, not {text}"),
                );
            }
        },
    };
    let offset = match params.locator.as_deref() {
        None | Some("") => 0,
        Some(locator) => match bulk_query::decode_locator(locator) {
            Some(offset) => offset,
            None => {
                return api_error(
                    400,
                    "INVALID_QUERY_LOCATOR",
                    &format!("Invalid locator: {locator}"),
                );
            }
        },
    };
    let now = state.now();
    let result = {
        let mut query_jobs = lock(&state.query_jobs);
        let job = match query_job(&mut query_jobs, &version, &id) {
            Ok(job) => job,
            Err(response) => return response,
        };
        if now - job.created > chrono::Duration::days(bulk_query::RESULTS_KEPT_DAYS) {
            return api_error(
                404,
                "NOT_FOUND",
                "The results of this job are no longer available",
            );
        }
        match (&job.results, job.state) {
            (Some(result), JobState::JobComplete) => result.clone(),
            (_, current) => {
                return api_error(
                    400,
                    "INVALIDJOBSTATE",
                    &format!(
                        "Results are available once the job is JobComplete; it is {}",
                        current.name()
                    ),
                );
            }
        }
    };
    if offset > result.row_ends.len() {
        return api_error(
            400,
            "INVALID_QUERY_LOCATOR",
            "The locator is past the end of the results",
        );
    }
    let page = bulk_query::page(&result, offset, max);
    let mut response = csv_response(page.body);
    let headers = response.headers_mut();
    let locator = page.next.unwrap_or_else(|| "null".into());
    if let Ok(value) = HeaderValue::from_str(&locator) {
        headers.insert("sforce-locator", value);
    }
    headers.insert("sforce-numberofrecords", HeaderValue::from(page.rows));
    response
}

// ---------------------------------------------------------------------------------------------
// Control API

/// `GET /__sim/records/{object}[?Field=value&...]`: the live records of an object with every field
/// (`Id` plus each field; lookups as ids), in creation order, keeping only those whose fields hold
/// the given values (text form, e.g. `?Enrollment_Key__c=1-55&Status__c=Completed`, `?Id=a05...`).
async fn control_records(
    State(state): State<Arc<SfState>>,
    Path(object): Path<String>,
    Query(filters): Query<Vec<(String, String)>>,
) -> Response {
    let org = read(&state.org);
    let Some(index) = org.object(&object) else {
        return control_error(Error::NotFound(format!("object {object}")));
    };
    let store = &org.objects[index];
    let mut wanted: Vec<(Option<usize>, &str)> = Vec::with_capacity(filters.len());
    for (name, value) in &filters {
        if name.eq_ignore_ascii_case("Id") {
            wanted.push((None, value.as_str()));
            continue;
        }
        match store.field(name) {
            Some(field) => wanted.push((Some(field), value.as_str())),
            None => {
                return control_error(Error::Invalid(format!("{object} has no field {name}")));
            }
        }
    }
    let records: Vec<Value> = store
        .iter()
        .filter(|record| {
            wanted.iter().all(|(field, value)| match field {
                None => org::normalize_id(value).as_deref() == Some(&*record.id),
                Some(field) => record.vals[*field].as_text().as_deref() == Some(*value),
            })
        })
        .map(|r| store.record_json(r))
        .collect();
    axum::Json(records).into_response()
}

/// `GET /__sim/object_calls`: API calls per sObject (see [`SalesforceSim::object_calls`]).
async fn control_object_calls(State(state): State<Arc<SfState>>) -> Response {
    axum::Json(state.object_calls.snapshot()).into_response()
}

async fn control_clear_object_calls(State(state): State<Arc<SfState>>) -> Response {
    state.object_calls.clear();
    axum::Json(json!({"cleared": true})).into_response()
}

async fn control_summary(State(state): State<Arc<SfState>>) -> Response {
    let counts: BTreeMap<String, usize> = read(&state.org)
        .objects
        .iter()
        .map(|o| (o.def.name.clone(), o.live))
        .collect();
    let (used, max) = {
        let usage = lock(&state.usage);
        (usage.used, usage.max)
    };
    let jobs = lock(&state.jobs).len();
    axum::Json(json!({"records": counts, "api_usage": {"used": used, "max": max}, "jobs": jobs}))
        .into_response()
}

async fn control_schema(State(state): State<Arc<SfState>>) -> Response {
    axum::Json(read(&state.org).schema.clone()).into_response()
}

async fn control_load_schema(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let schema: Schema = match parse_json(&body) {
        Ok(schema) => schema,
        Err(response) => return response,
    };
    if let Err(message) = schema.validate() {
        return control_error(Error::Schema(message));
    }
    *write(&state.org) = Org::new(schema);
    axum::Json(json!({"loaded": true})).into_response()
}

#[derive(Deserialize)]
struct ClockBody {
    offset_secs: i64,
}

async fn control_clock(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let clock: ClockBody = match parse_json(&body) {
        Ok(clock) => clock,
        Err(response) => return response,
    };
    state.clock.set_offset(clock.offset_secs);
    axum::Json(json!({"offset_secs": clock.offset_secs})).into_response()
}

async fn control_revoke(State(state): State<Arc<SfState>>) -> Response {
    lock(&state.sessions).clear();
    axum::Json(json!({"revoked": true})).into_response()
}

#[derive(Deserialize)]
struct LimitsBody {
    used: Option<u64>,
    max: Option<u64>,
}

async fn control_limits(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let limits: LimitsBody = match parse_json(&body) {
        Ok(limits) => limits,
        Err(response) => return response,
    };
    let mut usage = lock(&state.usage);
    if let Some(used) = limits.used {
        usage.used = used;
    }
    if let Some(max) = limits.max {
        usage.max = max;
    }
    axum::Json(json!({"used": usage.used, "max": usage.max})).into_response()
}

impl SfState {
    /// Whether the next write call is to be held.
    fn holds_next_write(&self) -> bool {
        lock(&self.holds).to_hold > 0
    }

    /// Holds a write call back, when `/__sim/hold_writes` asked for it, until a release.
    async fn hold_write(&self) {
        let mut released = {
            let mut holds = lock(&self.holds);
            if holds.to_hold == 0 {
                return;
            }
            holds.to_hold -= 1;
            holds.waiting += 1;
            self.released.subscribe()
        };
        // Counted down however the call ends (its client may go away).
        struct Waiting<'a>(&'a Mutex<Holds>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                lock(self.0).waiting -= 1;
            }
        }
        let _waiting = Waiting(&self.holds);
        let _ = released.changed().await;
    }

    fn release_writes(&self) -> usize {
        let mut holds = lock(&self.holds);
        holds.to_hold = 0;
        self.released.send_modify(|generation| *generation += 1);
        holds.waiting
    }
}

#[derive(Deserialize)]
struct HoldBody {
    count: u32,
}

async fn control_hold_writes(State(state): State<Arc<SfState>>, body: Bytes) -> Response {
    let hold: HoldBody = match parse_json(&body) {
        Ok(hold) => hold,
        Err(response) => return response,
    };
    lock(&state.holds).to_hold = hold.count;
    axum::Json(json!({"holding": hold.count})).into_response()
}

async fn control_held_writes(State(state): State<Arc<SfState>>) -> Response {
    let holds = lock(&state.holds);
    axum::Json(json!({"holding": holds.to_hold, "waiting": holds.waiting})).into_response()
}

async fn control_release_writes(State(state): State<Arc<SfState>>) -> Response {
    axum::Json(json!({"released": state.release_writes()})).into_response()
}

async fn control_token(State(state): State<Arc<SfState>>) -> Response {
    let token = state.new_session();
    axum::Json(json!({"access_token": token, "instance_url": state.base_url()})).into_response()
}

/// A fixed RSA key pair for tests of the JWT bearer grant (generating one is slow in debug builds).
/// It is public, so it protects nothing: use it with simulators only.
pub mod test_keys {
    /// PKCS#8 PEM private key that signs test assertions (RS256).
    pub const PRIVATE_KEY_PEM: &str = include_str!("../../tests/fixtures/test_rsa_private.pem");
    /// PEM public key to put in [`super::SalesforceConfig::jwt_public_key_pem`].
    pub const PUBLIC_KEY_PEM: &str = include_str!("../../tests/fixtures/test_rsa_public.pem");
    /// Another private key, whose assertions the simulator refuses.
    pub const OTHER_PRIVATE_KEY_PEM: &str =
        include_str!("../../tests/fixtures/other_rsa_private.pem");
}

impl ControlState for SfState {
    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn faults(&self) -> &Mutex<FaultState> {
        &self.faults
    }

    fn now(&self) -> DateTime<Utc> {
        SfState::now(self)
    }

    fn reset(&self) {
        SfState::reset(self)
    }
}

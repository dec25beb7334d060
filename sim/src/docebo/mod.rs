//! The Docebo simulator: OAuth2 token endpoint, the list endpoints a sync reads, a leaky-bucket rate
//! limit, webhooks, and the `/__sim/` control API.
//!
//! Generated users carry their additional fields as Docebo lists them with a user:
//! `additional_fields: [{"id": 1, "title": "Region", "type": "dropdown", "value": "EMEA"}, ...]`
//! (ids 1 Region, 2 Cost centre (textfield, sometimes null), 3 Hire date (date), 4 Manager (yesno)).
//!
//! Control routes specific to Docebo (besides `/__sim/reset`, `/__sim/counters`, `/__sim/faults`):
//! - `POST /__sim/generate`, `GET /__sim/summary`: a generated data set and its counts.
//! - `GET|POST /__sim/records/{kind}`, `GET|PATCH|DELETE /__sim/records/{kind}/{key}`: items, changed
//!   as an admin would (webhooks fire).
//! - `POST|GET|DELETE /__sim/on_page`: [`PageHook`]s, changes applied right after a page is served.
//! - `POST /__sim/rate_limit` `{"per_hour": 1000, "burst": 20}` sets the limiter (no `per_hour`: off;
//!   no `burst`: the bucket holds an hour's allowance); `GET /__sim/rate_limit` returns it with the
//!   calls it let through and refused with 429 since it was set.
//! - `POST /__sim/clock`, `POST /__sim/tokens/expire`, `POST|GET|DELETE /__sim/webhooks`.

// Handlers return a ready-made error response as their `Err`: it is built once per refused request,
// so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod generate;
mod hooks;
mod table;
mod webhooks;

pub use generate::{BadRecord, DatasetSummary, GenerateParams};
pub use hooks::{PageAction, PageHook};
pub use table::EntityKind;
pub use webhooks::{WebhookEvent, WebhookStats};

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::common::{ControlState, control_error, parse_json};
use crate::common::{
    Counters, FaultState, Faults, ListFaultKind, RunningServer, SimClock, docebo_date, lock,
    parse_docebo_date, random_hex,
};
use table::{Cursor, Key, ListQuery, Row, Table, id_of};
use webhooks::{DeliverySettings, Webhooks};

/// Settings of a Docebo simulator.
#[derive(Debug, Clone)]
pub struct DoceboConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// OAuth client id every grant must present.
    pub client_id: String,
    /// OAuth client secret every grant must present.
    pub client_secret: String,
    /// Username of the password grant.
    pub username: String,
    /// Password of the password grant.
    pub password: String,
    /// Lifetime of an access token (Docebo: 3600 s).
    pub token_lifetime: Duration,
    /// Largest `page_size` honoured; larger requests are clamped.
    pub max_page_size: usize,
    /// Leaky-bucket allowance per client and hour; `None` turns rate limiting off (benchmarks).
    pub rate_limit_per_hour: Option<u32>,
    /// Calls a full bucket lets through at once before it refuses with 429 (Docebo's limiter: a
    /// small burst, e.g. 20); `None` makes the bucket hold the whole hourly allowance.
    pub rate_limit_burst: Option<u32>,
    /// A webhook target slower than this counts as failed (Docebo: about 5 s).
    pub webhook_timeout: Duration,
    /// First retry delay of a failed webhook; doubles at each retry.
    pub webhook_retry_base: Duration,
    /// Attempts per webhook message before it is abandoned.
    pub webhook_max_attempts: u32,
    /// `original_domain` of webhook bodies.
    pub domain: String,
}

impl Default for DoceboConfig {
    fn default() -> DoceboConfig {
        DoceboConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "learnsync".into(),
            client_secret: "docebo-secret".into(),
            username: "admin".into(),
            password: "admin-password".into(),
            token_lifetime: Duration::from_secs(3600),
            max_page_size: 200,
            rate_limit_per_hour: Some(1000),
            rate_limit_burst: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_retry_base: Duration::from_secs(1),
            webhook_max_attempts: 8,
            domain: "acme.docebosaas.com".into(),
        }
    }
}

#[derive(Debug)]
struct Token {
    client_id: String,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Tokens {
    access: HashMap<String, Token>,
    refresh: HashMap<String, String>,
}

/// The limiter's settings and what it did since they were set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RateLimit {
    /// Calls an hour the bucket leaks (lets through on average); `None`: no limit.
    pub per_hour: Option<u32>,
    /// Calls a full bucket lets through at once; `None`: the hourly allowance.
    pub burst: Option<u32>,
    /// Calls let through since the limiter was set.
    #[serde(default)]
    pub allowed: u64,
    /// Calls refused with 429 since the limiter was set.
    #[serde(default)]
    pub refused: u64,
}

impl RateLimit {
    fn configured(config: &DoceboConfig) -> RateLimit {
        RateLimit {
            per_hour: config.rate_limit_per_hour,
            burst: config.rate_limit_burst,
            ..RateLimit::default()
        }
    }
}

#[derive(Debug)]
struct Bucket {
    level: f64,
    last: Instant,
}

#[derive(Default)]
struct Data {
    tables: [Table; 7],
    generated: DatasetSummary,
}

struct DoceboState {
    config: DoceboConfig,
    clock: SimClock,
    data: RwLock<Data>,
    tokens: Mutex<Tokens>,
    rate_limit: Mutex<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
    faults: Mutex<FaultState>,
    counters: Counters,
    webhooks: Webhooks,
    page_hooks: Mutex<Vec<PageHook>>,
}

fn read(data: &RwLock<Data>) -> RwLockReadGuard<'_, Data> {
    data.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(data: &RwLock<Data>) -> RwLockWriteGuard<'_, Data> {
    data.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running Docebo simulator. Dropping it stops the server (a platform of a [`crate::Fleet`] has
/// none of its own: the fleet's server serves it under a path prefix).
pub struct DoceboSim {
    state: Arc<DoceboState>,
    /// The simulator's own server; `None` for a platform of a fleet.
    server: Option<RunningServer>,
    /// The address the serving server listens on.
    addr: SocketAddr,
    base_url: String,
}

impl DoceboSim {
    /// Starts the simulator on `config.bind` and returns once it accepts connections.
    pub async fn start(config: DoceboConfig) -> Result<DoceboSim, Error> {
        let state = DoceboState::new(config);
        let server = RunningServer::start(state.config.bind, router(state.clone())).await?;
        let base_url = format!("http://{}", server.addr);
        tracing::info!(%base_url, "docebo simulator listening");
        Ok(DoceboSim {
            state,
            addr: server.addr,
            server: Some(server),
            base_url,
        })
    }

    /// A platform served by another server (a fleet's) at `base_url`, with the router that
    /// answers its requests once the prefix is stripped.
    pub(crate) fn hosted(
        config: DoceboConfig,
        addr: SocketAddr,
        base_url: String,
    ) -> (DoceboSim, Router) {
        let state = DoceboState::new(config);
        let router = router(state.clone());
        let sim = DoceboSim {
            state,
            server: None,
            addr,
            base_url,
        };
        (sim, router)
    }

    /// Returns `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the configuration the simulator runs with.
    pub fn config(&self) -> &DoceboConfig {
        &self.state.config
    }

    /// Replaces all data with a generated data set and returns its summary.
    pub fn generate(&self, params: &GenerateParams) -> DatasetSummary {
        self.state.generate(params)
    }

    /// Returns the summary of the current data (live counts, bad records as generated).
    pub fn summary(&self) -> DatasetSummary {
        self.state.summary()
    }

    /// Creates one record (fires the matching `*.created` webhook for enrollments).
    pub fn create(&self, kind: EntityKind, item: Value) -> Result<Value, Error> {
        let mut created = self.state.create(kind, vec![item])?;
        created
            .pop()
            .ok_or_else(|| Error::Invalid("nothing created".into()))
    }

    /// Creates several records at once; their webhooks travel grouped (`payloads`, at most 25).
    pub fn create_many(&self, kind: EntityKind, items: Vec<Value>) -> Result<Vec<Value>, Error> {
        self.state.create(kind, items)
    }

    /// Changes fields of a record (key as `"123"` or `"12301-55"`), bumps its last-update marker and
    /// fires `*.updated` (or `course.enrollment.completed` when the status becomes `completed`).
    pub fn update(&self, kind: EntityKind, key: &str, patch: Value) -> Result<Value, Error> {
        self.state.update(kind, key, patch)
    }

    /// Deletes a record (it disappears from lists) and fires `*.deleted` / `user.deleted`.
    pub fn delete(&self, kind: EntityKind, key: &str) -> Result<Value, Error> {
        self.state.delete(kind, key)
    }

    /// Returns one record as served.
    pub fn get(&self, kind: EntityKind, key: &str) -> Option<Value> {
        self.state.get(kind, key)
    }

    /// Returns every record of a kind, sorted by last update.
    pub fn items(&self, kind: EntityKind) -> Vec<Value> {
        self.state.items(kind)
    }

    /// Renders the body a list endpoint would answer, without HTTP, authentication or rate limiting
    /// (benchmarks, and tests that want a page directly). `group` is the path id of the per-course
    /// session list and the per-session roster; `query` is the raw query string
    /// (`page=2&page_size=200&course_id[]=5`). Returns `None` when the query is invalid.
    pub fn render_page(&self, kind: EntityKind, group: Option<i64>, query: &str) -> Option<String> {
        render_list(&self.state, kind, Some(query), group).ok()
    }

    /// Adds a mutation that fires once, after a page of a listing is served (see [`PageHook`]).
    pub fn on_page(&self, hook: PageHook) {
        lock(&self.state.page_hooks).push(hook);
    }

    /// Returns the page hooks added since the last clear, fired or not.
    pub fn page_hooks(&self) -> Vec<PageHook> {
        lock(&self.state.page_hooks).clone()
    }

    /// Removes every page hook.
    pub fn clear_page_hooks(&self) {
        lock(&self.state.page_hooks).clear();
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state.faults).set(faults, self.state.clock.now());
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Changes the leaky-bucket allowance per hour (`None` turns rate limiting off); the burst stays.
    pub fn set_rate_limit(&self, per_hour: Option<u32>) {
        let burst = lock(&self.state.rate_limit).burst;
        self.set_rate_limit_bucket(per_hour, burst);
    }

    /// Sets the limiter: `per_hour` calls an hour (`None`: off), at most `burst` at once (`None`: the
    /// hourly allowance). Empties the buckets and zeroes the limiter's counts.
    pub fn set_rate_limit_bucket(&self, per_hour: Option<u32>, burst: Option<u32>) {
        *lock(&self.state.rate_limit) = RateLimit {
            per_hour,
            burst,
            ..RateLimit::default()
        };
        lock(&self.state.buckets).clear();
    }

    /// Returns the limiter's settings and the calls it let through and refused since they were set.
    pub fn rate_limit(&self) -> RateLimit {
        lock(&self.state.rate_limit).clone()
    }

    /// Returns calls per endpoint, keyed `"GET /manage/v1/user"`, `"POST /oauth2/token"`, ...
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.state.counters.snapshot()
    }

    /// Zeroes the call counters.
    pub fn clear_counters(&self) {
        self.state.counters.clear();
    }

    /// Registers a webhook target URL; returns its `webhook_id`.
    pub fn register_webhook(&self, url: &str) -> u64 {
        self.state.webhooks.register(url.to_string())
    }

    /// Returns delivery statistics per registered target.
    pub fn webhook_stats(&self) -> Vec<WebhookStats> {
        self.state.webhooks.stats()
    }

    /// Unregisters every webhook target.
    pub fn clear_webhooks(&self) {
        self.state.webhooks.clear();
    }

    /// Moves the simulator clock (token expiry, timestamps of changes) by `secs` from the wall clock.
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.clock.set_offset(secs);
    }

    /// Returns the simulator's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// Invalidates every issued access and refresh token.
    pub fn expire_tokens(&self) {
        let mut tokens = lock(&self.state.tokens);
        tokens.access.clear();
        tokens.refresh.clear();
    }

    /// Clears data, tokens, faults, counters, webhooks, rate-limit buckets and the clock offset.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops the server (a fleet's platform has none: its fleet stops it).
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.as_mut() {
            server.stop().await;
        }
    }
}

impl DoceboState {
    fn new(config: DoceboConfig) -> Arc<DoceboState> {
        let webhooks = Webhooks::new(
            DeliverySettings {
                timeout: config.webhook_timeout,
                retry_base: config.webhook_retry_base,
                max_attempts: config.webhook_max_attempts.max(1),
                domain: config.domain.clone(),
            },
            tokio::runtime::Handle::current(),
        );
        Arc::new(DoceboState {
            rate_limit: Mutex::new(RateLimit::configured(&config)),
            config,
            clock: SimClock::default(),
            data: RwLock::new(Data::default()),
            tokens: Mutex::new(Tokens::default()),
            buckets: Mutex::new(HashMap::new()),
            faults: Mutex::new(FaultState::default()),
            counters: Counters::default(),
            webhooks,
            page_hooks: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn reset(&self) {
        {
            let mut data = write(&self.data);
            for table in data.tables.iter_mut() {
                table.clear();
            }
            data.generated = DatasetSummary::default();
        }
        *lock(&self.tokens) = Tokens::default();
        lock(&self.faults).set(Faults::default(), self.now());
        lock(&self.buckets).clear();
        *lock(&self.rate_limit) = RateLimit::configured(&self.config);
        self.counters.clear();
        self.webhooks.clear();
        lock(&self.page_hooks).clear();
        self.clock.set_offset(0);
    }

    fn generate(&self, params: &GenerateParams) -> DatasetSummary {
        let dataset = generate::generate(params);
        let mut data = write(&self.data);
        for (kind, items) in dataset.items {
            let table = &mut data.tables[kind.index()];
            table.clear();
            table.rows.reserve(items.len());
            for (key, row) in items {
                table.rows.insert(key, row);
            }
            table.ensure_index();
        }
        data.generated = dataset.summary;
        tracing::info!(seed = params.seed, "docebo data set generated");
        summarize(&data)
    }

    fn summary(&self) -> DatasetSummary {
        summarize(&read(&self.data))
    }

    fn get(&self, kind: EntityKind, key: &str) -> Option<Value> {
        let key = kind.parse_key(key)?;
        read(&self.data).tables[kind.index()]
            .rows
            .get(&key)
            .map(Row::value)
    }

    fn items(&self, kind: EntityKind) -> Vec<Value> {
        let data = read(&self.data);
        let mut rows: Vec<(&Key, &Row)> = data.tables[kind.index()].rows.iter().collect();
        rows.sort_by_key(|(key, row)| (row.sort, **key));
        rows.into_iter().map(|(_, row)| row.value()).collect()
    }

    fn create(&self, kind: EntityKind, items: Vec<Value>) -> Result<Vec<Value>, Error> {
        let now = docebo_date(self.now());
        let mut prepared = Vec::with_capacity(items.len());
        for mut item in items {
            let Some(object) = item.as_object_mut() else {
                return Err(Error::Invalid("a record must be a JSON object".into()));
            };
            // Docebo's user list sends ids as strings, whatever the caller passed.
            if kind == EntityKind::Users
                && let Some(Value::Number(id)) = object.get("user_id").cloned()
            {
                object.insert("user_id".into(), Value::String(id.to_string()));
            }
            for field in kind.marker_fields().iter().take(1) {
                if object.get(*field).is_none_or(Value::is_null) {
                    object.insert(field.to_string(), Value::String(now.clone()));
                }
            }
            let key = kind.key_of(&item).ok_or_else(|| {
                Error::Invalid(format!(
                    "a {} record needs numeric key fields {:?}",
                    kind.name(),
                    kind.key_fields()
                ))
            })?;
            prepared.push((key, item));
        }
        let mut events = Vec::new();
        {
            let mut data = write(&self.data);
            for (key, _) in &prepared {
                if data.tables[kind.index()].rows.contains_key(key) {
                    return Err(Error::Conflict(format!(
                        "{} {} already exists",
                        kind.name(),
                        kind.key_string(*key)
                    )));
                }
            }
            for (key, item) in &prepared {
                let row = Row::build(kind, item);
                data.tables[kind.index()].insert(*key, row);
                if let Some(event) = event_for(&data, kind, "created", item, &now) {
                    events.push(event);
                }
            }
        }
        self.webhooks.fire(events);
        Ok(prepared.into_iter().map(|(_, item)| item).collect())
    }

    fn update(&self, kind: EntityKind, key_text: &str, patch: Value) -> Result<Value, Error> {
        let key = kind
            .parse_key(key_text)
            .ok_or_else(|| Error::Invalid(format!("bad key {key_text:?}")))?;
        let patch = match patch {
            Value::Null => Value::Object(serde_json::Map::new()),
            patch => patch,
        };
        let Value::Object(patch) = patch else {
            return Err(Error::Invalid("a patch must be a JSON object".into()));
        };
        let now = docebo_date(self.now());
        let mut data = write(&self.data);
        let table = &mut data.tables[kind.index()];
        let row = table
            .rows
            .get(&key)
            .ok_or_else(|| Error::NotFound(format!("{} {key_text}", kind.name())))?;
        let mut item = row.value();
        let status_field = status_field(kind);
        let was_completed = item.get(status_field).and_then(Value::as_str) == Some("completed");
        if let Some(object) = item.as_object_mut() {
            for (field, value) in &patch {
                object.insert(field.clone(), value.clone());
            }
            let marker = kind.marker_fields()[0];
            let is_completed =
                object.get(status_field).and_then(Value::as_str) == Some("completed");
            let completion_field = completion_field(kind);
            if is_completed && !was_completed && !patch.contains_key(completion_field) {
                object.insert(completion_field.into(), Value::String(now.clone()));
            }
            if kind != EntityKind::SessionEnrollments && !patch.contains_key(marker) {
                object.insert(marker.into(), Value::String(now.clone()));
            }
        }
        if kind.key_of(&item) != Some(key) {
            return Err(Error::Invalid("key fields cannot change".into()));
        }
        table.insert(key, Row::build(kind, &item));
        let is_completed = item.get(status_field).and_then(Value::as_str) == Some("completed");
        let action = if is_completed && !was_completed {
            "completed"
        } else {
            "updated"
        };
        let event = event_for(&data, kind, action, &item, &now);
        drop(data);
        self.webhooks.fire(event.into_iter().collect());
        Ok(item)
    }

    /// Fires the hooks waiting for page `page` of `path`, in the order they were added.
    fn fire_page_hooks(&self, path: &str, page: usize) {
        let due: Vec<(usize, PageAction)> = lock(&self.page_hooks)
            .iter_mut()
            .enumerate()
            .filter(|(_, hook)| !hook.fired && hook.page == page && hook.path == path)
            .map(|(i, hook)| {
                hook.fired = true;
                (i, hook.action.clone())
            })
            .collect();
        for (i, action) in due {
            let outcome = match action {
                PageAction::Update { kind, key, patch } => self.update(kind, &key, patch),
                PageAction::Delete { kind, key } => self.delete(kind, &key),
                PageAction::Create { kind, item } => {
                    self.create(kind, vec![item]).map(|_| Value::Null)
                }
            };
            match outcome {
                Ok(_) => tracing::debug!(%path, page, "page hook fired"),
                Err(error) => {
                    tracing::warn!(%path, page, %error, "page hook failed");
                    if let Some(hook) = lock(&self.page_hooks).get_mut(i) {
                        hook.error = Some(error.to_string());
                    }
                }
            }
        }
    }

    fn delete(&self, kind: EntityKind, key_text: &str) -> Result<Value, Error> {
        let key = kind
            .parse_key(key_text)
            .ok_or_else(|| Error::Invalid(format!("bad key {key_text:?}")))?;
        let now = docebo_date(self.now());
        let mut data = write(&self.data);
        let row = data.tables[kind.index()]
            .remove(key)
            .ok_or_else(|| Error::NotFound(format!("{} {key_text}", kind.name())))?;
        let item = row.value();
        let event = event_for(&data, kind, "deleted", &item, &now);
        drop(data);
        self.webhooks.fire(event.into_iter().collect());
        Ok(item)
    }
}

fn status_field(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::SessionEnrollments => "status",
        _ => "enrollment_status",
    }
}

fn completion_field(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::SessionEnrollments => "completion_date",
        _ => "enrollment_completion_date",
    }
}

fn summarize(data: &Data) -> DatasetSummary {
    let mut summary = data.generated.clone();
    summary.counts = EntityKind::ALL
        .iter()
        .map(|kind| {
            (
                kind.name().to_string(),
                data.tables[kind.index()].rows.len(),
            )
        })
        .collect();
    summary
}

/// Builds the webhook event of a change, in Docebo's payload shape.
fn event_for(
    data: &Data,
    kind: EntityKind,
    action: &str,
    item: &Value,
    fired_at: &str,
) -> Option<WebhookEvent> {
    let user_id = id_of(item, "user_id");
    let username = item.get("username").cloned().unwrap_or(Value::Null);
    let (event, payload) = match kind {
        EntityKind::Users if action == "deleted" => (
            "user.deleted".to_string(),
            json!({"fired_at": fired_at, "user_id": user_id, "username": username}),
        ),
        EntityKind::CourseEnrollments => {
            let mut payload = json!({
                "fired_at": fired_at,
                "user_id": user_id,
                "username": username,
                "course_id": id_of(item, "course_id"),
                "level": item.get("enrollment_level").cloned().unwrap_or(Value::Null),
                "status": item.get("enrollment_status").cloned().unwrap_or(Value::Null),
                "enrollment_date": item.get("enrollment_created_at").cloned().unwrap_or(Value::Null),
            });
            if action == "completed" {
                payload["completion_date"] = item
                    .get("enrollment_completion_date")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            (format!("course.enrollment.{action}"), payload)
        }
        EntityKind::LearningPlanEnrollments => {
            let action = if action == "completed" {
                "updated"
            } else {
                action
            };
            (
                format!("learningplan.enrollment.{action}"),
                json!({
                    "fired_at": fired_at,
                    "user_id": user_id,
                    "username": username,
                    "learning_plan_id": id_of(item, "learning_plan_id"),
                    "status": item.get("enrollment_status").cloned().unwrap_or(Value::Null),
                    "enrollment_date": item.get("enrollment_created_at").cloned().unwrap_or(Value::Null),
                    "completion_date": item.get("enrollment_completion_date").cloned().unwrap_or(Value::Null),
                }),
            )
        }
        EntityKind::SessionEnrollments => {
            let action = if action == "completed" {
                "updated"
            } else {
                action
            };
            let session_id = id_of(item, "session_id");
            let course_id = session_id.and_then(|id| {
                data.tables[EntityKind::Sessions.index()]
                    .rows
                    .get(&(id, 0))
                    .map(|row| row.group)
            });
            (
                format!("ilt.session.enrollment.{action}"),
                json!({
                    "fired_at": fired_at,
                    "user_id": user_id,
                    "username": username,
                    "session_id": session_id,
                    "course_id": course_id,
                    "level": item.get("level").cloned().unwrap_or(Value::Null),
                    "status": item.get("status").cloned().unwrap_or(Value::Null),
                    "enrollment_date": item.get("enrollment_date").cloned().unwrap_or(Value::Null),
                    "completion_date": item.get("completion_date").cloned().unwrap_or(Value::Null),
                }),
            )
        }
        _ => return None,
    };
    Some(WebhookEvent { event, payload })
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn router(state: Arc<DoceboState>) -> Router {
    let api = Router::new()
        .route("/manage/v1/user", get(list_users))
        .route("/learn/v1/courses", get(list_courses))
        .route("/learningplan/v1/learningplans", get(list_plans))
        .route(
            "/course/v1/courses/{course_id}/sessions",
            get(list_sessions),
        )
        .route(
            "/course/v1/courses/enrollments",
            get(list_course_enrollments),
        )
        .route(
            "/learningplan/v1/learningplans/enrollments",
            get(list_plan_enrollments),
        )
        .route(
            "/course/v1/sessions/{session_id}/enrollments",
            get(list_session_enrollments),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), api_guard));
    let control = crate::common::shared_control_routes::<DoceboState>()
        .route("/__sim/generate", post(control_generate))
        .route("/__sim/summary", get(control_summary))
        .route("/__sim/clock", post(control_clock))
        .route(
            "/__sim/rate_limit",
            post(control_rate_limit).get(control_get_rate_limit),
        )
        .route("/__sim/tokens/expire", post(control_expire_tokens))
        .route(
            "/__sim/on_page",
            post(control_add_page_hook)
                .get(control_page_hooks)
                .delete(control_clear_page_hooks),
        )
        .route(
            "/__sim/webhooks",
            post(control_register_webhook)
                .get(control_webhooks)
                .delete(control_clear_webhooks),
        )
        .route(
            "/__sim/records/{kind}",
            post(control_create).get(control_items),
        )
        .route(
            "/__sim/records/{kind}/{key}",
            get(control_get)
                .patch(control_update)
                .delete(control_delete),
        );
    Router::new()
        .route("/oauth2/token", post(token))
        .merge(api)
        .merge(control)
        .with_state(state)
}

/// Docebo's error body: `{"name": ..., "message": ..., "code": 0, "status": N}`.
fn docebo_error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = status.canonical_reason().unwrap_or("Error");
    (
        status,
        axum::Json(json!({"name": name, "message": message, "code": 0, "status": status.as_u16()})),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// Counts the call, applies injected faults, authenticates and rate-limits every API call.
async fn api_guard(
    State(state): State<Arc<DoceboState>>,
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
    let decision = lock(&state.faults).on_call();
    if decision.expire_tokens {
        let mut tokens = lock(&state.tokens);
        tokens.access.clear();
        tokens.refresh.clear();
    }
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = decision.status {
        let message = match status {
            429 => "Too many requests: rate limit exceeded",
            503 => "The service is temporarily overloaded",
            _ => "Internal server error",
        };
        return docebo_error(status, message);
    }
    let client_id = {
        let tokens = lock(&state.tokens);
        let now = state.now();
        match bearer(request.headers()).and_then(|token| tokens.access.get(token)) {
            Some(token) if token.expires_at > now => token.client_id.clone(),
            Some(_) => {
                return docebo_error(401, "The access token provided has expired");
            }
            None => return docebo_error(401, "The access token provided is invalid"),
        }
    };
    let limit = {
        let limit = lock(&state.rate_limit);
        limit.per_hour.map(|per_hour| (per_hour, limit.burst))
    };
    if let Some((per_hour, burst)) = limit {
        let taken = take_from_bucket(&state, &client_id, per_hour, burst);
        let mut limit = lock(&state.rate_limit);
        match taken {
            Ok(()) => limit.allowed += 1,
            Err(retry_after) => {
                limit.refused += 1;
                drop(limit);
                tracing::debug!(%client_id, retry_after, "docebo rate limit exceeded");
                let mut response = docebo_error(429, "Too many requests: rate limit exceeded");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                return response;
            }
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("x-docebo-api-version", HeaderValue::from_static("1.0.0"));
    // The platform's clock, as change times are on it (the simulated one: tests move it).
    let date = state.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::DATE, date);
    }
    response
}

/// Leaky bucket: each call adds one drop; the bucket leaks `per_hour` drops an hour; a full bucket
/// (capacity `burst`, or `per_hour` without one) refuses the call with the whole seconds until a drop
/// has leaked (its `Retry-After`).
fn take_from_bucket(
    state: &DoceboState,
    client_id: &str,
    per_hour: u32,
    burst: Option<u32>,
) -> Result<(), u64> {
    let capacity = f64::from(burst.unwrap_or(per_hour).max(1));
    let leak_per_sec = f64::from(per_hour.max(1)) / 3600.0;
    let mut buckets = lock(&state.buckets);
    let now = Instant::now();
    let bucket = buckets.entry(client_id.to_string()).or_insert(Bucket {
        level: 0.0,
        last: now,
    });
    let elapsed = now.duration_since(bucket.last).as_secs_f64();
    bucket.level = (bucket.level - elapsed * leak_per_sec).max(0.0);
    bucket.last = now;
    if bucket.level + 1.0 > capacity {
        let wait = (bucket.level + 1.0 - capacity) / leak_per_sec;
        return Err((wait.ceil() as u64).max(1));
    }
    bucket.level += 1.0;
    Ok(())
}

fn form_fields(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return value
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

async fn token(State(state): State<Arc<DoceboState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.counters.bump("POST /oauth2/token");
    let fields = form_fields(&headers, &body);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    if field("client_id") != state.config.client_id
        || field("client_secret") != state.config.client_secret
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client credentials are invalid",
        );
    }
    let with_refresh = match field("grant_type") {
        "client_credentials" => false,
        "password" => {
            if field("username") != state.config.username
                || field("password") != state.config.password
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid username and password combination",
                );
            }
            true
        }
        "refresh_token" => {
            let mut tokens = lock(&state.tokens);
            if tokens.refresh.remove(field("refresh_token")).is_none() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token",
                );
            }
            true
        }
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The grant type was not specified in the request",
            );
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The grant type is not supported",
            );
        }
    };
    let access_token = random_hex(20);
    let lifetime = state.config.token_lifetime;
    let mut tokens = lock(&state.tokens);
    tokens.access.insert(
        access_token.clone(),
        Token {
            client_id: state.config.client_id.clone(),
            expires_at: state.now()
                + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1)),
        },
    );
    let mut body = json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs(),
        "token_type": "Bearer",
        "scope": "api",
    });
    if with_refresh {
        let refresh_token = random_hex(20);
        tokens
            .refresh
            .insert(refresh_token.clone(), state.config.client_id.clone());
        body["refresh_token"] = Value::String(refresh_token);
    }
    axum::Json(body).into_response()
}

/// Parses a list call's query string (PHP-style arrays `course_id[]=1&course_id[]=2` included).
fn parse_list_query(
    state: &DoceboState,
    kind: EntityKind,
    raw: Option<&str>,
    path_group: Option<i64>,
) -> Result<ListQuery, Response> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| docebo_error(400, "Malformed query string"))?;
    let mut query = ListQuery {
        page: 1,
        page_size: 10,
        groups: path_group.map(|group| vec![group]),
        ..ListQuery::default()
    };
    let group_param = if path_group.is_some() {
        None
    } else {
        kind.group_field()
    };
    for (name, value) in pairs {
        // `course_id[]`, `course_id[0]` and `course_id` all name the same filter.
        let base = name.split('[').next().unwrap_or(&name);
        let parse_ids = |value: &str| -> Result<Vec<i64>, Response> {
            value
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(|part| {
                    part.trim().parse::<i64>().map_err(|_| {
                        docebo_error(400, &format!("Invalid value for parameter {base}"))
                    })
                })
                .collect()
        };
        match base {
            "page" => {
                query.page = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| docebo_error(400, "Invalid value for parameter page"))?
                    .max(1);
            }
            "page_size" => {
                query.page_size = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| docebo_error(400, "Invalid value for parameter page_size"))?
                    .clamp(1, state.config.max_page_size.max(1));
            }
            "updated_from" => {
                let time = parse_docebo_date(&value)
                    .ok_or_else(|| docebo_error(400, "Invalid value for parameter updated_from"))?;
                query.updated_from = Some(time.timestamp());
            }
            "sort_by_direction" | "sort_dir" => {
                query.descending = value.eq_ignore_ascii_case("desc");
            }
            "get_cursor" => query.want_cursor = value == "1" || value == "true",
            "cursor" if !value.is_empty() => {
                query.cursor = Some(
                    Cursor::decode(&value).ok_or_else(|| docebo_error(400, "Invalid cursor"))?,
                );
            }
            "user_id" if kind.is_enrollment() => {
                query
                    .users
                    .get_or_insert_with(Vec::new)
                    .extend(parse_ids(&value)?);
            }
            other if Some(other) == group_param => {
                query
                    .groups
                    .get_or_insert_with(Vec::new)
                    .extend(parse_ids(&value)?);
            }
            _ => {}
        }
    }
    Ok(query)
}

/// A deliberately malformed item of the kind (fault injection).
fn malformed_item(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Users => r#"{"user_id":"not-a-number","username":null,"first_name":"Broken"}"#,
        EntityKind::Courses => r#"{"id_course":"abc","name":"Broken course"}"#,
        EntityKind::LearningPlans => r#"{"learning_plan_id":null,"title":"Broken plan"}"#,
        EntityKind::Sessions => r#"{"id":"x","name":"Broken session"}"#,
        EntityKind::CourseEnrollments => {
            r#"{"user_id":"abc","username":"broken@acme.example","enrollment_status":"completed"}"#
        }
        EntityKind::LearningPlanEnrollments => r#"{"user_id":"abc","learning_plan_id":null}"#,
        EntityKind::SessionEnrollments => r#"{"user_id":"abc","status":"completed"}"#,
    }
}

/// Serves a listing: the injected 404, missing-`has_more_data` and wrong-total faults, the page, then the page
/// hooks waiting for it (so a client sees the mutation from its next call on).
fn list(
    state: &DoceboState,
    kind: EntityKind,
    uri: &Uri,
    raw_query: Option<String>,
    path_group: Option<i64>,
) -> Response {
    let path = uri.path();
    let paging = {
        let mut faults = lock(&state.faults);
        if faults.take_list_fault(ListFaultKind::NotFound, path) {
            drop(faults);
            return docebo_error(404, "Not found");
        }
        PagingFaults {
            omit_has_more: faults.take_list_fault(ListFaultKind::OmitHasMoreData, path),
            inflate_total: faults.take_list_fault(ListFaultKind::InflateTotalCount, path),
        }
    };
    match render_list_with(state, kind, raw_query.as_deref(), path_group, paging) {
        Ok((body, page)) => {
            if let Some(page) = page {
                state.fire_page_hooks(path, page);
            }
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        Err(response) => response,
    }
}

/// Renders a list response body: the items are copied from their pre-serialized form.
fn render_list(
    state: &DoceboState,
    kind: EntityKind,
    raw_query: Option<&str>,
    path_group: Option<i64>,
) -> Result<String, Response> {
    render_list_with(state, kind, raw_query, path_group, PagingFaults::default())
        .map(|(body, _)| body)
}

/// Paging faults of one list page.
#[derive(Clone, Copy, Debug, Default)]
struct PagingFaults {
    /// Serve it without `has_more_data`.
    omit_has_more: bool,
    /// Serve it with a `total_count` one above the truth.
    inflate_total: bool,
}

/// Renders a list response body, with the paging faults asked for; also returns the page number
/// when the call was in page-number mode.
fn render_list_with(
    state: &DoceboState,
    kind: EntityKind,
    raw_query: Option<&str>,
    path_group: Option<i64>,
    faults: PagingFaults,
) -> Result<(String, Option<usize>), Response> {
    let query = parse_list_query(state, kind, raw_query, path_group)?;
    let malformed = lock(&state.faults).take_malformed();
    let mut data = read(&state.data);
    if data.tables[kind.index()].index.is_none() {
        drop(data);
        write(&state.data).tables[kind.index()].ensure_index();
        data = read(&state.data);
    }
    let page = data.tables[kind.index()].page(&query);
    let item_bytes: usize = page.items.iter().map(|item| item.len() + 1).sum();
    let mut body = String::with_capacity(item_bytes + 256);
    body.push_str(r#"{"data":{"items":["#);
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    let mut count = page.items.len();
    if malformed {
        if count > 0 {
            body.push(',');
        }
        body.push_str(malformed_item(kind));
        count += 1;
    }
    let total_pages = page.total_count.div_ceil(query.page_size.max(1));
    let _ = write!(body, r#"],"count":{count}"#);
    if !faults.omit_has_more {
        let _ = write!(body, r#","has_more_data":{}"#, page.has_more);
    }
    let total_count = page.total_count + usize::from(faults.inflate_total);
    let _ = write!(
        body,
        r#","current_page":{},"current_page_size":{},"total_page_count":{},"total_count":{}"#,
        query.page, query.page_size, total_pages, total_count
    );
    if query.want_cursor || query.cursor.is_some() {
        if let Some(cursor) = page.next_cursor {
            let _ = write!(body, r#","cursor":"{}""#, cursor.encode());
        } else {
            body.push_str(r#","cursor":null"#);
        }
    }
    body.push_str(r#"},"version":"1.0.0","_links":[]}"#);
    let page_mode = !query.want_cursor && query.cursor.is_none();
    Ok((body, page_mode.then_some(query.page)))
}

async fn list_users(
    State(state): State<Arc<DoceboState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    list(&state, EntityKind::Users, &uri, q, None)
}

async fn list_courses(
    State(state): State<Arc<DoceboState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    list(&state, EntityKind::Courses, &uri, q, None)
}

async fn list_plans(
    State(state): State<Arc<DoceboState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    list(&state, EntityKind::LearningPlans, &uri, q, None)
}

async fn list_sessions(
    State(state): State<Arc<DoceboState>>,
    Path(course_id): Path<String>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    match course_id.trim().parse::<i64>() {
        Ok(course_id) => list(&state, EntityKind::Sessions, &uri, q, Some(course_id)),
        Err(_) => docebo_error(400, "Invalid course id"),
    }
}

async fn list_course_enrollments(
    State(state): State<Arc<DoceboState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    list(&state, EntityKind::CourseEnrollments, &uri, q, None)
}

async fn list_plan_enrollments(
    State(state): State<Arc<DoceboState>>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    list(&state, EntityKind::LearningPlanEnrollments, &uri, q, None)
}

async fn list_session_enrollments(
    State(state): State<Arc<DoceboState>>,
    Path(session_id): Path<String>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    match session_id.trim().parse::<i64>() {
        Ok(session_id) => list(
            &state,
            EntityKind::SessionEnrollments,
            &uri,
            q,
            Some(session_id),
        ),
        Err(_) => docebo_error(400, "Invalid session id"),
    }
}

// ---------------------------------------------------------------------------------------------
// Control API

fn parse_kind(kind: &str) -> Result<EntityKind, Response> {
    EntityKind::from_name(kind)
        .ok_or_else(|| control_error(Error::NotFound(format!("unknown entity kind {kind}"))))
}

async fn control_generate(State(state): State<Arc<DoceboState>>, body: Bytes) -> Response {
    let params: GenerateParams = match parse_json(&body) {
        Ok(params) => params,
        Err(response) => return response,
    };
    let state2 = state.clone();
    match tokio::task::spawn_blocking(move || state2.generate(&params)).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(_) => control_error(Error::Invalid("generation failed".into())),
    }
}

async fn control_summary(State(state): State<Arc<DoceboState>>) -> Response {
    axum::Json(state.summary()).into_response()
}

#[derive(Deserialize, Serialize)]
struct ClockBody {
    offset_secs: i64,
}

async fn control_clock(State(state): State<Arc<DoceboState>>, body: Bytes) -> Response {
    let clock: ClockBody = match parse_json(&body) {
        Ok(clock) => clock,
        Err(response) => return response,
    };
    state.clock.set_offset(clock.offset_secs);
    axum::Json(json!({"offset_secs": clock.offset_secs, "now": docebo_date(state.now())}))
        .into_response()
}

#[derive(Deserialize)]
struct RateLimitBody {
    per_hour: Option<u32>,
    burst: Option<u32>,
}

async fn control_rate_limit(State(state): State<Arc<DoceboState>>, body: Bytes) -> Response {
    let limit: RateLimitBody = match parse_json(&body) {
        Ok(limit) => limit,
        Err(response) => return response,
    };
    if limit.burst == Some(0) {
        return control_error(Error::Invalid(
            "a burst lets one call through at least".into(),
        ));
    }
    let limit = RateLimit {
        per_hour: limit.per_hour,
        burst: limit.burst,
        ..RateLimit::default()
    };
    *lock(&state.rate_limit) = limit.clone();
    lock(&state.buckets).clear();
    axum::Json(limit).into_response()
}

async fn control_get_rate_limit(State(state): State<Arc<DoceboState>>) -> Response {
    axum::Json(lock(&state.rate_limit).clone()).into_response()
}

async fn control_add_page_hook(State(state): State<Arc<DoceboState>>, body: Bytes) -> Response {
    let hook: PageHook = match parse_json(&body) {
        Ok(hook) => hook,
        Err(response) => return response,
    };
    if !hook.path.starts_with('/') || hook.page == 0 {
        return control_error(Error::Invalid(
            "a page hook needs a path starting with / and a page from 1".into(),
        ));
    }
    let mut hooks = lock(&state.page_hooks);
    hooks.push(PageHook {
        fired: false,
        error: None,
        ..hook
    });
    (StatusCode::CREATED, axum::Json(hooks.clone())).into_response()
}

async fn control_page_hooks(State(state): State<Arc<DoceboState>>) -> Response {
    axum::Json(lock(&state.page_hooks).clone()).into_response()
}

async fn control_clear_page_hooks(State(state): State<Arc<DoceboState>>) -> Response {
    lock(&state.page_hooks).clear();
    axum::Json(json!({"cleared": true})).into_response()
}

async fn control_expire_tokens(State(state): State<Arc<DoceboState>>) -> Response {
    let mut tokens = lock(&state.tokens);
    tokens.access.clear();
    tokens.refresh.clear();
    axum::Json(json!({"expired": true})).into_response()
}

#[derive(Deserialize)]
struct WebhookBody {
    url: String,
}

async fn control_register_webhook(State(state): State<Arc<DoceboState>>, body: Bytes) -> Response {
    let hook: WebhookBody = match parse_json(&body) {
        Ok(hook) => hook,
        Err(response) => return response,
    };
    let id = state.webhooks.register(hook.url);
    axum::Json(json!({"webhook_id": id})).into_response()
}

async fn control_webhooks(State(state): State<Arc<DoceboState>>) -> Response {
    axum::Json(state.webhooks.stats()).into_response()
}

async fn control_clear_webhooks(State(state): State<Arc<DoceboState>>) -> Response {
    state.webhooks.clear();
    axum::Json(json!({"cleared": true})).into_response()
}

async fn control_create(
    State(state): State<Arc<DoceboState>>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    let value: Value = match parse_json(&body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    let (items, many) = match value {
        Value::Array(items) => (items, true),
        other => (vec![other], false),
    };
    match state.create(kind, items) {
        Ok(mut created) if !many && created.len() == 1 => {
            (StatusCode::CREATED, axum::Json(created.remove(0))).into_response()
        }
        Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
        Err(error) => control_error(error),
    }
}

async fn control_items(
    State(state): State<Arc<DoceboState>>,
    Path(kind): Path<String>,
) -> Response {
    match parse_kind(&kind) {
        Ok(kind) => axum::Json(state.items(kind)).into_response(),
        Err(response) => response,
    }
}

async fn control_get(
    State(state): State<Arc<DoceboState>>,
    Path((kind, key)): Path<(String, String)>,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    match state.get(kind, &key) {
        Some(item) => axum::Json(item).into_response(),
        None => control_error(Error::NotFound(format!("{} {key}", kind.name()))),
    }
}

async fn control_update(
    State(state): State<Arc<DoceboState>>,
    Path((kind, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    let patch: Value = match parse_json(&body) {
        Ok(patch) => patch,
        Err(response) => return response,
    };
    match state.update(kind, &key, patch) {
        Ok(item) => axum::Json(item).into_response(),
        Err(error) => control_error(error),
    }
}

async fn control_delete(
    State(state): State<Arc<DoceboState>>,
    Path((kind, key)): Path<(String, String)>,
) -> Response {
    let kind = match parse_kind(&kind) {
        Ok(kind) => kind,
        Err(response) => return response,
    };
    match state.delete(kind, &key) {
        Ok(item) => axum::Json(item).into_response(),
        Err(error) => control_error(error),
    }
}

impl ControlState for DoceboState {
    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn faults(&self) -> &Mutex<FaultState> {
        &self.faults
    }

    fn now(&self) -> DateTime<Utc> {
        DoceboState::now(self)
    }

    fn reset(&self) {
        DoceboState::reset(self)
    }
}

//! The Salesforce API client: OAuth2 (client credentials or JWT bearer, re-authenticating on 401
//! INVALID_SESSION_ID), sObject Collections upsert and delete, and Bulk API 2.0 upsert. A
//! REQUEST_LIMIT_EXCEEDED answer pauses the connection's writes (for every worker) instead of
//! burning retries; 5xx answers are retried with backoff.

use std::collections::HashMap;
use std::time::Duration;

use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::{SalesforceCredentials, SalesforceGrant};
use learnsync_store::worker as store_worker;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::context::{JobCtx, SyncError, SyncResult};
use crate::mapping::{FieldValue, Fields};

/// The REST API version learnsync speaks.
pub const API_VERSION: &str = "v62.0";
/// Most records per sObject Collections call.
pub const COLLECTION_SIZE: usize = 200;
/// Attempts of a call answered 5xx or failing on the network.
const MAX_CALL_ATTEMPTS: u32 = 5;
/// Request-limit pauses a call waits out before the job gives up for now.
const MAX_LIMIT_PAUSES: u32 = 50;

/// One per-record failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFailure {
    /// Salesforce's status code (`UNABLE_TO_LOCK_ROW`, `INVALID_FIELD`, ...).
    pub code: String,
    /// Salesforce's message.
    pub message: String,
}

/// The outcome of one record of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordResult {
    /// Whether it was written.
    pub success: bool,
    /// Its Salesforce id, when known.
    pub id: Option<String>,
    /// Why not, when it was not.
    pub errors: Vec<RecordFailure>,
}

impl RecordResult {
    /// The first failure's code and message (or a generic one).
    pub fn failure(&self) -> RecordFailure {
        self.errors.first().cloned().unwrap_or(RecordFailure {
            code: "UNKNOWN".into(),
            message: "salesforce reported a failure without a reason".into(),
        })
    }
}

#[derive(Clone)]
struct Session {
    access_token: String,
    instance_url: String,
}

/// A Salesforce client for one job.
pub struct Salesforce {
    http: reqwest::Client,
    credentials: SalesforceCredentials,
    session: Mutex<Option<Session>>,
}

#[derive(serde::Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

/// A request to send (rebuilt for each attempt).
enum Body {
    None,
    Json(Value),
    Csv(String),
}

fn error_of(body: &str) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let first = parsed.as_ref().and_then(|value| match value {
        Value::Array(items) => items.first().cloned(),
        Value::Object(_) => Some(value.clone()),
        _ => None,
    });
    match first {
        Some(error) => {
            let code = error
                .get("errorCode")
                .or_else(|| error.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_string();
            let message = error
                .get("message")
                .or_else(|| error.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            (code, message)
        }
        None => ("UNKNOWN".to_string(), body.chars().take(200).collect()),
    }
}

fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request error"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

impl Salesforce {
    /// A client for a connection's org.
    pub fn new(http: reqwest::Client, credentials: SalesforceCredentials) -> Salesforce {
        Salesforce {
            http,
            credentials,
            session: Mutex::new(None),
        }
    }

    async fn authenticate(&self, ctx: &JobCtx) -> SyncResult<Session> {
        let url = format!(
            "{}/services/oauth2/token",
            self.credentials.login_url.trim_end_matches('/')
        );
        let form: Vec<(&str, String)> = match &self.credentials.grant {
            SalesforceGrant::ClientCredentials { client_secret } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", self.credentials.client_id.clone()),
                ("client_secret", client_secret.clone()),
            ],
            SalesforceGrant::JwtBearer {
                username,
                private_key_pem,
                audience,
            } => {
                let claims = JwtClaims {
                    iss: &self.credentials.client_id,
                    sub: username,
                    aud: audience,
                    // Salesforce accepts at most 3 minutes ahead, in epoch seconds.
                    exp: chrono::Utc::now().timestamp() + 170,
                };
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
                    .map_err(|_| {
                        SyncError::Permanent(
                            "the salesforce jwt private key is not a valid RSA PEM key".into(),
                        )
                    })?;
                let assertion = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    &key,
                )
                .map_err(|error| {
                    SyncError::Permanent(format!("cannot sign the salesforce jwt: {error}"))
                })?;
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                    ),
                    ("assertion", assertion),
                ]
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = ctx
                .interruptible(async {
                    self.http
                        .post(&url)
                        .form(&form)
                        .send()
                        .await
                        .map_err(|error| {
                            SyncError::Transient(format!(
                                "salesforce token request failed: {}",
                                without_url(&error)
                            ))
                        })
                })
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(SyncError::Transient(_)) if attempt < MAX_CALL_ATTEMPTS => {
                    ctx.sleep(ctx.settings.call_retry_base * attempt).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                let value: Value = serde_json::from_str(&body).map_err(|_| {
                    SyncError::Transient("salesforce token answer is not JSON".into())
                })?;
                let access_token = value.get("access_token").and_then(Value::as_str);
                let instance_url = value.get("instance_url").and_then(Value::as_str);
                return match (access_token, instance_url) {
                    (Some(access_token), Some(instance_url)) => Ok(Session {
                        access_token: access_token.to_string(),
                        instance_url: instance_url.trim_end_matches('/').to_string(),
                    }),
                    _ => Err(SyncError::Transient(
                        "salesforce token answer lacks a token or instance url".into(),
                    )),
                };
            }
            if status.is_server_error() && attempt < MAX_CALL_ATTEMPTS {
                ctx.sleep(ctx.settings.call_retry_base * attempt).await?;
                continue;
            }
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(SyncError::Transient(format!(
                    "salesforce token endpoint answered {status}"
                )));
            }
            let (code, message) = error_of(&body);
            return Err(SyncError::Permanent(format!(
                "salesforce authentication failed ({status}, {code}): {message}"
            )));
        }
    }

    async fn session(&self, ctx: &JobCtx, renew: bool) -> SyncResult<Session> {
        let mut session = self.session.lock().await;
        if renew {
            *session = None;
        }
        if let Some(current) = session.as_ref() {
            return Ok(current.clone());
        }
        let fresh = self.authenticate(ctx).await?;
        *session = Some(fresh.clone());
        Ok(fresh)
    }

    /// Waits while the connection's writes are paused (REQUEST_LIMIT_EXCEEDED, here or on another
    /// worker).
    async fn wait_for_limit(&self, ctx: &JobCtx) -> SyncResult<()> {
        let mut said = false;
        loop {
            let left = {
                let conn = ctx.store.conn().await?;
                store_worker::salesforce_pause_left(&conn, ctx.job.connection_id).await?
            };
            if left.is_zero() {
                if said {
                    ctx.status("running").await?;
                }
                return Ok(());
            }
            if !said {
                said = true;
                ctx.status("waiting: salesforce request limit exceeded")
                    .await?;
            }
            ctx.sleep(left.min(Duration::from_secs(30)) + Duration::from_millis(10))
                .await?;
        }
    }

    /// Sends one API call (path under the instance URL), handling authentication, request limits
    /// and transient failures. Returns the status and body of a 2xx answer; a 4xx other than those
    /// handled is a permanent error.
    async fn call(
        &self,
        ctx: &JobCtx,
        method: reqwest::Method,
        path: &str,
        body: &Body,
    ) -> SyncResult<(u16, String)> {
        let mut renewed = false;
        let mut failures = 0u32;
        let mut pauses = 0u32;
        loop {
            self.wait_for_limit(ctx).await?;
            let session = self.session(ctx, false).await?;
            let url = if path.starts_with("http") {
                path.to_string()
            } else {
                format!("{}{}", session.instance_url, path)
            };
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&session.access_token);
            request = match body {
                Body::None => request,
                Body::Json(value) => request.json(value),
                Body::Csv(text) => request
                    .header("content-type", "text/csv")
                    .body(text.clone()),
            };
            // A write in flight is not abandoned when a stop arrives: its answer is recorded first.
            let outcome = request.send().await;
            let response = match outcome {
                Ok(response) => response,
                Err(error) => {
                    failures += 1;
                    let message = format!("salesforce request failed: {}", without_url(&error));
                    if failures >= MAX_CALL_ATTEMPTS {
                        return Err(SyncError::Transient(message));
                    }
                    tracing::warn!(%message, "salesforce call failed, retrying");
                    ctx.sleep(backoff(ctx, failures)).await?;
                    continue;
                }
            };
            let status = response.status().as_u16();
            crate::metrics::METRICS
                .api_calls
                .with_label_values(&["salesforce", &status.to_string()])
                .inc();
            let text = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                return Ok((status, text));
            }
            let (code, message) = error_of(&text);
            if status == 401 && !renewed {
                renewed = true;
                self.session(ctx, true).await?;
                continue;
            }
            if (status == 403 && code == "REQUEST_LIMIT_EXCEEDED") || status == 429 {
                crate::metrics::METRICS
                    .throttled
                    .with_label_values(&["salesforce"])
                    .inc();
                pauses += 1;
                if pauses > MAX_LIMIT_PAUSES {
                    return Err(SyncError::Transient(format!(
                        "salesforce request limit: {message}"
                    )));
                }
                let pause = ctx.settings.salesforce_limit_pause;
                ctx.log(vec![
                    NewLogEvent::new(
                        LogLevel::Warn,
                        "salesforce request limit exceeded: pausing writes",
                    )
                    .code("REQUEST_LIMIT_EXCEEDED")
                    .field("reason", message.as_str())
                    .field("pause_ms", pause.as_millis() as i64),
                ])
                .await?;
                let conn = ctx.store.conn().await?;
                store_worker::pause_salesforce(&conn, ctx.job.connection_id, pause).await?;
                continue;
            }
            if status >= 500 {
                failures += 1;
                if failures >= MAX_CALL_ATTEMPTS {
                    return Err(SyncError::Transient(format!(
                        "salesforce answered {status} ({code}): {message}"
                    )));
                }
                ctx.log(vec![
                    NewLogEvent::new(
                        LogLevel::Warn,
                        format!("salesforce answered {status}: retrying the call"),
                    )
                    .code(code.as_str())
                    .field("attempt", failures as i64),
                ])
                .await?;
                ctx.sleep(backoff(ctx, failures)).await?;
                continue;
            }
            return Err(SyncError::Permanent(format!(
                "salesforce answered {status} ({code}): {message}"
            )));
        }
    }

    /// Describes an object (its fields, types, lengths, picklist values), to check the org
    /// against the mapping before writing.
    pub async fn describe(&self, ctx: &JobCtx, object: &str) -> SyncResult<Value> {
        let path = format!("/services/data/{API_VERSION}/sobjects/{object}/describe");
        let (_, text) = self
            .call(ctx, reqwest::Method::GET, &path, &Body::None)
            .await
            .map_err(|error| match error {
                SyncError::Permanent(message) => {
                    SyncError::Permanent(format!("the org cannot describe {object}: {message}"))
                }
                other => other,
            })?;
        serde_json::from_str(&text)
            .map_err(|_| SyncError::Transient(format!("the describe of {object} is not JSON")))
    }

    /// Finds the record ids of records by external id.
    pub async fn find_ids(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        keys: &[String],
    ) -> SyncResult<HashMap<String, String>> {
        Ok(self
            .query_pairs(ctx, object, external_id, keys)
            .await?
            .into_iter()
            .collect())
    }

    /// Runs `SELECT Id, field FROM object WHERE field IN (values)` (following `nextRecordsUrl`)
    /// and returns `(field value, Id)` pairs.
    async fn query_pairs(
        &self,
        ctx: &JobCtx,
        object: &str,
        field: &str,
        values: &[String],
    ) -> SyncResult<Vec<(String, String)>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let quoted: Vec<String> = values
            .iter()
            .map(|value| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect();
        let soql = format!(
            "SELECT Id, {field} FROM {object} WHERE {field} IN ({})",
            quoted.join(",")
        );
        let mut pairs = Vec::new();
        let mut path = format!("/services/data/{API_VERSION}/query?q={}", url_encode(&soql));
        loop {
            let (_, text) = self
                .call(ctx, reqwest::Method::GET, &path, &Body::None)
                .await?;
            let page: Value = serde_json::from_str(&text)
                .map_err(|_| SyncError::Transient("salesforce query answer is not JSON".into()))?;
            for record in page
                .get("records")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(id), Some(value)) = (
                    record.get("Id").and_then(Value::as_str),
                    record.get(field).and_then(Value::as_str),
                ) {
                    pairs.push((value.to_string(), id.to_string()));
                }
            }
            match page.get("nextRecordsUrl").and_then(Value::as_str) {
                Some(next) if page.get("done").and_then(Value::as_bool) == Some(false) => {
                    path = next.to_string()
                }
                _ => return Ok(pairs),
            }
        }
    }

    /// Finds records of `object` whose `field` equals one of `values` (compared lowercased):
    /// value → its record id, or `None` when several records share the value (ambiguous).
    pub async fn match_ids(
        &self,
        ctx: &JobCtx,
        object: &str,
        field: &str,
        values: &[String],
    ) -> SyncResult<HashMap<String, Option<String>>> {
        let mut matched: HashMap<String, Option<String>> = HashMap::new();
        for (value, id) in self.query_pairs(ctx, object, field, values).await? {
            matched
                .entry(value.to_lowercase())
                .and_modify(|existing| *existing = None)
                .or_insert(Some(id));
        }
        Ok(matched)
    }

    /// Upserts up to 200 records of one object by external id through sObject Collections; one
    /// result per record, in request order.
    pub async fn upsert_collection(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        records: &[&Fields],
    ) -> SyncResult<Vec<RecordResult>> {
        debug_assert!(records.len() <= COLLECTION_SIZE);
        /// One record of a collection: `attributes` then the fields.
        #[derive(serde::Serialize)]
        struct Record<'a> {
            attributes: Attributes<'a>,
            #[serde(flatten)]
            fields: &'a Fields,
        }
        #[derive(serde::Serialize)]
        struct Attributes<'a> {
            #[serde(rename = "type")]
            object: &'a str,
        }
        let records: Vec<Record<'_>> = records
            .iter()
            .map(|fields| Record {
                attributes: Attributes { object },
                fields,
            })
            .collect();
        let body = Body::Json(json!({"allOrNone": false, "records": records}));
        let path =
            format!("/services/data/{API_VERSION}/composite/sobjects/{object}/{external_id}");
        let (_, text) = self.call(ctx, reqwest::Method::PATCH, &path, &body).await?;
        let results = parse_collection_results(&text)?;
        if results.len() != records.len() {
            return Err(SyncError::Transient(format!(
                "salesforce answered {} results for {} records",
                results.len(),
                records.len()
            )));
        }
        Ok(results)
    }

    /// Deletes up to 200 records by id through sObject Collections; one result per id, in order.
    /// An already deleted record counts as deleted.
    pub async fn delete_collection(
        &self,
        ctx: &JobCtx,
        ids: &[String],
    ) -> SyncResult<Vec<RecordResult>> {
        let path = format!(
            "/services/data/{API_VERSION}/composite/sobjects?ids={}&allOrNone=false",
            ids.join(",")
        );
        let (_, text) = self
            .call(ctx, reqwest::Method::DELETE, &path, &Body::None)
            .await?;
        let mut results = parse_collection_results(&text)?;
        for result in &mut results {
            if !result.success
                && result
                    .errors
                    .iter()
                    .any(|error| error.code == "ENTITY_IS_DELETED")
            {
                result.success = true;
                result.errors.clear();
            }
        }
        if results.len() != ids.len() {
            return Err(SyncError::Transient(format!(
                "salesforce answered {} results for {} deletions",
                results.len(),
                ids.len()
            )));
        }
        Ok(results)
    }

    /// Upserts records through a Bulk API 2.0 ingest job and reads back each record's outcome,
    /// matched by external id (results come back in any order). Records missing from every result
    /// file count as failed with `UNPROCESSED`.
    pub async fn upsert_bulk(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        records: &[&Fields],
    ) -> SyncResult<Vec<RecordResult>> {
        let csv_text = to_csv(records, external_id)?;
        let created = self
            .call(
                ctx,
                reqwest::Method::POST,
                &format!("/services/data/{API_VERSION}/jobs/ingest"),
                &Body::Json(json!({"object": object, "operation": "upsert", "externalIdFieldName": external_id,
                    "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"})),
            )
            .await?;
        let info: Value = serde_json::from_str(&created.1)
            .map_err(|_| SyncError::Transient("bulk job answer is not JSON".into()))?;
        let job_id = info
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| SyncError::Transient("bulk job answer has no id".into()))?
            .to_string();
        let job_path = format!("/services/data/{API_VERSION}/jobs/ingest/{job_id}");
        self.call(
            ctx,
            reqwest::Method::PUT,
            &format!("{job_path}/batches"),
            &Body::Csv(csv_text),
        )
        .await?;
        self.call(
            ctx,
            reqwest::Method::PATCH,
            &job_path,
            &Body::Json(json!({"state": "UploadComplete"})),
        )
        .await?;
        let mut delay = ctx.settings.bulk_poll;
        loop {
            ctx.sleep(delay).await.or_else(|error| match error {
                // The upload is done: let Salesforce finish and read the results, a stop waits.
                SyncError::Interrupted(crate::context::Interrupt::Stop) => Ok(()),
                other => Err(other),
            })?;
            let (_, text) = self
                .call(ctx, reqwest::Method::GET, &job_path, &Body::None)
                .await?;
            let state: Value = serde_json::from_str(&text)
                .map_err(|_| SyncError::Transient("bulk job state is not JSON".into()))?;
            match state.get("state").and_then(Value::as_str).unwrap_or("") {
                "JobComplete" => break,
                "Failed" | "Aborted" => {
                    let message = state
                        .get("errorMessage")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(SyncError::Transient(format!(
                        "bulk job {job_id} ended: {message}"
                    )));
                }
                // Quick first looks for small jobs, then at most one poll every 5 s: each poll is
                // an API call against the org's daily allowance.
                _ => delay = (delay * 2).min(Duration::from_secs(5).max(ctx.settings.bulk_poll)),
            }
        }
        let mut by_key: HashMap<String, RecordResult> = HashMap::with_capacity(records.len());
        let (_, successful) = self
            .call(
                ctx,
                reqwest::Method::GET,
                &format!("{job_path}/successfulResults/"),
                &Body::None,
            )
            .await?;
        for (key, id) in read_results(&successful, external_id, "sf__Id")? {
            by_key.insert(
                key,
                RecordResult {
                    success: true,
                    id: Some(id).filter(|id| !id.is_empty()),
                    errors: Vec::new(),
                },
            );
        }
        drop(successful);
        let (_, failed) = self
            .call(
                ctx,
                reqwest::Method::GET,
                &format!("{job_path}/failedResults/"),
                &Body::None,
            )
            .await?;
        for (key, error) in read_results(&failed, external_id, "sf__Error")? {
            by_key.insert(
                key,
                RecordResult {
                    success: false,
                    id: None,
                    errors: vec![parse_bulk_error(&error)],
                },
            );
        }
        Ok(records
            .iter()
            .map(|record| {
                let key = match record.get(external_id) {
                    Some(FieldValue::Plain(Value::String(key))) => key.as_str(),
                    _ => "",
                };
                by_key.remove(key).unwrap_or(RecordResult {
                    success: false,
                    id: None,
                    errors: vec![RecordFailure {
                        code: "UNPROCESSED".into(),
                        message: "salesforce did not process the record".into(),
                    }],
                })
            })
            .collect())
    }
}

/// Percent-encodes a query parameter value.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn backoff(ctx: &JobCtx, failures: u32) -> Duration {
    let base =
        ctx.settings.call_retry_base * 2u32.saturating_pow(failures.saturating_sub(1).min(6));
    let jitter = rand::random::<f64>() * 0.25 + 0.875;
    base.mul_f64(jitter).min(Duration::from_secs(60))
}

fn parse_collection_results(text: &str) -> SyncResult<Vec<RecordResult>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| SyncError::Transient("salesforce collection answer is not JSON".into()))?;
    let Value::Array(items) = value else {
        return Err(SyncError::Transient(
            "salesforce collection answer is not an array".into(),
        ));
    };
    Ok(items
        .iter()
        .map(|item| {
            let success = item
                .get("success")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let id = item.get("id").and_then(Value::as_str).map(str::to_string);
            let errors = item
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .map(|error| RecordFailure {
                            code: error
                                .get("statusCode")
                                .and_then(Value::as_str)
                                .unwrap_or("UNKNOWN")
                                .to_string(),
                            message: error
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            RecordResult {
                success,
                id,
                errors,
            }
        })
        .collect())
}

/// `CODE:message:fields --` as Bulk API 2.0 writes `sf__Error`.
fn parse_bulk_error(text: &str) -> RecordFailure {
    let text = text.trim().trim_end_matches("--").trim();
    match text.split_once(':') {
        Some((code, rest)) => {
            let message = match rest.rsplit_once(':') {
                Some((message, _fields)) => message,
                None => rest,
            };
            RecordFailure {
                code: code.trim().to_string(),
                message: message.trim().to_string(),
            }
        }
        None => RecordFailure {
            code: "UNKNOWN".into(),
            message: text.to_string(),
        },
    }
}

/// Writes records as Bulk API CSV: relationship columns as `Rel__r.Ext__c`, nulls as `#N/A`.
fn to_csv(records: &[&Fields], external_id: &str) -> SyncResult<String> {
    // Columns in first-seen order; a lookup by external id is `Relationship__r.Field__c`.
    let mut columns: Vec<(String, Option<String>)> = vec![(external_id.to_string(), None)];
    for record in records {
        for (field, value) in record.iter() {
            // A handful of columns: a scan allocates nothing, unlike a set of owned names.
            let reference = match value {
                FieldValue::Lookup { external_id, .. } => Some(&**external_id),
                FieldValue::Plain(_) => None,
            };
            let known = columns
                .iter()
                .any(|(f, k)| f == field && k.as_deref() == reference);
            if !known {
                columns.push((field.to_string(), reference.map(str::to_string)));
            }
        }
    }
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(records.len() * 160));
    let fail = |error: csv::Error| SyncError::Permanent(format!("cannot write bulk csv: {error}"));
    for (field, key) in &columns {
        match key {
            Some(key) => writer.write_field(format!("{field}.{key}")),
            None => writer.write_field(field),
        }
        .map_err(fail)?;
    }
    writer.write_record(None::<&[u8]>).map_err(fail)?;
    let mut number = String::new();
    for record in records {
        for (field, reference) in &columns {
            let text = match (record.get(field), reference) {
                (Some(FieldValue::Lookup { external_id, key }), Some(reference))
                    if **external_id == **reference =>
                {
                    Some(key.as_str())
                }
                (Some(FieldValue::Plain(Value::String(text))), None) => Some(text.as_str()),
                (Some(FieldValue::Plain(Value::Null)) | None, _) => None,
                (Some(FieldValue::Plain(other)), None) => {
                    number.clear();
                    std::fmt::Write::write_fmt(&mut number, format_args!("{other}"))
                        .map_err(|error| SyncError::Permanent(error.to_string()))?;
                    Some(number.as_str())
                }
                _ => None,
            };
            writer.write_field(text.unwrap_or("#N/A")).map_err(fail)?;
        }
        writer.write_record(None::<&[u8]>).map_err(fail)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| SyncError::Permanent(format!("cannot write bulk csv: {error}")))?;
    String::from_utf8(bytes)
        .map_err(|error| SyncError::Permanent(format!("bulk csv is not utf-8: {error}")))
}

/// Reads a Bulk API 2.0 result CSV: `(external id value, value of column)` per row. Only the two
/// columns are kept (the results repeat every field sent).
fn read_results(text: &str, external_id: &str, column: &str) -> SyncResult<Vec<(String, String)>> {
    let unreadable =
        |error: csv::Error| SyncError::Transient(format!("bulk results unreadable: {error}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(unreadable)?;
    let position = |name: &str| headers.iter().position(|header| header == name);
    let (Some(key_at), value_at) = (position(external_id), position(column)) else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(unreadable)? {
        let Some(key) = record.get(key_at) else {
            continue;
        };
        let value = value_at.and_then(|at| record.get(at)).unwrap_or_default();
        rows.push((key.to_string(), value.to_string()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Map;

    use super::*;

    #[test]
    fn reads_collection_results_in_order() {
        let results = parse_collection_results(
            r#"[{"id":"a01","success":true,"errors":[],"created":true},
                {"success":false,"errors":[{"statusCode":"UNABLE_TO_LOCK_ROW","message":"locked","fields":[]}]}]"#,
        )
        .unwrap();
        assert!(results[0].success);
        assert_eq!(results[0].id.as_deref(), Some("a01"));
        assert_eq!(results[1].failure().code, "UNABLE_TO_LOCK_ROW");
    }

    #[test]
    fn reads_request_level_errors() {
        assert_eq!(
            error_of(
                r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#
            ),
            (
                "INVALID_SESSION_ID".to_string(),
                "Session expired or invalid".to_string()
            )
        );
        assert_eq!(
            error_of(r#"{"error":"invalid_grant","error_description":"bad"}"#).0,
            "invalid_grant"
        );
    }

    #[test]
    fn writes_bulk_csv_and_reads_bulk_errors() {
        let mut record = Map::new();
        record.insert("Enrollment_Key__c".into(), json!("1-2"));
        record.insert("Docebo_User__r".into(), json!({"Docebo_User_Id__c": "1"}));
        record.insert("Score__c".into(), Value::Null);
        record.insert("Name".into(), json!("a, \"b\""));
        let record = Fields::from_map(&record);
        let text = to_csv(&[&record], "Enrollment_Key__c").unwrap();
        let column = |name: &str| read_results(&text, "Enrollment_Key__c", name).unwrap();
        assert_eq!(
            column("Docebo_User__r.Docebo_User_Id__c"),
            vec![("1-2".to_string(), "1".to_string())]
        );
        assert_eq!(column("Score__c")[0].1, "#N/A");
        assert_eq!(column("Name")[0].1, "a, \"b\"");
        let error = parse_bulk_error(
            "INVALID_FIELD:Foreign key external ID: 9 not found for field X in entity Y:Docebo_User__c --",
        );
        assert_eq!(error.code, "INVALID_FIELD");
        assert!(
            error.message.starts_with("Foreign key external ID"),
            "{}",
            error.message
        );
    }
}

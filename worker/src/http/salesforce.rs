//! The thin Salesforce client: one OAuth2 token request (client credentials or JWT bearer), and
//! single exchanges of the REST API: describe, a SOQL query page, sObject Collections upsert and
//! delete, and (in `bulk`) the steps of a Bulk API 2.0 ingest job. Each returns an [`Answer`]:
//! 401 an expired session, 403 REQUEST_LIMIT_EXCEEDED (or 429) throttling, 5xx and network errors
//! transient, other 4xx permanent.

use learnsync_store::secrets::{SalesforceCredentials, SalesforceGrant};
use learnsync_upstream::{Http, Prefix, cap};
use serde_json::Value;

use super::{Answer, read_body, read_error, redirected, refused, shown, unsent};
use crate::error::{Failure, Upstream};
use crate::mapping::Fields;

mod bulk;

pub use bulk::{BulkState, ResultSet, bulk_failure, to_csv};

/// The REST API version learnsync speaks.
pub const API_VERSION: &str = "v62.0";
/// Most records per sObject Collections call.
pub const COLLECTION_SIZE: usize = 200;

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

/// Salesforce's error code and message in an error answer, when it has the documented shape
/// (`[{"errorCode", "message"}]`, or OAuth's `{"error", "error_description"}`), sanitized;
/// otherwise no code and the body's size alone (an error answer is never copied into a job's
/// error).
fn error_of(body: &Prefix) -> (Option<String>, String) {
    let parsed: Option<Value> = serde_json::from_str(&body.text).ok();
    let first = parsed.as_ref().and_then(|value| match value {
        Value::Array(items) => items.first(),
        Value::Object(_) => Some(value),
        _ => None,
    });
    let text = |error: &Value, keys: [&str; 2]| {
        keys.iter()
            .find_map(|key| error.get(*key).and_then(Value::as_str))
            .map(shown)
            .filter(|text| !text.is_empty())
    };
    let code = first.and_then(|error| text(error, ["errorCode", "error"]));
    let message = first.and_then(|error| text(error, ["message", "error_description"]));
    match (code, message) {
        (None, None) => (None, body.describe()),
        (code, message) => (code, message.unwrap_or_default()),
    }
}

/// An authenticated session: the token and the org's instance URL.
#[derive(Clone, Debug)]
pub struct Session {
    /// The bearer token.
    pub access_token: String,
    /// The org's API base URL.
    pub instance_url: String,
}

#[derive(serde::Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

/// The body of a request.
pub enum Body<'a> {
    /// No body.
    None,
    /// A JSON document.
    Json(&'a str),
    /// CSV text (Bulk API uploads).
    Csv(&'a str),
}

/// One page of a SOQL query of `SELECT Id, field`: `(field value, Id)` pairs and the next page's
/// path, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryPage {
    /// `(field value, Id)` of each record.
    pub pairs: Vec<(String, String)>,
    /// `nextRecordsUrl`, when the query is not done.
    pub next: Option<String>,
}

/// A Salesforce org's API, one exchange at a time.
pub struct SalesforceApi {
    http: Http,
    credentials: SalesforceCredentials,
}

fn not_json(what: &str) -> Failure {
    Failure::Unreadable(format!("{what} is not JSON"))
}

impl SalesforceApi {
    /// A client of a connection's org.
    pub fn new(http: Http, credentials: SalesforceCredentials) -> SalesforceApi {
        SalesforceApi { http, credentials }
    }

    /// The token request's form (a signed assertion for the JWT bearer flow).
    fn token_form(&self) -> Result<Vec<(&'static str, String)>, Failure> {
        Ok(match &self.credentials.grant {
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
                        Failure::Credentials(
                            "the salesforce jwt private key is not a valid RSA PEM key".into(),
                        )
                    })?;
                let assertion = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                    &claims,
                    &key,
                )
                .map_err(|error| {
                    Failure::Credentials(format!("cannot sign the salesforce jwt: {error}"))
                })?;
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                    ),
                    ("assertion", assertion),
                ]
            }
        })
    }

    /// Asks for a session. Refused credentials (and a key that is not one) are permanent; 429
    /// and 5xx transient.
    pub async fn token(&self) -> Answer<Session> {
        let url = format!(
            "{}/services/oauth2/token",
            self.credentials.login_url.trim_end_matches('/')
        );
        let form = match self.token_form() {
            Ok(form) => form,
            Err(failure) => return Answer::Permanent(failure),
        };
        let request = match self.http.request(reqwest::Method::POST, &url) {
            Ok(request) => request,
            Err(refusal) => return refused(Upstream::Salesforce, "url", &refusal),
        };
        let (sent, _span) = super::send(Upstream::Salesforce, request.form(&form)).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return unsent(Upstream::Salesforce, true, &error),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let body = match read_body(Upstream::Salesforce, response, cap::TOKEN).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let Ok(value) = serde_json::from_str::<Value>(&body) else {
                return Answer::Unreadable(not_json("salesforce token answer"));
            };
            let access_token = value.get("access_token").and_then(Value::as_str);
            let instance_url = value.get("instance_url").and_then(Value::as_str);
            // The org's API is wherever the token answer says: the policy checks that URL as it
            // checks the tenant's own, before anything is sent there.
            if let Some(Err(refusal)) = instance_url.map(|url| self.http.policy().check_url(url)) {
                return refused(Upstream::Salesforce, "instance_url", &refusal);
            }
            return match (access_token, instance_url) {
                (Some(access_token), Some(instance_url)) => Answer::Ok(Session {
                    access_token: access_token.to_string(),
                    instance_url: instance_url.trim_end_matches('/').to_string(),
                }),
                _ => Answer::Unreadable(Failure::Unreadable(
                    "salesforce token answer lacks a token or instance url".into(),
                )),
            };
        }
        let (code, message) = error_of(&read_error(response).await);
        super::token_refused(Upstream::Salesforce, status, code, message)
    }

    /// Sends one API call (`path` under the instance URL, or a full URL) and returns the body of
    /// a 2xx answer, a JSON one (at most [`cap::JSON`]).
    pub async fn send(
        &self,
        session: &Session,
        method: reqwest::Method,
        path: &str,
        body: Body<'_>,
    ) -> Answer<String> {
        self.send_capped(session, method, path, body, cap::JSON)
            .await
    }

    /// [`SalesforceApi::send`] with the size cap of the answer's body.
    pub async fn send_capped(
        &self,
        session: &Session,
        method: reqwest::Method,
        path: &str,
        body: Body<'_>,
        cap: usize,
    ) -> Answer<String> {
        self.exchange(session, method, path, body, cap)
            .await
            .and_then(|(text, _)| Ok(text))
    }

    /// [`SalesforceApi::send_capped`], answering the 2xx body with the answer's headers.
    pub async fn exchange(
        &self,
        session: &Session,
        method: reqwest::Method,
        path: &str,
        body: Body<'_>,
        cap: usize,
    ) -> Answer<(String, reqwest::header::HeaderMap)> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", session.instance_url, path)
        };
        let mut request = match self.http.request(method, &url) {
            Ok(request) => request.bearer_auth(&session.access_token),
            Err(refusal) => return refused(Upstream::Salesforce, "url", &refusal),
        };
        request = match body {
            Body::None => request,
            Body::Json(text) => request
                .header("content-type", "application/json")
                .body(text.to_string()),
            Body::Csv(text) => request
                .header("content-type", "text/csv")
                .body(text.to_string()),
        };
        let (sent, _span) = super::send(Upstream::Salesforce, request).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return unsent(Upstream::Salesforce, false, &error),
        };
        let status = response.status().as_u16();
        crate::metrics::METRICS
            .api_calls
            .with_label_values(&["salesforce", &status.to_string()])
            .inc();
        if (200..300).contains(&status) {
            let headers = response.headers().clone();
            return match read_body(Upstream::Salesforce, response, cap).await {
                Ok(text) => Answer::Ok((text, headers)),
                Err(answer) => answer,
            };
        }
        if (300..400).contains(&status) {
            return Answer::Permanent(redirected(Upstream::Salesforce, status, None));
        }
        let (code, message) = error_of(&read_error(response).await);
        let limited = code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED");
        if (status == 403 && limited) || status == 429 {
            crate::metrics::METRICS
                .throttled
                .with_label_values(&["salesforce"])
                .inc();
            // Salesforce names no wait: the policy's pause applies.
            return Answer::Throttled {
                wait: None,
                failure: Failure::Throttled {
                    upstream: Upstream::Salesforce,
                    status,
                    message,
                },
            };
        }
        let failure = Failure::Answered {
            upstream: Upstream::Salesforce,
            status,
            path: None,
            code,
            message: Some(message),
        };
        match status {
            401 => Answer::SessionExpired(failure),
            500..=599 => Answer::Transient(failure),
            _ => Answer::Permanent(failure),
        }
    }

    /// Describes an object (its fields, types, lengths, picklist values).
    pub async fn describe(&self, session: &Session, object: &str) -> Answer<Value> {
        let path = format!("/services/data/{API_VERSION}/sobjects/{object}/describe");
        self.send(session, reqwest::Method::GET, &path, Body::None)
            .await
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|_| {
                    Failure::Unreadable(format!("the describe of {object} is not JSON"))
                })
            })
    }

    /// Reads one page of a `SELECT Id, field` query: `path` is [`query_path`]'s or the previous
    /// page's `next`.
    pub async fn query(&self, session: &Session, path: &str, field: &str) -> Answer<QueryPage> {
        self.send(session, reqwest::Method::GET, path, Body::None)
            .await
            .and_then(|text| {
                let page: Value =
                    serde_json::from_str(&text).map_err(|_| not_json("salesforce query answer"))?;
                let pairs = page
                    .get("records")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|record| {
                        let id = record.get("Id").and_then(Value::as_str)?;
                        let value = record.get(field).and_then(Value::as_str)?;
                        Some((value.to_string(), id.to_string()))
                    })
                    .collect();
                let next = match page.get("nextRecordsUrl").and_then(Value::as_str) {
                    Some(next) if page.get("done").and_then(Value::as_bool) == Some(false) => {
                        Some(next.to_string())
                    }
                    _ => None,
                };
                Ok(QueryPage { pairs, next })
            })
    }

    /// Upserts up to 200 records of one object by external id through sObject Collections; one
    /// result per record, in request order.
    pub async fn upsert_collection(
        &self,
        session: &Session,
        object: &str,
        external_id: &str,
        records: &[&Fields],
    ) -> Answer<Vec<RecordResult>> {
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
        #[derive(serde::Serialize)]
        struct Request<'a> {
            #[serde(rename = "allOrNone")]
            all_or_none: bool,
            records: Vec<Record<'a>>,
        }
        let request = Request {
            all_or_none: false,
            records: records
                .iter()
                .map(|fields| Record {
                    attributes: Attributes { object },
                    fields,
                })
                .collect(),
        };
        let body = match serde_json::to_string(&request) {
            Ok(body) => body,
            Err(error) => return Answer::Permanent(Failure::Encode(error.to_string())),
        };
        let path =
            format!("/services/data/{API_VERSION}/composite/sobjects/{object}/{external_id}");
        self.send(session, reqwest::Method::PATCH, &path, Body::Json(&body))
            .await
            .and_then(|text| {
                let results = parse_collection_results(&text)?;
                if results.len() != records.len() {
                    return Err(Failure::Unreadable(format!(
                        "salesforce answered {} results for {} records",
                        results.len(),
                        records.len()
                    )));
                }
                Ok(results)
            })
    }

    /// Deletes up to 200 records by id through sObject Collections; one result per id, in order.
    /// An already deleted record counts as deleted.
    pub async fn delete_collection(
        &self,
        session: &Session,
        ids: &[String],
    ) -> Answer<Vec<RecordResult>> {
        let path = format!(
            "/services/data/{API_VERSION}/composite/sobjects?ids={}&allOrNone=false",
            ids.join(",")
        );
        self.send(session, reqwest::Method::DELETE, &path, Body::None)
            .await
            .and_then(|text| {
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
                    return Err(Failure::Unreadable(format!(
                        "salesforce answered {} results for {} deletions",
                        results.len(),
                        ids.len()
                    )));
                }
                Ok(results)
            })
    }
}

/// The path of `SELECT Id, field FROM object WHERE field IN (values)`.
pub fn query_path(object: &str, field: &str, values: &[String]) -> String {
    let quoted: Vec<String> = values
        .iter()
        .map(|value| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    let soql = format!(
        "SELECT Id, {field} FROM {object} WHERE {field} IN ({})",
        quoted.join(",")
    );
    format!("/services/data/{API_VERSION}/query?q={}", url_encode(&soql))
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

fn parse_collection_results(text: &str) -> Result<Vec<RecordResult>, Failure> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| Failure::Unreadable("salesforce collection answer is not JSON".into()))?;
    let Value::Array(items) = value else {
        return Err(Failure::Unreadable(
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
                                .map_or_else(|| "UNKNOWN".to_string(), shown),
                            message: error
                                .get("message")
                                .and_then(Value::as_str)
                                .map(shown)
                                .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    fn whole(text: &str) -> Prefix {
        Prefix {
            text: text.to_string(),
            bytes: text.len(),
            complete: true,
        }
    }

    #[test]
    fn reads_request_level_errors() {
        assert_eq!(
            error_of(&whole(
                r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#
            )),
            (
                Some("INVALID_SESSION_ID".to_string()),
                "Session expired or invalid".to_string()
            )
        );
        assert_eq!(
            error_of(&whole(
                r#"{"error":"invalid_grant","error_description":"bad"}"#
            ))
            .0
            .as_deref(),
            Some("invalid_grant")
        );
    }

    #[test]
    fn error_answers_are_never_copied_verbatim() {
        // The documented shape: kept, without control characters, at most 300 characters.
        let long = format!(r"line one\nline two\u001b[2J{}", "x".repeat(5000));
        let body = format!(r#"[{{"errorCode":"BAD\u0007CODE","message":"{long}"}}]"#);
        let (code, message) = error_of(&whole(&body));
        assert_eq!(code.as_deref(), Some("BAD CODE"));
        assert!(message.starts_with("line one line two [2Jxxx"), "{message}");
        assert!(message.chars().count() <= 301, "{}", message.len());
        assert!(!message.chars().any(char::is_control));
        // Anything else: its size alone.
        let html = "<html><body>internal proxy error at 10.1.2.3</body></html>";
        assert_eq!(
            error_of(&whole(html)),
            (
                None,
                format!("an unrecognised body of {} bytes", html.len())
            )
        );
        let cut = Prefix {
            text: "[{".into(),
            bytes: 65536,
            complete: false,
        };
        assert_eq!(error_of(&cut).1, "an unrecognised body of over 64 KiB");
    }
}

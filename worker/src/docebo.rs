//! The Docebo API client: OAuth2 (re-authenticating on 401), list pages, and the platform's shared
//! call budget. 429 and 503 pause the platform for every job on every worker.

use std::time::Duration;

use learnsync_store::secrets::{DoceboCredentials, DoceboGrant};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::budget::Budget;
use crate::context::{JobCtx, SyncError, SyncResult};

/// Consecutive 429/503 answers after which a call gives up (the job retries later).
const MAX_OVERLOAD_ANSWERS: u32 = 30;
/// Attempts of a call that fails with a 5xx (other than 503) or a network error.
const MAX_CALL_ATTEMPTS: u32 = 4;

/// One page of a list endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The items, as Docebo sent them.
    pub items: Vec<Value>,
    /// Whether another page follows.
    pub has_more: bool,
    /// The total Docebo reports, if any.
    pub total_count: Option<i64>,
    /// The cursor of the next page (cursor mode), if any.
    pub cursor: Option<String>,
}

/// Where a list read starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// The page number (from 1), used when there is no cursor.
    pub page: u32,
    /// The cursor of this page, in cursor mode.
    pub cursor: Option<String>,
    /// Records per page (page numbers mean something only with the size they were counted in).
    pub page_size: u32,
}

/// A Docebo client for one job.
pub struct Docebo {
    http: reqwest::Client,
    credentials: DoceboCredentials,
    base_url: String,
    token: Mutex<Option<String>>,
    budget: Budget,
}

fn body_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|value| {
        value
            .get("message")
            .or_else(|| value.get("error_description"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    message.unwrap_or_else(|| body.chars().take(200).collect())
}

impl Docebo {
    /// A client for a connection's platform.
    pub fn new(http: reqwest::Client, credentials: DoceboCredentials, budget: Budget) -> Docebo {
        let base_url = credentials.base_url.trim_end_matches('/').to_string();
        Docebo {
            http,
            credentials,
            base_url,
            token: Mutex::new(None),
            budget,
        }
    }

    async fn authenticate(&self, ctx: &JobCtx) -> SyncResult<String> {
        let mut form = vec![
            ("client_id", self.credentials.client_id.as_str()),
            ("client_secret", self.credentials.client_secret.as_str()),
            ("scope", "api"),
        ];
        match &self.credentials.grant {
            DoceboGrant::ClientCredentials => form.push(("grant_type", "client_credentials")),
            DoceboGrant::Password { username, password } => {
                form.push(("grant_type", "password"));
                form.push(("username", username.as_str()));
                form.push(("password", password.as_str()));
            }
        }
        let url = format!("{}/oauth2/token", self.base_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = ctx.interruptible(async {
                self.http
                    .post(&url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(|error| {
                        SyncError::Transient(format!(
                            "docebo token request failed: {}",
                            without_url(&error)
                        ))
                    })
            });
            let response = match sent.await {
                Ok(response) => response,
                Err(SyncError::Transient(message)) if attempt < MAX_CALL_ATTEMPTS => {
                    tracing::warn!(attempt, %message, "docebo token request failed, retrying");
                    ctx.sleep(ctx.settings.call_retry_base * attempt).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                let value: Value = serde_json::from_str(&body)
                    .map_err(|_| SyncError::Transient("docebo token answer is not JSON".into()))?;
                return value
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        SyncError::Transient("docebo token answer has no access_token".into())
                    });
            }
            if status.is_server_error() && attempt < MAX_CALL_ATTEMPTS {
                ctx.sleep(ctx.settings.call_retry_base * attempt).await?;
                continue;
            }
            if status.as_u16() == 429 || status.is_server_error() {
                return Err(SyncError::Transient(format!(
                    "docebo token endpoint answered {status}"
                )));
            }
            // Refused credentials will not get better by retrying.
            return Err(SyncError::Permanent(format!(
                "docebo authentication failed ({status}): {}",
                body_message(&body)
            )));
        }
    }

    async fn token(&self, ctx: &JobCtx, renew: bool) -> SyncResult<String> {
        let mut token = self.token.lock().await;
        if renew {
            *token = None;
        }
        if let Some(current) = token.as_ref() {
            return Ok(current.clone());
        }
        let fresh = self.authenticate(ctx).await?;
        *token = Some(fresh.clone());
        Ok(fresh)
    }

    /// Returns the calls this client leased but did not spend to the platform's bucket.
    pub async fn release_budget(&self, ctx: &JobCtx) {
        self.budget.release(ctx).await;
    }

    /// Reads one page of a list endpoint (`path` under the base URL) with the given filters. Waits
    /// for the platform's call budget first; pauses the platform on 429/503 and waits it out;
    /// re-authenticates once on 401. With `missing_is_empty`, a 404 reads as an empty list (a
    /// course or session deleted while its parent listing was being walked).
    pub async fn list(
        &self,
        ctx: &JobCtx,
        path: &str,
        filters: &[(String, String)],
        at: &PageRef,
        missing_is_empty: bool,
    ) -> SyncResult<Page> {
        let mut query: Vec<(String, String)> = filters.to_vec();
        query.push(("page_size".into(), at.page_size.max(1).to_string()));
        // Cursor mode where Docebo documents it (the enrollment lists): pages stay consistent while
        // data changes, which the unenrollment comparison relies on. Elsewhere, page numbers (a
        // cursor in the answer is still followed).
        if path.ends_with("/enrollments") && !path.starts_with("/course/v1/sessions/") {
            query.push(("get_cursor".into(), "1".into()));
        }
        match &at.cursor {
            Some(cursor) => query.push(("cursor".into(), cursor.clone())),
            None => query.push(("page".into(), at.page.to_string())),
        }
        let url = format!("{}{}", self.base_url, path);
        let mut renewed = false;
        let mut overloads = 0u32;
        let mut failures = 0u32;
        loop {
            self.budget.take(ctx).await?;
            let token = self.token(ctx, false).await?;
            let sent = ctx.interruptible(async {
                self.http
                    .get(&url)
                    .query(&query)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|error| {
                        SyncError::Transient(format!(
                            "docebo request failed: {}",
                            without_url(&error)
                        ))
                    })
            });
            let response = match sent.await {
                Ok(response) => response,
                Err(SyncError::Transient(message)) => {
                    failures += 1;
                    if failures >= MAX_CALL_ATTEMPTS {
                        return Err(SyncError::Transient(message));
                    }
                    tracing::warn!(path, %message, "docebo call failed, retrying");
                    ctx.sleep(ctx.settings.call_retry_base * failures).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let status = response.status().as_u16();
            crate::metrics::METRICS
                .api_calls
                .with_label_values(&["docebo", &status.to_string()])
                .inc();
            if status == 429 || status == 503 {
                crate::metrics::METRICS
                    .throttled
                    .with_label_values(&["docebo"])
                    .inc();
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = ctx
                .interruptible(async {
                    response.text().await.map_err(|error| {
                        SyncError::Transient(format!(
                            "docebo answer unreadable: {}",
                            without_url(&error)
                        ))
                    })
                })
                .await?;
            match status {
                200..=299 => return parse_page(&body),
                404 if missing_is_empty => return Ok(Page::default()),
                401 if !renewed => {
                    // The token expired or was revoked: authenticate again, once.
                    renewed = true;
                    self.token(ctx, true).await?;
                }
                429 | 503 => {
                    overloads += 1;
                    if overloads > MAX_OVERLOAD_ANSWERS {
                        return Err(SyncError::Transient(format!(
                            "docebo keeps answering {status}"
                        )));
                    }
                    let pause = retry_after.unwrap_or_else(|| {
                        ctx.settings.docebo_pause
                            * 2u32.saturating_pow(overloads.saturating_sub(1).min(6))
                    });
                    let pause = pause.min(Duration::from_secs(600));
                    tracing::warn!(
                        status,
                        pause_ms = pause.as_millis() as u64,
                        "docebo overloaded, pausing the platform"
                    );
                    // One warning per overloaded call, not per answer: a long 429 spell must not
                    // flood the log.
                    if overloads == 1 {
                        ctx.log(vec![
                            learnsync_store::model::NewLogEvent::new(
                                learnsync_store::model::LogLevel::Warn,
                                format!("docebo answered {status}: pausing calls to the platform"),
                            )
                            .code(if status == 429 {
                                "DOCEBO_RATE_LIMITED"
                            } else {
                                "DOCEBO_OVERLOADED"
                            })
                            .field("pause_ms", pause.as_millis() as i64),
                        ])
                        .await?;
                    }
                    self.budget.pause(ctx, pause).await?;
                }
                500..=599 => {
                    failures += 1;
                    if failures >= MAX_CALL_ATTEMPTS {
                        return Err(SyncError::Transient(format!(
                            "docebo answered {status} for {path}"
                        )));
                    }
                    ctx.sleep(ctx.settings.call_retry_base * failures).await?;
                }
                _ => {
                    return Err(SyncError::Permanent(format!(
                        "docebo answered {status} for {path}: {}",
                        body_message(&body)
                    )));
                }
            }
        }
    }
}

/// A reqwest error without its URL (which may carry a cursor or a token-bearing query).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "bad body"
    } else {
        "request error"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}

fn parse_page(body: &str) -> SyncResult<Page> {
    let value: Value = serde_json::from_str(body)
        .map_err(|_| SyncError::Transient("docebo page is not JSON".into()))?;
    let data = value
        .get("data")
        .ok_or_else(|| SyncError::Transient("docebo page has no data".into()))?;
    let items = match data.get("items") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            return Err(SyncError::Transient(
                "docebo page items is not an array".into(),
            ));
        }
    };
    let has_more = match data.get("has_more_data") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) => text == "true" || text == "1",
        Some(Value::Number(number)) => number.as_i64() == Some(1),
        _ => false,
    };
    let total_count = data.get("total_count").and_then(|value| match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    });
    let cursor = data
        .get("cursor")
        .and_then(Value::as_str)
        .filter(|cursor| !cursor.is_empty())
        .map(str::to_string);
    Ok(Page {
        items,
        has_more,
        total_count,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_list_envelope() {
        let page = parse_page(
            r#"{"data":{"items":[{"user_id":"1"}],"count":1,"has_more_data":true,"total_count":7,"cursor":"abc"},"version":"1.0.0"}"#,
        )
        .unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.has_more);
        assert_eq!(page.total_count, Some(7));
        assert_eq!(page.cursor.as_deref(), Some("abc"));
        let last =
            parse_page(r#"{"data":{"items":[],"has_more_data":false,"cursor":null}}"#).unwrap();
        assert!(!last.has_more);
        assert_eq!(last.cursor, None);
        assert!(parse_page("<html>").is_err());
    }
}

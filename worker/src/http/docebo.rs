//! The thin Docebo client: one OAuth2 token request, one list page. Each returns an [`Answer`]:
//! 429 and 503 are throttling (with Retry-After when sent), 401 an expired token, other 5xx and
//! network errors transient, other 4xx permanent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use learnsync_store::secrets::{DoceboCredentials, DoceboGrant};
use learnsync_upstream::{Http, Prefix, cap};
use serde_json::Value;

use super::{Answer, read_body, read_error, redirected, refused, retry_after, shown, unsent};
use crate::error::{Failure, Upstream};

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
    /// A time on Docebo's clock no later than the moment it made the page: its `Date` header
    /// less the exchange's duration (none without a readable `Date`). Items changed at or after
    /// it carry a change time no earlier than its second.
    pub made_after: Option<DateTime<Utc>>,
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
    /// Whether to ask for cursor mode (`get_cursor=1`), where the kind's listing documents it
    /// ([`learnsync_store::model::Listing::Flat`]'s `uses_cursor`).
    pub cursor_mode: bool,
}

/// A Docebo platform's API, one exchange at a time.
pub struct DoceboApi {
    http: Http,
    credentials: DoceboCredentials,
    base_url: String,
}

/// Docebo's message in an error answer, when it has Docebo's documented shape (`{"message": ...}`,
/// or OAuth's `error_description`), sanitized; otherwise the body's size alone (an error answer
/// is never copied into a job's error).
fn body_message(body: &Prefix) -> String {
    let parsed: Option<Value> = serde_json::from_str(&body.text).ok();
    let message = parsed.as_ref().and_then(|value| {
        match value
            .get("message")
            .or_else(|| value.get("error_description"))?
        {
            Value::String(text) => Some(text.clone()),
            Value::Array(items) => {
                let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (!texts.is_empty()).then(|| texts.join("; "))
            }
            _ => None,
        }
    });
    match message.map(|message| shown(&message)) {
        Some(message) if !message.is_empty() => message,
        _ => body.describe(),
    }
}

impl DoceboApi {
    /// A client of a connection's platform.
    pub fn new(http: Http, credentials: DoceboCredentials) -> DoceboApi {
        let base_url = credentials.base_url.trim_end_matches('/').to_string();
        DoceboApi {
            http,
            credentials,
            base_url,
        }
    }

    /// The credentials it authenticates with.
    pub fn credentials(&self) -> &DoceboCredentials {
        &self.credentials
    }

    /// Asks for an access token. Refused credentials are permanent; 429 and 5xx transient.
    pub async fn token(&self) -> Answer<String> {
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
        let request = match self.http.request(reqwest::Method::POST, &url) {
            Ok(request) => request,
            Err(refusal) => return refused(Upstream::Docebo, "url", &refusal),
        };
        let (sent, _span) = super::send(Upstream::Docebo, request.form(&form)).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return unsent(Upstream::Docebo, true, &error),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let body = match read_body(Upstream::Docebo, response, cap::TOKEN).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let value: Value = match serde_json::from_str(&body) {
                Ok(value) => value,
                Err(_) => {
                    return Answer::Unreadable(Failure::Unreadable(
                        "docebo token answer is not JSON".into(),
                    ));
                }
            };
            return match value.get("access_token").and_then(Value::as_str) {
                Some(token) => Answer::Ok(token.to_string()),
                None => Answer::Unreadable(Failure::Unreadable(
                    "docebo token answer has no access_token".into(),
                )),
            };
        }
        let body = read_error(response).await;
        super::token_refused(Upstream::Docebo, status, None, body_message(&body))
    }

    /// Reads one page of a list endpoint (`path` under the base URL) with the given filters. A
    /// 404 is permanent here: whether it means "gone" is for the walk to prove (its parent).
    pub async fn list(
        &self,
        token: &str,
        path: &str,
        filters: &[(String, String)],
        at: &PageRef,
    ) -> Answer<Page> {
        let query = list_query(filters, at);
        let url = format!("{}{}", self.base_url, path);
        let request = match self.http.request(reqwest::Method::GET, &url) {
            Ok(request) => request,
            Err(refusal) => return refused(Upstream::Docebo, "url", &refusal),
        };
        let request = request.query(&query).bearer_auth(token);
        let sent_at = std::time::Instant::now();
        let (sent, _span) = super::send(Upstream::Docebo, request).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return unsent(Upstream::Docebo, false, &error),
        };
        let made_after = made_after(response.headers(), sent_at.elapsed());
        let status = response.status().as_u16();
        crate::metrics::METRICS
            .api_calls
            .with_label_values(&["docebo", &status.to_string()])
            .inc();
        let wait = retry_after(response.headers());
        if (200..300).contains(&status) {
            return match read_body(Upstream::Docebo, response, cap::JSON).await {
                Ok(body) => match parse_page(&body) {
                    Ok(page) => Answer::Ok(Page { made_after, ..page }),
                    Err(failure) => Answer::Unreadable(failure),
                },
                Err(answer) => answer,
            };
        }
        let body = read_error(response).await;
        let answered = |message: Option<String>| Failure::Answered {
            upstream: Upstream::Docebo,
            status,
            path: Some(path.to_string()),
            code: None,
            message,
        };
        match status {
            300..=399 => {
                Answer::Permanent(redirected(Upstream::Docebo, status, Some(path.to_string())))
            }
            401 => Answer::SessionExpired(answered(Some(body_message(&body)))),
            429 | 503 => {
                crate::metrics::METRICS
                    .throttled
                    .with_label_values(&["docebo"])
                    .inc();
                Answer::Throttled {
                    wait,
                    failure: Failure::Throttled {
                        upstream: Upstream::Docebo,
                        status,
                        message: body_message(&body),
                    },
                }
            }
            500..=599 => Answer::Transient(answered(None)),
            _ => Answer::Permanent(answered(Some(body_message(&body)))),
        }
    }
}

/// The query of a list page: the filters, the page size, and the page or its cursor.
fn list_query(filters: &[(String, String)], at: &PageRef) -> Vec<(String, String)> {
    let mut query: Vec<(String, String)> = filters.to_vec();
    query.push(("page_size".into(), at.page_size.max(1).to_string()));
    // Cursor mode where Docebo documents it (the kind's description says): pages stay consistent
    // while data changes, which the unenrollment comparison relies on. Elsewhere, page numbers (a
    // cursor in the answer is still followed).
    if at.cursor_mode {
        query.push(("get_cursor".into(), "1".into()));
    }
    match &at.cursor {
        Some(cursor) => query.push(("cursor".into(), cursor.clone())),
        None => query.push(("page".into(), at.page.to_string())),
    }
    query
}

/// A time on the server's clock no later than the moment it made its answer: the answer's `Date`
/// (whole seconds, rounded down) less `elapsed`, the whole exchange.
fn made_after(headers: &reqwest::header::HeaderMap, elapsed: Duration) -> Option<DateTime<Utc>> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let date = DateTime::parse_from_rfc2822(date).ok()?.with_timezone(&Utc);
    Some(date - chrono::Duration::from_std(elapsed).ok()?)
}

/// Reads Docebo's list envelope.
pub fn parse_page(body: &str) -> Result<Page, Failure> {
    let unreadable = |what: &str| Failure::Unreadable(format!("docebo page {what}"));
    let mut value: Value = serde_json::from_str(body).map_err(|_| unreadable("is not JSON"))?;
    let data = value
        .get_mut("data")
        .ok_or_else(|| unreadable("has no data"))?;
    // The items are taken out of the parsed page, not copied (a page's worth of maps each).
    let items = match data.get_mut("items") {
        Some(Value::Array(items)) => std::mem::take(items),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(unreadable("items is not an array")),
    };
    // A page that does not say whether more follow is an error, never the end of the listing.
    let has_more = match data.get("has_more_data") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) if matches!(text.as_str(), "true" | "1") => true,
        Some(Value::String(text)) if matches!(text.as_str(), "false" | "0") => false,
        Some(Value::Number(number)) if matches!(number.as_i64(), Some(0 | 1)) => {
            number.as_i64() == Some(1)
        }
        _ => return Err(unreadable("has no has_more_data")),
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
        made_after: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_page_was_made_no_earlier_than_its_date_less_the_exchange() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(made_after(&headers, Duration::ZERO), None);
        headers.insert(
            reqwest::header::DATE,
            "Wed, 01 May 2024 12:00:05 GMT".parse().unwrap(),
        );
        let made = made_after(&headers, Duration::from_millis(2_500)).unwrap();
        assert_eq!(
            made,
            "2024-05-01T12:00:02.5Z".parse::<DateTime<Utc>>().unwrap()
        );
        headers.insert(reqwest::header::DATE, "yesterday".parse().unwrap());
        assert_eq!(made_after(&headers, Duration::ZERO), None);
    }

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
        // Paging that does not say whether more follow is an error, not the end.
        assert!(parse_page(r#"{"data":{"items":[],"total_count":3}}"#).is_err());
        assert!(parse_page(r#"{"data":{"items":[],"has_more_data":null}}"#).is_err());
        assert!(parse_page(r#"{"data":{"items":[],"has_more_data":"maybe"}}"#).is_err());
        assert!(
            !parse_page(r#"{"data":{"has_more_data":"0"}}"#)
                .unwrap()
                .has_more
        );
    }
}

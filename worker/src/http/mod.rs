//! The thin HTTP clients of Docebo and Salesforce: each method does one HTTP exchange and returns
//! what happened as an [`Answer`], with no job context, no store and no retry. The job-level
//! clients ([`crate::docebo::Docebo`], [`crate::salesforce::Salesforce`]) wrap them and apply the
//! one retry policy ([`crate::retry`]). Tested against the simulators with no database.
//!
//! Every exchange goes through [`learnsync_upstream::Http`], under the operator's upstream policy:
//! a URL the policy refuses (or a name resolving to an address it refuses) is a permanent
//! [`Failure::Refused`] and nothing is sent; a 3xx is an error, never followed; a 2xx body is read
//! under its cap ([`learnsync_upstream::cap`]), a larger one a permanent [`Failure::TooLarge`]; and
//! an error answer is read only up to 64 KiB, and shown only as the API's documented code and
//! message, sanitized and bounded, or as its size.

pub mod docebo;
pub mod salesforce;

use std::time::Duration;

use learnsync_upstream::{BodyError, MESSAGE_CHARS, Prefix, Refusal};

use crate::error::{Failure, Upstream};
use crate::retry::Signal;

/// What one HTTP exchange came to. Every answer but `Ok` carries the failure a call that gives up
/// on it reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer<T> {
    /// The result.
    Ok(T),
    /// The upstream asks to slow down (`wait`: what its Retry-After said, if anything).
    Throttled {
        /// The wait the upstream asked for.
        wait: Option<Duration>,
        /// What to report if the call gives up.
        failure: Failure,
    },
    /// Something that may pass at once: a 5xx, a network error.
    Transient(Failure),
    /// The token or session expired (401): authenticate again.
    SessionExpired(Failure),
    /// The answer arrived but cannot be read.
    Unreadable(Failure),
    /// Something sending again will not fix (a 4xx, refused credentials).
    Permanent(Failure),
}

impl<T> Answer<T> {
    /// The result, or what the retry policy reads of the answer and the failure it carries.
    pub fn into_result(self) -> Result<T, (Signal, Failure)> {
        match self {
            Answer::Ok(value) => Ok(value),
            Answer::Throttled { wait, failure } => Err((Signal::Throttled(wait), failure)),
            Answer::Transient(failure) => Err((Signal::Transient, failure)),
            Answer::SessionExpired(failure) => Err((Signal::SessionExpired, failure)),
            Answer::Unreadable(failure) => Err((Signal::Unreadable, failure)),
            Answer::Permanent(failure) => Err((Signal::Permanent, failure)),
        }
    }

    /// Reads a result further: a value that cannot be read makes the answer unreadable.
    pub fn and_then<U>(self, read: impl FnOnce(T) -> Result<U, Failure>) -> Answer<U> {
        match self {
            Answer::Ok(value) => match read(value) {
                Ok(value) => Answer::Ok(value),
                Err(failure) => Answer::Unreadable(failure),
            },
            Answer::Throttled { wait, failure } => Answer::Throttled { wait, failure },
            Answer::Transient(failure) => Answer::Transient(failure),
            Answer::SessionExpired(failure) => Answer::SessionExpired(failure),
            Answer::Unreadable(failure) => Answer::Unreadable(failure),
            Answer::Permanent(failure) => Answer::Permanent(failure),
        }
    }

    /// Whether this is the result.
    pub fn is_ok(&self) -> bool {
        matches!(self, Answer::Ok(_))
    }
}

/// Sends one request inside its `upstream` span, a child of the job's: the upstream, the method,
/// the URL's host and path (never its query, which may carry a cursor or a SOQL filter; never a
/// header, which carries the token) and the answer's status. The span ends when the caller drops
/// it, after reading the body.
pub(crate) async fn send(
    upstream: Upstream,
    request: reqwest::RequestBuilder,
) -> (reqwest::Result<reqwest::Response>, tracing::Span) {
    let (client, request) = request.build_split();
    let request = match request {
        Ok(request) => request,
        Err(error) => return (Err(error), tracing::Span::none()),
    };
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "upstream",
        otel.name = format!("{upstream} {method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        upstream = upstream.name(),
        http.request.method = method,
        server.address = request.url().host_str().unwrap_or_default(),
        url.path = request.url().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let sent = tracing::Instrument::instrument(client.execute(request), span.clone()).await;
    match &sent {
        Ok(response) => {
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    (sent, span)
}

/// A reqwest error without its URL (which may carry a cursor or a token-bearing query).
pub(crate) fn without_url(error: &reqwest::Error) -> String {
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

/// What a request that could not be sent comes to: refused by the upstream policy (permanent:
/// the URL, or an address its host resolves to, is not one the operator allows), or unreachable
/// (transient).
pub(crate) fn unsent<T>(upstream: Upstream, token: bool, error: &reqwest::Error) -> Answer<T> {
    match learnsync_upstream::refusal_of(error) {
        Some(refusal) => refused(upstream, "url", &refusal),
        None => Answer::Transient(Failure::Unreachable {
            upstream,
            token,
            detail: without_url(error),
        }),
    }
}

/// A URL the upstream policy refuses (`what`: `url`, or where it came from): nothing is sent.
pub(crate) fn refused<T>(upstream: Upstream, what: &'static str, refusal: &Refusal) -> Answer<T> {
    tracing::warn!(upstream = upstream.name(), what, reason = %refusal, "upstream url refused by the policy");
    Answer::Permanent(Failure::Refused {
        upstream,
        what,
        reason: refusal.to_string(),
    })
}

/// Reads a 2xx body under `cap`: a larger one is permanent (it will be as large next time), one
/// that breaks off transient.
pub(crate) async fn read_body<T>(
    upstream: Upstream,
    response: reqwest::Response,
    cap: usize,
) -> Result<String, Answer<T>> {
    learnsync_upstream::read_capped(response, cap)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge { cap } => {
                tracing::warn!(
                    upstream = upstream.name(),
                    cap,
                    "upstream answer over its size cap"
                );
                Answer::Permanent(Failure::TooLarge { upstream, cap })
            }
            BodyError::Read(error) => Answer::Transient(Failure::Unreachable {
                upstream,
                token: false,
                detail: without_url(&error),
            }),
        })
}

/// Reads the start of an error answer (at most [`learnsync_upstream::cap::ERROR`]).
pub(crate) async fn read_error(response: reqwest::Response) -> Prefix {
    learnsync_upstream::read_prefix(response, learnsync_upstream::cap::ERROR).await
}

/// An upstream's message or code, fit to show a tenant: no control characters, bounded length.
pub(crate) fn shown(text: &str) -> String {
    learnsync_upstream::sanitize(text, MESSAGE_CHARS)
}

/// What a redirect comes to: learnsync follows none (a tenant's URL must not lead elsewhere).
pub(crate) fn redirected(upstream: Upstream, status: u16, path: Option<String>) -> Failure {
    Failure::Answered {
        upstream,
        status,
        path,
        code: None,
        message: Some("redirects are not followed".into()),
    }
}

/// The wait a `Retry-After` header asks for, in seconds (the date form is not used by Docebo).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Reads a token endpoint's answer that is not a 2xx: 429 asks to slow down, a 5xx may pass, and
/// anything else refuses the credentials (that will not get better by retrying).
pub(crate) fn token_refused<T>(
    upstream: Upstream,
    status: u16,
    code: Option<String>,
    message: String,
) -> Answer<T> {
    let endpoint = Failure::TokenEndpoint { upstream, status };
    match status {
        300..=399 => Answer::Permanent(redirected(upstream, status, None)),
        429 => Answer::Throttled {
            wait: None,
            failure: endpoint,
        },
        500..=599 => Answer::Transient(endpoint),
        _ => Answer::Permanent(Failure::AuthRefused {
            upstream,
            status,
            code,
            message,
        }),
    }
}

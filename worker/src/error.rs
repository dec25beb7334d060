//! The error type of a job's work: its class ([`SyncError`]: transient, permanent, interrupted) and
//! what failed ([`Failure`]: an upstream's answer, refused credentials, an unreadable checkpoint, an
//! org that does not fit the mapping, ...). A failure's `Display` is the message the job's error
//! shows; none carries a URL (cursors and tokens travel in them).

use crate::context::Interrupt;

/// An HTTP upstream of the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The Docebo LMS (read).
    Docebo,
    /// Salesforce (written).
    Salesforce,
}

impl Upstream {
    /// The upstream's name in messages and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Docebo => "docebo",
            Upstream::Salesforce => "salesforce",
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// An HTTP status with its reason phrase (`503 Service Unavailable`), as messages show it.
fn status_text(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status) {
        Ok(status) => status.to_string(),
        Err(_) => status.to_string(),
    }
}

/// `{upstream} answered {status}[ for {path}][ ({code})][: {message}]`.
fn answered(
    f: &mut std::fmt::Formatter<'_>,
    upstream: Upstream,
    status: u16,
    path: &Option<String>,
    code: &Option<String>,
    message: &Option<String>,
) -> std::fmt::Result {
    write!(f, "{upstream} answered {status}")?;
    if let Some(path) = path {
        write!(f, " for {path}")?;
    }
    if let Some(code) = code {
        write!(f, " ({code})")?;
    }
    match message {
        Some(message) => write!(f, ": {message}"),
        None => Ok(()),
    }
}

/// What failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// An upstream answered a call with an error status.
    Answered {
        /// Who answered.
        upstream: Upstream,
        /// The HTTP status.
        status: u16,
        /// The path called (Docebo names it; never with its query).
        path: Option<String>,
        /// The upstream's error code (`INVALID_FIELD`, ...), when it gives one.
        code: Option<String>,
        /// The upstream's message, when one is worth showing.
        message: Option<String>,
    },
    /// An upstream kept asking to slow down (Docebo 429/503, Salesforce REQUEST_LIMIT_EXCEEDED).
    Throttled {
        /// Who throttled.
        upstream: Upstream,
        /// The HTTP status of the last answer.
        status: u16,
        /// The upstream's message.
        message: String,
    },
    /// An upstream could not be reached, or its answer not received.
    Unreachable {
        /// Who.
        upstream: Upstream,
        /// Whether it was the token request.
        token: bool,
        /// What went wrong (never the URL).
        detail: String,
    },
    /// The upstream policy refuses a URL (its scheme, its address, or what its host resolves to):
    /// nothing was sent.
    Refused {
        /// Whose URL.
        upstream: Upstream,
        /// Which (`url`, `instance_url`).
        what: &'static str,
        /// Why (the policy's words).
        reason: String,
    },
    /// An answer larger than its cap (reading stopped at the cap).
    TooLarge {
        /// Whose.
        upstream: Upstream,
        /// The cap, in bytes.
        cap: usize,
    },
    /// A token endpoint answered 429 or 5xx.
    TokenEndpoint {
        /// Whose.
        upstream: Upstream,
        /// The HTTP status.
        status: u16,
    },
    /// An upstream refused the connection's credentials.
    AuthRefused {
        /// Who.
        upstream: Upstream,
        /// The HTTP status.
        status: u16,
        /// The OAuth error code (Salesforce names it).
        code: Option<String>,
        /// The upstream's message.
        message: String,
    },
    /// The connection's credentials cannot be used (not opened, a key that is not a key).
    Credentials(String),
    /// An answer arrived but cannot be read (not JSON, a missing field, a result count that does
    /// not match): says which.
    Unreadable(String),
    /// The org refused to describe an object the mapping writes.
    Describe {
        /// The object.
        object: String,
        /// Its answer.
        cause: Box<Failure>,
    },
    /// The org does not fit the mapping (a field missing, too short, ...).
    OrgMismatch(String),
    /// The mapping compiled in does not describe the job's entity.
    Mapping(String),
    /// Something the job stored cannot be read back.
    UnreadableState {
        /// What (`checkpoint`, `run targets`, `deferred record`).
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Something could not be encoded (a checkpoint, a bulk CSV).
    Encode(String),
    /// A Bulk API ingest job ended without completing.
    BulkJobEnded {
        /// Its id.
        job_id: String,
        /// Salesforce's reason.
        message: String,
    },
    /// Salesforce could not lock rows, however often they were sent again.
    RowsLocked {
        /// Rows still locked.
        rows: usize,
        /// Rounds sent.
        rounds: u32,
    },
    /// The Docebo listing stopped before handing over its last chunk.
    ListingCutShort,
    /// The job was claimed too often without ending.
    TooManyClaims(i32),
    /// The store failed (a database error, a corrupt row).
    Store(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Answered {
                upstream,
                status,
                path,
                code,
                message,
            } => answered(f, *upstream, *status, path, code, message),
            Failure::Throttled {
                upstream: Upstream::Docebo,
                status,
                ..
            } => write!(f, "docebo keeps answering {status}"),
            Failure::Throttled {
                upstream: Upstream::Salesforce,
                message,
                ..
            } => write!(f, "salesforce request limit: {message}"),
            Failure::Unreachable {
                upstream,
                token,
                detail,
            } => {
                let what = if *token { " token" } else { "" };
                write!(f, "{upstream}{what} request failed: {detail}")
            }
            Failure::Refused {
                upstream,
                what,
                reason,
            } => write!(f, "{upstream} {what} refused: {reason}"),
            Failure::TooLarge { upstream, cap } => write!(
                f,
                "{upstream} answer larger than {}: not read",
                learnsync_upstream::size_text(*cap)
            ),
            Failure::TokenEndpoint { upstream, status } => {
                write!(
                    f,
                    "{upstream} token endpoint answered {}",
                    status_text(*status)
                )
            }
            Failure::AuthRefused {
                upstream,
                status,
                code,
                message,
            } => {
                write!(
                    f,
                    "{upstream} authentication failed ({}",
                    status_text(*status)
                )?;
                if let Some(code) = code {
                    write!(f, ", {code}")?;
                }
                write!(f, "): {message}")
            }
            Failure::Credentials(message)
            | Failure::Unreadable(message)
            | Failure::OrgMismatch(message)
            | Failure::Mapping(message)
            | Failure::Encode(message)
            | Failure::Store(message) => f.write_str(message),
            Failure::Describe { object, cause } => {
                write!(f, "the org cannot describe {object}: {cause}")
            }
            Failure::UnreadableState { what, detail } => write!(f, "unreadable {what}: {detail}"),
            Failure::BulkJobEnded { job_id, message } => {
                write!(f, "bulk job {job_id} ended: {message}")
            }
            Failure::RowsLocked { rows, rounds } => write!(
                f,
                "salesforce could not lock {rows} rows after {rounds} attempts"
            ),
            Failure::ListingCutShort => {
                f.write_str("the docebo listing ended without its last chunk")
            }
            Failure::TooManyClaims(attempt) => write!(
                f,
                "the job was claimed {attempt} times without ending: giving up"
            ),
        }
    }
}

/// How a job's work failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Something that may pass: retry the job later, from its checkpoint.
    #[error("{0}")]
    Transient(Failure),
    /// Something a retry will not fix: fail the job with this cause.
    #[error("{0}")]
    Permanent(Failure),
    /// The job was interrupted.
    #[error("interrupted: {0:?}")]
    Interrupted(Interrupt),
}

impl From<learnsync_store::Error> for SyncError {
    fn from(error: learnsync_store::Error) -> SyncError {
        match error {
            learnsync_store::Error::Secrets(message) => SyncError::Permanent(Failure::Credentials(
                format!("credentials cannot be opened: {message}"),
            )),
            learnsync_store::Error::Corrupt(message) => {
                SyncError::Permanent(Failure::Store(message))
            }
            other => SyncError::Transient(Failure::Store(other.to_string())),
        }
    }
}

/// A job's result.
pub type SyncResult<T> = Result<T, SyncError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_the_job_errors_always_did() {
        let docebo = Failure::Answered {
            upstream: Upstream::Docebo,
            status: 400,
            path: Some("/manage/v1/user".into()),
            code: None,
            message: Some("bad filter".into()),
        };
        assert_eq!(
            docebo.to_string(),
            "docebo answered 400 for /manage/v1/user: bad filter"
        );
        let salesforce = Failure::Answered {
            upstream: Upstream::Salesforce,
            status: 500,
            path: None,
            code: Some("UNKNOWN_EXCEPTION".into()),
            message: Some("oops".into()),
        };
        assert_eq!(
            salesforce.to_string(),
            "salesforce answered 500 (UNKNOWN_EXCEPTION): oops"
        );
        assert_eq!(
            Failure::AuthRefused {
                upstream: Upstream::Salesforce,
                status: 400,
                code: Some("invalid_client".into()),
                message: "bad secret".into(),
            }
            .to_string(),
            "salesforce authentication failed (400 Bad Request, invalid_client): bad secret"
        );
        assert_eq!(
            Failure::AuthRefused {
                upstream: Upstream::Docebo,
                status: 401,
                code: None,
                message: "no".into(),
            }
            .to_string(),
            "docebo authentication failed (401 Unauthorized): no"
        );
        assert_eq!(
            Failure::TokenEndpoint {
                upstream: Upstream::Docebo,
                status: 503
            }
            .to_string(),
            "docebo token endpoint answered 503 Service Unavailable"
        );
        assert_eq!(
            SyncError::Permanent(Failure::UnreadableState {
                what: "checkpoint",
                detail: "eof".into()
            })
            .to_string(),
            "unreadable checkpoint: eof"
        );
    }
}

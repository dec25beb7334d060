//! Every gRPC error the server sends is built here: a code, a message for a person, and
//! `google.rpc` details (always an `ErrorInfo`; `BadRequest` or `PreconditionFailure` where they
//! apply). One `From<store::Error> for Status` decides every code a store error maps to.

use std::collections::HashMap;

use learnsync_store::{ErrorCode, Resource};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

/// The `ErrorInfo.domain` of every learnsync error.
pub const DOMAIN: &str = "learnsync.dev";

fn with_info(
    code: Code,
    message: impl Into<String>,
    mut details: ErrorDetails,
    reason: ErrorCode,
) -> Status {
    details.set_error_info(reason.as_str(), DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// `INVALID_ARGUMENT` with one violation per offending field.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let fields: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    with_info(
        Code::InvalidArgument,
        format!("invalid request: {}", fields.join("; ")),
        ErrorDetails::with_bad_request(violations),
        ErrorCode::InvalidArgument,
    )
}

/// `INVALID_ARGUMENT` for one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(vec![FieldViolation::new(field, description)])
}

/// `FAILED_PRECONDITION` with one violation.
pub fn failed_precondition(kind: ErrorCode, subject: &str, description: &str) -> Status {
    with_info(
        Code::FailedPrecondition,
        description.to_string(),
        ErrorDetails::with_precondition_failure_violation(kind.as_str(), subject, description),
        kind,
    )
}

/// `FAILED_PRECONDITION` with one violation per `(type, subject, description)`: the problems of
/// a mapping with the org (every one at once).
pub fn failed_preconditions(kind: ErrorCode, violations: Vec<(String, String, String)>) -> Status {
    let message: Vec<String> = violations
        .iter()
        .map(|(_, subject, description)| format!("{subject}: {description}"))
        .collect();
    let violations: Vec<tonic_types::PreconditionViolation> = violations
        .into_iter()
        .map(|(kind, subject, description)| {
            tonic_types::PreconditionViolation::new(kind, subject, description)
        })
        .collect();
    with_info(
        Code::FailedPrecondition,
        message.join("; "),
        ErrorDetails::with_precondition_failure(violations),
        kind,
    )
}

/// `UNAVAILABLE` (or `FAILED_PRECONDITION` when it will not pass by itself) for an upstream.
pub fn upstream_unavailable(permanent: bool, message: &str) -> Status {
    let code = if permanent {
        Code::FailedPrecondition
    } else {
        Code::Unavailable
    };
    with_info(
        code,
        message,
        ErrorDetails::new(),
        ErrorCode::SalesforceUnavailable,
    )
}

/// `UNAUTHENTICATED`.
pub fn unauthenticated(message: &str) -> Status {
    with_info(
        Code::Unauthenticated,
        message,
        ErrorDetails::new(),
        ErrorCode::Unauthenticated,
    )
}

/// `PERMISSION_DENIED` for a connection the caller may not see. The same answer whether or not the
/// connection exists, so a tenant cannot learn about another tenant's connections.
pub fn connection_denied(connection_id: &str) -> Status {
    let mut details = ErrorDetails::with_resource_info(
        "learnsync.v1.Connection",
        format!("connections/{connection_id}"),
        "",
        "not accessible with this token",
    );
    details.set_error_info(
        ErrorCode::ConnectionNotAccessible.as_str(),
        DOMAIN,
        HashMap::new(),
    );
    Status::with_error_details(
        Code::PermissionDenied,
        format!("connection {connection_id} is not accessible with this token"),
        details,
    )
}

/// `PERMISSION_DENIED` for an action the principal may not take.
pub fn permission_denied(reason: ErrorCode, message: &str) -> Status {
    with_info(Code::PermissionDenied, message, ErrorDetails::new(), reason)
}

/// `NOT_FOUND` for a resource.
pub fn not_found(resource: Resource, name: &str) -> Status {
    let mut details =
        ErrorDetails::with_resource_info(resource_type(resource), name, "", "not found");
    details.set_error_info(ErrorCode::NotFound.as_str(), DOMAIN, HashMap::new());
    Status::with_error_details(Code::NotFound, format!("{name} not found"), details)
}

/// `RESOURCE_EXHAUSTED` for a call shed because every pooled database connection stayed busy for
/// the store's acquire wait: answering at once beats queueing without end, and the `RetryInfo`
/// says when to try again.
pub fn server_busy() -> Status {
    // Counted by the metrics (`learnsync_grpc_requests_total` by code); a log line per shed call
    // would grow with the very overload it reports.
    tracing::debug!("call shed: no database connection came free in time");
    let mut details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
    details.set_error_info(ErrorCode::ServerBusy.as_str(), DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::ResourceExhausted,
        "the server is busy: every database connection is in use, retry later",
        details,
    )
}

/// `RESOURCE_EXHAUSTED` for a StreamLogs call over the token's limit of open log streams.
pub fn too_many_log_streams(limit: usize) -> Status {
    let description = format!(
        "this token already has {limit} open log streams, the most the server allows: close one \
         first"
    );
    let mut details = ErrorDetails::with_quota_failure_violation("log_streams", &description);
    details.set_error_info(
        ErrorCode::TooManyLogStreams.as_str(),
        DOMAIN,
        HashMap::new(),
    );
    Status::with_error_details(Code::ResourceExhausted, description, details)
}

/// The API's type name of a resource, as `ResourceInfo` names it.
pub fn resource_type(resource: Resource) -> &'static str {
    match resource {
        Resource::Connection => "learnsync.v1.Connection",
        Resource::Run => "learnsync.v1.Run",
        Resource::Job => "learnsync.v1.Job",
    }
}

impl From<StoreError> for Status {
    fn from(StoreError(error): StoreError) -> Status {
        use learnsync_store::Error;
        match error {
            Error::NotFound { resource, id } => not_found(resource, &format!("{resource} {id}")),
            Error::Precondition(p) if p.kind == ErrorCode::RequestIdReused => {
                invalid_field("request_id", p.description)
            }
            Error::Precondition(p) => failed_precondition(p.kind, &p.subject, &p.description),
            error if error.is_pool_starved() => server_busy(),
            Error::Pool(error) => {
                tracing::error!(%error, "database unavailable");
                let mut details =
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
                details.set_error_info(
                    ErrorCode::DatabaseUnavailable.as_str(),
                    DOMAIN,
                    HashMap::new(),
                );
                Status::with_error_details(
                    Code::Unavailable,
                    "the database is unavailable, retry later",
                    details,
                )
            }
            error => {
                tracing::error!(%error, "internal error");
                with_info(
                    Code::Internal,
                    "internal error",
                    ErrorDetails::new(),
                    ErrorCode::Internal,
                )
            }
        }
    }
}

/// A store error on its way to becoming a `Status` (orphan rules forbid `From<store::Error>`).
pub struct StoreError(pub learnsync_store::Error);

impl From<learnsync_store::Error> for StoreError {
    fn from(error: learnsync_store::Error) -> StoreError {
        StoreError(error)
    }
}

/// Converts a store result into a gRPC result.
pub trait OrStatus<T> {
    /// Maps the store error to its `Status`.
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, learnsync_store::Error> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(|error| Status::from(StoreError(error)))
    }
}

impl<T> OrStatus<T> for Result<T, tokio_postgres_error::Error> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(|error| Status::from(StoreError(learnsync_store::Error::Database(error))))
    }
}

mod tokio_postgres_error {
    pub use learnsync_store::TokioPostgresError as Error;
}

//! learnsync's own error codes, in one place: the `ErrorInfo.reason` and `PreconditionFailure`
//! type of every gRPC error the server sends, and the codes of log events learnsync raises itself.
//! Their wire strings are part of the API (clients and tests match on them): never rename one.
//! Codes that come from Salesforce or Docebo (e.g. `UNABLE_TO_LOCK_ROW`) are theirs, not here.

use std::fmt;

/// One of learnsync's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A request field is missing or malformed.
    InvalidArgument,
    /// No bearer token, or one the server does not know.
    Unauthenticated,
    /// The connection does not exist or the token may not see it (the two look the same).
    ConnectionNotAccessible,
    /// A tenant token asked for another tenant's connection to be created.
    TenantMismatch,
    /// The named resource does not exist.
    NotFound,
    /// A request id was reused for a different request.
    RequestIdReused,
    /// The area already has an active run.
    RunActive,
    /// The area has no active run to stop.
    NoActiveRun,
    /// Resynchronize was asked of an area that never ran.
    NoPreviousRun,
    /// Start was asked of an area whose first synchronization completed.
    AlreadySynchronized,
    /// The area was never configured.
    AreaNotConfigured,
    /// The area is disabled.
    AreaDisabled,
    /// Enrollments were asked before users and courses completed a run.
    PrerequisiteNotSynchronized,
    /// Logs were asked from a run's first error, and the run has none.
    RunHasNoError,
    /// The database cannot be reached; retry later.
    DatabaseUnavailable,
    /// Every pooled database connection is busy: the call was shed, not queued; retry later.
    ServerBusy,
    /// The token already holds as many open StreamLogs calls as the server allows.
    TooManyLogStreams,
    /// Something failed inside the server.
    Internal,
    /// A log event: a job failed.
    JobFailed,
    /// A log event: Docebo answered 429, calls to the platform pause.
    DoceboRateLimited,
    /// A log event: Docebo answered 503, calls to the platform pause.
    DoceboOverloaded,
    /// A mapping does not fit the connection's org (SetMapping's problems).
    MappingDoesNotFitOrg,
    /// The connection's org could not be asked (refused credentials, unreachable).
    SalesforceUnavailable,
}

impl ErrorCode {
    /// The code's wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::ConnectionNotAccessible => "CONNECTION_NOT_ACCESSIBLE",
            ErrorCode::TenantMismatch => "TENANT_MISMATCH",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RequestIdReused => "REQUEST_ID_REUSED",
            ErrorCode::RunActive => "RUN_ACTIVE",
            ErrorCode::NoActiveRun => "NO_ACTIVE_RUN",
            ErrorCode::NoPreviousRun => "NO_PREVIOUS_RUN",
            ErrorCode::AlreadySynchronized => "ALREADY_SYNCHRONIZED",
            ErrorCode::AreaNotConfigured => "AREA_NOT_CONFIGURED",
            ErrorCode::AreaDisabled => "AREA_DISABLED",
            ErrorCode::PrerequisiteNotSynchronized => "PREREQUISITE_NOT_SYNCHRONIZED",
            ErrorCode::RunHasNoError => "RUN_HAS_NO_ERROR",
            ErrorCode::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            ErrorCode::ServerBusy => "SERVER_BUSY",
            ErrorCode::TooManyLogStreams => "TOO_MANY_LOG_STREAMS",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::JobFailed => "JOB_FAILED",
            ErrorCode::DoceboRateLimited => "DOCEBO_RATE_LIMITED",
            ErrorCode::DoceboOverloaded => "DOCEBO_OVERLOADED",
            ErrorCode::MappingDoesNotFitOrg => "MAPPING_DOES_NOT_FIT_ORG",
            ErrorCode::SalesforceUnavailable => "SALESFORCE_UNAVAILABLE",
        }
    }

    /// Every code, for tests that check the wire strings stay put.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::ConnectionNotAccessible,
        ErrorCode::TenantMismatch,
        ErrorCode::NotFound,
        ErrorCode::RequestIdReused,
        ErrorCode::RunActive,
        ErrorCode::NoActiveRun,
        ErrorCode::NoPreviousRun,
        ErrorCode::AlreadySynchronized,
        ErrorCode::AreaNotConfigured,
        ErrorCode::AreaDisabled,
        ErrorCode::PrerequisiteNotSynchronized,
        ErrorCode::RunHasNoError,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::ServerBusy,
        ErrorCode::TooManyLogStreams,
        ErrorCode::Internal,
        ErrorCode::JobFailed,
        ErrorCode::DoceboRateLimited,
        ErrorCode::DoceboOverloaded,
        ErrorCode::MappingDoesNotFitOrg,
        ErrorCode::SalesforceUnavailable,
    ];
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> String {
        code.as_str().to_string()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`crate::Error::NotFound`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A connection.
    Connection,
    /// A run.
    Run,
    /// A job.
    Job,
}

impl Resource {
    /// The lowercase name people read (`run 1234…`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Resource::Connection => "connection",
            Resource::Run => "run",
            Resource::Job => "job",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_upper_snake_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(
                text.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{text}"
            );
            assert!(seen.insert(text), "{text} twice");
        }
        assert_eq!(ErrorCode::RunActive.to_string(), "RUN_ACTIVE");
        assert_eq!(ErrorCode::RequestIdReused.as_str(), "REQUEST_ID_REUSED");
    }
}

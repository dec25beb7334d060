//! The store's error type. The server maps each variant to one gRPC code in one place.

use crate::codes::{ErrorCode, Resource};
use uuid::Uuid;

/// A store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A condition the request needs that the state does not meet (gRPC `FAILED_PRECONDITION` with a
/// `PreconditionFailure` violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// The stable code, e.g. [`ErrorCode::RunActive`].
    pub kind: ErrorCode,
    /// What the condition is about, e.g. `connections/<id>/areas/enrollments`.
    pub subject: String,
    /// What is missing, for a person.
    pub description: String,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres refused or failed a statement.
    #[error("database error: {}", describe_postgres(.0))]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("database pool error: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The store's options are wrong.
    #[error("store configuration: {0}")]
    Config(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{resource} {id} not found")]
    NotFound {
        /// What kind of thing.
        resource: Resource,
        /// Its id.
        id: Uuid,
    },
    /// The request needs a state that does not hold.
    #[error("{}: {}", .0.kind, .0.description)]
    Precondition(Precondition),
    /// Credentials could not be encrypted or decrypted.
    #[error("secrets: {0}")]
    Secrets(String),
    /// A row holds a value the code does not know (a newer schema, or a bug).
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    /// A private PostgreSQL cluster could not be started.
    #[error("private postgres: {0}")]
    Embedded(String),
}

impl Error {
    /// Builds a precondition failure.
    pub fn precondition(
        kind: ErrorCode,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Error {
        Error::Precondition(Precondition {
            kind,
            subject: subject.into(),
            description: description.into(),
        })
    }

    /// Builds a not-found error.
    pub fn not_found(resource: Resource, id: Uuid) -> Error {
        Error::NotFound { resource, id }
    }

    /// Whether no pooled connection came free within the store's acquire wait: every connection
    /// is busy, and the caller should shed the work rather than queue it.
    pub fn is_pool_starved(&self) -> bool {
        matches!(
            self,
            Error::Pool(deadpool_postgres::PoolError::Timeout(
                deadpool_postgres::TimeoutType::Wait
            ))
        )
    }

    /// Whether Postgres reported a unique violation on the named constraint or index.
    pub fn is_unique_violation(&self, constraint: &str) -> bool {
        match self {
            Error::Database(error) => error.as_db_error().is_some_and(|db| {
                db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    && db.constraint() == Some(constraint)
            }),
            _ => false,
        }
    }
}

/// Postgres's own message and code, which `tokio_postgres::Error`'s `Display` leaves out.
fn describe_postgres(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
        // tokio-postgres says what failed ("error performing TLS handshake") and keeps why in
        // its source ("invalid peer certificate: UnknownIssuer"): say both.
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text = format!("{text}: {cause_text}");
                }
                source = cause.source();
            }
            text
        }
    }
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => {
            format!("cannot connect: {}", describe_postgres(error))
        }
        other => other.to_string(),
    }
}

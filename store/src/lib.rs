//! learnsync's job state in Postgres. This is the one crate that speaks SQL: the server and the
//! workers change state only through the functions here, and every state change is one guarded
//! statement or one transaction, so two servers, or a server and a late worker, never both win.
//!
//! Layout:
//! - [`Store`]: the connection pool, migrations, transactions.
//! - [`codes`]: learnsync's error codes ([`ErrorCode`]) and what a not-found is about.
//! - [`model`]: the domain types (areas, runs, jobs, log events) and their names in SQL.
//! - [`connections`], [`areas`], [`runs`], [`logs`], [`idempotency`]: the control plane's
//!   statements.
//! - [`worker`]: what workers do: claim jobs, keep leases, checkpoint, finish; the ledger and the
//!   Docebo call budget.
//! - [`mappings`]: each connection's Salesforce mapping, versioned.
//! - [`observe`]: reads about the database as a whole (size, WAL, table sizes, scheduled runs)
//!   for benchmarks and operators.
//! - [`realtime`]: the schedule of incremental runs and full comparisons; webhook messages.
//! - [`secrets`]: credentials encrypted at rest (AES-256-GCM).
//! - [`tls`]: TLS to Postgres as a URL's `sslmode` and `sslrootcert` ask (every connection).
//! - [`listen`]: one long-lived LISTEN connection fanned out to tasks (NOTIFY as wake-up).
//! - [`embedded`]: a private PostgreSQL cluster from the machine's binaries (demo, tests).
//! - [`testing`]: a database per test, cloned from a migrated template.

pub mod areas;
pub mod codes;
pub mod connections;
pub mod embedded;
mod error;
pub mod idempotency;
pub mod listen;
pub mod logs;
pub mod mappings;
pub mod model;
pub mod observe;
pub mod realtime;
pub mod runs;
pub mod secrets;
pub mod testing;
pub mod tls;
pub mod worker;

pub use codes::{ErrorCode, Resource};
pub use deadpool_postgres::{GenericClient, Object as Conn, Transaction};
pub use error::{Error, Precondition, Result};
pub use tokio_postgres::Error as TokioPostgresError;

use std::time::Duration;

mod embedded_migrations {
    refinery::embed_migrations!("../migrations");
}

/// The NOTIFY channel that says "a job may be claimable" (payload: the run id).
pub const CHANNEL_JOBS: &str = "learnsync_jobs";
/// The NOTIFY channel that says "a run was asked to stop" (payload: the run id).
pub const CHANNEL_CANCEL: &str = "learnsync_cancel";
/// The NOTIFY channel that says "a connection's log grew" (payload: the connection id).
pub const CHANNEL_LOGS: &str = "learnsync_logs";
/// The NOTIFY channel that says "a run reached a final state" (payload: the run id).
pub const CHANNEL_RUNS: &str = "learnsync_runs";

/// Options to reach Postgres.
#[derive(Clone, Debug)]
pub struct Options {
    /// A libpq-style URL or key-value string.
    pub database_url: String,
    /// The most connections the pool opens.
    pub max_connections: usize,
}

/// A pool of Postgres connections with learnsync's statements.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
    database_url: String,
    /// A direct connection's URL (not through PgBouncer in transaction mode), for LISTEN and the
    /// migrations' advisory lock; the pool's URL when unset.
    direct_url: Option<String>,
    /// How long [`Store::conn`] waits for a free connection when the pool is at its size; the
    /// pool's 30 s when unset. A server sets it short, so a starved pool sheds calls instead of
    /// queueing them without end ([`Error::is_pool_starved`]).
    acquire_wait: Option<Duration>,
}

impl Store {
    /// Opens a pool (lazily: no connection is made until the first use).
    pub fn connect(options: &Options) -> Result<Store> {
        let target = tls::Target::parse(&options.database_url)?;
        let manager = deadpool_postgres::Manager::from_config(
            target.config,
            target.tls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|error| Error::Config(format!("connection pool: {error}")))?;
        Ok(Store {
            pool,
            database_url: options.database_url.clone(),
            direct_url: None,
            acquire_wait: None,
        })
    }

    /// Uses `url` for what needs a session of its own: LISTEN and the migrations (PgBouncer in
    /// transaction mode gives neither).
    pub fn with_direct_url(mut self, url: Option<String>) -> Store {
        self.direct_url = url.filter(|url| !url.is_empty());
        self
    }

    /// Waits at most `wait` for a free connection ([`Store::conn`]); the pool's own 30 s otherwise.
    pub fn with_acquire_wait(mut self, wait: Option<Duration>) -> Store {
        self.acquire_wait = wait;
        self
    }

    /// The URL the pool was opened with.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The URL of direct sessions (LISTEN, migrations): the direct URL when set, else the pool's.
    pub fn direct_url(&self) -> &str {
        self.direct_url.as_deref().unwrap_or(&self.database_url)
    }

    /// Takes a connection from the pool, waiting at most the acquire wait when the pool is at its
    /// size (then [`Error::is_pool_starved`]).
    pub async fn conn(&self) -> Result<Conn> {
        match self.acquire_wait {
            Some(wait) => {
                let mut timeouts = self.pool.timeouts();
                timeouts.wait = Some(wait);
                Ok(self.pool.timeout_get(&timeouts).await?)
            }
            None => Ok(self.pool.get().await?),
        }
    }

    /// Runs the migrations in `migrations/` that have not run yet. Several processes may call it at
    /// once: an advisory lock makes them take turns.
    pub async fn migrate(&self) -> Result<()> {
        migrate(self.direct_url()).await
    }
}

/// Runs the pending migrations against the database at `database_url`, under an advisory lock.
pub async fn migrate(database_url: &str) -> Result<()> {
    let (mut client, connection) = tls::connect(database_url).await?;
    let driver = tokio::spawn(connection);
    // The key is arbitrary but fixed: every learnsync process migrating this database waits here.
    client
        .execute("SELECT pg_advisory_lock(7350001)", &[])
        .await?;
    let outcome = embedded_migrations::migrations::runner()
        .set_migration_table_name("learnsync_migrations")
        .run_async(&mut client)
        .await;
    client
        .execute("SELECT pg_advisory_unlock(7350001)", &[])
        .await?;
    drop(client);
    driver.abort();
    let report = outcome.map_err(|error| Error::Migration(error.to_string()))?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "migration applied"
        );
    }
    Ok(())
}

//! A fresh database per test, cloned from a template migrated once per schema version. The
//! cluster is `DATABASE_URL`'s when set, otherwise a private one started once per test process.

use sha2::Digest as _;
use tokio::sync::OnceCell;

use crate::embedded::PrivatePostgres;
use crate::{Error, Result};

struct Cluster {
    /// URL of the cluster's maintenance database.
    admin_url: String,
    /// Builds the URL of one of the cluster's databases.
    base: url_parts::Base,
    /// Keeps the private cluster alive for the whole process.
    _private: Option<PrivatePostgres>,
}

mod url_parts {
    /// A URL split around its database name.
    pub struct Base {
        pub prefix: String,
        pub suffix: String,
    }

    impl Base {
        /// Splits `postgres://user@host:port/db?options` around `db`.
        pub fn parse(url: &str) -> Base {
            let scheme_end = url.find("://").map_or(0, |i| i + 3);
            let path_start = url[scheme_end..].find('/').map(|i| i + scheme_end);
            match path_start {
                Some(start) => {
                    let rest = &url[start + 1..];
                    let end = rest.find('?').map_or(url.len(), |i| start + 1 + i);
                    Base {
                        prefix: url[..start + 1].to_string(),
                        suffix: url[end..].to_string(),
                    }
                }
                None => Base {
                    prefix: format!("{url}/"),
                    suffix: String::new(),
                },
            }
        }

        pub fn with_database(&self, database: &str) -> String {
            format!("{}{}{}", self.prefix, database, self.suffix)
        }
    }
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn cluster() -> Result<&'static Cluster> {
    CLUSTER
        .get_or_try_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => Ok(Cluster {
                    base: url_parts::Base::parse(&url),
                    admin_url: url,
                    _private: None,
                }),
                _ => {
                    let private = tokio::task::spawn_blocking(PrivatePostgres::start)
                        .await
                        .map_err(|error| Error::Embedded(error.to_string()))??;
                    Ok(Cluster {
                        admin_url: private.url(),
                        base: url_parts::Base::parse(&private.url()),
                        _private: Some(private),
                    })
                }
            }
        })
        .await
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = crate::tls::connect(url).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The template's name changes whenever a migration does, so a stale template is never used.
fn template_name() -> String {
    let mut hasher = sha2::Sha256::new();
    for migration in crate::embedded_migrations::migrations::runner().get_migrations() {
        hasher.update(migration.name().as_bytes());
        hasher.update(migration.checksum().to_le_bytes());
    }
    format!(
        "learnsync_template_{}",
        &hex::encode(hasher.finalize())[..16]
    )
}

async fn template(cluster: &'static Cluster) -> Result<&'static String> {
    TEMPLATE
        .get_or_try_init(|| async {
            let name = template_name();
            let admin = admin_client(&cluster.admin_url).await?;
            // Test processes run side by side: one creates the template, the others wait.
            admin
                .execute("SELECT pg_advisory_lock(7350002)", &[])
                .await?;
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await?
                .is_some();
            let outcome = async {
                if !exists {
                    let building = format!("{name}_building_{}", std::process::id());
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{building}\""))
                        .await?;
                    admin
                        .batch_execute(&format!("CREATE DATABASE \"{building}\""))
                        .await?;
                    crate::migrate(&cluster.base.with_database(&building)).await?;
                    admin
                        .batch_execute(&format!(
                            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
                        ))
                        .await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            admin
                .execute("SELECT pg_advisory_unlock(7350002)", &[])
                .await?;
            outcome?;
            Ok(name)
        })
        .await
}

/// Creates a fresh, migrated database and returns its URL.
pub async fn fresh_database() -> Result<String> {
    let cluster = cluster().await?;
    let template = template(cluster).await?;
    let name = format!("learnsync_test_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_client(&cluster.admin_url).await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .await?;
    Ok(cluster.base.with_database(&name))
}

/// Test support for control-plane tests that run without workers: ends every unfinished job of a
/// run in `state`, as a worker finishing them would, then ends the run as production does
/// ([`crate::runs::finish_if_done`]: milestones and watermark included). Returns the run's state.
pub async fn finish_jobs_as_worker(
    client: &impl crate::GenericClient,
    run_id: uuid::Uuid,
    state: crate::model::JobState,
) -> Result<Option<crate::model::RunState>> {
    client
        .execute(
            "UPDATE jobs SET state = $2, attempt = attempt + 1, start_time = coalesce(start_time, now()), \
                 end_time = now(), lease_owner = NULL, lease_expires_at = NULL \
             WHERE run_id = $1 AND state IN ('queued', 'running')",
            &[&run_id, &state.as_str()],
        )
        .await?;
    crate::runs::finish_if_done(client, run_id).await
}

/// Test support: moves an area's next scheduled run time, e.g. an hour into the past, as if the
/// servers had been down.
pub async fn set_next_run_time(
    client: &impl crate::GenericClient,
    connection_id: uuid::Uuid,
    area: crate::model::Area,
    time: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    client
        .execute(
            "UPDATE area_configs SET next_run_time = $3 WHERE connection_id = $1 AND area = $2",
            &[&connection_id, &area.as_str(), &time],
        )
        .await?;
    Ok(())
}

/// Test support: locks the runs table until `tx` ends, so that every statement reading runs
/// waits, holding its pooled connection (a stuck database, for the load-shedding tests).
pub async fn lock_runs(tx: &crate::Transaction<'_>) -> Result<()> {
    tx.batch_execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .await?;
    Ok(())
}

/// Test support: how many sessions of this database wait on a lock.
pub async fn lock_waiters(client: &impl crate::GenericClient) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Test support: empties every job's seen set as a crash of Postgres would (`ledger_seen` is
/// unlogged), leaving the logged counts of the marks the jobs made.
pub async fn lose_seen_sets(client: &impl crate::GenericClient) -> Result<()> {
    client.batch_execute("TRUNCATE ledger_seen").await?;
    Ok(())
}

/// What the ledger occupies on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerFootprint {
    /// Rows in `ledger`.
    pub rows: i64,
    /// The table's bytes: heap, TOAST, free space and visibility maps.
    pub table_bytes: i64,
    /// Its indexes' bytes.
    pub index_bytes: i64,
    /// The seen sets' scratch table (`ledger_seen`, unlogged), table and indexes (0 when the
    /// schema has none).
    pub seen_bytes: i64,
}

/// Benchmark support: the ledger's rows and bytes on disk.
pub async fn ledger_footprint(client: &impl crate::GenericClient) -> Result<LedgerFootprint> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM ledger), pg_table_size('ledger'), pg_indexes_size('ledger'), \
                 coalesce(pg_total_relation_size(to_regclass('ledger_seen')), 0)",
            &[],
        )
        .await?;
    Ok(LedgerFootprint {
        rows: row.try_get(0)?,
        table_bytes: row.try_get(1)?,
        index_bytes: row.try_get(2)?,
        seen_bytes: row.try_get(3)?,
    })
}

/// Benchmark support: a fleet's history for the connection: `runs` courses runs that ended
/// `days_ago` days ago (a second apart), each with its three jobs and `logs` log events.
pub async fn fill_ended_runs(
    client: &impl crate::GenericClient,
    connection_id: uuid::Uuid,
    runs: i64,
    logs: i64,
    days_ago: i32,
) -> Result<()> {
    client
        .execute(
            "WITH r AS ( \
                 INSERT INTO runs (id, connection_id, area, trigger, full_sync, state, create_time, \
                                   start_time, end_time) \
                 SELECT gen_random_uuid(), $1, 'courses', 'schedule', false, 'succeeded', t, t, \
                        t + interval '1 second' \
                 FROM generate_series(1, $2::bigint) g, \
                      LATERAL (SELECT now() - make_interval(days => $3) \
                                      - make_interval(secs => g::float8) AS t) times \
                 RETURNING id), \
             j AS (INSERT INTO jobs (id, run_id, connection_id, kind, state) \
                   SELECT gen_random_uuid(), r.id, $1, k, 'succeeded' \
                   FROM r, unnest(ARRAY['courses', 'learning_plans', 'sessions']) k RETURNING 1), \
             s AS (UPDATE connections SET log_sequence = log_sequence + $2::bigint * $4::bigint \
                   WHERE id = $1 RETURNING log_sequence - $2::bigint * $4::bigint AS base) \
             INSERT INTO log_events (connection_id, sequence, run_id, level, message) \
             SELECT $1, s.base + row_number() OVER (), r.id, 2, 'history' \
             FROM s, r, generate_series(1, $4::bigint) e",
            &[&connection_id, &runs, &days_ago, &logs],
        )
        .await?;
    Ok(())
}

/// Benchmark support: vacuums and analyzes the database, so what a measurement counts is not
/// autovacuum catching up with the writes before it.
pub async fn vacuum(client: &impl crate::GenericClient) -> Result<()> {
    client.batch_execute("VACUUM (ANALYZE)").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::url_parts::Base;

    #[test]
    fn replaces_the_database_of_a_url() {
        let base = Base::parse("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable");
        assert_eq!(
            base.with_database("x"),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        let base = Base::parse("postgres://postgres@localhost");
        assert_eq!(base.with_database("x"), "postgres://postgres@localhost/x");
    }
}

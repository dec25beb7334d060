//! What a benchmark or an operator reads about the database as a whole: its size, the WAL it
//! wrote, the bytes of each table per row, and the scheduled runs with their lateness; and the one
//! change a fleet benchmark makes to set up a steady state (`spread_schedule`). Nothing here is on
//! the path of a synchronization.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::Area;
use crate::{GenericClient, Result};

/// A realtime area's next due time.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    /// The connection.
    pub connection_id: Uuid,
    /// The area.
    pub area: Area,
    /// When its next scheduled run is due.
    pub next_run_time: DateTime<Utc>,
}

/// Sets the next run of every realtime area (first synchronization done) to a uniformly random
/// point within its interval from now, as the schedule of a fleet that has run for a while is
/// spread (a fleet configured at once would otherwise fall due at once), and returns each area's
/// due time. Benchmarks use it; the scheduler moves each area on from there as usual.
pub async fn spread_schedule(client: &impl GenericClient) -> Result<Vec<Due>> {
    let rows = client
        .query(
            "UPDATE area_configs \
             SET next_run_time = now() + random() * interval_seconds * interval '1 second' \
             WHERE enabled AND mode = 'realtime' AND first_success_time IS NOT NULL \
             RETURNING connection_id, area, next_run_time",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Due {
                connection_id: row.try_get(0)?,
                area: Area::parse(row.try_get(1)?)?,
                next_run_time: row.try_get(2)?,
            })
        })
        .collect()
}

/// A run the scheduler started, with when its jobs were first claimed.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledRun {
    /// The connection.
    pub connection_id: Uuid,
    /// The area.
    pub area: Area,
    /// Whether it is a full comparison.
    pub full: bool,
    /// When the scheduler created it.
    pub create_time: DateTime<Utc>,
    /// When a worker first claimed one of its jobs, if one did.
    pub first_claim_time: Option<DateTime<Utc>>,
    /// When it ended, if it did.
    pub end_time: Option<DateTime<Utc>>,
    /// Its state's name (`succeeded`, `running`, ...).
    pub state: String,
    /// Records written to Salesforce by its jobs.
    pub written: i64,
    /// Records read from Docebo by its jobs.
    pub read: i64,
}

/// The runs the scheduler created at or after `since`, oldest first.
pub async fn scheduled_runs(
    client: &impl GenericClient,
    since: DateTime<Utc>,
) -> Result<Vec<ScheduledRun>> {
    let rows = client
        .query(
            "SELECT r.connection_id, r.area, r.full_sync, r.create_time, min(j.start_time), \
                    r.end_time, r.state, coalesce(sum(j.written_count), 0)::bigint, \
                    coalesce(sum(j.read_count), 0)::bigint \
             FROM runs r LEFT JOIN jobs j ON j.run_id = r.id \
             WHERE r.trigger = 'schedule' AND r.create_time >= $1 \
             GROUP BY r.id ORDER BY r.create_time",
            &[&since],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ScheduledRun {
                connection_id: row.try_get(0)?,
                area: Area::parse(row.try_get(1)?)?,
                full: row.try_get(2)?,
                create_time: row.try_get(3)?,
                first_claim_time: row.try_get(4)?,
                end_time: row.try_get(5)?,
                state: row.try_get(6)?,
                written: row.try_get(7)?,
                read: row.try_get(8)?,
            })
        })
        .collect()
}

/// The current WAL insert position, in bytes since the cluster began: two readings subtract to
/// the WAL written between them (by every database of the cluster).
pub async fn wal_position(client: &impl GenericClient) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The size on disk of the current database, in bytes.
pub async fn database_size(client: &impl GenericClient) -> Result<i64> {
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// One table's rows and bytes on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSize {
    /// The table's name.
    pub table: String,
    /// Its rows, counted.
    pub rows: i64,
    /// Its heap (with TOAST).
    pub table_bytes: i64,
    /// Its indexes.
    pub index_bytes: i64,
}

/// The tables whose size grows with a fleet's records and runs.
const GROWING_TABLES: [&str; 6] = [
    "ledger",
    "log_events",
    "runs",
    "jobs",
    "area_configs",
    "connections",
];

/// Rows and bytes of the tables that grow with records and runs (`ledger`, `log_events`,
/// `runs`, `jobs`, ...). Counts every row: for benchmarks, not for a large production database.
pub async fn table_sizes(client: &impl GenericClient) -> Result<Vec<TableSize>> {
    let mut sizes = Vec::with_capacity(GROWING_TABLES.len());
    for table in GROWING_TABLES {
        // The names are the constants above, never input.
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {table}), pg_table_size('{table}'), \
                            pg_indexes_size('{table}')"
                ),
                &[],
            )
            .await?;
        sizes.push(TableSize {
            table: table.to_string(),
            rows: row.try_get(0)?,
            table_bytes: row.try_get(1)?,
            index_bytes: row.try_get(2)?,
        });
    }
    Ok(sizes)
}

/// How many runs are in each state (states with none are absent), by the state's name.
pub async fn run_states(client: &impl GenericClient) -> Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT state, count(*) FROM runs GROUP BY state ORDER BY state",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

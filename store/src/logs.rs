//! The append-only log of each connection. Sequence numbers are handed out under the connection
//! row's lock inside the very statement that inserts the events, so a connection's log is gapless
//! and commits in sequence order: a follower that read up to N never misses an event below N.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::model::{LogEvent, LogLevel, NewLogEvent};
use crate::{CHANNEL_LOGS, Result};

/// Appends events to a connection's log, wakes log followers, and records the first error event of
/// each run. Returns the sequence numbers given, in order.
pub async fn append(
    client: &impl GenericClient,
    connection_id: Uuid,
    events: &[NewLogEvent],
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<i16> = events.iter().map(|e| e.level as i16).collect();
    let run_ids: Vec<Option<Uuid>> = events.iter().map(|e| e.run_id).collect();
    let job_ids: Vec<Option<Uuid>> = events.iter().map(|e| e.job_id).collect();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    let record_keys: Vec<Option<&str>> = events.iter().map(|e| e.record_key.as_deref()).collect();
    let error_codes: Vec<Option<&str>> = events.iter().map(|e| e.error_code.as_deref()).collect();
    let fields: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::Value::Object(e.fields.clone()))
        .collect();
    let rows = client
        .query(
            "WITH seq AS ( \
                 UPDATE connections SET log_sequence = log_sequence + cardinality($2::smallint[]) \
                 WHERE id = $1 RETURNING log_sequence - cardinality($2::smallint[]) AS base), \
             ins AS ( \
                 INSERT INTO log_events (connection_id, sequence, run_id, job_id, level, message, record_key, \
                     error_code, fields) \
                 SELECT $1, seq.base + e.ord, e.run_id, e.job_id, e.level, e.message, e.record_key, e.error_code, \
                     e.fields \
                 FROM seq, unnest($2::smallint[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], \
                     $8::jsonb[]) WITH ORDINALITY AS e(level, run_id, job_id, message, record_key, error_code, \
                     fields, ord) \
                 RETURNING sequence, run_id, level), \
             first_errors AS ( \
                 UPDATE runs r SET first_error_sequence = fe.sequence \
                 FROM (SELECT run_id, min(sequence) AS sequence FROM ins WHERE level = 4 AND run_id IS NOT NULL \
                       GROUP BY run_id) fe \
                 WHERE r.id = fe.run_id AND r.first_error_sequence IS NULL) \
             SELECT sequence FROM ins ORDER BY sequence",
            &[
                &connection_id,
                &levels,
                &run_ids,
                &job_ids,
                &messages,
                &record_keys,
                &error_codes,
                &fields,
            ],
        )
        .await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_LOGS, &connection_id.to_string()],
        )
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Which events to read.
#[derive(Clone, Debug, PartialEq)]
pub struct LogFilter {
    /// The connection.
    pub connection_id: Uuid,
    /// Only this run's events.
    pub run_id: Option<Uuid>,
    /// Only this job's events.
    pub job_id: Option<Uuid>,
    /// Only events at or above this level.
    pub min_level: Option<LogLevel>,
}

fn from_row(row: &Row) -> Result<LogEvent> {
    let fields: serde_json::Value = row.try_get("fields")?;
    Ok(LogEvent {
        connection_id: row.try_get("connection_id")?,
        sequence: row.try_get("sequence")?,
        run_id: row.try_get("run_id")?,
        job_id: row.try_get("job_id")?,
        time: row.try_get("time")?,
        level: LogLevel::from_i16(row.try_get("level")?)?,
        message: row.try_get("message")?,
        record_key: row.try_get("record_key")?,
        error_code: row.try_get("error_code")?,
        fields: match fields {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    })
}

/// Reads up to `limit` events with a sequence at or above `from_sequence`, in order.
pub async fn read(
    client: &impl GenericClient,
    filter: &LogFilter,
    from_sequence: i64,
    limit: i64,
) -> Result<Vec<LogEvent>> {
    let rows = client
        .query(
            "SELECT connection_id, sequence, run_id, job_id, time, level, message, record_key, error_code, fields \
             FROM log_events WHERE connection_id = $1 AND sequence >= $2 \
               AND ($3::uuid IS NULL OR run_id = $3) AND ($4::uuid IS NULL OR job_id = $4) \
               AND level >= $5 \
             ORDER BY sequence LIMIT $6",
            &[
                &filter.connection_id,
                &from_sequence,
                &filter.run_id,
                &filter.job_id,
                &filter.min_level.map_or(1, |level| level as i16),
                &limit,
            ],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// The last sequence number handed out for a connection (0 for an empty log).
pub async fn last_sequence(client: &impl GenericClient, connection_id: Uuid) -> Result<i64> {
    let row = client
        .query_opt(
            "SELECT log_sequence FROM connections WHERE id = $1",
            &[&connection_id],
        )
        .await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => 0,
    })
}

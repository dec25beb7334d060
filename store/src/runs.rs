//! Runs and their jobs: Start, Stop, Resynchronize, and reading them back.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codes::{ErrorCode, Resource};
use crate::model::{
    Area, AreaConfig, Counts, Job, JobKind, JobState, LogLevel, NewLogEvent, Run, RunState,
    Trigger, area_subject,
};
use crate::{CHANNEL_CANCEL, CHANNEL_JOBS, CHANNEL_RUNS, Error, Result, areas, logs};

const RUN_COLUMNS: &str = "id, connection_id, area, trigger, timeframe_start, timeframe_end, full_sync, updated_from, \
    rewrite_unchanged, check_only, confirm_unenrollments, state, stop_time, first_error_sequence, error_message, create_time, start_time, end_time, \
    trace_id";

const JOB_COLUMNS: &str = "id, run_id, connection_id, kind, state, attempt, read_count, written_count, \
    unchanged_count, failed_count, expected_count, created_count, repaired_count, unenrolled_count, \
    status_message, error_message, start_time, end_time";

fn run_from_row(row: &Row) -> Result<Run> {
    Ok(Run {
        id: row.try_get("id")?,
        connection_id: row.try_get("connection_id")?,
        area: Area::parse(row.try_get("area")?)?,
        trigger: Trigger::parse(row.try_get("trigger")?)?,
        timeframe_start: row.try_get("timeframe_start")?,
        timeframe_end: row.try_get("timeframe_end")?,
        full_sync: row.try_get("full_sync")?,
        updated_from: row.try_get("updated_from")?,
        rewrite_unchanged: row.try_get("rewrite_unchanged")?,
        check_only: row.try_get("check_only")?,
        confirm_unenrollments: row.try_get("confirm_unenrollments")?,
        state: RunState::parse(row.try_get("state")?)?,
        stop_time: row.try_get("stop_time")?,
        first_error_sequence: row.try_get("first_error_sequence")?,
        error_message: row.try_get("error_message")?,
        create_time: row.try_get("create_time")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        trace_id: row.try_get("trace_id")?,
        jobs: Vec::new(),
    })
}

/// A job's counts, from a row with its count columns.
pub fn counts_from_row(row: &Row) -> Result<Counts> {
    Ok(Counts {
        read: row.try_get("read_count")?,
        written: row.try_get("written_count")?,
        unchanged: row.try_get("unchanged_count")?,
        failed: row.try_get("failed_count")?,
        expected: row.try_get("expected_count")?,
        created: row.try_get("created_count")?,
        repaired: row.try_get("repaired_count")?,
        unenrolled: row.try_get("unenrolled_count")?,
    })
}

/// Reads a job row selected with the job columns.
pub fn job_from_row(row: &Row) -> Result<Job> {
    Ok(Job {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        connection_id: row.try_get("connection_id")?,
        kind: JobKind::parse(row.try_get("kind")?)?,
        state: JobState::parse(row.try_get("state")?)?,
        attempt: row.try_get("attempt")?,
        counts: counts_from_row(row)?,
        status_message: row.try_get("status_message")?,
        error_message: row.try_get("error_message")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
    })
}

/// What a Resynchronize asks for beyond its timeframe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncOptions {
    /// Write every record read, even those Salesforce holds with the same values.
    pub rewrite_unchanged: bool,
    /// Only report what a synchronization would do; write nothing.
    pub check_only: bool,
    /// Unenroll even when the count is above the connection's threshold.
    pub confirm_unenrollments: bool,
}

/// What a new run covers.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// What starts it.
    pub trigger: Trigger,
    /// Timeframe start (inclusive).
    pub timeframe_start: Option<DateTime<Utc>>,
    /// Timeframe end (exclusive).
    pub timeframe_end: Option<DateTime<Utc>>,
    /// Full or incremental.
    pub full_sync: bool,
    /// Incremental: read changes from here.
    pub updated_from: Option<DateTime<Utc>>,
    /// Write even unchanged records.
    pub rewrite_unchanged: bool,
    /// A check run: report, write nothing.
    pub check_only: bool,
    /// Unenroll even above the connection's threshold.
    pub confirm_unenrollments: bool,
    /// Only these jobs of the area (all when `None`): a webhook run carries only the kinds its
    /// events named.
    pub jobs: Option<Vec<JobKind>>,
    /// What a webhook run is limited to (see [`crate::realtime::Targets`]).
    pub targets: Option<serde_json::Value>,
    /// The caller's W3C trace id (32 lowercase hex digits), when its request carried one; a new
    /// one otherwise.
    pub trace_id: Option<String>,
}

impl RunRequest {
    /// A full run of the whole area, from scratch.
    pub fn full(
        trigger: Trigger,
        timeframe: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        rewrite_unchanged: bool,
    ) -> RunRequest {
        RunRequest {
            trigger,
            timeframe_start: timeframe.0,
            timeframe_end: timeframe.1,
            full_sync: true,
            updated_from: None,
            rewrite_unchanged,
            check_only: false,
            confirm_unenrollments: false,
            jobs: None,
            targets: None,
            trace_id: None,
        }
    }

    /// What the scheduler starts at a tick: an incremental run from the area's `watermark` less
    /// `overlap` (over all time when the area has none yet).
    pub fn incremental(watermark: Option<DateTime<Utc>>, overlap: chrono::Duration) -> RunRequest {
        RunRequest {
            full_sync: false,
            updated_from: watermark.map(|w| w - overlap),
            ..RunRequest::full(Trigger::Schedule, (None, None), false)
        }
    }

    /// The same request with a Resynchronize's options.
    pub fn with(mut self, options: ResyncOptions) -> RunRequest {
        self.rewrite_unchanged = options.rewrite_unchanged;
        self.check_only = options.check_only;
        self.confirm_unenrollments = options.confirm_unenrollments;
        self
    }

    /// The same request, continuing the caller's trace.
    pub fn traced(mut self, trace_id: Option<String>) -> RunRequest {
        self.trace_id = trace_id;
        self
    }
}

fn active_states() -> Vec<&'static str> {
    RunState::ACTIVE
        .iter()
        .map(|state| state.as_str())
        .collect()
}

/// Fails with `AREA_NOT_CONFIGURED` or `AREA_DISABLED` unless the area may run.
fn require_enabled(
    connection_id: Uuid,
    area: Area,
    config: Option<AreaConfig>,
) -> Result<AreaConfig> {
    let subject = area_subject(connection_id, area);
    match config {
        None => Err(Error::precondition(
            ErrorCode::AreaNotConfigured,
            subject,
            format!("the {area} area has not been configured: call Configure first"),
        )),
        Some(config) if !config.enabled => Err(Error::precondition(
            ErrorCode::AreaDisabled,
            subject,
            format!("the {area} area is disabled: enable it with Configure first"),
        )),
        Some(config) => Ok(config),
    }
}

/// Reads the active run of an area, if any.
pub async fn active(
    client: &impl GenericClient,
    connection_id: Uuid,
    area: Area,
) -> Result<Option<Run>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE connection_id = $1 AND area = $2 AND state = ANY($3)"
    );
    let row = client
        .query_opt(&sql, &[&connection_id, &area.as_str(), &active_states()])
        .await?;
    match row {
        Some(row) => {
            let mut run = run_from_row(&row)?;
            run.jobs = jobs_of(client, run.id).await?;
            Ok(Some(run))
        }
        None => Ok(None),
    }
}

fn run_active_error(connection_id: Uuid, area: Area, run: &Run) -> Error {
    Error::precondition(
        ErrorCode::RunActive,
        area_subject(connection_id, area),
        format!(
            "the {area} area already has an active run ({}, {})",
            run.id, run.state
        ),
    )
}

/// Launches an area's first synchronization, in a transaction (it locks the area).
pub async fn start(
    client: &Transaction<'_>,
    connection_id: Uuid,
    area: Area,
    timeframe: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    trace_id: Option<String>,
) -> Result<Run> {
    let config = require_enabled(
        connection_id,
        area,
        areas::lock(client, connection_id, area).await?,
    )?;
    if config.first_success_time.is_some() {
        return Err(Error::precondition(
            ErrorCode::AlreadySynchronized,
            area_subject(connection_id, area),
            format!("the {area} area has completed its first synchronization: use Resynchronize"),
        ));
    }
    if area == Area::Enrollments {
        areas::require_enrollment_prerequisites(client, connection_id).await?;
    }
    if let Some(run) = active(client, connection_id, area).await? {
        return Err(run_active_error(connection_id, area, &run));
    }
    let request = RunRequest::full(Trigger::Start, timeframe, false).traced(trace_id);
    create(client, connection_id, area, &request).await
}

/// Runs an area again from scratch, in a transaction (it locks the area).
pub async fn resynchronize(
    client: &Transaction<'_>,
    connection_id: Uuid,
    area: Area,
    timeframe: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    options: ResyncOptions,
    trace_id: Option<String>,
) -> Result<Run> {
    require_enabled(
        connection_id,
        area,
        areas::lock(client, connection_id, area).await?,
    )?;
    if area == Area::Enrollments {
        areas::require_enrollment_prerequisites(client, connection_id).await?;
    }
    if let Some(run) = active(client, connection_id, area).await? {
        return Err(run_active_error(connection_id, area, &run));
    }
    let any_run = client
        .query_opt(
            "SELECT 1 FROM runs WHERE connection_id = $1 AND area = $2 LIMIT 1",
            &[&connection_id, &area.as_str()],
        )
        .await?;
    if any_run.is_none() {
        return Err(Error::precondition(
            ErrorCode::NoPreviousRun,
            area_subject(connection_id, area),
            format!("the {area} area has never run: use Start for its first synchronization"),
        ));
    }
    let request = RunRequest::full(Trigger::Resynchronize, timeframe, false)
        .with(options)
        .traced(trace_id);
    create(client, connection_id, area, &request).await
}

/// Creates a queued run with its jobs and wakes the workers. The partial unique index refuses a
/// second active run of the area, whoever asks (`RUN_ACTIVE`).
pub async fn create(
    client: &impl GenericClient,
    connection_id: Uuid,
    area: Area,
    request: &RunRequest,
) -> Result<Run> {
    let run_id = Uuid::new_v4();
    let sql = format!(
        "INSERT INTO runs (id, connection_id, area, trigger, timeframe_start, timeframe_end, full_sync, updated_from, \
             rewrite_unchanged, targets, state, trace_id, check_only, confirm_unenrollments) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', \
                 coalesce($11, replace(gen_random_uuid()::text, '-', '')), $12, $13) RETURNING {RUN_COLUMNS}"
    );
    let inserted = client
        .query_one(
            &sql,
            &[
                &run_id,
                &connection_id,
                &area.as_str(),
                &request.trigger.as_str(),
                &request.timeframe_start,
                &request.timeframe_end,
                &request.full_sync,
                &request.updated_from,
                &request.rewrite_unchanged,
                &request.targets,
                &request.trace_id,
                &request.check_only,
                &request.confirm_unenrollments,
            ],
        )
        .await
        .map_err(Error::from);
    let row = match inserted {
        Ok(row) => row,
        Err(error) if error.is_unique_violation("runs_one_active_per_area") => {
            return Err(Error::precondition(
                ErrorCode::RunActive,
                area_subject(connection_id, area),
                format!("the {area} area already has an active run"),
            ));
        }
        Err(error) => return Err(error),
    };
    let mut run = run_from_row(&row)?;
    let specs = job_specs(area, request.jobs.as_deref());
    if specs.is_empty() {
        return Err(Error::Corrupt(format!("a {area} run with no job")));
    }
    run.jobs = insert_jobs(client, run_id, connection_id, &specs).await?;
    let kinds: Vec<&str> = specs.iter().map(|(kind, _)| kind.as_str()).collect();
    logs::append(
        client,
        connection_id,
        &[
            NewLogEvent::new(LogLevel::Info, format!("{area} run queued"))
                .run(run_id)
                .field("trigger", request.trigger.as_str())
                .field("full", request.full_sync)
                .field("jobs", kinds.join(",")),
        ],
    )
    .await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_JOBS, &run_id.to_string()],
        )
        .await?;
    Ok(run)
}

/// The jobs a run of `area` consists of (all, or those of `wanted`), each with the index of the
/// job it waits for. A subset keeps a job's wait for another only when that other job is in the
/// subset too.
fn job_specs(area: Area, wanted: Option<&[JobKind]>) -> Vec<(JobKind, Option<usize>)> {
    let all = area.jobs();
    let kept: Vec<usize> = (0..all.len())
        .filter(|&index| wanted.is_none_or(|jobs| jobs.contains(&all[index].0)))
        .collect();
    kept.iter()
        .map(|&index| {
            let (kind, after) = all[index];
            (kind, after.and_then(|a| kept.iter().position(|&k| k == a)))
        })
        .collect()
}

/// Inserts a run's jobs, in spec order so that a job always follows the one it waits for, and
/// returns them in that order.
async fn insert_jobs(
    client: &impl GenericClient,
    run_id: Uuid,
    connection_id: Uuid,
    specs: &[(JobKind, Option<usize>)],
) -> Result<Vec<Job>> {
    let ids: Vec<Uuid> = specs.iter().map(|_| Uuid::new_v4()).collect();
    let kinds: Vec<&str> = specs.iter().map(|(kind, _)| kind.as_str()).collect();
    let after: Vec<Option<Uuid>> = specs
        .iter()
        .map(|(_, after)| after.map(|index| ids[index]))
        .collect();
    let positions: Vec<i16> = (0..specs.len() as i16).collect();
    let sql = format!(
        "INSERT INTO jobs (id, run_id, connection_id, kind, after_job_id, state, position) \
         SELECT j.id, $1, $2, j.kind, j.after, 'queued', j.position \
         FROM unnest($3::uuid[], $4::text[], $5::uuid[], $6::smallint[]) AS j(id, kind, after, position) \
         ORDER BY j.position RETURNING {JOB_COLUMNS}"
    );
    let rows = client
        .query(
            &sql,
            &[&run_id, &connection_id, &ids, &kinds, &after, &positions],
        )
        .await?;
    let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    jobs.sort_by_key(|job| ids.iter().position(|id| *id == job.id));
    Ok(jobs)
}

/// Stops the active run of an area: queued jobs stop at once, running ones when their worker
/// sees the request (its next heartbeat, or the NOTIFY). In a transaction. Its locks come in the
/// one order every run change follows: the area's configuration row, then jobs, the run, and the
/// connection (the log); a job's end ([`crate::worker::finish`]) takes the area's row first too.
pub async fn stop(client: &Transaction<'_>, connection_id: Uuid, area: Area) -> Result<Run> {
    areas::lock(client, connection_id, area).await?;
    let Some(run) = active(client, connection_id, area).await? else {
        return Err(Error::precondition(
            ErrorCode::NoActiveRun,
            area_subject(connection_id, area),
            format!("the {area} area has no active run to stop"),
        ));
    };
    if run.state != RunState::Stopping {
        // The jobs before the run, as a claim takes them (a job, then its run).
        client
            .execute(
                "UPDATE jobs SET state = 'stopped', end_time = now(), status_message = 'stopped before it started' \
                 WHERE run_id = $1 AND state = 'queued'",
                &[&run.id],
            )
            .await?;
        client
            .execute(
                "UPDATE runs SET state = 'stopping', stop_time = now() WHERE id = $1 AND state IN ('queued', 'running')",
                &[&run.id],
            )
            .await?;
        logs::append(
            client,
            connection_id,
            &[NewLogEvent::new(LogLevel::Info, format!("{area} run stop requested")).run(run.id)],
        )
        .await?;
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL_CANCEL, &run.id.to_string()],
            )
            .await?;
        finish_if_done(client, run.id).await?;
    }
    get(client, connection_id, run.id).await
}

/// Ends a run whose jobs are all final, deriving its state from theirs. When it completed, records
/// the area's milestones and moves the area's watermark to the run's creation: everything changed
/// before it was read. Only runs that read every change move the watermark (full or incremental):
/// a run limited to a timeframe, or to the records webhooks named, leaves it where it was, or the
/// next incremental run would skip what it did not read. Does nothing while a job is still queued
/// or running, or when the run already ended. Returns the final state when this call ended the
/// run. This is the one place a run ends: a worker finishing its last job, the reaper, Stop and
/// the test helper all call it.
pub async fn finish_if_done(client: &impl GenericClient, run_id: Uuid) -> Result<Option<RunState>> {
    let row = client
        .query_opt(
            "WITH s AS ( \
                 SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) AS active, \
                        count(*) FILTER (WHERE state = 'stopped') AS stopped, \
                        count(*) FILTER (WHERE state = 'failed') AS failed, \
                        count(*) FILTER (WHERE state = 'succeeded_with_errors') AS with_errors, \
                        string_agg(kind || ': ' || error_message, '; ') FILTER (WHERE state = 'failed') AS errors \
                 FROM jobs WHERE run_id = $1) \
             UPDATE runs r SET \
                 state = CASE WHEN r.state = 'stopping' OR s.stopped > 0 THEN 'stopped' \
                              WHEN s.failed > 0 THEN 'failed' \
                              WHEN s.with_errors > 0 THEN 'succeeded_with_errors' \
                              ELSE 'succeeded' END, \
                 error_message = CASE WHEN s.failed > 0 AND r.state <> 'stopping' THEN s.errors END, \
                 end_time = now() \
             FROM s WHERE r.id = $1 AND r.state IN ('queued', 'running', 'stopping') AND s.active = 0 \
             RETURNING r.state, r.connection_id, r.area, r.check_only",
            &[&run_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state = RunState::parse(row.try_get(0)?)?;
    let connection_id: Uuid = row.try_get(1)?;
    let area = Area::parse(row.try_get(2)?)?;
    // A check run wrote nothing: the area's last synchronization and watermark stay.
    let check_only: bool = row.try_get(3)?;
    if state.is_completed() && !check_only {
        client
            .execute(
                "UPDATE area_configs SET first_success_time = coalesce(first_success_time, now()), \
                     last_success_time = now() WHERE connection_id = $1 AND area = $2",
                &[&connection_id, &area.as_str()],
            )
            .await?;
        client
            .execute(
                // The watermark never passes a record kept to be read again from Docebo
                // (retry_records without what it would write): the next incremental run reads it.
                // A record kept with it is tried again from there.
                "UPDATE area_configs a SET watermark = least(greatest(a.watermark, r.create_time), \
                     (SELECT min(t.docebo_updated_at) FROM retry_records t \
                      WHERE t.connection_id = a.connection_id AND t.area = a.area \
                        AND t.record IS NULL)) \
                 FROM runs r WHERE r.id = $1 AND a.connection_id = r.connection_id AND a.area = r.area \
                   AND r.targets IS NULL AND r.timeframe_start IS NULL AND r.timeframe_end IS NULL",
                &[&run_id],
            )
            .await?;
    }
    let level = match state {
        RunState::Failed => LogLevel::Error,
        RunState::SucceededWithErrors => LogLevel::Warn,
        _ => LogLevel::Info,
    };
    logs::append(
        client,
        connection_id,
        &[
            NewLogEvent::new(level, format!("{area} run finished: {state}"))
                .run(run_id)
                .field("state", state.as_str()),
        ],
    )
    .await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_RUNS, &run_id.to_string()],
        )
        .await?;
    Ok(Some(state))
}

/// Most runs one purge statement deletes ([`purge_ended`]).
pub const PURGE_BATCH: i64 = 5_000;

/// Deletes up to `batch` runs that ended more than `retention` ago, oldest first, with their jobs
/// (and what hangs on them) and their log events; each area's latest run stays, whatever its age
/// (GetStatus shows it, and the position of its first error). Returns how many runs and log
/// events went.
pub async fn purge_ended(
    client: &impl GenericClient,
    retention: std::time::Duration,
    batch: i64,
) -> Result<(u64, u64)> {
    let seconds = retention.as_secs_f64();
    let row = client
        .query_one(
            "WITH doomed AS ( \
                 SELECT r.id FROM runs r \
                 WHERE r.end_time < now() - make_interval(secs => $1) \
                   AND EXISTS (SELECT 1 FROM runs n WHERE n.connection_id = r.connection_id \
                               AND n.area = r.area AND n.create_time > r.create_time) \
                 ORDER BY r.end_time LIMIT $2), \
             logs AS (DELETE FROM log_events e USING doomed d WHERE e.run_id = d.id RETURNING 1), \
             gone AS (DELETE FROM runs r USING doomed d WHERE r.id = d.id RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM logs)",
            &[&seconds, &batch],
        )
        .await?;
    let (runs, logs): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    Ok((runs as u64, logs as u64))
}

/// Reads a run with its jobs.
pub async fn get(client: &impl GenericClient, connection_id: Uuid, run_id: Uuid) -> Result<Run> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND connection_id = $2");
    let row = client
        .query_opt(&sql, &[&run_id, &connection_id])
        .await?
        .ok_or_else(|| Error::not_found(Resource::Run, run_id))?;
    let mut run = run_from_row(&row)?;
    run.jobs = jobs_of(client, run_id).await?;
    Ok(run)
}

/// Reads a run's state alone (cheap: for log followers).
pub async fn state(client: &impl GenericClient, run_id: Uuid) -> Result<Option<RunState>> {
    let row = client
        .query_opt("SELECT state FROM runs WHERE id = $1", &[&run_id])
        .await?;
    row.map(|row| RunState::parse(row.try_get(0)?)).transpose()
}

/// The ids of a connection's active runs (queued, running or stopping): a shared log poll reads
/// them before the events, so a followed run missing here has logged its last event.
pub async fn active_ids(client: &impl GenericClient, connection_id: Uuid) -> Result<Vec<Uuid>> {
    let rows = client
        .query(
            "SELECT id FROM runs WHERE connection_id = $1 AND state = ANY($2)",
            &[&connection_id, &active_states()],
        )
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Reads a run's jobs, in creation order.
pub async fn jobs_of(client: &impl GenericClient, run_id: Uuid) -> Result<Vec<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 ORDER BY position, id");
    let rows = client.query(&sql, &[&run_id]).await?;
    rows.iter().map(job_from_row).collect()
}

async fn attach_jobs(client: &impl GenericClient, runs: &mut [Run]) -> Result<()> {
    let ids: Vec<Uuid> = runs.iter().map(|run| run.id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let sql =
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ANY($1) ORDER BY position, id");
    let rows = client.query(&sql, &[&ids]).await?;
    let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    give_jobs(runs, jobs);
    Ok(())
}

/// Gives each run its jobs, in the order they come.
fn give_jobs(runs: &mut [Run], jobs: Vec<Job>) {
    let mut by_run: HashMap<Uuid, Vec<Job>> = HashMap::new();
    for job in jobs {
        by_run.entry(job.run_id).or_default().push(job);
    }
    for run in runs {
        run.jobs = by_run.remove(&run.id).unwrap_or_default();
    }
}

/// Lists a connection's runs newest first, after a cursor (the last run of the previous page).
pub async fn list(
    client: &impl GenericClient,
    connection_id: Uuid,
    area: Option<Area>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Run>> {
    let (after_time, after_id) = match after {
        Some((time, id)) => (Some(time), Some(id)),
        None => (None, None),
    };
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE connection_id = $1 AND ($2::text IS NULL OR area = $2) \
           AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4::uuid)) \
         ORDER BY create_time DESC, id DESC LIMIT $5"
    );
    let rows = client
        .query(
            &sql,
            &[
                &connection_id,
                &area.map(|a| a.as_str()),
                &after_time,
                &after_id,
                &limit,
            ],
        )
        .await?;
    let mut runs: Vec<Run> = rows.iter().map(run_from_row).collect::<Result<_>>()?;
    attach_jobs(client, &mut runs).await?;
    Ok(runs)
}

/// The active run and the last finished run of each area of a connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatestRuns {
    /// The active run, if any.
    pub active: Option<Run>,
    /// The most recent finished run, if any.
    pub last: Option<Run>,
}

/// What GetStatus shows of a connection, read by [`status`] in one statement (so in one snapshot).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionStatus {
    /// The connection's tenant (what authorization asks).
    pub tenant: String,
    /// The configured areas, by area name.
    pub configs: Vec<AreaConfig>,
    /// The active and the last finished run of each area that has run, with their jobs.
    pub latest: HashMap<Area, LatestRuns>,
    /// How many records Salesforce holds, per area (as [`records_imported`] counts them).
    pub imported: HashMap<Area, i64>,
}

/// The one statement of [`status`]: a row per part (the connection, an area's configuration, a
/// latest run, one of their jobs, an area's ledger count), each part's columns under the names
/// their readers (`areas::from_row`, `run_from_row`, `job_from_row`) read, shared where a name
/// means the same thing; the rest are NULL. Jobs come in their runs' order. $1: the connection,
/// $2: the active run states.
static STATUS_SQL: LazyLock<String> = LazyLock::new(|| {
    // Every column a part has, with its type (for the first part's NULLs: a UNION takes its
    // types from there).
    const TYPES: &[(&str, &str)] = &[
        ("tenant", "text"),
        ("connection_id", "uuid"),
        ("area", "text"),
        ("enabled", "boolean"),
        ("mode", "text"),
        ("interval_seconds", "integer"),
        ("course_category_ids", "bigint[]"),
        ("update_time", "timestamptz"),
        ("first_success_time", "timestamptz"),
        ("last_success_time", "timestamptz"),
        ("watermark", "timestamptz"),
        ("next_run_time", "timestamptz"),
        ("full_interval_seconds", "integer"),
        ("next_full_time", "timestamptz"),
        ("id", "uuid"),
        ("trigger", "text"),
        ("timeframe_start", "timestamptz"),
        ("timeframe_end", "timestamptz"),
        ("full_sync", "boolean"),
        ("updated_from", "timestamptz"),
        ("rewrite_unchanged", "boolean"),
        ("check_only", "boolean"),
        ("confirm_unenrollments", "boolean"),
        ("state", "text"),
        ("stop_time", "timestamptz"),
        ("first_error_sequence", "bigint"),
        ("error_message", "text"),
        ("create_time", "timestamptz"),
        ("start_time", "timestamptz"),
        ("end_time", "timestamptz"),
        ("trace_id", "text"),
        ("run_id", "uuid"),
        ("position", "smallint"),
        ("kind", "text"),
        ("attempt", "integer"),
        ("read_count", "bigint"),
        ("written_count", "bigint"),
        ("unchanged_count", "bigint"),
        ("failed_count", "bigint"),
        ("expected_count", "bigint"),
        ("created_count", "bigint"),
        ("repaired_count", "bigint"),
        ("unenrolled_count", "bigint"),
        ("status_message", "text"),
        ("records", "bigint"),
    ];
    let names = |columns: &str, alias: &str| -> Vec<(String, String)> {
        columns
            .split(',')
            .map(str::trim)
            .map(|name| (name.to_string(), format!("{alias}.{name}")))
            .collect()
    };
    let mut job_columns = names(JOB_COLUMNS, "j");
    job_columns.push(("position".into(), "j.position".into()));
    let parts = [
        (
            "connection",
            names("tenant", "c"),
            "connections c WHERE c.id = $1",
        ),
        (
            "config",
            names(areas::COLUMNS, "a"),
            "area_configs a WHERE a.connection_id = $1",
        ),
        ("run", names(RUN_COLUMNS, "r"), "latest r"),
        (
            "job",
            job_columns,
            "jobs j JOIN latest r ON j.run_id = r.id",
        ),
        (
            "imported",
            vec![
                ("area".into(), "l.area".into()),
                ("records".into(), "sum(l.records)::bigint".into()),
            ],
            "ledger_counts l WHERE l.connection_id = $1 GROUP BY l.area",
        ),
    ];
    let selects: Vec<String> = parts
        .iter()
        .map(|(part, columns, from)| {
            for (name, _) in columns {
                assert!(
                    TYPES.iter().any(|(known, _)| known == name),
                    "status: column {name} has no type"
                );
            }
            let values: Vec<String> = TYPES
                .iter()
                .map(
                    |(name, kind)| match columns.iter().find(|(column, _)| column == name) {
                        Some((_, value)) => format!("{value} AS {name}"),
                        None => format!("NULL::{kind} AS {name}"),
                    },
                )
                .collect();
            format!("SELECT '{part}' AS part, {} FROM {from}", values.join(", "))
        })
        .collect();
    format!(
        "WITH latest AS MATERIALIZED (SELECT DISTINCT ON (area, state = ANY($2)) {RUN_COLUMNS} \
         FROM runs WHERE connection_id = $1 ORDER BY area, state = ANY($2), create_time DESC, id DESC) \
         {} ORDER BY position, id",
        selects.join(" UNION ALL ")
    )
});

/// Reads what GetStatus shows of a connection in one statement, prepared once per pooled
/// connection: its tenant, its area configurations, the active and last finished run of every
/// area with their jobs, and its ledger counts. `NotFound` when there is no such connection.
pub async fn status(client: &impl GenericClient, connection_id: Uuid) -> Result<ConnectionStatus> {
    let statement = client.prepare_cached(&STATUS_SQL).await?;
    let rows = client
        .query(&statement, &[&connection_id, &active_states()])
        .await?;
    let mut tenant = None;
    let mut configs = Vec::new();
    let mut runs = Vec::new();
    let mut jobs = Vec::new();
    let mut imported = HashMap::new();
    for row in &rows {
        match row.try_get::<_, &str>("part")? {
            "connection" => tenant = Some(row.try_get("tenant")?),
            "config" => configs.push(areas::from_row(row)?),
            "run" => runs.push(run_from_row(row)?),
            "job" => jobs.push(job_from_row(row)?),
            _ => {
                imported.insert(Area::parse(row.try_get("area")?)?, row.try_get("records")?);
            }
        }
    }
    let tenant = tenant.ok_or_else(|| Error::not_found(Resource::Connection, connection_id))?;
    configs.sort_by_key(|config: &AreaConfig| config.area.as_str());
    give_jobs(&mut runs, jobs);
    let mut latest: HashMap<Area, LatestRuns> = HashMap::new();
    for run in runs {
        let entry = latest.entry(run.area).or_default();
        if run.state.is_active() {
            entry.active = Some(run);
        } else {
            entry.last = Some(run);
        }
    }
    Ok(ConnectionStatus {
        tenant,
        configs,
        latest,
        imported,
    })
}

/// How many records Salesforce holds for a connection, per area (from the ledger's counters).
pub async fn records_imported(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<HashMap<Area, i64>> {
    let rows = client
        .query(
            "SELECT area, sum(records)::bigint FROM ledger_counts WHERE connection_id = $1 GROUP BY area",
            &[&connection_id],
        )
        .await?;
    let mut counts = HashMap::new();
    for row in &rows {
        counts.insert(Area::parse(row.try_get(0)?)?, row.try_get(1)?);
    }
    Ok(counts)
}

/// How many runs and jobs are in each state, across every connection (for metrics).
pub async fn count_by_state(
    client: &impl GenericClient,
) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>)> {
    let runs = client
        .query("SELECT state, count(*) FROM runs GROUP BY state", &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_>>()?;
    let jobs = client
        .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_>>()?;
    Ok((runs, jobs))
}

//! What workers do in Postgres: claim jobs, keep leases, checkpoint, finish; the record ledger,
//! the Docebo call budget, the listings a run's jobs share ([`shared_listing`]) and each
//! connection's Docebo token, shared by every worker ([`current_token`]).
//!
//! Every write a worker makes about a job names the attempt it holds: the job row is locked with
//! `WHERE id = $1 AND attempt = $2 AND state = 'running'` ([`fence`]) at the start of the
//! transaction that carries the write, so a worker whose lease was taken over changes nothing.
//! The rule is a type: the job writes ([`log`], [`progress`], the ledger's and `job_deferred`'s
//! writes) take a [`Fenced`], which only [`fence`] makes, and what must run in a transaction takes
//! a [`Transaction`].
//!
//! Salesforce cannot be fenced that way, so time fences it: a job whose lease ran out is taken
//! over only once its holder's write grace has passed too ([`Lease::write_grace`], recorded in the
//! row), and the holder starts no Salesforce write after its own write deadline, measured from
//! the last heartbeat it sent (the worker's `JobCtx::may_write`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codes::ErrorCode;
use crate::model::{
    Area, Counts, JobKind, LogLevel, NewLogEvent, RunState, UnenrollmentGuard, UnenrollmentPolicy,
};
use crate::{CHANNEL_JOBS, Result, logs, runs};

mod listings;
mod sessions;
pub use listings::{PublishedListing, SharedListing, publish_listing, shared_listing};
pub use sessions::{
    ListedSessions, SessionPage, SessionReading, listed_sessions, merge_sessions, publish_sessions,
    save_session_page, session_pages, session_reading,
};
mod tokens;
pub use tokens::{NewToken, StoredToken, current_token, lock_token, store_token};

/// A running job another worker may take over (claim, or reap when its run is stopping): its lease
/// ran out and so did its holder's write grace ([`Lease::write_grace`]). The index `jobs_takeover`
/// is on this expression. A job handed back or retried is queued, not running: claimable at once
/// (or when due).
macro_rules! taken_over {
    () => {
        "(j.state = 'running' AND greatest(j.lease_expires_at, j.takeover_after) < now())"
    };
}

/// Claims up to `$3` jobs: queued ones that are due and whose predecessor is final, and running
/// ones another worker may take over (`taken_over!`: a dead or frozen worker's, once its writes in
/// flight have ended). `SKIP LOCKED` lets several workers claim at once without waiting for, or
/// taking, each other's rows. Jobs of a stopping run are not claimed: the reaper ends them.
const CLAIM: &str = concat!(
    "\
WITH candidates AS ( \
    SELECT j.id FROM jobs j JOIN runs r ON r.id = j.run_id \
    WHERE ((j.state = 'queued' AND j.not_before <= now()) \
           OR ",
    taken_over!(),
    ") \
      AND r.state IN ('queued', 'running') \
      AND (j.after_job_id IS NULL OR EXISTS ( \
           SELECT 1 FROM jobs a WHERE a.id = j.after_job_id \
             AND a.state IN ('succeeded', 'succeeded_with_errors', 'failed', 'stopped'))) \
    ORDER BY j.not_before, r.create_time, j.position \
    LIMIT $3 \
    FOR UPDATE OF j SKIP LOCKED), \
claimed AS ( \
    UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, lease_owner = $1, \
        lease_expires_at = now() + make_interval(secs => $2), \
        takeover_after = now() + make_interval(secs => $2 + $4::float8), heartbeat_time = now(), \
        start_time = coalesce(j.start_time, now()), status_message = 'running' \
    FROM candidates c WHERE j.id = c.id \
    RETURNING j.id, j.run_id, j.connection_id, j.kind, j.attempt, j.checkpoint, j.read_count, \
        j.written_count, j.unchanged_count, j.failed_count, j.expected_count, j.created_count, \
        j.repaired_count, j.unenrolled_count, j.retries_with_progress, j.retries_without_progress), \
started AS ( \
    UPDATE runs r SET state = 'running', start_time = coalesce(r.start_time, now()) \
    WHERE r.id IN (SELECT run_id FROM claimed) AND r.state = 'queued') \
SELECT c.*, r.area, r.timeframe_start, r.timeframe_end, r.full_sync, r.updated_from, \
    r.rewrite_unchanged, r.check_only, r.confirm_unenrollments, r.create_time AS run_create_time, \
    r.targets, r.trace_id, n.tenant, n.docebo_platform, n.docebo_calls_per_hour, n.unenrollment_policy, \
    n.unenroll_max_percent, n.unenroll_min_records, \
    (SELECT a.first_success_time FROM area_configs a \
      WHERE a.connection_id = c.connection_id AND a.area = 'enrollments') AS enrollments_first_success, \
    (SELECT a.course_category_ids FROM area_configs a \
      WHERE a.connection_id = c.connection_id AND a.area = 'courses') AS course_category_ids \
FROM claimed c JOIN runs r ON r.id = c.run_id JOIN connections n ON n.id = c.connection_id"
);

/// A job a worker holds, with what it needs to know about its run and connection.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedJob {
    /// The job.
    pub id: Uuid,
    /// Its run.
    pub run_id: Uuid,
    /// Its connection.
    pub connection_id: Uuid,
    /// What it synchronizes.
    pub kind: JobKind,
    /// The attempt this worker holds: every later write names it.
    pub attempt: i32,
    /// Where a previous attempt stopped (the last confirmed point), if any.
    pub checkpoint: Option<serde_json::Value>,
    /// Progress of previous attempts.
    pub counts: Counts,
    /// Retries spent after attempts that confirmed writes.
    pub retries_with_progress: i32,
    /// Retries spent after attempts that confirmed nothing.
    pub retries_without_progress: i32,
    /// The run's area.
    pub area: Area,
    /// Timeframe start (inclusive).
    pub timeframe_start: Option<DateTime<Utc>>,
    /// Timeframe end (exclusive).
    pub timeframe_end: Option<DateTime<Utc>>,
    /// Full or incremental.
    pub full_sync: bool,
    /// Incremental runs: read changes from here.
    pub updated_from: Option<DateTime<Utc>>,
    /// Write even unchanged records.
    pub rewrite_unchanged: bool,
    /// A check run: read both sides, report, write nothing to Salesforce or the ledger.
    pub check_only: bool,
    /// Unenroll even above the threshold (a confirmed Resynchronize).
    pub confirm_unenrollments: bool,
    /// The connection's unenrollment guard.
    pub unenrollment_guard: UnenrollmentGuard,
    /// When the run was created.
    pub run_create_time: DateTime<Utc>,
    /// The connection's tenant: its Docebo call budget is the tenant's own ([`BudgetKey`]).
    pub tenant: String,
    /// The Docebo platform whose call budget the job spends.
    pub docebo_platform: String,
    /// That platform's budget.
    pub docebo_calls_per_hour: i32,
    /// What to do with enrollments that disappear.
    pub unenrollment_policy: UnenrollmentPolicy,
    /// When the connection's first enrollment sync completed, if it has.
    pub enrollments_first_success: Option<DateTime<Utc>>,
    /// Webhook runs: the records the events named (see [`crate::realtime::Targets`]).
    pub targets: Option<serde_json::Value>,
    /// The run's W3C trace id: the job's log lines carry it.
    pub trace_id: String,
    /// The courses area's category filter (empty: every course).
    pub course_category_ids: Vec<i64>,
}

impl ClaimedJob {
    /// Whether this run reads the whole of its kind's listing (a full run over all time, not a
    /// webhook run): only such a run may compare what Salesforce holds with the ledger.
    pub fn compares_everything(&self) -> bool {
        self.full_sync
            && self.timeframe_start.is_none()
            && self.timeframe_end.is_none()
            && self.updated_from.is_none()
            && self.targets.is_none()
    }

    /// Whether this run compares the full listing with the ledger to find unenrollments: a full run
    /// over all time (a timeframe must not unenroll what lies outside it), after the first
    /// completed enrollment sync (before it nothing is tracked).
    pub fn tracks_unenrollments(&self) -> bool {
        self.may_unenroll() && self.compares_everything()
    }

    /// Whether unenrollments may be written at all: an enrollment run after the first completed
    /// enrollment sync (before it nothing is tracked).
    pub fn may_unenroll(&self) -> bool {
        self.kind.spec().unenrolls
            && self
                .enrollments_first_success
                .is_some_and(|first| first < self.run_create_time)
    }
}

fn claimed_from_row(row: &Row) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        connection_id: row.try_get("connection_id")?,
        kind: JobKind::parse(row.try_get("kind")?)?,
        attempt: row.try_get("attempt")?,
        checkpoint: row.try_get("checkpoint")?,
        counts: crate::runs::counts_from_row(row)?,
        retries_with_progress: row.try_get("retries_with_progress")?,
        retries_without_progress: row.try_get("retries_without_progress")?,
        area: Area::parse(row.try_get("area")?)?,
        timeframe_start: row.try_get("timeframe_start")?,
        timeframe_end: row.try_get("timeframe_end")?,
        full_sync: row.try_get("full_sync")?,
        updated_from: row.try_get("updated_from")?,
        rewrite_unchanged: row.try_get("rewrite_unchanged")?,
        check_only: row.try_get("check_only")?,
        confirm_unenrollments: row.try_get("confirm_unenrollments")?,
        unenrollment_guard: UnenrollmentGuard {
            max_percent: row.try_get("unenroll_max_percent")?,
            min_records: row.try_get("unenroll_min_records")?,
        },
        run_create_time: row.try_get("run_create_time")?,
        tenant: row.try_get("tenant")?,
        docebo_platform: row.try_get("docebo_platform")?,
        docebo_calls_per_hour: row.try_get("docebo_calls_per_hour")?,
        unenrollment_policy: UnenrollmentPolicy::parse(row.try_get("unenrollment_policy")?)?,
        enrollments_first_success: row.try_get("enrollments_first_success")?,
        targets: row.try_get("targets")?,
        trace_id: row.try_get("trace_id")?,
        course_category_ids: row
            .try_get::<_, Option<Vec<i64>>>("course_category_ids")?
            .unwrap_or_default(),
    })
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The terms a worker holds its jobs on, given with every claim and heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// How long a lease lasts from the claim or the last heartbeat.
    pub length: Duration,
    /// How long after the lease runs out the job still waits before another worker may take it
    /// over: the longest Salesforce write the holder may have in flight (its request timeout), so
    /// a write it started before its lease ran out has ended or timed out before a new attempt
    /// writes the same records. The row records it (`takeover_after`): whoever takes the job over
    /// need not know the holder's settings.
    pub write_grace: Duration,
}

/// Claims up to `limit` jobs for `owner` under `lease`, and logs each start. Must run in a
/// transaction (the claim and its log commit together). The lease runs from the transaction's
/// start (Postgres's `now()`).
pub async fn claim(
    client: &Transaction<'_>,
    owner: &str,
    lease: Lease,
    limit: i64,
) -> Result<Vec<ClaimedJob>> {
    let rows = client
        .query(
            CLAIM,
            &[
                &owner,
                &secs(lease.length),
                &limit,
                &secs(lease.write_grace),
            ],
        )
        .await?;
    let jobs: Vec<ClaimedJob> = rows.iter().map(claimed_from_row).collect::<Result<_>>()?;
    for job in &jobs {
        let message = if job.attempt > 1 {
            format!("{} job resumed", job.kind)
        } else {
            format!("{} job started", job.kind)
        };
        logs::append(
            client,
            job.connection_id,
            &[NewLogEvent::new(LogLevel::Info, message)
                .job(job.run_id, job.id)
                .field("attempt", job.attempt)
                .field("worker", owner)],
        )
        .await?;
    }
    Ok(jobs)
}

/// What a heartbeat learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease was extended; the run is in this state (stopping: stop the job).
    Held(RunState),
    /// The job is no longer this attempt's: stop without writing anything.
    Lost,
}

/// Extends a job's lease (from the statement's start), if this attempt still holds it.
pub async fn heartbeat(
    client: &impl GenericClient,
    job_id: Uuid,
    attempt: i32,
    lease: Lease,
) -> Result<Heartbeat> {
    let row = client
        .query_opt(
            "UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $3), \
                 takeover_after = now() + make_interval(secs => $3 + $4::float8), heartbeat_time = now() \
             FROM runs r WHERE j.id = $1 AND j.attempt = $2 AND j.state = 'running' AND r.id = j.run_id \
             RETURNING r.state",
            &[
                &job_id,
                &attempt,
                &secs(lease.length),
                &secs(lease.write_grace),
            ],
        )
        .await?;
    match row {
        Some(row) => Ok(Heartbeat::Held(RunState::parse(row.try_get(0)?)?)),
        None => Ok(Heartbeat::Lost),
    }
}

/// Proof that a transaction holds a job's row for the attempt a worker claimed: the job writes
/// take one, and only [`fence`] makes one, so a write about a job cannot forget the fence.
pub struct Fenced<'a> {
    pub(crate) tx: &'a Transaction<'a>,
    pub(crate) job: &'a ClaimedJob,
}

/// Locks the job row for the rest of the transaction if this attempt still holds it. Every
/// transaction that writes about a job starts here; `None` means the attempt lost the job: roll
/// back and stop.
pub async fn fence<'a>(tx: &'a Transaction<'a>, job: &'a ClaimedJob) -> Result<Option<Fenced<'a>>> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running' FOR UPDATE",
            &[&job.id, &job.attempt],
        )
        .await?;
    Ok(row.map(|_| Fenced { tx, job }))
}

/// The status a job shows while it waits for its platform's Docebo call budget.
pub const WAITING_FOR_BUDGET: &str = "waiting for docebo call budget";
/// The status a job shows while Docebo asked every caller of its platform to slow down.
pub const WAITING_FOR_DOCEBO: &str = "waiting: docebo asked to slow down (429/503)";

/// Running jobs waiting for a platform's Docebo call budget (spent, or paused by Docebo), all
/// connections: the metrics read it at scrape time.
pub async fn jobs_waiting_on_budget(client: &impl GenericClient) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE state = 'running' AND status_message IN ($1, $2)",
            &[&WAITING_FOR_BUDGET, &WAITING_FOR_DOCEBO],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Progress confirmed by one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Counts to add.
    pub delta: Counts,
    /// The expected total, when Docebo said (replaces the stored one).
    pub expected: Option<i64>,
    /// The new checkpoint, when it moved.
    pub checkpoint: Option<serde_json::Value>,
    /// What the job is doing now.
    pub status_message: Option<String>,
}

/// Records a batch's progress (counts, checkpoint, status) in a fenced transaction.
pub async fn progress(fenced: &Fenced<'_>, progress: &Progress) -> Result<()> {
    let job = fenced.job;
    fenced
        .tx
        .execute(
            "UPDATE jobs SET read_count = read_count + $3, written_count = written_count + $4, \
                 unchanged_count = unchanged_count + $5, failed_count = failed_count + $6, \
                 expected_count = coalesce($7, expected_count), checkpoint = coalesce($8, checkpoint), \
                 status_message = coalesce($9, status_message), created_count = created_count + $10, \
                 repaired_count = repaired_count + $11, unenrolled_count = unenrolled_count + $12 \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
            &[
                &job.id,
                &job.attempt,
                &progress.delta.read,
                &progress.delta.written,
                &progress.delta.unchanged,
                &progress.delta.failed,
                &progress.expected,
                &progress.checkpoint,
                &progress.status_message,
                &progress.delta.created,
                &progress.delta.repaired,
                &progress.delta.unenrolled,
            ],
        )
        .await?;
    Ok(())
}

/// Sets what the job is waiting for (e.g. "waiting for docebo call budget"), fenced.
pub async fn set_status(
    client: &impl GenericClient,
    job_id: Uuid,
    attempt: i32,
    message: &str,
) -> Result<bool> {
    let updated = client
        .execute(
            "UPDATE jobs SET status_message = $3 WHERE id = $1 AND attempt = $2 AND state = 'running' \
               AND status_message <> $3",
            &[&job_id, &attempt, &message],
        )
        .await?;
    if updated == 1 {
        return Ok(true);
    }
    // Nothing changed: either the message was already set or the attempt lost the job.
    let row = client
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'",
            &[&job_id, &attempt],
        )
        .await?;
    Ok(row.is_some())
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every record was handled (succeeded, or succeeded with errors when any record failed).
    Done,
    /// Stop was asked.
    Stopped,
    /// The job cannot succeed.
    Failed(String),
}

/// Ends a job, fenced by the attempt, logs it, and ends the run when this was its last job
/// ([`runs::finish_if_done`]). Returns whether the attempt still held the job.
///
/// It locks the area's configuration row first, as Stop does: ending a job may end the run (its
/// row) and log (the connection's row), and Stop changes the run and logs too, so without one
/// first lock each could hold what the other waits for, a deadlock that fails one side.
pub async fn finish(client: &Transaction<'_>, job: &ClaimedJob, outcome: &Outcome) -> Result<bool> {
    crate::areas::lock(client, job.connection_id, job.area).await?;
    let (state_sql, error): (&str, Option<&str>) = match outcome {
        Outcome::Done => (
            "CASE WHEN failed_count > 0 THEN 'succeeded_with_errors' ELSE 'succeeded' END",
            None,
        ),
        Outcome::Stopped => ("'stopped'", None),
        Outcome::Failed(message) => ("'failed'", Some(message.as_str())),
    };
    let sql = format!(
        "UPDATE jobs SET state = {state_sql}, lease_owner = NULL, lease_expires_at = NULL, takeover_after = NULL, end_time = now(), \
             error_message = $3, status_message = CASE WHEN $3::text IS NULL THEN '' ELSE $3 END \
         WHERE id = $1 AND attempt = $2 AND state = 'running' \
         RETURNING state, read_count, written_count, unchanged_count, failed_count, repaired_count, \
             unenrolled_count"
    );
    let Some(row) = client
        .query_opt(&sql, &[&job.id, &job.attempt, &error])
        .await?
    else {
        return Ok(false);
    };
    let state: String = row.try_get(0)?;
    // A check run's snapshot served its listing; a stopped or failed job's is of no use; so are
    // its seen marks.
    client
        .execute(
            "WITH snapshot AS (DELETE FROM salesforce_snapshot WHERE job_id = $1) \
             DELETE FROM ledger_seen WHERE job_id = $1",
            &[&job.id],
        )
        .await?;
    let (level, message) = match outcome {
        Outcome::Failed(_) => (LogLevel::Error, format!("{} job failed", job.kind)),
        Outcome::Stopped => (LogLevel::Info, format!("{} job stopped", job.kind)),
        Outcome::Done => (
            LogLevel::Info,
            format!("{} job finished: {state}", job.kind),
        ),
    };
    let mut event = NewLogEvent::new(level, message)
        .job(job.run_id, job.id)
        .field("state", state.as_str())
        .field("read", row.try_get::<_, i64>(1)?)
        .field("written", row.try_get::<_, i64>(2)?)
        .field("unchanged", row.try_get::<_, i64>(3)?)
        .field("failed", row.try_get::<_, i64>(4)?)
        .field("repaired", row.try_get::<_, i64>(5)?)
        .field("unenrolled", row.try_get::<_, i64>(6)?);
    if let Some(error) = error {
        event = event
            .field("error", error)
            .code(ErrorCode::JobFailed.as_str());
    }
    logs::append(client, job.connection_id, &[event]).await?;
    runs::finish_if_done(client, job.run_id).await?;
    // Jobs waiting for this one may be claimable now.
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_JOBS, &job.run_id.to_string()],
        )
        .await?;
    Ok(true)
}

/// Puts a job back in the queue after a transient failure, fenced: claimable again after `delay`,
/// the checkpoint kept, one retry spent from the budget that applies. Logs the cause.
pub async fn retry_later(
    client: &impl GenericClient,
    job: &ClaimedJob,
    made_progress: bool,
    delay: Duration,
    cause: &str,
) -> Result<bool> {
    let updated = client
        .execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, takeover_after = NULL, \
                 not_before = now() + make_interval(secs => $3), \
                 retries_with_progress = retries_with_progress + CASE WHEN $4 THEN 1 ELSE 0 END, \
                 retries_without_progress = retries_without_progress + CASE WHEN $4 THEN 0 ELSE 1 END, \
                 status_message = $5 \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
            &[&job.id, &job.attempt, &secs(delay), &made_progress, &format!("retrying: {cause}")],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    logs::append(
        client,
        job.connection_id,
        &[
            NewLogEvent::new(LogLevel::Warn, format!("{} job will retry", job.kind))
                .job(job.run_id, job.id)
                .field("cause", cause)
                .field("delay_ms", delay.as_millis() as i64)
                .field("made_progress", made_progress),
        ],
    )
    .await?;
    Ok(true)
}

/// Hands a job back (worker shutting down): queued again at once, lease cleared, attempt and
/// checkpoint kept, no retry spent.
pub async fn hand_back(client: &impl GenericClient, job: &ClaimedJob) -> Result<bool> {
    let updated = client
        .execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, takeover_after = NULL, not_before = now(), \
                 status_message = 'handed back by a worker shutting down' \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
            &[&job.id, &job.attempt],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    logs::append(
        client,
        job.connection_id,
        &[
            NewLogEvent::new(LogLevel::Info, format!("{} job handed back", job.kind))
                .job(job.run_id, job.id),
        ],
    )
    .await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_JOBS, &job.run_id.to_string()],
        )
        .await?;
    Ok(true)
}

/// Ends the jobs of stopping runs that no worker will stop: running ones another worker may take
/// over (`taken_over!`: their worker died, and its writes in flight have ended) and queued ones
/// (handed back or waiting to retry). Ends their runs when done. Returns how many jobs it stopped.
pub async fn reap_stopped(client: &Transaction<'_>) -> Result<u64> {
    let rows = client
        .query(
            concat!(
                "UPDATE jobs j SET state = 'stopped', lease_owner = NULL, lease_expires_at = NULL, \
                     takeover_after = NULL, end_time = now(), status_message = 'stopped' \
                 FROM runs r WHERE r.id = j.run_id AND r.state = 'stopping' \
                   AND (j.state = 'queued' OR ",
                taken_over!(),
                ") RETURNING j.id, j.run_id, j.connection_id, j.kind"
            ),
            &[],
        )
        .await?;
    let mut runs_touched: Vec<Uuid> = Vec::new();
    for row in &rows {
        let job_id: Uuid = row.try_get(0)?;
        let run_id: Uuid = row.try_get(1)?;
        let connection_id: Uuid = row.try_get(2)?;
        let kind: &str = row.try_get(3)?;
        logs::append(
            client,
            connection_id,
            &[NewLogEvent::new(LogLevel::Info, format!("{kind} job stopped")).job(run_id, job_id)],
        )
        .await?;
        if !runs_touched.contains(&run_id) {
            runs_touched.push(run_id);
        }
    }
    for run_id in runs_touched {
        runs::finish_if_done(client, run_id).await?;
    }
    Ok(rows.len() as u64)
}

/// Appends log events about a job in a fenced transaction.
pub async fn log(fenced: &Fenced<'_>, events: Vec<NewLogEvent>) -> Result<()> {
    let job = fenced.job;
    let events: Vec<NewLogEvent> = events
        .into_iter()
        .map(|event| event.job(job.run_id, job.id))
        .collect();
    logs::append(fenced.tx, job.connection_id, &events).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The Docebo call budget

/// Whose Docebo call bucket a call is taken from: one tenant's calls to one platform. Keyed by
/// the platform alone, any tenant could name another tenant's Docebo URL and draw down (or pause)
/// that tenant's calls; keyed by the tenant too, a tenant spends only its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    /// The tenant whose connections spend it.
    pub tenant: String,
    /// The Docebo platform (`ClaimedJob::docebo_platform`).
    pub platform: String,
}

/// A grant of Docebo calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetGrant {
    /// Calls granted (0: wait).
    pub granted: i32,
    /// When nothing was granted: how long until a call may be.
    pub wait: Duration,
    /// Whether the platform is paused (Docebo said 429 or 503).
    pub paused: bool,
}

/// Takes up to `want` calls from a tenant's ($5) token bucket for a platform ($1) in one guarded
/// statement: the bucket refills continuously at `calls_per_hour` ($2) and holds at most `capacity` ($4) calls, so after
/// an idle spell no more than a burst goes out at once (Docebo's own limiter is a leaky bucket
/// with a small burst, and refuses the rest with 429).
const TAKE_BUDGET: &str = "\
WITH cur AS ( \
    SELECT b.tenant, b.platform, b.paused_until, \
           least($4::float8, b.tokens + greatest(0, extract(epoch FROM now() - b.refill_time)::float8) \
                 * $2::float8 / 3600.0) AS avail \
    FROM docebo_budgets b WHERE b.tenant = $5 AND b.platform = $1 FOR UPDATE), \
g AS ( \
    SELECT cur.*, CASE WHEN cur.paused_until > now() THEN 0 \
                       ELSE greatest(0, least($3::int, floor(cur.avail)::int)) END AS n FROM cur) \
UPDATE docebo_budgets b SET tokens = g.avail - g.n, refill_time = now(), calls_per_hour = ($2::float8)::int \
FROM g WHERE b.tenant = g.tenant AND b.platform = g.platform \
RETURNING g.n, g.avail, extract(epoch FROM g.paused_until - now())::float8 AS paused_secs";

/// A platform's Docebo call allowance: the rate its shared bucket refills at and the burst it
/// holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Calls an hour (the connection's `docebo_calls_per_hour`).
    pub calls_per_hour: i32,
    /// Calls that may go out at once after an idle spell (the workers' `docebo_burst`), at most
    /// the hour's calls.
    pub burst: i32,
}

impl Allowance {
    /// The calls the bucket holds at most: the burst, within 1 and the hour's calls.
    pub fn capacity(self) -> i32 {
        let per_hour = self.calls_per_hour.max(1);
        self.burst.clamp(1, per_hour)
    }
}

/// Takes up to `want` calls from a tenant's budget for a platform.
pub async fn take_budget(
    client: &impl GenericClient,
    key: &BudgetKey,
    allowance: Allowance,
    want: i32,
) -> Result<BudgetGrant> {
    let rate = f64::from(allowance.calls_per_hour.max(1));
    let capacity = f64::from(allowance.capacity());
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&key.platform, &rate, &want, &capacity, &key.tenant];
    let mut row = client.query_opt(TAKE_BUDGET, &params).await?;
    if row.is_none() {
        // The tenant's first call to the platform: its bucket starts full (a burst's worth).
        client
            .execute(
                "INSERT INTO docebo_budgets (tenant, platform, calls_per_hour, tokens, refill_time) \
                 VALUES ($4, $1, $2::int, $3::float8, now()) ON CONFLICT (tenant, platform) DO NOTHING",
                &[&key.platform, &allowance.calls_per_hour.max(1), &capacity, &key.tenant],
            )
            .await?;
        row = client.query_opt(TAKE_BUDGET, &params).await?;
    }
    let Some(row) = row else {
        return Ok(BudgetGrant {
            granted: 0,
            wait: Duration::from_millis(100),
            paused: false,
        });
    };
    let granted: i32 = row.try_get(0)?;
    let avail: f64 = row.try_get(1)?;
    let paused_secs = row
        .try_get::<_, Option<f64>>(2)?
        .filter(|seconds| *seconds > 0.0);
    let wait = match paused_secs {
        Some(seconds) => Duration::from_secs_f64(seconds.max(0.01)),
        None if granted == 0 => {
            Duration::from_secs_f64(((1.0 - avail.fract()) * 3600.0 / rate).max(0.01))
        }
        None => Duration::ZERO,
    };
    Ok(BudgetGrant {
        granted,
        wait,
        paused: paused_secs.is_some(),
    })
}

/// Gives back calls a job leased but did not spend (it ended, or held them too long), so no call
/// of the hour is lost; the bucket still holds at most its capacity.
pub async fn return_budget(
    client: &impl GenericClient,
    key: &BudgetKey,
    allowance: Allowance,
    calls: i32,
) -> Result<()> {
    if calls <= 0 {
        return Ok(());
    }
    client
        .execute(
            "UPDATE docebo_budgets SET tokens = least($3::float8, tokens + $2::int) \
             WHERE platform = $1 AND tenant = $4",
            &[
                &key.platform,
                &calls,
                &f64::from(allowance.capacity()),
                &key.tenant,
            ],
        )
        .await?;
    Ok(())
}

/// Pauses every call of a tenant to a platform until `now() + pause` (Docebo said 429 or 503); a
/// longer pause already set stays.
pub async fn pause_docebo(
    client: &impl GenericClient,
    key: &BudgetKey,
    pause: Duration,
) -> Result<()> {
    client
        .execute(
            "UPDATE docebo_budgets SET paused_until = greatest(paused_until, now() + make_interval(secs => $2)) \
             WHERE platform = $1 AND tenant = $3",
            &[&key.platform, &secs(pause), &key.tenant],
        )
        .await?;
    Ok(())
}

/// Pauses a connection's Salesforce writes until `now() + pause` (REQUEST_LIMIT_EXCEEDED).
pub async fn pause_salesforce(
    client: &impl GenericClient,
    connection_id: Uuid,
    pause: Duration,
) -> Result<()> {
    client
        .execute(
            "UPDATE connections SET salesforce_paused_until = \
                 greatest(salesforce_paused_until, now() + make_interval(secs => $2)) WHERE id = $1",
            &[&connection_id, &secs(pause)],
        )
        .await?;
    Ok(())
}

/// How long a connection's Salesforce writes are still paused (zero: not paused).
pub async fn salesforce_pause_left(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<Duration> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM salesforce_paused_until - now())::float8 FROM connections \
             WHERE id = $1 AND salesforce_paused_until > now()",
            &[&connection_id],
        )
        .await?;
    match row {
        Some(row) => Ok(Duration::from_secs_f64(row.try_get::<_, f64>(0)?.max(0.0))),
        None => Ok(Duration::ZERO),
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// What the ledger knows of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The Salesforce record id, when known.
    pub salesforce_id: Option<String>,
    /// The hash of the values last written.
    pub value_hash: Vec<u8>,
    /// Whether the record was marked unenrolled (or deleted) since.
    pub unenrolled: bool,
}

/// Reads the ledger entries of some records of one object.
pub async fn ledger_lookup(
    client: &impl GenericClient,
    connection_id: Uuid,
    object: &str,
    keys: &[String],
) -> Result<HashMap<String, LedgerEntry>> {
    let rows = client
        .query(
            "SELECT record_key, salesforce_id, value_hash, unenrolled_at IS NOT NULL FROM ledger \
             WHERE connection_id = $1 AND object = $2 AND record_key = ANY($3)",
            &[&connection_id, &object, &keys],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                LedgerEntry {
                    salesforce_id: row.try_get(1)?,
                    value_hash: row.try_get(2)?,
                    unenrolled: row.try_get(3)?,
                },
            ))
        })
        .collect()
}

/// What a job needs to know of an object's ledger before it lists, read in one round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerState {
    /// The ledger holds no record of the object (its first sync): a job that starts so can skip
    /// looking its records up, as nothing it reads can be there but its own writes.
    pub empty: bool,
    /// The connection keeps records of the object to read again (`retry_records`): a job that
    /// finds none need not forget the keys it writes.
    pub retries_pending: bool,
}

/// Reads an object's [`LedgerState`] for a connection.
pub async fn ledger_state(
    client: &impl GenericClient,
    connection_id: Uuid,
    object: &str,
) -> Result<LedgerState> {
    let row = client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM ledger WHERE connection_id = $1 AND object = $2), \
                    EXISTS (SELECT 1 FROM retry_records WHERE connection_id = $1 AND object = $2)",
            &[&connection_id, &object],
        )
        .await?;
    Ok(LedgerState {
        empty: row.try_get(0)?,
        retries_pending: row.try_get(1)?,
    })
}

/// Keeps records of the fenced job for a retry at the end of its listing (`(record key,
/// record)`); a key kept twice keeps its latest record.
pub async fn deferred_add(
    fenced: &Fenced<'_>,
    records: &[(String, serde_json::Value)],
) -> Result<()> {
    let (client, job_id) = (fenced.tx, fenced.job.id);
    if records.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = records.iter().map(|(key, _)| key.as_str()).collect();
    let values: Vec<&serde_json::Value> = records.iter().map(|(_, value)| value).collect();
    client
        .execute(
            "INSERT INTO job_deferred (job_id, record_key, record) \
             SELECT $1, k, r FROM unnest($2::text[], $3::jsonb[]) AS t(k, r) \
             ON CONFLICT (job_id, record_key) DO UPDATE SET record = excluded.record",
            &[&job_id, &keys, &values],
        )
        .await?;
    Ok(())
}

/// The next records a job kept for a retry, in key order.
pub async fn deferred_next(
    client: &impl GenericClient,
    job_id: Uuid,
    limit: i64,
) -> Result<Vec<serde_json::Value>> {
    let rows = client
        .query(
            "SELECT record FROM job_deferred WHERE job_id = $1 ORDER BY record_key LIMIT $2",
            &[&job_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(crate::Error::from))
        .collect()
}

/// Forgets records the fenced job retried.
pub async fn deferred_remove(fenced: &Fenced<'_>, keys: &[String]) -> Result<()> {
    let (client, job_id) = (fenced.tx, fenced.job.id);
    if keys.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "DELETE FROM job_deferred WHERE job_id = $1 AND record_key = ANY($2)",
            &[&job_id, &keys],
        )
        .await?;
    Ok(())
}

/// One record Salesforce confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerWrite {
    /// The external id value.
    pub record_key: String,
    /// The Salesforce id, when the answer carried one.
    pub salesforce_id: Option<String>,
    /// The hash of the values written.
    pub value_hash: Vec<u8>,
    /// The Docebo change time of the values written.
    pub docebo_updated_at: Option<DateTime<Utc>>,
    /// The version of the connection's mapping that wrote them (0: the default mapping).
    pub mapping_version: Option<i32>,
}

/// Records writes Salesforce confirmed for the fenced job, and keeps `ledger_counts` in step in the
/// same statement. The records are marked present in the job's run's listing, listed by its kind
/// (`scope`). `maybe_new` says the ledger
/// held none of the object's records when the job started (a first sync): the rows are then
/// inserted plainly (at a million records, a fifth of the database's time goes to these rows, and
/// an upsert costs half as much again), with the upsert only when a key is there after all (a
/// record listed twice); the insert's savepoint is why it needs the fenced transaction.
pub async fn ledger_record(
    fenced: &Fenced<'_>,
    area: Area,
    object: &str,
    writes: &[LedgerWrite],
    maybe_new: bool,
) -> Result<()> {
    let client = fenced.tx;
    let (connection_id, seen_run_id, scope) = (
        fenced.job.connection_id,
        fenced.job.run_id,
        fenced.job.kind.as_str(),
    );
    const INSERT: &str = "WITH ins AS ( \
             INSERT INTO ledger (connection_id, object, record_key, salesforce_id, value_hash, \
                 docebo_updated_at, seen_run_id, unenrolled_at, write_time, scope, mapping_version) \
             SELECT $1, $3, t.record_key, t.salesforce_id, t.value_hash, t.updated_at, $8, NULL, now(), $9, \
                 t.mapping_version \
             FROM unnest($4::text[], $5::text[], $6::bytea[], $7::timestamptz[], $10::int4[]) \
                 AS t(record_key, salesforce_id, value_hash, updated_at, mapping_version) \
             RETURNING 1) \
         INSERT INTO ledger_counts AS c (connection_id, area, object, records) \
         SELECT $1, $2, $3, count(*) FROM ins \
         ON CONFLICT (connection_id, area, object) DO UPDATE SET records = c.records + excluded.records";
    const UPSERT: &str = "WITH up AS ( \
             INSERT INTO ledger AS l (connection_id, object, record_key, salesforce_id, value_hash, \
                 docebo_updated_at, seen_run_id, unenrolled_at, write_time, scope, mapping_version) \
             SELECT $1, $3, t.record_key, t.salesforce_id, t.value_hash, t.updated_at, $8, NULL, now(), $9, \
                 t.mapping_version \
             FROM unnest($4::text[], $5::text[], $6::bytea[], $7::timestamptz[], $10::int4[]) \
                 AS t(record_key, salesforce_id, value_hash, updated_at, mapping_version) \
             ON CONFLICT (connection_id, object, record_key) DO UPDATE SET \
                 salesforce_id = coalesce(excluded.salesforce_id, l.salesforce_id), \
                 value_hash = excluded.value_hash, docebo_updated_at = excluded.docebo_updated_at, \
                 seen_run_id = excluded.seen_run_id, unenrolled_at = NULL, write_time = now(), \
                 scope = excluded.scope, mapping_version = excluded.mapping_version \
             RETURNING (xmax = 0) AS inserted) \
         INSERT INTO ledger_counts AS c (connection_id, area, object, records) \
         SELECT $1, $2, $3, count(*) FILTER (WHERE inserted) FROM up \
         ON CONFLICT (connection_id, area, object) DO UPDATE SET records = c.records + excluded.records";
    if writes.is_empty() {
        return Ok(());
    }
    let batch = LedgerBatch {
        connection_id,
        area,
        object,
        writes,
        seen_run_id,
        scope,
    };
    if maybe_new {
        client.batch_execute("SAVEPOINT ledger_insert").await?;
        match batch.run(client, INSERT).await {
            Ok(_) => {
                client
                    .batch_execute("RELEASE SAVEPOINT ledger_insert")
                    .await?;
                return Ok(());
            }
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT ledger_insert")
                    .await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    batch.run(client, UPSERT).await?;
    Ok(())
}

/// A batch of confirmed writes for one of the ledger's write statements.
struct LedgerBatch<'a> {
    connection_id: Uuid,
    area: Area,
    object: &'a str,
    writes: &'a [LedgerWrite],
    seen_run_id: Uuid,
    scope: &'a str,
}

impl LedgerBatch<'_> {
    /// Runs a write statement over the batch, in key order (the primary key's B-tree takes
    /// neighbouring keys on the same pages, and two writers of one object lock rows in the same
    /// order).
    async fn run(
        &self,
        client: &impl GenericClient,
        sql: &str,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let mut writes: Vec<&LedgerWrite> = self.writes.iter().collect();
        writes.sort_unstable_by(|a, b| a.record_key.cmp(&b.record_key));
        let keys: Vec<&str> = writes.iter().map(|w| w.record_key.as_str()).collect();
        let ids: Vec<Option<&str>> = writes.iter().map(|w| w.salesforce_id.as_deref()).collect();
        let hashes: Vec<&[u8]> = writes.iter().map(|w| w.value_hash.as_slice()).collect();
        let times: Vec<Option<DateTime<Utc>>> =
            writes.iter().map(|w| w.docebo_updated_at).collect();
        let versions: Vec<Option<i32>> = writes.iter().map(|w| w.mapping_version).collect();
        client
            .execute(
                sql,
                &[
                    &self.connection_id,
                    &self.area.as_str(),
                    &self.object,
                    &keys,
                    &ids,
                    &hashes,
                    &times,
                    &self.seen_run_id,
                    &self.scope,
                    &versions,
                ],
            )
            .await
    }
}

// The seen set: the ledger records a job's listing contained and it did not write. A full
// comparison of an unchanged platform marks every record so; the marks are scratch in the
// unlogged `ledger_seen` (no WAL: the ledger is not rewritten to say "seen"), and the records the
// run wrote carry its id in the ledger (`seen_run_id`, set by the write itself). A crash of
// Postgres empties an unlogged table, and so the set: `jobs.seen_marks` (logged, moved in the
// transaction that makes the marks) says how many the job made, every statement that reads the
// set for an unenrollment first checks it is still there ([`Seen::Lost`] otherwise), and the job
// then reads its listing again. Each check runs on the connection of the read it guards: a crash
// between the two ends that connection, so the read fails instead of seeing an emptied set.

/// What a read of a job's seen set found: the answer, or that the set lost marks the job made
/// (a crash of Postgres emptied it): nothing may be unenrolled on it.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen<T> {
    /// The set holds every mark the job made.
    Whole(T),
    /// The set lost marks: the job must read its listing again.
    Lost,
}

/// Marks records as present in the fenced job's listing without writing them (unchanged, failed
/// or deferred ones), so that the unenrollment comparison does not take them for gone, and counts
/// the new marks in the job's row (a key marked twice counts once). The job's kind is the scope
/// that lists them: a ledger row of another scope (or none) takes it, the one change to the
/// ledger, made only when the scope differs.
pub async fn ledger_mark_seen(fenced: &Fenced<'_>, object: &str, keys: &[String]) -> Result<()> {
    let job = fenced.job;
    if keys.is_empty() {
        return Ok(());
    }
    fenced
        .tx
        .execute(
            "WITH scoped AS (UPDATE ledger SET scope = $4 WHERE connection_id = $1 AND object = $2 \
                   AND record_key = ANY($3) AND scope IS DISTINCT FROM $4), \
             marked AS (INSERT INTO ledger_seen (job_id, record_key) \
                   SELECT $5, k FROM unnest($3::text[]) AS t(k) ON CONFLICT DO NOTHING RETURNING 1) \
             UPDATE jobs SET seen_marks = seen_marks + (SELECT count(*) FROM marked) \
             WHERE id = $5 AND EXISTS (SELECT 1 FROM marked)",
            &[
                &job.connection_id,
                &object,
                &keys,
                &job.kind.as_str(),
                &job.id,
            ],
        )
        .await?;
    Ok(())
}

/// Whether a job's seen set holds every mark the job made: counts the set (`whole`), or only
/// checks that a job that made marks still has some (one index probe: a crash empties the whole
/// table, so this guards each batch a job reads while a whole count guards its phase).
async fn seen_kept(client: &impl GenericClient, job_id: Uuid, whole: bool) -> Result<bool> {
    let sql = if whole {
        "SELECT j.seen_marks = (SELECT count(*) FROM ledger_seen s WHERE s.job_id = j.id) \
         FROM jobs j WHERE j.id = $1"
    } else {
        "SELECT j.seen_marks = 0 OR EXISTS (SELECT 1 FROM ledger_seen s WHERE s.job_id = j.id) \
         FROM jobs j WHERE j.id = $1"
    };
    let row = client.query_opt(sql, &[&job_id]).await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => false,
    })
}

/// Whether a job's seen set holds every mark the job made (counted: a job checks this before it
/// trusts a set it built earlier, e.g. when it resumes).
pub async fn seen_whole(client: &impl GenericClient, job_id: Uuid) -> Result<bool> {
    seen_kept(client, job_id, true).await
}

/// Forgets the fenced job's seen marks (its set lost some: it reads its listing again).
pub async fn seen_reset(fenced: &Fenced<'_>) -> Result<()> {
    fenced
        .tx
        .execute(
            "WITH cleared AS (DELETE FROM ledger_seen WHERE job_id = $1) \
             UPDATE jobs SET seen_marks = 0 WHERE id = $1",
            &[&fenced.job.id],
        )
        .await?;
    Ok(())
}

/// The condition on a ledger row `l` that the job's run (parameter `$run`) did not write it and
/// the job (`$job`) did not mark it seen.
fn unseen_by(run: u8, job: u8) -> String {
    format!(
        "l.seen_run_id IS DISTINCT FROM ${run} AND NOT EXISTS \
         (SELECT 1 FROM ledger_seen s WHERE s.job_id = ${job} AND s.record_key = l.record_key)"
    )
}

/// The condition on a session-enrollment ledger row `l` that a walk of a published sessions
/// reading proves it gone when unseen ([`ListedSessions`]): parameters `$from` (when the reading
/// began; null: the job read its own listing, nothing to add) and `$ids` (the sessions whose
/// rosters the walk read, as text). A key ends with its session id (`{user_id}-{_session_id}`).
fn proven_by(from: u8, ids: u8) -> String {
    format!(
        "(${from}::timestamptz IS NULL OR l.write_time < ${from} \
          OR substring(l.record_key from '-([0-9]+)$') = ANY(${ids}::text[]))"
    )
}

/// The parameters of [`proven_by`].
fn proof_params(listed: Option<&ListedSessions>) -> (Option<DateTime<Utc>>, Vec<String>) {
    match listed {
        Some(listed) => (
            Some(listed.read_from),
            listed.session_ids.iter().map(i64::to_string).collect(),
        ),
        None => (None, Vec::new()),
    }
}

/// Lists, in key order after `after_key`, up to `limit` records of an object, listed by the job's
/// kind, that are live in the ledger but were not in its listing: `(record_key, salesforce_id)`.
pub async fn ledger_unseen(
    client: &impl GenericClient,
    job: &ClaimedJob,
    object: &str,
    after_key: &str,
    limit: i64,
    listed: Option<&ListedSessions>,
) -> Result<Seen<Vec<(String, Option<String>)>>> {
    if !seen_kept(client, job.id, false).await? {
        return Ok(Seen::Lost);
    }
    let sql = format!(
        "SELECT l.record_key, l.salesforce_id FROM ledger l \
         WHERE l.connection_id = $1 AND l.object = $2 AND l.record_key > $4 \
           AND l.unenrolled_at IS NULL AND (l.scope = $6 OR l.scope IS NULL) AND {} AND {} \
         ORDER BY l.record_key LIMIT $5",
        unseen_by(3, 7),
        proven_by(8, 9)
    );
    let (from, ids) = proof_params(listed);
    let rows = client
        .query(
            &sql,
            &[
                &job.connection_id,
                &object,
                &job.run_id,
                &after_key,
                &limit,
                &job.kind.as_str(),
                &job.id,
                &from,
                &ids,
            ],
        )
        .await?;
    let unseen = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_>>()?;
    Ok(Seen::Whole(unseen))
}

/// Of the given records of an object, those live in the ledger that the job's listing did not
/// contain and whose last known Docebo change is not later than their deletion (`fired_at`, per
/// key; none: any): `(record_key, salesforce_id)` (deletions a webhook announced, checked
/// against what the run read since and against a re-creation the deletion arrived after).
pub async fn ledger_unseen_among(
    client: &impl GenericClient,
    job: &ClaimedJob,
    object: &str,
    deletions: &[(String, Option<DateTime<Utc>>)],
) -> Result<Seen<Vec<(String, Option<String>)>>> {
    if !seen_kept(client, job.id, false).await? {
        return Ok(Seen::Lost);
    }
    let keys: Vec<&str> = deletions.iter().map(|(key, _)| key.as_str()).collect();
    let fired: Vec<Option<DateTime<Utc>>> = deletions.iter().map(|(_, at)| *at).collect();
    let sql = format!(
        "SELECT l.record_key, l.salesforce_id FROM ledger l \
         JOIN unnest($4::text[], $5::timestamptz[]) AS d(record_key, fired_at) \
           ON d.record_key = l.record_key \
         WHERE l.connection_id = $1 AND l.object = $2 AND l.unenrolled_at IS NULL AND {} \
           AND (d.fired_at IS NULL OR l.docebo_updated_at IS NULL \
                OR l.docebo_updated_at <= d.fired_at) \
         ORDER BY l.record_key",
        unseen_by(3, 6)
    );
    let rows = client
        .query(
            &sql,
            &[
                &job.connection_id,
                &object,
                &job.run_id,
                &keys,
                &fired,
                &job.id,
            ],
        )
        .await?;
    let unseen = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_>>()?;
    Ok(Seen::Whole(unseen))
}

/// The live records of an object listed by a job's kind that its listing did not contain, and
/// all its live records: the unenrollment threshold's two numbers. Counts the seen set first.
pub async fn ledger_unseen_count(
    client: &impl GenericClient,
    job: &ClaimedJob,
    object: &str,
    listed: Option<&ListedSessions>,
) -> Result<Seen<(i64, i64)>> {
    if !seen_kept(client, job.id, true).await? {
        return Ok(Seen::Lost);
    }
    let sql = format!(
        "SELECT count(*) FILTER (WHERE {} AND {}), count(*) FROM ledger l \
         WHERE l.connection_id = $1 AND l.object = $2 AND l.unenrolled_at IS NULL \
           AND (l.scope = $4 OR l.scope IS NULL)",
        unseen_by(3, 5),
        proven_by(6, 7)
    );
    let (from, ids) = proof_params(listed);
    let row = client
        .query_one(
            &sql,
            &[
                &job.connection_id,
                &object,
                &job.run_id,
                &job.kind.as_str(),
                &job.id,
                &from,
                &ids,
            ],
        )
        .await?;
    Ok(Seen::Whole((row.try_get(0)?, row.try_get(1)?)))
}

/// Marks records unenrolled in the ledger (Salesforce confirmed `Status__c = Unenrolled`). Their
/// hash is cleared, so a re-enrollment with the same values is written again. In the fenced job's
/// transaction, for its connection.
pub async fn ledger_mark_unenrolled(
    fenced: &Fenced<'_>,
    object: &str,
    keys: &[String],
    at: DateTime<Utc>,
) -> Result<()> {
    let (client, connection_id) = (fenced.tx, fenced.job.connection_id);
    client
        .execute(
            "UPDATE ledger SET unenrolled_at = $4, value_hash = '\\x'::bytea, write_time = now() \
             WHERE connection_id = $1 AND object = $2 AND record_key = ANY($3)",
            &[&connection_id, &object, &keys, &at],
        )
        .await?;
    Ok(())
}

/// Removes records Salesforce confirmed deleted, and keeps `ledger_counts` in step. In the fenced
/// job's transaction, for its connection.
pub async fn ledger_delete(
    fenced: &Fenced<'_>,
    area: Area,
    object: &str,
    keys: &[String],
) -> Result<()> {
    let (client, connection_id) = (fenced.tx, fenced.job.connection_id);
    client
        .execute(
            "WITH del AS (DELETE FROM ledger WHERE connection_id = $1 AND object = $3 AND record_key = ANY($4) \
                          RETURNING 1) \
             UPDATE ledger_counts SET records = records - (SELECT count(*) FROM del) \
             WHERE connection_id = $1 AND area = $2 AND object = $3",
            &[&connection_id, &area.as_str(), &object, &keys],
        )
        .await?;
    Ok(())
}

/// Whether the schema the worker needs is there (the server runs the migrations): the tables and
/// the newest columns the worker's statements use (`ledger.scope`, V0002; `runs.targets`, V0003;
/// `docebo_budgets.tenant`, V0011; `jobs.seen_marks` with `ledger_seen`, V0010;
/// `run_listings`, V0009; `ledger.mapping_version`, V0012; `session_readings`, V0013;
/// `docebo_tokens`, V0014; `retry_records.record`, V0015).
pub async fn schema_ready(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = current_schema() \
               AND (table_name, column_name) IN (('jobs', 'checkpoint'), ('ledger', 'scope'), \
                                                ('runs', 'targets'), ('docebo_budgets', 'paused_until'), \
                                                ('docebo_budgets', 'tenant'), ('jobs', 'seen_marks'), \
                                                ('ledger_seen', 'record_key'), ('run_listings', 'connection_id'), \
                                                ('ledger', 'mapping_version'), ('session_readings', 'session_ids'), \
                                                ('docebo_tokens', 'version'), ('retry_records', 'record'))",
            &[],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? == 12)
}

// ---------------------------------------------------------------------------------------------
// What Salesforce holds (the snapshot a full comparison reads in bulk)

/// One record as Salesforce holds it: its key, the hash of its values in the form learnsync
/// writes them, and (check runs) the values themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenRecord {
    /// The external id value.
    pub record_key: String,
    /// The hash of its values, comparable with the ledger's.
    pub value_hash: Vec<u8>,
    /// The values, kept by check runs to name the fields that differ.
    pub fields: Option<serde_json::Value>,
}

/// Forgets the fenced job's snapshot (an earlier attempt's, or one compared).
pub async fn snapshot_clear(fenced: &Fenced<'_>) -> Result<()> {
    fenced
        .tx
        .execute(
            "DELETE FROM salesforce_snapshot WHERE job_id = $1",
            &[&fenced.job.id],
        )
        .await?;
    Ok(())
}

/// Adds records Salesforce was seen to hold to the fenced job's snapshot.
pub async fn snapshot_add(fenced: &Fenced<'_>, records: &[SeenRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = records.iter().map(|r| r.record_key.as_str()).collect();
    let hashes: Vec<&[u8]> = records.iter().map(|r| r.value_hash.as_slice()).collect();
    let fields: Vec<Option<&serde_json::Value>> =
        records.iter().map(|r| r.fields.as_ref()).collect();
    fenced
        .tx
        .execute(
            "INSERT INTO salesforce_snapshot (job_id, record_key, value_hash, fields) \
             SELECT $1, k, h, f FROM unnest($2::text[], $3::bytea[], $4::jsonb[]) AS t(k, h, f) \
             ON CONFLICT (job_id, record_key) DO UPDATE SET value_hash = excluded.value_hash, \
                 fields = excluded.fields",
            &[&fenced.job.id, &keys, &hashes, &fields],
        )
        .await?;
    Ok(())
}

/// How the ledger's live records of a job's scope differ from what Salesforce was seen to hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Records learnsync wrote that Salesforce no longer holds.
    pub missing: i64,
    /// Records whose values in Salesforce differ from what learnsync last wrote.
    pub changed: i64,
    /// The first keys of each (at most 20, in key order), for the log.
    pub first_missing: Vec<String>,
    /// See `first_missing`.
    pub first_changed: Vec<String>,
}

/// The ledger rows of a job's object and scope, live, that its snapshot contradicts (`gone`:
/// Salesforce does not hold the record at all), with the parameter numbers of the connection,
/// the object, the job and the scope.
fn drifted(connection: u8, object: u8, job: u8, scope: u8) -> String {
    format!(
        "SELECT l.record_key, s.record_key IS NULL AS gone FROM ledger l \
         LEFT JOIN salesforce_snapshot s ON s.job_id = ${job} AND s.record_key = l.record_key \
         WHERE l.connection_id = ${connection} AND l.object = ${object} AND l.unenrolled_at IS NULL \
           AND (l.scope = ${scope} OR l.scope IS NULL) AND l.value_hash <> '\\x'::bytea \
           AND (s.record_key IS NULL OR s.value_hash <> l.value_hash)"
    )
}

/// Compares the fenced job's snapshot with the ledger and repairs the ledger to match it:
/// records Salesforce no longer holds leave the ledger (and `ledger_counts`), so the listing
/// writes them again; records whose values differ lose their hash, so the listing rewrites them.
/// Changes only the rows that differ.
pub async fn snapshot_repair(fenced: &Fenced<'_>, area: Area, object: &str) -> Result<Drift> {
    let job = fenced.job;
    let sql = format!(
        "WITH drifted AS MATERIALIZED ({}), \
         gone AS (DELETE FROM ledger l USING drifted d \
                  WHERE l.connection_id = $1 AND l.object = $3 AND l.record_key = d.record_key AND d.gone \
                  RETURNING l.record_key), \
         changed AS (UPDATE ledger l SET value_hash = '\\x'::bytea FROM drifted d \
                  WHERE l.connection_id = $1 AND l.object = $3 AND l.record_key = d.record_key AND NOT d.gone \
                  RETURNING l.record_key), \
         counted AS (UPDATE ledger_counts SET records = records - (SELECT count(*) FROM gone) \
                  WHERE connection_id = $1 AND area = $2 AND object = $3) \
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM changed), \
             ARRAY(SELECT record_key FROM gone ORDER BY 1 LIMIT 20), \
             ARRAY(SELECT record_key FROM changed ORDER BY 1 LIMIT 20)",
        drifted(1, 3, 4, 5)
    );
    let row = fenced
        .tx
        .query_one(
            &sql,
            &[
                &job.connection_id,
                &area.as_str(),
                &object,
                &job.id,
                &job.kind.as_str(),
            ],
        )
        .await?;
    drift_from_row(&row)
}

/// The same comparison as [`snapshot_repair`], changing nothing (check runs).
pub async fn snapshot_drift(fenced: &Fenced<'_>, object: &str) -> Result<Drift> {
    let job = fenced.job;
    let sql = format!(
        "WITH drifted AS MATERIALIZED ({}) \
         SELECT count(*) FILTER (WHERE gone), count(*) FILTER (WHERE NOT gone), \
             ARRAY(SELECT record_key FROM drifted WHERE gone ORDER BY 1 LIMIT 20), \
             ARRAY(SELECT record_key FROM drifted WHERE NOT gone ORDER BY 1 LIMIT 20) \
         FROM drifted",
        drifted(1, 2, 3, 4)
    );
    let row = fenced
        .tx
        .query_one(
            &sql,
            &[&job.connection_id, &object, &job.id, &job.kind.as_str()],
        )
        .await?;
    drift_from_row(&row)
}

fn drift_from_row(row: &Row) -> Result<Drift> {
    Ok(Drift {
        missing: row.try_get(0)?,
        changed: row.try_get(1)?,
        first_missing: row.try_get(2)?,
        first_changed: row.try_get(3)?,
    })
}

/// What a job's snapshot holds of some keys: `(hash, fields)` by key (check runs).
pub async fn snapshot_lookup(
    client: &impl GenericClient,
    job_id: Uuid,
    keys: &[String],
) -> Result<HashMap<String, (Vec<u8>, Option<serde_json::Value>)>> {
    let rows = client
        .query(
            "SELECT record_key, value_hash, fields FROM salesforce_snapshot \
             WHERE job_id = $1 AND record_key = ANY($2)",
            &[&job_id, &keys],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?))))
        .collect()
}

/// How many records a job's snapshot holds (a check run's list phase makes sure its snapshot
/// survived: an unlogged table is emptied by a crash).
pub async fn snapshot_size(client: &impl GenericClient, job_id: Uuid) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM salesforce_snapshot WHERE job_id = $1",
            &[&job_id],
        )
        .await?;
    Ok(row.try_get(0)?)
}

// ---------------------------------------------------------------------------------------------
// Records to read again (failed for a reason that can pass)

/// A record that failed for a reason that can pass: the next run of its area reads it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRecord {
    /// The external id value.
    pub record_key: String,
    /// Its Docebo change time: the area's watermark stays before it.
    pub docebo_updated_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub reason: String,
    /// What it would write (the worker's deferred-record form), tried again from there by the
    /// next incremental run; none: the next run must read it again from Docebo.
    pub record: Option<serde_json::Value>,
}

/// Keeps records of the fenced job to read again (a key kept twice keeps its latest failure).
pub async fn retry_keep(
    fenced: &Fenced<'_>,
    area: Area,
    object: &str,
    records: &[RetryRecord],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let job = fenced.job;
    let keys: Vec<&str> = records.iter().map(|r| r.record_key.as_str()).collect();
    let times: Vec<Option<DateTime<Utc>>> = records.iter().map(|r| r.docebo_updated_at).collect();
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    let payloads: Vec<Option<&serde_json::Value>> =
        records.iter().map(|r| r.record.as_ref()).collect();
    fenced
        .tx
        .execute(
            "INSERT INTO retry_records (connection_id, area, object, record_key, scope, \
                 docebo_updated_at, reason, run_id, record) \
             SELECT $1, $2, $3, k, $4, t, r, $5, p \
             FROM unnest($6::text[], $7::timestamptz[], $8::text[], $9::jsonb[]) AS u(k, t, r, p) \
             ON CONFLICT (connection_id, object, record_key) DO UPDATE SET \
                 docebo_updated_at = least(retry_records.docebo_updated_at, excluded.docebo_updated_at), \
                 reason = excluded.reason, run_id = excluded.run_id, scope = excluded.scope, \
                 record = excluded.record",
            &[
                &job.connection_id,
                &area.as_str(),
                &object,
                &job.kind.as_str(),
                &job.run_id,
                &keys,
                &times,
                &reasons,
                &payloads,
            ],
        )
        .await?;
    Ok(())
}

/// Hands the records of the fenced job's object and scope kept by earlier runs, with what they
/// would write, to the job's deferred retry (`job_deferred`): an incremental run tries them again
/// without reading Docebo. Returns how many (a record already there is not counted twice).
pub async fn retry_load(fenced: &Fenced<'_>, object: &str) -> Result<u64> {
    let job = fenced.job;
    Ok(fenced
        .tx
        .execute(
            "INSERT INTO job_deferred (job_id, record_key, record) \
             SELECT $4, record_key, record FROM retry_records \
             WHERE connection_id = $1 AND object = $2 AND scope = $3 AND run_id <> $5 \
               AND record IS NOT NULL \
             ON CONFLICT (job_id, record_key) DO NOTHING",
            &[
                &job.connection_id,
                &object,
                &job.kind.as_str(),
                &job.id,
                &job.run_id,
            ],
        )
        .await?)
}

/// Forgets records written or failed for good by the fenced job.
pub async fn retry_forget(fenced: &Fenced<'_>, object: &str, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    fenced
        .tx
        .execute(
            "DELETE FROM retry_records WHERE connection_id = $1 AND object = $2 AND record_key = ANY($3)",
            &[&fenced.job.connection_id, &object, &keys],
        )
        .await?;
    Ok(())
}

/// After a listing over all time: forgets the records of the fenced job's object and scope that
/// this run did not find failing again (it read everything: they are gone, or were written).
pub async fn retry_sweep(fenced: &Fenced<'_>, object: &str) -> Result<u64> {
    let job = fenced.job;
    Ok(fenced
        .tx
        .execute(
            "DELETE FROM retry_records WHERE connection_id = $1 AND object = $2 AND scope = $3 \
               AND run_id <> $4",
            &[&job.connection_id, &object, &job.kind.as_str(), &job.run_id],
        )
        .await?)
}

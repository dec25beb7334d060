//! Realtime replication: the schedule of incremental runs and full comparisons, and Docebo webhook
//! messages, recorded durably first and turned into small runs after.
//!
//! Every server runs the same loops; the statements here make that safe. A due area's row is taken
//! with `FOR UPDATE SKIP LOCKED`, so exactly one server handles each tick, and its next run time
//! moves to one interval from *now*, so a server that was down for an hour starts one run, not
//! four. Every run creator (Start, Resynchronize, the schedule, webhooks) locks the area's row
//! first, so the active-run check and the run's creation cannot interleave.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codes::Resource;
use crate::model::{Area, JobKind, LogLevel, NewLogEvent, Run, Trigger, WebhookParents};
use crate::runs::{self, RunRequest};
use crate::{Error, Result, logs};

/// The NOTIFY channel that says "a webhook message arrived" (payload: the connection id).
pub const CHANNEL_WEBHOOKS: &str = "learnsync_webhooks";

/// What a webhook run is limited to: the records its events named. Stored in `runs.targets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Course enrollments: only these courses' enrollments.
    #[serde(default)]
    pub course_ids: BTreeSet<i64>,
    /// Learning-plan enrollments: only these learning plans' enrollments.
    #[serde(default)]
    pub learning_plan_ids: BTreeSet<i64>,
    /// Session enrollments: only these sessions' rosters.
    #[serde(default)]
    pub session_ids: BTreeSet<i64>,
    /// Session enrollments: the courses of those sessions.
    #[serde(default)]
    pub session_course_ids: BTreeSet<i64>,
    /// Enrollments Docebo said were deleted: unenrolled in Salesforce right away.
    #[serde(default)]
    pub deleted: Vec<DeletedRecord>,
}

/// An enrollment a webhook said was deleted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeletedRecord {
    /// The job kind whose object holds it (its SQL name in JSON).
    pub kind: JobKind,
    /// Its key (`{user_id}-{course_id}` and the like).
    pub key: String,
    /// When Docebo fired the deletion (or the message arrived): a record whose last known Docebo
    /// change is later was created again since, and stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<DateTime<Utc>>,
}

/// One event of a webhook message, as learnsync understands it (the server reads them from the
/// message bodies: see `learnsync_server::webhook_events`).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookEvent {
    /// The job kind it concerns.
    pub kind: JobKind,
    /// The enrollment's key.
    pub key: String,
    /// Whether it announces a deletion.
    pub deleted: bool,
    /// The course, learning plan or session it concerns.
    pub parent_id: i64,
    /// Sessions: the session's course.
    pub course_id: Option<i64>,
    /// When Docebo fired it.
    pub fired_at: Option<DateTime<Utc>>,
}

/// Records a webhook message. Returns false when its `message_id` was already recorded (Docebo
/// retried it): nothing changes then.
pub async fn record_webhook(
    client: &impl GenericClient,
    connection_id: Uuid,
    message_id: &str,
    event: &str,
    body: &serde_json::Value,
) -> Result<bool> {
    let inserted = client
        .execute(
            "INSERT INTO webhook_messages (connection_id, message_id, event, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (connection_id, message_id) DO NOTHING",
            &[&connection_id, &message_id, &event, body],
        )
        .await?;
    if inserted > 0 {
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL_WEBHOOKS, &connection_id.to_string()],
            )
            .await?;
    }
    Ok(inserted > 0)
}

/// What became of a webhook message offered within its connection's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded: the dispatcher will handle it.
    New,
    /// Its `message_id` was recorded before (Docebo retried it): nothing changed.
    Replayed,
    /// The connection already holds its quota of messages waiting to be handled: nothing was
    /// recorded (the sender should retry later).
    OverQuota,
}

/// The advisory lock class under which a connection's webhook messages are counted and recorded
/// (the second key is the connection's hash), so two receivers never both take the last place.
const QUOTA_LOCK_CLASS: i32 = 0x7768_6b31;

/// Records a webhook message unless its connection already holds `max_pending` messages waiting
/// to be handled: a connection's backlog stays bounded however fast its webhooks arrive or however
/// long its runs take. A replay of a recorded message is acknowledged whatever the backlog. The
/// count and the insert happen under a per-connection advisory lock held until the transaction
/// ends.
pub async fn record_webhook_within_quota(
    tx: &Transaction<'_>,
    connection_id: Uuid,
    message_id: &str,
    event: &str,
    body: &serde_json::Value,
    max_pending: i64,
) -> Result<Recorded> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
        &[&QUOTA_LOCK_CLASS, &connection_id.to_string()],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM webhook_messages \
                     WHERE connection_id = $1 AND handle_time IS NULL LIMIT $3) p), \
                    EXISTS (SELECT 1 FROM webhook_messages WHERE connection_id = $1 AND message_id = $2)",
            &[&connection_id, &message_id, &max_pending],
        )
        .await?;
    let (pending, known): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
    if known {
        return Ok(Recorded::Replayed);
    }
    if pending >= max_pending {
        return Ok(Recorded::OverQuota);
    }
    Ok(
        match record_webhook(tx, connection_id, message_id, event, body).await? {
            true => Recorded::New,
            false => Recorded::Replayed,
        },
    )
}

/// The generation of a connection's webhook secret (`None`: no such connection).
pub async fn webhook_generation(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<Option<i32>> {
    let row = client
        .query_opt(
            "SELECT webhook_generation FROM connections WHERE id = $1",
            &[&connection_id],
        )
        .await?;
    row.map(|row| Ok(row.try_get(0)?)).transpose()
}

/// Bumps the generation of a connection's webhook secret: the old URL stops working.
pub async fn rotate_webhook(client: &impl GenericClient, connection_id: Uuid) -> Result<i32> {
    let row = client
        .query_opt(
            "UPDATE connections SET webhook_generation = webhook_generation + 1, update_time = now() \
             WHERE id = $1 RETURNING webhook_generation",
            &[&connection_id],
        )
        .await?
        .ok_or_else(|| Error::not_found(Resource::Connection, connection_id))?;
    Ok(row.try_get(0)?)
}

/// How many webhook messages a connection has recorded, and how many wait to be handled.
pub async fn message_counts(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<(i64, i64)> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE handle_time IS NULL) FROM webhook_messages \
             WHERE connection_id = $1",
            &[&connection_id],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// How long a handled webhook message is kept (for `message_counts` and for finding a replay by its
/// `message_id`; Docebo retries a message within hours, not days).
pub const WEBHOOK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes the webhook messages handled more than `retention` ago (bodies of up to 1 MiB each must
/// not pile up for ever); pending ones are never deleted. Returns how many went.
pub async fn purge_handled_webhooks(
    client: &impl GenericClient,
    retention: Duration,
) -> Result<u64> {
    let seconds = retention.as_secs_f64();
    Ok(client
        .execute(
            "DELETE FROM webhook_messages WHERE handle_time IS NOT NULL \
               AND handle_time < now() - make_interval(secs => $1)",
            &[&seconds],
        )
        .await?)
}

/// Webhook messages not yet handled, all connections, and the age in seconds of the oldest (0
/// when none): the metrics read it at scrape time.
pub async fn pending_webhook_stats(client: &impl GenericClient) -> Result<(i64, f64)> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(receive_time))::float8, 0) \
             FROM webhook_messages WHERE handle_time IS NULL",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// What one scheduler tick did for one area.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// The connection.
    pub connection_id: Uuid,
    /// The area.
    pub area: Area,
    /// The run created, if any (none when a run was still active).
    pub run: Option<Run>,
    /// Whether it is the periodic full comparison.
    pub full: bool,
}

/// Starts the runs that are due: for each realtime area whose next run time has come (once its
/// first synchronization completed), an incremental run from its watermark minus `overlap`, or a
/// full comparison when that is due. A tick that finds a run still active is skipped, not queued.
/// In a transaction: the due rows stay locked until the runs are created.
pub async fn schedule_due(
    client: &Transaction<'_>,
    overlap: Duration,
    limit: i64,
) -> Result<Vec<Scheduled>> {
    let rows = client
        .query(
            "SELECT connection_id, area, watermark, (next_full_time IS NULL OR next_full_time <= now()) AS full_due \
             FROM area_configs \
             WHERE enabled AND mode = 'realtime' AND first_success_time IS NOT NULL AND next_run_time <= now() \
             ORDER BY next_run_time LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await?;
    let overlap =
        chrono::Duration::from_std(overlap).unwrap_or_else(|_| chrono::Duration::seconds(300));
    let mut outcomes = Vec::new();
    for row in &rows {
        let connection_id: Uuid = row.try_get(0)?;
        let area = Area::parse(row.try_get(1)?)?;
        let watermark: Option<DateTime<Utc>> = row.try_get(2)?;
        let full_due: bool = row.try_get(3)?;
        let run = match runs::active(client, connection_id, area).await? {
            Some(active) => {
                logs::append(
                    client,
                    connection_id,
                    &[NewLogEvent::new(
                        LogLevel::Info,
                        format!("scheduled {area} run skipped: a run is still active"),
                    )
                    .field("active_run", active.id.to_string())],
                )
                .await?;
                None
            }
            None => {
                let request = if full_due {
                    RunRequest::full(Trigger::Schedule, (None, None), false)
                } else {
                    RunRequest::incremental(watermark, overlap)
                };
                Some(runs::create(client, connection_id, area, &request).await?)
            }
        };
        client
            .execute(
                "UPDATE area_configs SET next_run_time = now() + interval_seconds * interval '1 second', \
                     next_full_time = CASE WHEN $3 THEN now() + full_interval_seconds * interval '1 second' \
                                           ELSE next_full_time END \
                 WHERE connection_id = $1 AND area = $2",
                &[&connection_id, &area.as_str(), &(full_due && run.is_some())],
            )
            .await?;
        outcomes.push(Scheduled {
            connection_id,
            area,
            run,
            full: full_due,
        });
    }
    Ok(outcomes)
}

/// How long until the next realtime area falls due (zero when one is due now), by the database's
/// clock, so that a server whose clock is off still wakes on time; `None` when no area is
/// scheduled. Reads every realtime area's next run time (no index: a fleet's 30,000 areas are a
/// scan of a few milliseconds, once a second at most).
pub async fn until_next_due(client: &impl GenericClient) -> Result<Option<Duration>> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM min(next_run_time) - now())::float8 FROM area_configs \
             WHERE enabled AND mode = 'realtime' AND first_success_time IS NOT NULL",
            &[],
        )
        .await?;
    let seconds: Option<f64> = row.try_get(0)?;
    Ok(seconds
        .map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)))
}

/// A webhook message recorded and not yet handled, as it was received.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingWebhook {
    /// The connection it arrived for.
    pub connection_id: Uuid,
    /// Docebo's message id.
    pub message_id: String,
    /// The body, as received.
    pub body: serde_json::Value,
    /// When it arrived.
    pub receive_time: DateTime<Utc>,
}

/// A pending webhook message with the events read from its body.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookMessage {
    /// The connection it arrived for.
    pub connection_id: Uuid,
    /// Docebo's message id.
    pub message_id: String,
    /// When it arrived (the time of events that carry none).
    pub receive_time: DateTime<Utc>,
    /// The events learnsync acts on (none: the message is marked handled and does nothing).
    pub events: Vec<WebhookEvent>,
}

/// The connections whose webhook messages the dispatcher can act on now: some are pending and
/// no enrollments run of the connection is active (messages wait for it to end). Oldest pending
/// message first, at most `limit`. Each connection is then served on its own
/// ([`pending_webhooks`]), so one connection's backlog, however large, never holds back
/// another's messages.
pub async fn webhook_connections_ready(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Uuid>> {
    let active: Vec<&str> = crate::model::RunState::ACTIVE
        .iter()
        .map(|state| state.as_str())
        .collect();
    let rows = client
        .query(
            "SELECT c.id FROM connections c \
             CROSS JOIN LATERAL (SELECT m.receive_time FROM webhook_messages m \
                 WHERE m.connection_id = c.id AND m.handle_time IS NULL \
                 ORDER BY m.receive_time LIMIT 1) oldest \
             WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.connection_id = c.id \
                 AND r.area = 'enrollments' AND r.state = ANY($2)) \
             ORDER BY oldest.receive_time LIMIT $1",
            &[&limit, &active],
        )
        .await?;
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Takes up to `limit` of a connection's pending webhook messages, oldest first, locked until the
/// transaction ends (`SKIP LOCKED`: two dispatchers never take the same message).
/// [`dispatch_webhooks`] handles them in the same transaction.
pub async fn pending_webhooks(
    client: &Transaction<'_>,
    connection_id: Uuid,
    limit: i64,
) -> Result<Vec<PendingWebhook>> {
    let rows = client
        .query(
            "SELECT connection_id, message_id, body, receive_time FROM webhook_messages \
             WHERE connection_id = $1 AND handle_time IS NULL ORDER BY receive_time LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
            &[&connection_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PendingWebhook {
                connection_id: row.try_get(0)?,
                message_id: row.try_get(1)?,
                body: row.try_get(2)?,
                receive_time: row.try_get(3)?,
            })
        })
        .collect()
}

/// What webhook dispatching did for one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatched {
    /// The connection.
    pub connection_id: Uuid,
    /// The messages handled.
    pub messages: usize,
    /// The run created, if any.
    pub run: Option<Run>,
}

/// Turns pending webhook messages (taken by [`pending_webhooks`] in the same transaction, their
/// events read) into small enrollment runs: one run per connection, carrying only the job kinds
/// the events named, limited to their records, reading changes from the earliest event's time
/// minus `overlap`, and unenrolling the deletions right away. Messages wait (coalescing with later
/// ones) while a run of the area is active. Webhooks act only on an enrollments area in realtime
/// mode whose first synchronization completed (before it nothing is tracked): other messages are
/// marked handled and do nothing.
pub async fn dispatch_webhooks(
    client: &Transaction<'_>,
    overlap: Duration,
    messages: Vec<WebhookMessage>,
) -> Result<Vec<Dispatched>> {
    let mut by_connection: BTreeMap<Uuid, Vec<WebhookMessage>> = BTreeMap::new();
    for message in messages {
        by_connection
            .entry(message.connection_id)
            .or_default()
            .push(message);
    }
    let overlap =
        chrono::Duration::from_std(overlap).unwrap_or_else(|_| chrono::Duration::seconds(300));
    let mut outcomes = Vec::new();
    for (connection_id, messages) in by_connection {
        if let Some(dispatched) =
            dispatch_connection(client, overlap, connection_id, &messages).await?
        {
            outcomes.push(dispatched);
        }
    }
    Ok(outcomes)
}

/// Dispatches one connection's pending messages: a run, nothing (ignored, marked handled), or
/// `None` when they wait for the area's active run to end (its end wakes the dispatcher).
async fn dispatch_connection(
    client: &Transaction<'_>,
    overlap: chrono::Duration,
    connection_id: Uuid,
    messages: &[WebhookMessage],
) -> Result<Option<Dispatched>> {
    let message_ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    let config = crate::areas::lock(client, connection_id, Area::Enrollments).await?;
    let tracked = config.as_ref().is_some_and(|c| {
        c.enabled && c.mode == crate::model::Mode::Realtime && c.first_success_time.is_some()
    });
    let dispatched = |run| Dispatched {
        connection_id,
        messages: message_ids.len(),
        run,
    };
    if !tracked {
        let reason = "ignored: enrollments are not in realtime mode or not yet synchronized once";
        mark_handled(client, connection_id, &message_ids, None, reason).await?;
        return Ok(Some(dispatched(None)));
    }
    if runs::active(client, connection_id, Area::Enrollments)
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let (targets, kinds, earliest) = targets_of(messages);
    if kinds.is_empty() {
        let reason = "ignored: no enrollment event";
        mark_handled(client, connection_id, &message_ids, None, reason).await?;
        return Ok(Some(dispatched(None)));
    }
    let request = RunRequest {
        full_sync: false,
        updated_from: earliest.map(|time| time - overlap),
        jobs: Some(kinds.into_iter().collect()),
        targets: Some(
            serde_json::to_value(&targets).map_err(|error| Error::Corrupt(error.to_string()))?,
        ),
        ..RunRequest::full(Trigger::Webhook, (None, None), false)
    };
    let run = runs::create(client, connection_id, Area::Enrollments, &request).await?;
    logs::append(
        client,
        connection_id,
        &[
            NewLogEvent::new(LogLevel::Info, "webhook messages handled by a run")
                .run(run.id)
                .field("messages", message_ids.len() as i64)
                .field("deletions", targets.deleted.len() as i64),
        ],
    )
    .await?;
    mark_handled(client, connection_id, &message_ids, Some(run.id), "run").await?;
    Ok(Some(dispatched(Some(run))))
}

/// What a connection's messages ask for: the targets (parents to read, deletions to unenroll),
/// the job kinds to run, and the earliest event's time. Each event's parent goes where its kind's
/// description says.
fn targets_of(messages: &[WebhookMessage]) -> (Targets, BTreeSet<JobKind>, Option<DateTime<Utc>>) {
    let mut targets = Targets::default();
    let mut kinds: BTreeSet<JobKind> = BTreeSet::new();
    let mut earliest: Option<DateTime<Utc>> = None;
    for message in messages {
        for event in &message.events {
            let time = event.fired_at.unwrap_or(message.receive_time);
            earliest = Some(earliest.map_or(time, |e| e.min(time)));
            if event.deleted {
                targets.deleted.push(DeletedRecord {
                    kind: event.kind,
                    key: event.key.clone(),
                    fired_at: Some(time),
                });
                continue;
            }
            kinds.insert(event.kind);
            let Some(webhook) = event.kind.spec().webhook else {
                continue;
            };
            match webhook.parents {
                WebhookParents::Courses => {
                    targets.course_ids.insert(event.parent_id);
                }
                WebhookParents::LearningPlans => {
                    targets.learning_plan_ids.insert(event.parent_id);
                }
                WebhookParents::Sessions => {
                    // Docebo names session events "ilt" whatever the course type: look in both.
                    kinds.insert(JobKind::IltSessionEnrollments);
                    kinds.insert(JobKind::WebinarSessionEnrollments);
                    targets.session_ids.insert(event.parent_id);
                    if let Some(course_id) = event.course_id {
                        targets.session_course_ids.insert(course_id);
                    }
                }
            }
        }
    }
    // One deletion per record: the latest.
    targets.deleted.sort();
    targets.deleted.reverse();
    targets
        .deleted
        .dedup_by(|later, earlier| later.kind == earlier.kind && later.key == earlier.key);
    targets.deleted.reverse();
    for deleted in &targets.deleted {
        kinds.insert(deleted.kind);
    }
    (targets, kinds, earliest)
}

async fn mark_handled(
    client: &impl GenericClient,
    connection_id: Uuid,
    message_ids: &[&str],
    run_id: Option<Uuid>,
    outcome: &str,
) -> Result<()> {
    client
        .execute(
            "UPDATE webhook_messages SET handle_time = now(), run_id = $3, outcome = $4 \
             WHERE connection_id = $1 AND message_id = ANY($2)",
            &[&connection_id, &message_ids, &run_id, &outcome],
        )
        .await?;
    Ok(())
}

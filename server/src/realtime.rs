//! The realtime loops every server runs: the scheduler (incremental runs and full comparisons of
//! realtime areas) and the webhook dispatcher, and the reading of Docebo webhook bodies into the
//! typed events the dispatcher hands the store. The statements they call are safe with any number
//! of servers (see `learnsync_store::realtime`).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use learnsync_store::model::JobKind;
use learnsync_store::realtime::{Dispatched, WebhookEvent, WebhookMessage};
use learnsync_store::{Store, Transaction, listen::Notification, realtime};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How the loops behave.
#[derive(Clone, Debug)]
pub struct RealtimeOptions {
    /// The longest the scheduler sleeps between passes: it wakes sooner when the next area falls
    /// due (but at most once a second, or once a tick when the tick is shorter), so a run starts
    /// about when it is due rather than up to a tick later; the tick bounds how long an area that
    /// a Configure or a first synchronization just made due can wait.
    pub schedule_tick: Duration,
    /// Due areas the scheduler takes per transaction; a pass takes batch after batch until none
    /// is left, so a fleet whose areas fall due faster than a batch a tick is not left behind.
    pub schedule_batch: i64,
    /// How far before the watermark (or a webhook's time) runs read, so that a change written at
    /// the boundary, or a clock a little off, is never missed.
    pub overlap: Duration,
    /// How often the dispatcher looks for webhook messages when no NOTIFY arrives.
    pub webhook_poll: Duration,
    /// How many webhook messages a connection may hold waiting to be handled: past it the
    /// receiver answers 429 with `Retry-After` and records nothing.
    pub webhook_max_pending: i64,
    /// How long an ended run is kept, with its jobs and log: the hourly housekeeping purges
    /// older ones, each area's latest run excepted.
    pub run_retention: Duration,
}

/// How long ended runs are kept by default: 30 days.
pub const DEFAULT_RUN_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for RealtimeOptions {
    fn default() -> RealtimeOptions {
        RealtimeOptions {
            schedule_tick: Duration::from_secs(5),
            schedule_batch: 100,
            overlap: Duration::from_secs(120),
            webhook_poll: Duration::from_secs(2),
            webhook_max_pending: 10_000,
            run_retention: DEFAULT_RUN_RETENTION,
        }
    }
}

/// Starts incremental runs and full comparisons as they fall due.
pub async fn schedule(store: Store, options: RealtimeOptions, cancel: CancellationToken) {
    loop {
        let wait = match schedule_once(&store, &options).await {
            Ok(until_next) => next_wait(until_next, options.schedule_tick),
            Err(error) => {
                tracing::warn!(%error, "scheduler pass failed");
                options.schedule_tick
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long the scheduler sleeps after a pass: until the next area falls due, at least a second
/// (or the tick, when shorter: each pass is a few statements, a fleet's areas fall due every few
/// milliseconds), at most the tick.
fn next_wait(until_next: Option<Duration>, tick: Duration) -> Duration {
    let floor = tick.min(Duration::from_secs(1));
    until_next.map_or(tick, |until| until.clamp(floor, tick))
}

/// Starts every run that is due, a batch per transaction until a batch comes back short; returns
/// how long until the next area falls due.
async fn schedule_once(
    store: &Store,
    options: &RealtimeOptions,
) -> Result<Option<Duration>, learnsync_store::Error> {
    let mut conn = store.conn().await?;
    loop {
        let tx = conn.transaction().await?;
        let outcomes = realtime::schedule_due(&tx, options.overlap, options.schedule_batch).await?;
        tx.commit().await?;
        let batch_was_full = outcomes.len() as i64 >= options.schedule_batch;
        for outcome in outcomes {
            log_scheduled(&outcome);
        }
        if !batch_was_full {
            break;
        }
    }
    realtime::until_next_due(&conn).await
}

fn log_scheduled(outcome: &realtime::Scheduled) {
    match &outcome.run {
        Some(run) => tracing::info!(
            connection_id = %outcome.connection_id, area = %outcome.area, run_id = %run.id,
            trace_id = %run.trace_id, full = outcome.full,
            "scheduled run started"
        ),
        None => tracing::info!(
            connection_id = %outcome.connection_id, area = %outcome.area,
            "scheduled run skipped: a run is still active"
        ),
    }
}

/// Turns recorded webhook messages into runs: woken by a new message or a finished run, polling as
/// the fallback.
pub async fn dispatch(
    store: Store,
    options: RealtimeOptions,
    mut notifications: broadcast::Receiver<Notification>,
    cancel: CancellationToken,
) {
    loop {
        match dispatch_once(&store, &options).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "webhook dispatch failed"),
        }
        let wake = async {
            loop {
                match notifications.recv().await {
                    Ok(n)
                        if n.channel == realtime::CHANNEL_WEBHOOKS
                            || n.channel == learnsync_store::CHANNEL_RUNS
                            || n.channel.is_empty() =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake => {}
            _ = tokio::time::sleep(options.webhook_poll) => {}
        }
    }
}

/// The most messages of one connection a dispatch pass turns into a run.
const BATCH: i64 = 500;
/// The most connections one dispatch pass serves (the oldest waiting first).
const CONNECTIONS_PER_PASS: i64 = 100;

/// Serves every connection with pending messages and no active run, each in its own transaction
/// (a connection's batch is all that is held in memory at once). Returns true when more may be
/// waiting (a full batch, or as many connections as a pass serves).
async fn dispatch_once(
    store: &Store,
    options: &RealtimeOptions,
) -> Result<bool, learnsync_store::Error> {
    let ready = {
        let conn = store.conn().await?;
        realtime::webhook_connections_ready(&conn, CONNECTIONS_PER_PASS).await?
    };
    let mut more = ready.len() as i64 >= CONNECTIONS_PER_PASS;
    for connection_id in ready {
        let mut conn = store.conn().await?;
        let tx = conn.transaction().await?;
        let outcome = dispatch_connection(&tx, options.overlap, connection_id, BATCH).await?;
        tx.commit().await?;
        for outcome in &outcome {
            more |= outcome.messages as i64 >= BATCH;
            tracing::info!(
                connection_id = %outcome.connection_id, messages = outcome.messages,
                run_id = ?outcome.run.as_ref().map(|run| run.id),
                trace_id = ?outcome.run.as_ref().map(|run| &run.trace_id),
                "webhook messages handled"
            );
        }
    }
    Ok(more)
}

/// One dispatch pass in the caller's transaction: every connection ready
/// ([`realtime::webhook_connections_ready`]) has up to `limit` of its pending messages read and
/// turned into a run (see [`realtime::dispatch_webhooks`]).
pub async fn dispatch_pending(
    tx: &Transaction<'_>,
    overlap: Duration,
    limit: i64,
) -> Result<Vec<Dispatched>, learnsync_store::Error> {
    let mut outcomes = Vec::new();
    for connection_id in realtime::webhook_connections_ready(tx, CONNECTIONS_PER_PASS).await? {
        outcomes.extend(dispatch_connection(tx, overlap, connection_id, limit).await?);
    }
    Ok(outcomes)
}

/// Takes up to `limit` of one connection's pending messages, reads their events and dispatches
/// them.
async fn dispatch_connection(
    tx: &Transaction<'_>,
    overlap: Duration,
    connection_id: uuid::Uuid,
    limit: i64,
) -> Result<Vec<Dispatched>, learnsync_store::Error> {
    let messages = realtime::pending_webhooks(tx, connection_id, limit)
        .await?
        .into_iter()
        .map(|pending| WebhookMessage {
            events: parse_events(&pending.body),
            connection_id: pending.connection_id,
            message_id: pending.message_id,
            receive_time: pending.receive_time,
        })
        .collect();
    realtime::dispatch_webhooks(tx, overlap, messages).await
}

/// Reads an id Docebo sends as a number or as a string of digits.
fn id_of(payload: &serde_json::Value, field: &str) -> Option<i64> {
    match payload.get(field)? {
        serde_json::Value::Number(number) => number.as_i64(),
        serde_json::Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a Docebo time (`2024-03-20 09:01:02`, UTC).
fn docebo_time(payload: &serde_json::Value, field: &str) -> Option<DateTime<Utc>> {
    let text = payload.get(field)?.as_str()?;
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|time| time.and_utc())
}

/// Reads the events of a webhook message body (`payload` or grouped `payloads`). Events learnsync
/// does not act on (users, courses) yield nothing.
pub fn parse_events(body: &serde_json::Value) -> Vec<WebhookEvent> {
    let Some(name) = body.get("event").and_then(|e| e.as_str()) else {
        return Vec::new();
    };
    let payloads: Vec<&serde_json::Value> = match (body.get("payloads"), body.get("payload")) {
        (Some(serde_json::Value::Array(many)), _) => many.iter().collect(),
        (_, Some(one)) => vec![one],
        _ => Vec::new(),
    };
    // The event's kind is the one whose webhook description names its prefix.
    let Some(prefix) = name.rsplit_once('.').map(|(prefix, _)| prefix) else {
        return Vec::new();
    };
    let Some((kind, parent_field)) = JobKind::ALL.iter().find_map(|kind| {
        let webhook = kind.spec().webhook?;
        (webhook.event_prefix == prefix).then_some((*kind, webhook.parent_field))
    }) else {
        return Vec::new();
    };
    let deleted = name.ends_with(".deleted");
    payloads
        .into_iter()
        .filter_map(|payload| {
            let user_id = id_of(payload, "user_id")?;
            let parent_id = id_of(payload, parent_field)?;
            Some(WebhookEvent {
                kind,
                key: format!("{user_id}-{parent_id}"),
                deleted,
                parent_id,
                course_id: id_of(payload, "course_id"),
                fired_at: docebo_time(payload, "fired_at"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_scheduler_sleeps_until_the_next_due_area_within_its_bounds() {
        let tick = Duration::from_secs(5);
        assert_eq!(next_wait(None, tick), tick);
        assert_eq!(next_wait(Some(Duration::from_secs(60)), tick), tick);
        assert_eq!(
            next_wait(Some(Duration::from_millis(2500)), tick),
            Duration::from_millis(2500)
        );
        assert_eq!(
            next_wait(Some(Duration::ZERO), tick),
            Duration::from_secs(1)
        );
        let short = Duration::from_millis(200);
        assert_eq!(next_wait(Some(Duration::ZERO), short), short);
    }

    #[test]
    fn reads_single_and_grouped_events() {
        let single = json!({"message_id": "m1", "event": "course.enrollment.deleted",
            "payload": {"fired_at": "2024-03-20 09:01:02", "user_id": "12301", "course_id": 55}});
        let events = parse_events(&single);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, JobKind::CourseEnrollments);
        assert_eq!(events[0].key, "12301-55");
        assert!(events[0].deleted);
        assert_eq!(
            events[0].fired_at.unwrap().to_rfc3339(),
            "2024-03-20T09:01:02+00:00"
        );

        let grouped = json!({"message_id": "m2", "event": "ilt.session.enrollment.created",
            "payloads": [{"user_id": 1, "session_id": 9, "course_id": 3}, {"user_id": 2, "session_id": 9}, {"bad": true}]});
        let events = parse_events(&grouped);
        assert_eq!(events.len(), 2, "an event without its ids is skipped");
        assert_eq!(events[1].key, "2-9");
        assert!(!events[1].deleted);
        assert!(
            parse_events(&json!({"event": "user.deleted", "payload": {"user_id": 1}})).is_empty()
        );
    }
}

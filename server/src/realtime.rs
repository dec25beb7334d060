//! The realtime loops every server runs: the scheduler (incremental runs and full comparisons of
//! realtime areas) and the webhook dispatcher. The statements they call are safe with any number of
//! servers (see `learnsync_store::realtime`).

use std::time::Duration;

use learnsync_store::{Store, listen::Notification, realtime};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How the loops behave.
#[derive(Clone, Debug)]
pub struct RealtimeOptions {
    /// How often the scheduler looks for due areas.
    pub schedule_tick: Duration,
    /// How far before the watermark (or a webhook's time) runs read, so that a change written at
    /// the boundary, or a clock a little off, is never missed.
    pub overlap: Duration,
    /// How often the dispatcher looks for webhook messages when no NOTIFY arrives.
    pub webhook_poll: Duration,
}

impl Default for RealtimeOptions {
    fn default() -> RealtimeOptions {
        RealtimeOptions {
            schedule_tick: Duration::from_secs(5),
            overlap: Duration::from_secs(120),
            webhook_poll: Duration::from_secs(2),
        }
    }
}

/// Starts incremental runs and full comparisons as they fall due.
pub async fn schedule(store: Store, options: RealtimeOptions, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(options.schedule_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = schedule_once(&store, &options).await {
            tracing::warn!(%error, "scheduler tick failed");
        }
    }
}

async fn schedule_once(
    store: &Store,
    options: &RealtimeOptions,
) -> Result<(), learnsync_store::Error> {
    let mut conn = store.conn().await?;
    let tx = conn.transaction().await?;
    let outcomes = realtime::schedule_due(&tx, options.overlap, 100).await?;
    tx.commit().await?;
    for outcome in outcomes {
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
    Ok(())
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

/// Handles one batch. Returns true when a full batch was handled (more may be waiting).
async fn dispatch_once(
    store: &Store,
    options: &RealtimeOptions,
) -> Result<bool, learnsync_store::Error> {
    const BATCH: i64 = 500;
    let mut conn = store.conn().await?;
    let tx = conn.transaction().await?;
    let outcomes = realtime::dispatch_webhooks(&tx, options.overlap, BATCH).await?;
    tx.commit().await?;
    let handled: usize = outcomes.iter().map(|o| o.messages).sum();
    for outcome in &outcomes {
        tracing::info!(
            connection_id = %outcome.connection_id, messages = outcome.messages,
            run_id = ?outcome.run.as_ref().map(|run| run.id),
            trace_id = ?outcome.run.as_ref().map(|run| &run.trace_id),
            "webhook messages handled"
        );
    }
    Ok(handled as i64 >= BATCH)
}

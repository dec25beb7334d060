//! StreamLogs' bounds: how many log streams one token may hold open, and the one poll of
//! Postgres per connection that every following stream of that connection shares.
//!
//! A stream first catches up on its own (paged, filtered reads from its position), then takes the
//! events a connection's [`Feed`] broadcasts: one task per followed connection reads the
//! connection's new events (and which of its runs are active) when a NOTIFY or the poll interval
//! wakes it, whatever the number of followers. The feed is created by the first follower of a
//! connection and ends with the last. Gapless: a follower subscribes before it catches up, and a
//! batch starting past its position (it lagged behind the broadcast) sends it back to catch up
//! from Postgres, so it never skips an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use learnsync_proto::v1 as pb;
use learnsync_store::listen::Notification;
use learnsync_store::model::LogEvent;
use learnsync_store::{Store, logs, runs};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::convert;
use crate::error::{self, OrStatus as _};

/// Most events one read takes.
const LOG_PAGE: i64 = 500;

/// Batches a feed keeps for followers that are behind; one further behind catches up from
/// Postgres.
const FEED_BACKLOG: usize = 16;

/// The open log streams of every token, and the connections' shared feeds.
#[derive(Clone)]
pub(crate) struct LogStreams {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// How often a feed polls when no NOTIFY arrives.
    poll_interval: Duration,
    /// NOTIFYs on the log channel wake the feeds.
    notifications: broadcast::Sender<Notification>,
    /// Ends every stream and feed at shutdown.
    shutdown: CancellationToken,
    /// Most open streams one principal may hold.
    limit: usize,
    /// Open streams by principal name.
    open: Mutex<HashMap<String, usize>>,
    /// The live feed of each followed connection.
    feeds: Mutex<HashMap<Uuid, Weak<Feed>>>,
}

/// One open stream of a principal: dropping it frees the place.
pub(crate) struct Permit {
    inner: Arc<Inner>,
    principal: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = lock(&self.inner.open);
        if let Some(count) = open.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// What a feed read at once: the connection's events from `from` on, in sequence order and
/// without gaps, and its runs that were active before the events were read.
#[derive(Debug)]
struct Batch {
    from: i64,
    events: Vec<LogEvent>,
    active_runs: Vec<Uuid>,
    /// Whether the read took every event committed when it ran.
    drained: bool,
}

/// A connection's shared poll; its task ends when the last follower drops it.
pub(crate) struct Feed {
    connection_id: Uuid,
    batches: broadcast::Sender<Arc<Batch>>,
    stop: CancellationToken,
    inner: Arc<Inner>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.cancel();
        let mut feeds = lock(&self.inner.feeds);
        if feeds
            .get(&self.connection_id)
            .is_some_and(|feed| feed.strong_count() == 0)
        {
            feeds.remove(&self.connection_id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogStreams {
    /// Streams over `store`, at most `limit` open per principal.
    pub(crate) fn new(
        store: Store,
        poll_interval: Duration,
        notifications: broadcast::Sender<Notification>,
        shutdown: CancellationToken,
        limit: usize,
    ) -> LogStreams {
        LogStreams {
            inner: Arc::new(Inner {
                store,
                poll_interval,
                notifications,
                shutdown,
                limit,
                open: Mutex::new(HashMap::new()),
                feeds: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a place for one more open stream of `principal`, or refuses with
    /// `RESOURCE_EXHAUSTED` when it holds the most it may.
    pub(crate) fn admit(&self, principal: &str) -> Result<Permit, Status> {
        let mut open = lock(&self.inner.open);
        let count = open.entry(principal.to_string()).or_insert(0);
        if *count >= self.inner.limit {
            tracing::debug!(
                principal,
                limit = self.inner.limit,
                "log stream refused: over the limit"
            );
            return Err(error::too_many_log_streams(self.inner.limit));
        }
        *count += 1;
        Ok(Permit {
            inner: self.inner.clone(),
            principal: principal.to_string(),
        })
    }

    /// The connection's feed, started when it has none.
    fn feed(&self, connection_id: Uuid) -> Arc<Feed> {
        let mut feeds = lock(&self.inner.feeds);
        if let Some(feed) = feeds.get(&connection_id).and_then(Weak::upgrade) {
            return feed;
        }
        let (batches, _) = broadcast::channel(FEED_BACKLOG);
        let feed = Arc::new(Feed {
            connection_id,
            batches: batches.clone(),
            stop: self.inner.shutdown.child_token(),
            inner: self.inner.clone(),
        });
        feeds.insert(connection_id, Arc::downgrade(&feed));
        let poller = Poller {
            store: self.inner.store.clone(),
            connection_id,
            next: None,
            poll_interval: self.inner.poll_interval,
            notifications: self.inner.notifications.subscribe(),
            stop: feed.stop.clone(),
        };
        tokio::spawn(poller.run(batches));
        feed
    }

    /// Streams the events `filter` selects from `from` on into `sender`; when `follow`, waits
    /// for new ones until the followed run is over, the caller goes away or the server stops.
    pub(crate) fn spawn(
        &self,
        permit: Permit,
        filter: logs::LogFilter,
        from: i64,
        follow: bool,
        sender: mpsc::Sender<Result<pb::LogEvent, Status>>,
    ) {
        let follower = Follower {
            store: self.inner.store.clone(),
            filter,
            next: from,
            follow,
            sender,
        };
        let feed = follow.then(|| self.feed(follower.filter.connection_id));
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = follower.run(feed) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }

    #[cfg(test)]
    fn feeds(&self) -> usize {
        lock(&self.inner.feeds).len()
    }
}

/// The task behind a [`Feed`].
struct Poller {
    store: Store,
    connection_id: Uuid,
    /// The next sequence to read; `None` until the first read finds the log's end.
    next: Option<i64>,
    poll_interval: Duration,
    notifications: broadcast::Receiver<Notification>,
    stop: CancellationToken,
}

impl Poller {
    async fn run(mut self, batches: broadcast::Sender<Arc<Batch>>) {
        let connection = self.connection_id.to_string();
        loop {
            match self.read().await {
                Ok(batch) => {
                    let drained = batch.drained;
                    // No receiver now is fine: a follower that subscribes later catches up first.
                    let _ = batches.send(Arc::new(batch));
                    if !drained {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(
                    connection_id = %self.connection_id,
                    %error,
                    "log poll failed, trying again at the next wake-up"
                ),
            }
            tokio::select! {
                _ = wake(&mut self.notifications, &connection) => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Reads the active runs, then the events after the last read (from the log's end the first
    /// time).
    async fn read(&mut self) -> Result<Batch, learnsync_store::Error> {
        let conn = self.store.conn().await?;
        let active_runs = runs::active_ids(&conn, self.connection_id).await?;
        let from = match self.next {
            Some(next) => next,
            None => logs::last_sequence(&conn, self.connection_id).await? + 1,
        };
        let filter = logs::LogFilter {
            connection_id: self.connection_id,
            run_id: None,
            job_id: None,
            min_level: None,
        };
        let events = logs::read(&conn, &filter, from, LOG_PAGE).await?;
        drop(conn);
        self.next = Some(events.last().map_or(from, |event| event.sequence + 1));
        Ok(Batch {
            from,
            drained: (events.len() as i64) < LOG_PAGE,
            events,
            active_runs,
        })
    }
}

/// Completes on a NOTIFY about `connection`'s log (or a missed one: lagged, or the LISTEN
/// connection renewed).
async fn wake(notifications: &mut broadcast::Receiver<Notification>, connection: &str) {
    loop {
        match notifications.recv().await {
            Ok(n) if n.channel.is_empty() || n.payload == connection => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Why a follower ends.
enum End {
    /// Its run is over, its caller went away, or it was not following.
    Done,
    /// A read failed: the caller gets the status.
    Failed(Status),
}

/// One StreamLogs call.
struct Follower {
    store: Store,
    filter: logs::LogFilter,
    /// The next sequence this stream may send.
    next: i64,
    follow: bool,
    sender: mpsc::Sender<Result<pb::LogEvent, Status>>,
}

impl Follower {
    async fn run(mut self, feed: Option<Arc<Feed>>) {
        let end = match feed {
            None => self.catch_up().await.map(|_| ()),
            Some(feed) => self.follow(&feed).await,
        };
        if let Err(End::Failed(status)) = end {
            let _ = self.sender.send(Err(status)).await;
        }
    }

    /// Follows `feed` after catching up, until the followed run is over or the caller leaves.
    async fn follow(&mut self, feed: &Feed) -> Result<(), End> {
        // Subscribed before the catch-up: every batch read after it reaches this receiver.
        let mut batches = feed.batches.subscribe();
        if self.catch_up().await? {
            return Ok(());
        }
        loop {
            let received = tokio::select! {
                received = batches.recv() => received,
                _ = self.sender.closed() => return Ok(()),
            };
            let over = match received {
                Ok(batch) if batch.from > self.next => self.catch_up().await?,
                Ok(batch) => self.take(&batch).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        connection_id = %self.filter.connection_id,
                        missed,
                        "log follower fell behind the shared poll: catching up from postgres"
                    );
                    self.catch_up().await?
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            if over {
                return Ok(());
            }
        }
    }

    /// Sends a batch's events this stream selects and has not sent; `Ok(true)` when the batch
    /// shows the followed run over.
    async fn take(&mut self, batch: &Batch) -> Result<bool, End> {
        for event in &batch.events {
            if event.sequence < self.next {
                continue;
            }
            self.next = event.sequence + 1;
            if self.selects(event) {
                self.send(event).await?;
            }
        }
        Ok(batch.drained
            && self
                .filter
                .run_id
                .is_some_and(|run_id| !batch.active_runs.contains(&run_id)))
    }

    fn selects(&self, event: &LogEvent) -> bool {
        let filter = &self.filter;
        filter.run_id.is_none_or(|id| event.run_id == Some(id))
            && filter.job_id.is_none_or(|id| event.job_id == Some(id))
            && filter.min_level.is_none_or(|level| event.level >= level)
    }

    async fn send(&self, event: &LogEvent) -> Result<(), End> {
        self.sender
            .send(Ok(convert::log_event_to_proto(event)))
            .await
            .map_err(|_| End::Done)
    }

    /// Reads and sends what is committed from the stream's position on, page by page, with its
    /// own reads; `Ok(true)` when the followed run is over (so nothing more will come).
    async fn catch_up(&mut self) -> Result<bool, End> {
        loop {
            let failed = |status: Status| End::Failed(status);
            let conn = self.store.conn().await.or_status().map_err(failed)?;
            // Read before the events: a run over now has committed every event of its own, and
            // every event up to `high` is committed and visible to the read that follows.
            let run_over = match (self.follow, self.filter.run_id) {
                (true, Some(run_id)) => runs::state(&conn, run_id)
                    .await
                    .or_status()
                    .map_err(failed)?
                    .is_none_or(|state| !state.is_active()),
                _ => false,
            };
            let high = logs::last_sequence(&conn, self.filter.connection_id)
                .await
                .or_status()
                .map_err(failed)?;
            let events = logs::read(&conn, &self.filter, self.next, LOG_PAGE)
                .await
                .or_status()
                .map_err(failed)?;
            drop(conn);
            for event in &events {
                self.next = event.sequence + 1;
                self.send(event).await?;
            }
            if (events.len() as i64) < LOG_PAGE {
                self.next = self.next.max(high + 1);
                return Ok(!self.follow || run_over);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn streams(limit: usize) -> LogStreams {
        // Lazy: no connection is made until a read, and these tests read nothing.
        let store = Store::connect(&learnsync_store::Options {
            database_url: "host=/nonexistent dbname=none".into(),
            max_connections: 1,
        })
        .unwrap();
        let (notifications, _) = broadcast::channel(4);
        LogStreams::new(
            store,
            Duration::from_secs(3600),
            notifications,
            CancellationToken::new(),
            limit,
        )
    }

    #[test]
    fn a_principal_holds_at_most_the_limit_and_a_dropped_permit_frees_its_place() {
        let streams = streams(2);
        let first = streams.admit("tenant:acme").unwrap();
        let _second = streams.admit("tenant:acme").unwrap();
        let refused = streams.admit("tenant:acme").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("2 open log streams"),
            "{refused:?}"
        );
        // Another principal has places of its own.
        let _other = streams.admit("tenant:globex").unwrap();
        drop(first);
        let _again = streams.admit("tenant:acme").unwrap();
    }

    #[tokio::test]
    async fn followers_of_a_connection_share_one_feed_which_ends_with_the_last() {
        let streams = streams(8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = streams.feed(a);
        let second = streams.feed(a);
        let other = streams.feed(b);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(streams.feeds(), 2);
        let stop = first.stop.clone();
        drop(first);
        assert!(!stop.is_cancelled(), "a follower still holds the feed");
        drop(second);
        assert!(stop.is_cancelled(), "the last follower ended the poll");
        assert_eq!(streams.feeds(), 1);
        drop(other);
        assert_eq!(streams.feeds(), 0);
        // A new follower starts a new feed.
        let renewed = streams.feed(a);
        assert!(!renewed.stop.is_cancelled());
    }
}

//! What one running job carries: the job it holds, its store, the reasons it may have to stop, its
//! Salesforce write deadline, and the job-level side of a token request (interruptible, backing off
//! under the retry policy). The error type of a job's work lives in [`crate::error`] and is
//! re-exported here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use learnsync_store::Store;
use learnsync_store::model::NewLogEvent;
use learnsync_store::worker::{self as store_worker, ClaimedJob, Fenced};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::http::Answer;
use crate::retry::{Decision, Policy, Tally};

/// Why a job must stop what it is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Its run was asked to stop: end the job `stopped`.
    Stop,
    /// Another attempt holds the job now: write nothing more.
    Lost,
    /// The worker is shutting down: hand the job back.
    Shutdown,
}

pub use crate::error::{Failure, SyncError, SyncResult};

/// The state shared by a job's work, its heartbeat and the worker loop.
#[derive(Clone)]
pub struct JobCtx {
    /// The job held, with its attempt.
    pub job: Arc<ClaimedJob>,
    /// The store.
    pub store: Store,
    /// The worker's settings.
    pub settings: Arc<Settings>,
    /// Cancelled when the job must stop (the reason is in `reason`); a child of the worker's
    /// shutdown token, so a shutdown reaches every job.
    pub interrupt: CancellationToken,
    reason: Arc<Mutex<Option<Interrupt>>>,
    progressed: Arc<AtomicBool>,
    /// When the last lease extension that succeeded was sent (the claim, then heartbeats): the
    /// write deadline runs from it ([`JobCtx::may_write`]).
    lease_sent: Arc<Mutex<Instant>>,
    /// The worker's room for records in flight (`Settings::records_in_flight` permits), shared by
    /// all its jobs.
    pub room: Arc<tokio::sync::Semaphore>,
}

impl JobCtx {
    /// A context for a job just claimed by a claim sent at `claim_sent` (before its transaction
    /// began: Postgres starts the lease later).
    pub fn new(
        job: ClaimedJob,
        claim_sent: Instant,
        store: Store,
        settings: Arc<Settings>,
        shutdown: &CancellationToken,
        room: Arc<tokio::sync::Semaphore>,
    ) -> JobCtx {
        JobCtx {
            job: Arc::new(job),
            store,
            settings,
            interrupt: shutdown.child_token(),
            reason: Arc::new(Mutex::new(None)),
            progressed: Arc::new(AtomicBool::new(false)),
            lease_sent: Arc::new(Mutex::new(claim_sent)),
            room,
        }
    }

    /// Notes that a heartbeat sent at `sent` extended the lease (answers may arrive out of order:
    /// the latest sending wins).
    pub fn renewed(&self, sent: Instant) {
        let mut last = self
            .lease_sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = (*last).max(sent);
    }

    /// Until when this attempt may start a Salesforce write: the write window
    /// ([`Settings::write_window`]) from when the last successful lease extension was sent.
    pub fn write_deadline(&self) -> Instant {
        let sent = *self
            .lease_sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sent + self.settings.write_window()
    }

    /// Fails unless this attempt may start a Salesforce write now: the one rule that keeps a worker
    /// whose lease may have run out from writing Salesforce (which no transaction fences). Called
    /// right before every write request (collections upsert and delete, Bulk ingest job create,
    /// upload and close) and after every heartbeat. Past the write deadline the lease may have run
    /// out, and another worker may take the job over once its write grace has passed: the job is
    /// interrupted as a lost lease ([`Interrupt::Lost`]) and writes nothing more. A write started
    /// before the deadline ends, or times out, before that takeover.
    pub fn may_write(&self) -> SyncResult<()> {
        if self.interrupted() == Some(Interrupt::Lost) {
            return Err(SyncError::Interrupted(Interrupt::Lost));
        }
        let now = Instant::now();
        let deadline = self.write_deadline();
        if now >= deadline {
            tracing::warn!(
                job = %self.job.id,
                attempt = self.job.attempt,
                late_ms = now.duration_since(deadline).as_millis() as u64,
                "past the write deadline: the lease may have run out, writing nothing more"
            );
            return Err(self.lost());
        }
        Ok(())
    }

    /// Notes that this attempt moved the checkpoint (its retry spends the with-progress budget).
    pub fn mark_progress(&self) {
        self.progressed.store(true, Ordering::Relaxed);
    }

    /// Whether this attempt moved the checkpoint.
    pub fn made_progress(&self) -> bool {
        self.progressed.load(Ordering::Relaxed)
    }

    /// Asks the job to stop for `reason` (the first reason given wins, except that a lost lease
    /// overrides everything: nothing may be written then).
    pub fn raise(&self, reason: Interrupt) {
        let mut current = self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.is_none() || reason == Interrupt::Lost {
            *current = Some(reason);
        }
        drop(current);
        self.interrupt.cancel();
    }

    /// Why the job was interrupted, if it was.
    pub fn interrupted(&self) -> Option<Interrupt> {
        if !self.interrupt.is_cancelled() {
            return None;
        }
        let reason = *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(reason.unwrap_or(Interrupt::Shutdown))
    }

    /// Fails with the interruption, if any: called before every write, so a job stops between two
    /// confirmed writes.
    pub fn check(&self) -> SyncResult<()> {
        match self.interrupted() {
            Some(reason) => Err(SyncError::Interrupted(reason)),
            None => Ok(()),
        }
    }

    /// Sleeps, unless the job is interrupted first.
    pub async fn sleep(&self, duration: Duration) -> SyncResult<()> {
        tokio::select! {
            _ = self.interrupt.cancelled() => self.check(),
            _ = tokio::time::sleep(duration) => Ok(()),
        }
    }

    /// Runs a future (a read that may be thrown away), unless the job is interrupted first.
    pub async fn interruptible<T>(
        &self,
        future: impl Future<Output = SyncResult<T>>,
    ) -> SyncResult<T> {
        tokio::select! {
            _ = self.interrupt.cancelled() => {
                Err(SyncError::Interrupted(self.interrupted().unwrap_or(Interrupt::Shutdown)))
            }
            outcome = future => outcome,
        }
    }

    /// Runs a token request under `policy` (a [`Policy::for_token`]): interruptibly, backing off
    /// after transient answers, giving up as the policy says. `exchange` is one attempt; it may
    /// wait first (Docebo's takes a call from the platform's budget: token requests count
    /// against Docebo's limit like any call).
    pub async fn obtain<T, F>(&self, policy: &Policy, exchange: impl Fn() -> F) -> SyncResult<T>
    where
        F: Future<Output = SyncResult<Answer<T>>>,
    {
        let mut tally = Tally::default();
        loop {
            let answer = self.interruptible(exchange()).await?;
            let (signal, failure) = match answer.into_result() {
                Ok(value) => return Ok(value),
                Err(refused) => refused,
            };
            match policy.decide(signal, &mut tally) {
                Decision::Backoff(wait) => {
                    tracing::warn!(%failure, "token request failed, retrying");
                    self.sleep(wait).await?;
                }
                Decision::GiveUp(class) => return Err(class.fail(failure)),
                // A token request is neither paused for nor renewed: it fails for now.
                Decision::Renew | Decision::Pause(_) => return Err(SyncError::Transient(failure)),
            }
        }
    }

    /// Sets the job's status message (what it is waiting for), fenced by the attempt.
    pub async fn status(&self, message: &str) -> SyncResult<()> {
        let conn = self.store.conn().await?;
        if !store_worker::set_status(&conn, self.job.id, self.job.attempt, message).await? {
            return Err(self.lost());
        }
        Ok(())
    }

    /// Writes log events about the job, fenced by the attempt.
    pub async fn log(&self, events: Vec<NewLogEvent>) -> SyncResult<()> {
        self.fenced(async |fenced| Ok(store_worker::log(fenced, events).await?))
            .await
    }

    /// Notes that another attempt holds the job (nothing may be written any more) and returns the
    /// error the job's work ends with.
    fn lost(&self) -> SyncError {
        self.raise(Interrupt::Lost);
        SyncError::Interrupted(Interrupt::Lost)
    }

    /// Runs `write` in a transaction fenced by the attempt, and commits it. The one place a lost
    /// lease is found out on a write: when another attempt holds the job, it raises
    /// [`Interrupt::Lost`] and writes nothing.
    pub async fn fenced<T>(
        &self,
        write: impl AsyncFnOnce(&Fenced<'_>) -> SyncResult<T>,
    ) -> SyncResult<T> {
        let mut conn = self.store.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(learnsync_store::Error::from)?;
        let Some(fenced) = store_worker::fence(&tx, &self.job).await? else {
            return Err(self.lost());
        };
        let value = write(&fenced).await?;
        tx.commit().await.map_err(learnsync_store::Error::from)?;
        Ok(value)
    }
}

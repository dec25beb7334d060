//! The worker loop: claim jobs (woken by NOTIFY, polling as the fallback), run each under a lease
//! kept alive by its own heartbeat task, and end each job exactly once: finished, stopped, retried
//! later, failed, or handed back at shutdown. A job whose lease was taken over writes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use learnsync_store::model::RunState;
use learnsync_store::secrets::Cipher;
use learnsync_store::worker::{self as store_worker, ClaimedJob, Heartbeat, Outcome};
use learnsync_store::{CHANNEL_CANCEL, CHANNEL_JOBS, Store, connections, listen, mappings};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::budget::Budget;
use crate::config::Settings;
use crate::context::{Failure, Interrupt, JobCtx, SyncError};
use crate::docebo::Docebo;
use crate::mapping::Mapping;
use crate::salesforce::Salesforce;
use crate::sync::JobRun;

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mapping compiled in is invalid (a bug).
    #[error(transparent)]
    Mapping(#[from] crate::mapping::InvalidMapping),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// The settings contradict each other.
    #[error("settings: {0}")]
    Settings(String),
}

/// A sync worker. Build it with [`Worker::new`], then [`Worker::run`] it until shutdown.
pub struct Worker {
    settings: Arc<Settings>,
    store: Store,
    cipher: Cipher,
    mapping: Arc<Mapping>,
    http: learnsync_upstream::Http,
    tokens: crate::docebo::Tokens,
}

/// A job this worker runs, as the loop tracks it.
struct Running {
    run_id: Uuid,
    ctx: JobCtx,
}

impl Worker {
    /// A worker over a store, opening credentials with `cipher`.
    pub fn new(settings: Settings, store: Store, cipher: Cipher) -> Result<Worker, Error> {
        if settings.heartbeat >= settings.write_window() {
            // Every job would pass its write deadline between two heartbeats.
            return Err(Error::Settings(format!(
                "the heartbeat ({:?}) must be shorter than nine tenths of the lease ({:?})",
                settings.heartbeat, settings.lease
            )));
        }
        let http = learnsync_upstream::Http::new(settings.upstream.clone(), settings.http_timeout)
            .map_err(|error| Error::Http(error.to_string()))?;
        Ok(Worker {
            settings: Arc::new(settings),
            store,
            cipher: cipher.clone(),
            mapping: Arc::new(Mapping::default_mapping()?),
            http,
            tokens: crate::docebo::Tokens::new(cipher),
        })
    }

    /// Runs until `shutdown` is cancelled, then hands its jobs back (within the shutdown grace)
    /// and returns. Dropping the future (aborting its task) stops everything at once, as a crash
    /// would: the jobs' leases expire and other workers take them over.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let settings = self.settings.clone();
        // Cancelled when this future ends or is dropped: stops the LISTEN task with us.
        let listener_token = CancellationToken::new();
        let _listener_guard = listener_token.clone().drop_guard();
        let notifications = listen::spawn(
            self.store.direct_url().to_string(),
            &[CHANNEL_JOBS, CHANNEL_CANCEL],
            listener_token,
        );
        let mut wakeups = notifications.subscribe();
        self.wait_for_schema(&shutdown).await;
        tracing::info!(worker = %settings.worker_id, concurrency = settings.concurrency, "worker started");

        let capacity = settings.records_in_flight.max(1);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity));
        // The records gauges read this room when scraped (it is dropped with the loop).
        crate::metrics::watch_room(&room, capacity);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Running> = HashMap::new();
        let mut claim_now = true;
        while !shutdown.is_cancelled() {
            if claim_now {
                claim_now = false;
                let free = settings.concurrency.saturating_sub(running.len());
                match self.claim(free).await {
                    Ok((sent, jobs)) => {
                        // A full claim may have left more: look again at once.
                        claim_now = free > 0 && jobs.len() == free;
                        for job in jobs {
                            let ctx = JobCtx::new(
                                job,
                                sent,
                                self.store.clone(),
                                settings.clone(),
                                &shutdown,
                                room.clone(),
                            );
                            let task = self.spawn_job(&mut tasks, ctx.clone());
                            running.insert(
                                task,
                                Running {
                                    run_id: ctx.job.run_id,
                                    ctx,
                                },
                            );
                        }
                    }
                    Err(error) => tracing::warn!(%error, "claiming jobs failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next_with_id() => {
                    running.remove(&ended_task(done));
                    claim_now = true;
                }
                received = wakeups.recv() => match received {
                    Ok(notification) if notification.channel == CHANNEL_CANCEL => {
                        stop_run(&running, &notification.payload);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => claim_now = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        wakeups = notifications.subscribe();
                    }
                },
                _ = tokio::time::sleep(settings.poll_interval) => claim_now = true,
            }
        }
        tracing::info!(worker = %settings.worker_id, jobs = running.len(), "worker shutting down, handing jobs back");
        drain(tasks, settings.shutdown_grace).await;
        Ok(())
    }

    /// Runs a claimed job on its own task, inside a `job` span: every event of the job's work
    /// (Docebo pages, Salesforce writes, retries) carries its run's trace id, run, job, kind and
    /// attempt, as the server's lines about the run carry the trace id, so one search finds a run
    /// across processes. Exported, the span is in the run's trace (its trace id is the run's), and
    /// each upstream call of the job is a child span of it (`crate::http::send`).
    fn spawn_job(&self, tasks: &mut JoinSet<()>, ctx: JobCtx) -> tokio::task::Id {
        let span = tracing::info_span!(
            "job",
            trace_id = %ctx.job.trace_id,
            run = %ctx.job.run_id,
            job = %ctx.job.id,
            kind = %ctx.job.kind,
            attempt = ctx.job.attempt,
        );
        // In the run's trace in the tracing backend, when spans are exported.
        learnsync_telemetry::join_run(&span, &ctx.job.trace_id, ctx.job.run_id.as_u128());
        let worker = self.job_runner();
        tasks
            .spawn(tracing::Instrument::instrument(worker.run_job(ctx), span))
            .id()
    }

    async fn wait_for_schema(&self, shutdown: &CancellationToken) {
        let mut said = false;
        while !shutdown.is_cancelled() {
            let ready = match self.store.conn().await {
                Ok(conn) => store_worker::schema_ready(&conn).await,
                Err(error) => Err(error),
            };
            match ready {
                Ok(true) => return,
                Ok(false) if !said => {
                    said = true;
                    tracing::warn!(
                        "the database has no learnsync schema yet: waiting for the server to migrate it"
                    );
                }
                Err(error) if !said => {
                    said = true;
                    tracing::warn!(%error, "the database is not reachable yet: waiting");
                }
                _ => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Reaps the jobs of stopping runs nobody will stop, then claims up to `free` jobs. Returns
    /// when the claim was sent (its leases run from a later moment, the transaction's start).
    async fn claim(&self, free: usize) -> learnsync_store::Result<(Instant, Vec<ClaimedJob>)> {
        let _timer = crate::metrics::METRICS.claim_seconds.start_timer();
        let mut conn = self.store.conn().await?;
        let sent = Instant::now();
        let tx = conn.transaction().await?;
        store_worker::reap_stopped(&tx).await?;
        let jobs = if free > 0 {
            store_worker::claim(
                &tx,
                &self.settings.worker_id,
                self.settings.lease_terms(),
                free as i64,
            )
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        for job in &jobs {
            crate::metrics::METRICS
                .claims
                .with_label_values(&[job.kind.as_str()])
                .inc();
            tracing::info!(job = %job.id, run = %job.run_id, trace_id = %job.trace_id, kind = %job.kind, attempt = job.attempt, "job claimed");
        }
        Ok((sent, jobs))
    }

    fn job_runner(&self) -> JobRunner {
        JobRunner {
            settings: self.settings.clone(),
            store: self.store.clone(),
            cipher: self.cipher.clone(),
            mapping: self.mapping.clone(),
            http: self.http.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

/// What a job task needs (cheap clones of the worker's parts).
struct JobRunner {
    settings: Arc<Settings>,
    store: Store,
    cipher: Cipher,
    mapping: Arc<Mapping>,
    http: learnsync_upstream::Http,
    tokens: crate::docebo::Tokens,
}

/// Aborts a task when dropped: a job's heartbeat dies with the job (or with an aborted worker).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl JobRunner {
    async fn run_job(self, ctx: JobCtx) {
        let heartbeat = AbortOnDrop(tokio::spawn(heartbeat(ctx.clone())));
        let outcome = if ctx.job.attempt > self.settings.max_attempts {
            Err(SyncError::Permanent(Failure::TooManyClaims(
                ctx.job.attempt,
            )))
        } else {
            self.work(&ctx).await
        };
        drop(heartbeat);
        let job = ctx.job.clone();
        let ending = match outcome {
            Ok(()) => Ending::Finish(Outcome::Done),
            Err(SyncError::Interrupted(Interrupt::Stop)) => Ending::Finish(Outcome::Stopped),
            Err(SyncError::Interrupted(Interrupt::Lost)) => {
                crate::metrics::METRICS.lease_losses.inc();
                tracing::warn!(job = %job.id, attempt = job.attempt, "lease lost: another worker has the job");
                return;
            }
            Err(SyncError::Interrupted(Interrupt::Shutdown)) => Ending::HandBack,
            Err(SyncError::Permanent(cause)) => Ending::Finish(Outcome::Failed(cause.to_string())),
            Err(SyncError::Transient(cause)) => self.retry_or_fail(&ctx, cause.to_string()),
        };
        // Ending the job is retried a few times: a database blip must not leave it to the lease.
        for attempt in 1..=5u32 {
            match self.end(&ctx, &ending).await {
                Ok(held) => {
                    if !held {
                        tracing::warn!(job = %job.id, "job was taken over before it could end");
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = %job.id, %error, attempt, "ending the job failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
            }
        }
    }

    fn retry_or_fail(&self, ctx: &JobCtx, cause: String) -> Ending {
        let job = &ctx.job;
        let progressed = ctx.made_progress();
        let (spent, budget) = if progressed {
            (
                job.retries_with_progress,
                self.settings.max_retries_with_progress,
            )
        } else {
            (
                job.retries_without_progress,
                self.settings.max_retries_without_progress,
            )
        };
        if spent >= budget {
            return Ending::Finish(Outcome::Failed(format!(
                "{cause} (gave up after {spent} retries)"
            )));
        }
        Ending::Retry {
            progressed,
            delay: crate::retry::job_retry_delay(
                self.settings.retry_base,
                self.settings.retry_max,
                spent,
            ),
            cause,
        }
    }

    async fn end(&self, ctx: &JobCtx, ending: &Ending) -> learnsync_store::Result<bool> {
        let job = &ctx.job;
        let mut conn = self.store.conn().await?;
        let tx = conn.transaction().await?;
        let held = match ending {
            Ending::Finish(outcome) => store_worker::finish(&tx, job, outcome).await?,
            Ending::HandBack => store_worker::hand_back(&tx, job).await?,
            Ending::Retry {
                progressed,
                delay,
                cause,
            } => store_worker::retry_later(&tx, job, *progressed, *delay, cause).await?,
        };
        // A job handed back or retried while its run is stopping ends stopped (not re-run).
        store_worker::reap_stopped(&tx).await?;
        tx.commit().await?;
        match ending {
            Ending::Finish(outcome) => {
                tracing::info!(job = %job.id, kind = %job.kind, ?outcome, "job ended")
            }
            Ending::HandBack => tracing::info!(job = %job.id, kind = %job.kind, "job handed back"),
            Ending::Retry { delay, cause, .. } => {
                tracing::warn!(job = %job.id, kind = %job.kind, %cause, delay_ms = delay.as_millis() as u64, "job will retry")
            }
        }
        Ok(held)
    }

    /// Opens the credentials, builds the clients and runs the job's phases.
    async fn work(&self, ctx: &JobCtx) -> Result<(), SyncError> {
        let job = &ctx.job;
        let (sealed, stored) = {
            let conn = ctx.store.conn().await?;
            (
                connections::sealed_credentials(&conn, job.connection_id).await?,
                mappings::current(&conn, job.connection_id).await?,
            )
        };
        // The connection's mapping, the version current now, else the default one.
        let (mapping, mapping_version) =
            match stored {
                Some(stored) => (
                    Arc::new(Mapping::from_document(&stored.document).map_err(|error| {
                        SyncError::Permanent(Failure::Mapping(error.to_string()))
                    })?),
                    stored.version,
                ),
                None => (self.mapping.clone(), mappings::DEFAULT_VERSION),
            };
        let credentials = self.cipher.open(job.connection_id, &sealed.0)?;
        let budget = Budget::new(
            learnsync_store::worker::BudgetKey {
                tenant: job.tenant.clone(),
                platform: job.docebo_platform.clone(),
            },
            job.docebo_calls_per_hour,
            self.settings.docebo_burst,
        );
        let docebo = Docebo::new(
            self.http.clone(),
            job.connection_id,
            credentials.docebo,
            budget,
            &self.tokens,
        );
        let salesforce = Salesforce::new(self.http.clone(), credentials.salesforce);
        JobRun::new(ctx, docebo, salesforce, &mapping, mapping_version)?
            .run()
            .await
    }
}

/// How a job ends.
enum Ending {
    Finish(Outcome),
    HandBack,
    Retry {
        progressed: bool,
        delay: Duration,
        cause: String,
    },
}

/// Keeps a job's lease alive on its own task, so slow I/O never looks like death; learns of Stop
/// (the run is stopping) and of a lost lease. Each beat that extends the lease moves the job's
/// write deadline from when it was sent; once the deadline passes without one, the job is lost
/// ([`JobCtx::may_write`], the same rule its Salesforce writes follow).
async fn heartbeat(ctx: JobCtx) {
    let settings = ctx.settings.clone();
    loop {
        tokio::time::sleep(settings.heartbeat).await;
        let beat = async {
            let conn = ctx.store.conn().await?;
            let sent = Instant::now();
            let beat =
                store_worker::heartbeat(&conn, ctx.job.id, ctx.job.attempt, settings.lease_terms())
                    .await?;
            Ok::<_, learnsync_store::Error>((sent, beat))
        };
        match tokio::time::timeout(settings.lease, beat).await {
            Ok(Ok((sent, Heartbeat::Held(state)))) => {
                ctx.renewed(sent);
                if state == RunState::Stopping {
                    ctx.raise(Interrupt::Stop);
                }
            }
            Ok(Ok((_, Heartbeat::Lost))) => {
                ctx.raise(Interrupt::Lost);
                return;
            }
            Ok(Err(error)) => tracing::warn!(job = %ctx.job.id, %error, "heartbeat failed"),
            Err(_) => tracing::warn!(job = %ctx.job.id, "heartbeat timed out"),
        }
        if ctx.may_write().is_err() {
            // The lease may have run out: another worker may take the job over.
            return;
        }
    }
}

/// The id of a job task that ended (a task that panicked is logged).
fn ended_task(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((task, ())) => task,
        Err(error) => {
            tracing::error!(%error, "a job task failed");
            error.id()
        }
    }
}

/// Asks this worker's jobs of the run `run_id` (a NOTIFY payload) to stop.
fn stop_run(running: &HashMap<tokio::task::Id, Running>, run_id: &str) {
    for job in running.values() {
        if job.run_id.to_string() == run_id {
            job.ctx.raise(Interrupt::Stop);
        }
    }
}

/// Waits for the jobs to hand back after a shutdown, for at most `grace`, then aborts the rest.
/// The jobs saw the shutdown (their tokens are children of it): each finishes its current write
/// and hands its job back.
async fn drain(mut tasks: JoinSet<()>, grace: std::time::Duration) {
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("jobs did not hand back within the shutdown grace: aborting them");
        tasks.shutdown().await;
    }
}

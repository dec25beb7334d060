//! The work of one job: walk a Docebo listing page by page, map each item, skip what the ledger
//! says is unchanged, write the rest to Salesforce, and commit the confirmed writes with the
//! checkpoint after them. Then retry records whose parent was missing, then (full enrollment
//! runs) mark unenrolled what the listing no longer holds.
//!
//! Memory stays flat: a few chunks of records are held (a page, or the bulk chunk when the job is
//! large enough for Bulk API 2.0): the one being read and those being written. Records kept for
//! a retry wait in `job_deferred`, not in memory.
//!
//! Layout ([`JobRun`] and its phases here; each file adds the methods of one concern):
//! - `checkpoint`: [`Checkpoint`], [`Phase`], [`Pos`], [`Deferred`]: where a job is, as stored.
//! - `listing`: the walk of a kind's Docebo listing (flat or nested), as its `KindSpec` says,
//!   and the proof that it read everything (the comparison unenrolls only after one).
//! - `shared`: the course list read once per run and shared by its jobs through Postgres.
//! - `published`: the sessions a courses run read, published for the enrollments area's roster
//!   jobs, which walk them instead of listing them again.
//! - `pipeline`: the list phase's bookkeeping (what is in flight, what commits when), no IO.
//! - `list`: the list phase: the reader and the writer loop that drive the pipeline.
//! - `write`: writing a chunk and classifying Salesforce's answers into a `Written`.
//! - `commit`: the fenced transaction that records a chunk and the checkpoint after it.
//! - `deferred`: records whose parent was missing, kept and retried.
//! - `unenroll`: marking unenrolled (or deleting) what the listing no longer holds, unless the
//!   count is above the connection's guard.
//! - `verify`: runs over all time first read what Salesforce holds (Bulk API 2.0 query) and
//!   compare it with the ledger, so that the listing puts back what someone else changed.
//!
//! A check run (`check_only`) goes through the same phases and writes nothing to Salesforce or
//! the ledger's values: it counts and logs what each phase would do.

mod checkpoint;
mod commit;
mod deferred;
mod list;
mod listing;
mod pipeline;
mod published;
mod shared;
mod unenroll;
mod verify;
mod write;

pub use checkpoint::{Checkpoint, Deferred, Phase, Pos};

use learnsync_store::mappings;
use learnsync_store::realtime::Targets;
use learnsync_store::worker as store_worker;
use serde_json::Value;

use crate::context::{Failure, JobCtx, SyncError, SyncResult};
use crate::docebo::Docebo;
use crate::mapping::{Mapping, ObjectMapping, docebo_time};
use crate::salesforce::Salesforce;

/// Runs a job to its end (or its interruption).
pub struct JobRun<'a> {
    ctx: &'a JobCtx,
    docebo: Docebo,
    salesforce: Salesforce,
    mapping: ObjectMapping,
    /// The version of the connection's mapping current when the job started (0: the default).
    mapping_version: i32,
    /// Records of this kind were written by another mapping version: the listing reads over all
    /// time (an incremental run too), so that each record whose mapped values changed is written
    /// again (the others hash as before and are not), and then marks them as this version's.
    remap: bool,
    checkpoint: Checkpoint,
    /// Webhook runs: the records the events named.
    targets: Option<Targets>,
    /// The ledger held nothing of this object when the attempt started (a first sync): records
    /// are not looked up, since only this attempt's own writes could be found (a key listed
    /// twice is then written twice, which Salesforce's upsert makes harmless).
    ledger_empty: bool,
    /// Check runs: records named in the log so far.
    check_logged: std::sync::atomic::AtomicUsize,
    /// The connection keeps records of this object to read again (or this job kept some): the
    /// commits forget those they write or fail for good.
    retries: std::sync::atomic::AtomicBool,
    /// This attempt read its listing again because its seen set was lost (once per attempt).
    relisted: bool,
    /// The unenrollment of a roster job that walked the courses area's published sessions
    /// reading: what that reading proves gone.
    listed: Option<learnsync_store::worker::ListedSessions>,
}

impl<'a> JobRun<'a> {
    /// Prepares a job's run from its checkpoint.
    pub fn new(
        ctx: &'a JobCtx,
        docebo: Docebo,
        salesforce: Salesforce,
        mapping: &'a Mapping,
        mapping_version: i32,
    ) -> SyncResult<JobRun<'a>> {
        let mapping = mapping
            .entity(ctx.job.kind.spec().entity)
            .map_err(|error| SyncError::Permanent(Failure::Mapping(error.to_string())))?
            .clone();
        let checkpoint = match &ctx.job.checkpoint {
            // A run over all time first reads what Salesforce holds (rewriting everything
            // anyway, `rewrite_unchanged` needs no comparison).
            None | Some(Value::Null)
                if ctx.job.compares_everything() && !ctx.job.rewrite_unchanged =>
            {
                Checkpoint {
                    phase: Phase::Verify,
                    ..Checkpoint::default()
                }
            }
            None | Some(Value::Null) => Checkpoint::default(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|error| {
                SyncError::Permanent(Failure::UnreadableState {
                    what: "checkpoint",
                    detail: error.to_string(),
                })
            })?,
        };
        let targets = match &ctx.job.targets {
            None | Some(Value::Null) => None,
            Some(value) => Some(serde_json::from_value(value.clone()).map_err(|error| {
                SyncError::Permanent(Failure::UnreadableState {
                    what: "run targets",
                    detail: error.to_string(),
                })
            })?),
        };
        Ok(JobRun {
            ctx,
            docebo,
            salesforce,
            mapping,
            mapping_version,
            remap: false,
            checkpoint,
            targets,
            ledger_empty: false,
            check_logged: Default::default(),
            retries: Default::default(),
            relisted: false,
            listed: None,
        })
    }

    /// Runs every phase left, then gives unspent Docebo calls back.
    pub async fn run(mut self) -> SyncResult<()> {
        let outcome = self.phases().await;
        self.docebo.release_budget(self.ctx).await;
        outcome
    }

    async fn phases(&mut self) -> SyncResult<()> {
        // The org is checked against the mapping before anything is written.
        let describe = self
            .salesforce
            .describe(self.ctx, &self.mapping.object)
            .await?;
        self.mapping = self
            .mapping
            .fit_to_org(self.ctx.job.kind.spec().entity, &describe)
            .map_err(|message| SyncError::Permanent(Failure::OrgMismatch(message)))?;
        loop {
            self.phases_from_checkpoint().await?;
            // The unenrollment moved the job back to its listing: its seen set was lost.
            if !(self.relisted && self.checkpoint.phase == Phase::List) {
                return Ok(());
            }
        }
    }

    /// Runs the phases from the checkpoint's to the last.
    async fn phases_from_checkpoint(&mut self) -> SyncResult<()> {
        let listing = matches!(self.checkpoint.phase, Phase::List | Phase::Deferred);
        if listing && self.seen_lost().await? {
            self.relist().await?;
        }
        if self.checkpoint.phase == Phase::List && self.snapshot_lost().await? {
            self.checkpoint.phase = Phase::Verify;
        }
        if self.checkpoint.phase == Phase::Verify {
            self.verify().await?;
        }
        let ledger = {
            let conn = self.ctx.store.conn().await?;
            store_worker::ledger_state(&conn, self.ctx.job.connection_id, &self.mapping.object)
                .await?
        };
        self.ledger_empty = ledger.empty;
        self.retries
            .store(ledger.retries_pending, std::sync::atomic::Ordering::Relaxed);
        self.remap = self.remaps().await?;
        self.move_legacy_deferred().await?;
        if self.checkpoint.phase == Phase::List {
            self.list().await?;
            self.mark_mapping_version().await?;
        }
        if self.checkpoint.phase == Phase::Deferred {
            self.ctx
                .status("retrying records whose parent was missing")
                .await?;
            self.load_retries().await?;
            self.retry_deferred().await?;
            self.sweep_retries().await?;
        }
        if self.checkpoint.phase == Phase::Unenroll {
            self.ctx
                .status("marking enrollments gone from docebo")
                .await?;
            self.unenroll().await?;
        }
        Ok(())
    }

    /// After the listing and the deferred records of a run over all time: records kept to be
    /// read again that this run did not find failing again are forgotten (it read everything).
    async fn sweep_retries(&self) -> SyncResult<()> {
        let job = &self.ctx.job;
        if !job.compares_everything() || job.check_only {
            return Ok(());
        }
        let object = self.mapping.object.as_str();
        self.ctx
            .fenced(async |fenced| {
                Ok(store_worker::retry_sweep(fenced, object)
                    .await
                    .map(|_| ())?)
            })
            .await
    }

    /// Whether this job reads its whole listing because another mapping version wrote some of
    /// its records (not for runs limited to a timeframe or to webhook targets).
    async fn remaps(&self) -> SyncResult<bool> {
        let job = &self.ctx.job;
        // Versions only grow: a connection on the default mapping (0) never had another one.
        if self.mapping_version == mappings::DEFAULT_VERSION
            || self.ledger_empty
            || self.targets.is_some()
            || job.timeframe_start.is_some()
            || job.timeframe_end.is_some()
        {
            return Ok(false);
        }
        let (object, version) = (self.mapping.object.as_str(), self.mapping_version);
        let stale = {
            let conn = self.ctx.store.conn().await?;
            if mappings::version_applied(&conn, job, object, version).await? {
                return Ok(false);
            }
            mappings::ledger_stale(&conn, job, object, version).await?
        };
        if stale {
            tracing::info!(
                object = %self.mapping.object,
                mapping_version = self.mapping_version,
                "records written by another mapping version: reading the whole listing"
            );
        } else if !job.check_only {
            // None: later jobs under this version need not look again.
            self.ctx
                .fenced(async |fenced| Ok(mappings::record_applied(fenced, object, version).await?))
                .await?;
        }
        Ok(stale)
    }

    /// After a listing read in full under a changed mapping: its records are this version's.
    async fn mark_mapping_version(&self) -> SyncResult<()> {
        if !self.remap || self.ctx.job.check_only || self.checkpoint.phase == Phase::List {
            return Ok(());
        }
        let (object, version) = (self.mapping.object.as_str(), self.mapping_version);
        self.ctx
            .fenced(async |fenced| {
                Ok(mappings::ledger_mark_version(fenced, object, version)
                    .await
                    .map(|_| ())?)
            })
            .await
    }

    /// Whether a check run's listing lost the snapshot it compares with (an unlogged table is
    /// emptied by a crash of Postgres): the verify phase then reads Salesforce again.
    async fn snapshot_lost(&self) -> SyncResult<bool> {
        if !self.ctx.job.check_only || self.checkpoint.snapshot_records == 0 {
            return Ok(false);
        }
        let conn = self.ctx.store.conn().await?;
        Ok(store_worker::snapshot_size(&conn, self.ctx.job.id).await? == 0)
    }

    /// The `updated_from` filter of the listing's leaves: the later of the timeframe's start and
    /// the incremental run's watermark.
    fn leaf_filters(&self) -> Vec<(String, String)> {
        self.reads_from()
            .map(|time| vec![("updated_from".to_string(), docebo_time(time))])
            .unwrap_or_default()
    }

    /// Where the listing's leaves read from: the later of the timeframe's start and the
    /// incremental run's watermark (`None`: all of time).
    fn reads_from(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let job = &self.ctx.job;
        let updated_from = job.updated_from.filter(|_| !self.remap);
        match (job.timeframe_start, updated_from) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether an item falls in the run's timeframe (Docebo filters the start; the end is ours).
    fn in_timeframe(&self, item: &Value) -> bool {
        let job = &self.ctx.job;
        if job.timeframe_start.is_none() && job.timeframe_end.is_none() {
            return true;
        }
        let Some(time) = self.mapping.updated_at_of(item) else {
            return false;
        };
        job.timeframe_start.is_none_or(|start| time >= start)
            && job.timeframe_end.is_none_or(|end| time < end)
    }

    /// The phase after the deferred records' retry: unenrollment when the kind tracks it and
    /// this run compares the full listing (or webhooks announced deletions).
    fn phase_after_deferred(&self) -> Phase {
        let job = &self.ctx.job;
        let wanted = job.kind.spec().unenrolls
            && self.mapping.unenroll.is_some()
            && (job.tracks_unenrollments()
                || (job.may_unenroll() && !self.deleted_keys().is_empty()));
        if wanted { Phase::Unenroll } else { Phase::Done }
    }

    /// Webhook runs: the keys of this job's kind that Docebo said were deleted, with when, in key
    /// order (the dispatcher keeps one deletion per record, the latest, sorted by kind and key).
    fn deleted_keys(&self) -> Vec<unenroll::Announced> {
        let Some(targets) = &self.targets else {
            return Vec::new();
        };
        targets
            .deleted
            .iter()
            .filter(|deleted| deleted.kind == self.ctx.job.kind)
            .map(|deleted| (deleted.key.clone(), deleted.fired_at))
            .collect()
    }

    /// Incremental runs of sessions and session enrollments (scheduled, not webhook-targeted)
    /// skip the courses (and rosters, the sessions) that ended more than the grace period before
    /// the run reads from: a session listing or a roster costs a call per course or session
    /// whatever changed (the sessions job listed every session course's every 15 minutes: 200
    /// calls at 100k enrollments). The daily full comparison reads them.
    fn ended_before(&self) -> Option<String> {
        let nested = matches!(
            self.ctx.job.kind.spec().listing,
            learnsync_store::model::Listing::Nested { .. }
        );
        let from = self.ctx.job.updated_from.filter(|_| !self.remap)?;
        let grace = chrono::Duration::days(listing::ROSTER_GRACE_DAYS);
        (nested && self.targets.is_none()).then(|| docebo_time(from - grace))
    }
}

//! Unenrollment: the records the ledger holds that a full listing did not contain (or that
//! webhooks said were deleted) are marked unenrolled in Salesforce, or deleted, as the
//! connection's policy says; a batch at a time, each committed with the last key handled.

use chrono::{DateTime, Utc};
use learnsync_store::model::{Counts, LogLevel, NewLogEvent, UnenrollmentPolicy};
use learnsync_store::worker::{self as store_worker, ListedSessions, Progress, Seen};

use super::JobRun;
use super::checkpoint::{Checkpoint, Phase};
use super::published::SESSIONS_READING;
use super::write::Written;
use crate::context::{Failure, SyncError, SyncResult};
use crate::mapping::Fields;
use crate::salesforce::{COLLECTION_SIZE, RecordResult};

/// Unseen ledger records handled per unenrollment batch.
const UNENROLL_BATCH: i64 = COLLECTION_SIZE as i64;

/// A deletion a webhook announced: the record's key and when Docebo fired it.
pub(super) type Announced = (String, Option<DateTime<Utc>>);

/// Where the course list and sessions a roster job walked came from ([`JobRun::walked_reading`]).
enum Walked {
    /// Its own listing.
    Own,
    /// The courses area's published reading: unseen records are gone when their session's roster
    /// was read or they were written before the reading began.
    Published(ListedSessions),
    /// A published reading replaced since.
    Replaced,
}

/// Ledger records to unenroll: keys with their Salesforce id, when known.
type Unseen = Vec<(String, Option<String>)>;

/// What a batch achieved: the keys handled, and the log of the others.
#[derive(Default)]
struct Handled {
    done_keys: Vec<String>,
    events: Vec<NewLogEvent>,
}

impl Handled {
    /// Sorts Salesforce's answers about `keys`: done, or an error event for `action`.
    fn answers<'k>(
        &mut self,
        object: &str,
        action: &str,
        keys: impl Iterator<Item = &'k String>,
        results: Vec<RecordResult>,
    ) {
        for (key, result) in keys.zip(results) {
            if result.success {
                self.done_keys.push(key.clone());
            } else {
                let failure = result.failure();
                self.events.push(
                    NewLogEvent::new(LogLevel::Error, failure.message)
                        .record(key.as_str())
                        .code(failure.code)
                        .field("object", object)
                        .field("action", action),
                );
            }
        }
    }
}

impl JobRun<'_> {
    /// Marks unenrolled (or deletes) the records the ledger holds that this full listing did not
    /// contain.
    pub(super) async fn unenroll(&mut self) -> SyncResult<()> {
        // A webhook run unenrolls the deletions its events announced; a full run, whatever its
        // listing did not contain.
        let announced = self.targets.is_some().then(|| self.deleted_keys());
        // The full comparison unenrolls only after a listing proven complete: a record a listing
        // skipped (or a nested 404, or a short count) is live in Docebo.
        if announced.is_none() && !self.checkpoint.listing_complete {
            return self.unenroll_nothing().await;
        }
        // What the listing saw is scratch a crash of Postgres empties: a job that lost it reads
        // its listing again, and unenrolls nothing on what it no longer knows it saw.
        if self.seen_lost().await? {
            return self.relist().await;
        }
        self.listed = match self.walked_reading().await? {
            Walked::Own => None,
            Walked::Published(listed) => Some(listed),
            Walked::Replaced => return self.relist().await,
        };
        // A full run checks its count against the guard once, before the first batch; a check
        // run only reports.
        if announced.is_none() && self.checkpoint.after_key.is_empty() {
            match self.held().await? {
                Seen::Lost => return self.relist().await,
                Seen::Whole(true) => {
                    self.checkpoint.phase = Phase::Done;
                    return self
                        .commit(Some(&self.checkpoint), Written::default())
                        .await;
                }
                Seen::Whole(false) => {}
            }
        }
        loop {
            let Seen::Whole((unseen, last_key)) = self.unseen_batch(announced.as_deref()).await?
            else {
                return self.relist().await;
            };
            let Some(last_key) = last_key else {
                self.checkpoint.phase = Phase::Done;
                return self
                    .commit(Some(&self.checkpoint), Written::default())
                    .await;
            };
            self.ctx.check()?;
            let now = Utc::now();
            let policy = self.ctx.job.unenrollment_policy;
            let mut handled = match policy {
                _ if unseen.is_empty() => Handled::default(),
                UnenrollmentPolicy::MarkUnenrolled => self.mark_unenrolled(&unseen, now).await?,
                UnenrollmentPolicy::Delete => self.delete(&unseen).await?,
            };
            if !handled.done_keys.is_empty() {
                handled.events.push(
                    NewLogEvent::new(
                        LogLevel::Info,
                        "enrollments gone from docebo marked in salesforce",
                    )
                    .field("object", self.mapping.object.as_str())
                    .field("records", handled.done_keys.len() as i64)
                    .field("policy", policy.as_str()),
                );
            }
            self.checkpoint.after_key = last_key;
            self.commit_unenrolled(handled, now).await?;
        }
    }

    /// Whether this full run's unenrollments stop here: a check run reports them (count and
    /// first keys) and unenrolls nothing; a run whose count is above the connection's guard, and
    /// was not confirmed, holds them with a warning naming the count. [`Seen::Lost`]: the seen
    /// set lost marks, nothing can be counted.
    async fn held(&self) -> SyncResult<Seen<bool>> {
        let job = &self.ctx.job;
        let object = self.mapping.object.as_str();
        let conn = self.ctx.store.conn().await?;
        let Seen::Whole((unseen, live)) =
            store_worker::ledger_unseen_count(&conn, job, object, self.listed.as_ref()).await?
        else {
            return Ok(Seen::Lost);
        };
        let over = job.unenrollment_guard.holds(unseen, live);
        if !job.check_only && (!over || job.confirm_unenrollments) {
            return Ok(Seen::Whole(false));
        }
        let Seen::Whole(first) =
            store_worker::ledger_unseen(&conn, job, object, "", 20, self.listed.as_ref()).await?
        else {
            return Ok(Seen::Lost);
        };
        drop(conn);
        let first: Vec<String> = first.into_iter().map(|(key, _)| key).collect();
        let guard = job.unenrollment_guard;
        let mut events = Vec::new();
        if over && unseen > 0 {
            events.push(
                NewLogEvent::new(
                    LogLevel::Warn,
                    format!(
                        "{unseen} of {live} {object} records are gone from docebo's listing, more than \
                         the connection allows one run to unenroll (max({}, {}%)): {} until a \
                         resynchronize confirms them (confirm_unenrollments)",
                        guard.min_records,
                        guard.max_percent,
                        if job.check_only { "a synchronization would hold them" } else { "held" },
                    ),
                )
                .code("UNENROLLMENTS_HELD")
                .field("object", object)
                .field("unenrollments", unseen)
                .field("live", live)
                .field("first", first.join(", ")),
            );
        }
        let mut counts = Counts::default();
        if job.check_only && unseen > 0 {
            counts.unenrolled = unseen;
            events.push(
                NewLogEvent::new(
                    LogLevel::Info,
                    "check: a synchronization would unenroll these records",
                )
                .field("object", object)
                .field("unenrollments", unseen)
                .field("first", first.join(", ")),
            );
        }
        let progress = Progress {
            delta: counts,
            ..Progress::default()
        };
        self.ctx
            .fenced(async |fenced| {
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, events).await?;
                Ok(())
            })
            .await?;
        Ok(Seen::Whole(true))
    }

    /// Ends the phase without unenrolling anything, saying why (the listing is not known to be
    /// complete).
    async fn unenroll_nothing(&mut self) -> SyncResult<()> {
        let reason = self
            .checkpoint
            .incomplete
            .clone()
            .unwrap_or_else(|| "its completeness was not recorded".into());
        tracing::warn!(%reason, "listing not known to be complete: nothing unenrolled");
        let mut written = Written::default();
        written.events.push(
            NewLogEvent::new(
                LogLevel::Warn,
                "the docebo listing is not known to be complete: nothing unenrolled",
            )
            .field("object", self.mapping.object.as_str())
            .field("reason", reason),
        );
        self.checkpoint.phase = Phase::Done;
        self.commit(Some(&self.checkpoint), written).await
    }

    /// The next batch of records to unenroll after the checkpoint's key, and the last key it
    /// covers (`None`: nothing left). `announced`: the keys webhooks said were deleted.
    async fn unseen_batch(
        &self,
        announced: Option<&[Announced]>,
    ) -> SyncResult<Seen<(Unseen, Option<String>)>> {
        let job = &self.ctx.job;
        let object = self.mapping.object.as_str();
        let after_key = self.checkpoint.after_key.as_str();
        let conn = self.ctx.store.conn().await?;
        let Some(keys) = announced else {
            let found = store_worker::ledger_unseen(
                &conn,
                job,
                object,
                after_key,
                UNENROLL_BATCH,
                self.listed.as_ref(),
            )
            .await?;
            return Ok(match found {
                Seen::Whole(unseen) => {
                    let last = unseen.last().map(|(key, _)| key.clone());
                    Seen::Whole((unseen, last))
                }
                Seen::Lost => Seen::Lost,
            });
        };
        let batch: Vec<Announced> = keys
            .iter()
            .filter(|(key, _)| key.as_str() > after_key)
            .take(UNENROLL_BATCH as usize)
            .cloned()
            .collect();
        let last = batch.last().map(|(key, _)| key.clone());
        Ok(
            match store_worker::ledger_unseen_among(&conn, job, object, &batch).await? {
                Seen::Whole(unseen) => Seen::Whole((unseen, last)),
                Seen::Lost => Seen::Lost,
            },
        )
    }

    /// The sessions reading this job's walk took its course list and sessions from: its own
    /// listing, or a published one (whose proof the unenrollment adds), or a published one that
    /// another courses run has replaced since (what it proved is no longer known).
    async fn walked_reading(&self) -> SyncResult<Walked> {
        let Some(run) = self
            .checkpoint
            .shared_reading
            .as_deref()
            .and_then(|reading| reading.strip_prefix(SESSIONS_READING))
        else {
            return Ok(Walked::Own);
        };
        let Ok(run) = run.parse::<uuid::Uuid>() else {
            return Ok(Walked::Replaced);
        };
        let conn = self.ctx.store.conn().await?;
        let listed = store_worker::listed_sessions(&conn, self.ctx.job.connection_id, run).await?;
        Ok(listed.map_or(Walked::Replaced, Walked::Published))
    }

    /// Whether this job keeps what its listing saw: only a job that compares its listing with the
    /// ledger (a full run's unenrollment, or a webhook run's announced deletions).
    pub(super) fn marks_seen(&self) -> bool {
        self.phase_after_deferred() == Phase::Unenroll
    }

    /// Whether the job's seen set lost marks it made (a crash of Postgres empties it).
    pub(super) async fn seen_lost(&self) -> SyncResult<bool> {
        if !self.marks_seen() {
            return Ok(false);
        }
        let conn = self.ctx.store.conn().await?;
        Ok(!store_worker::seen_whole(&conn, self.ctx.job.id).await?)
    }

    /// Reads the listing again from its start: the seen set lost marks, so what the listing
    /// contained is no longer known. Records kept for a retry (`job_deferred`) and the verify
    /// phase's outcome stay. Once per attempt: a set lost again fails the attempt (the job retries).
    pub(super) async fn relist(&mut self) -> SyncResult<()> {
        if self.relisted {
            return Err(SyncError::Transient(Failure::Store(
                "the records this job's listing saw were lost again".into(),
            )));
        }
        self.relisted = true;
        tracing::warn!("seen marks lost (postgres restarted?): reading the listing again");
        self.checkpoint = Checkpoint {
            phase: Phase::List,
            page_size: self.checkpoint.page_size,
            deferred_count: self.checkpoint.deferred_count,
            snapshot_records: self.checkpoint.snapshot_records,
            ..Checkpoint::default()
        };
        let progress = Progress {
            checkpoint: Some(
                serde_json::to_value(&self.checkpoint)
                    .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))?,
            ),
            ..Progress::default()
        };
        let event = NewLogEvent::new(
            LogLevel::Warn,
            "the records this job's listing saw were lost (postgres restarted): reading the \
             listing again, nothing unenrolled until it has",
        )
        .field("object", self.mapping.object.as_str());
        self.ctx
            .fenced(async |fenced| {
                store_worker::seen_reset(fenced).await?;
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, vec![event]).await?;
                Ok(())
            })
            .await
    }

    /// Marks records unenrolled in Salesforce.
    async fn mark_unenrolled(&self, unseen: &Unseen, now: DateTime<Utc>) -> SyncResult<Handled> {
        let object = self.mapping.object.as_str();
        let records: Vec<Fields> = unseen
            .iter()
            .filter_map(|(key, _)| self.mapping.unenrolled_record(key, now))
            .collect();
        let records: Vec<&Fields> = records.iter().collect();
        let results = self
            .salesforce
            .upsert_collection(self.ctx, object, &self.mapping.external_id, &records)
            .await?;
        let mut handled = Handled::default();
        handled.answers(
            object,
            "unenroll",
            unseen.iter().map(|(key, _)| key),
            results,
        );
        Ok(handled)
    }

    /// Deletes records in Salesforce (a record it does not hold is already gone).
    async fn delete(&self, unseen: &Unseen) -> SyncResult<Handled> {
        let object = self.mapping.object.as_str();
        let mut handled = Handled::default();
        let mut with_ids: Vec<(String, String)> = unseen
            .iter()
            .filter_map(|(key, id)| id.clone().map(|id| (key.clone(), id)))
            .collect();
        let without: Vec<String> = unseen
            .iter()
            .filter(|(_, id)| id.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !without.is_empty() {
            // The upsert's answer carried no id: ask Salesforce by external id.
            let found = self
                .salesforce
                .find_ids(self.ctx, object, &self.mapping.external_id, &without)
                .await?;
            for key in without {
                match found.get(&key) {
                    Some(id) => with_ids.push((key, id.clone())),
                    None => handled.done_keys.push(key),
                }
            }
        }
        if !with_ids.is_empty() {
            let ids: Vec<String> = with_ids.iter().map(|(_, id)| id.clone()).collect();
            let results = self.salesforce.delete_collection(self.ctx, &ids).await?;
            handled.answers(
                object,
                "delete",
                with_ids.iter().map(|(key, _)| key),
                results,
            );
        }
        Ok(handled)
    }

    /// Records a batch's outcome in the ledger, with the checkpoint after its last key, in one
    /// transaction fenced by the attempt.
    async fn commit_unenrolled(&self, handled: Handled, now: DateTime<Utc>) -> SyncResult<()> {
        let job = &self.ctx.job;
        let object = self.mapping.object.as_str();
        let checkpoint = serde_json::to_value(&self.checkpoint)
            .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))?;
        let progress = Progress {
            delta: Counts {
                unenrolled: handled.done_keys.len() as i64,
                ..Counts::default()
            },
            checkpoint: Some(checkpoint),
            ..Progress::default()
        };
        let policy = job.unenrollment_policy;
        let area = self.mapping.area;
        let Handled { done_keys, events } = handled;
        self.ctx
            .fenced(async |fenced| {
                match policy {
                    UnenrollmentPolicy::MarkUnenrolled => {
                        store_worker::ledger_mark_unenrolled(fenced, object, &done_keys, now)
                            .await?;
                    }
                    UnenrollmentPolicy::Delete => {
                        store_worker::ledger_delete(fenced, area, object, &done_keys).await?;
                    }
                }
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, events).await?;
                Ok(())
            })
            .await?;
        self.ctx.mark_progress();
        Ok(())
    }
}

//! The commit: what Salesforce confirmed goes to the ledger, the counts, `job_deferred` and the
//! log together with the checkpoint after it, in one transaction fenced by the attempt.

use learnsync_store::model::Counts;
use learnsync_store::worker::{self as store_worker, Progress};

use super::JobRun;
use super::checkpoint::Checkpoint;
use super::write::Written;
use crate::context::{Failure, SyncError, SyncResult};

impl JobRun<'_> {
    /// Records in the ledger the writes of a chunk cut short (or written after a failure or a
    /// stop), and counts them read and written, without moving the checkpoint: the job's counts
    /// say what Salesforce holds. A resumed job reads the chunk again; its confirmed records then
    /// count read again and unchanged, so written + unchanged + failed never exceeds read.
    pub(super) async fn commit_confirmed_only(&self, written: Written) -> SyncResult<()> {
        if written.ledger.is_empty() {
            return Ok(());
        }
        let confirmed = written.ledger.len() as i64;
        let created = written.counts.created.min(confirmed);
        let counts = Counts {
            read: confirmed,
            written: confirmed,
            created,
            ..Counts::default()
        };
        let confirmed = Written {
            ledger: written.ledger,
            counts,
            ..Written::default()
        };
        self.commit(None, confirmed).await
    }

    /// Commits what Salesforce confirmed, with the checkpoint after it when there is one (none:
    /// the position stays where it was), in one transaction fenced by the attempt.
    pub(super) async fn commit(
        &self,
        checkpoint: Option<&Checkpoint>,
        mut written: Written,
    ) -> SyncResult<()> {
        let object = self.mapping.object.as_str();
        for write in &mut written.ledger {
            write.mapping_version = Some(self.mapping_version);
        }
        let expected = checkpoint
            .map(|checkpoint| checkpoint.expected)
            .filter(|expected| *expected > 0);
        let checkpoint = checkpoint
            .map(serde_json::to_value)
            .transpose()
            .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))?;
        let deferred = written
            .deferred
            .iter()
            .map(|deferred| {
                serde_json::to_value(deferred)
                    .map(|record| (deferred.key.clone(), record))
                    .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))
            })
            .collect::<SyncResult<Vec<_>>>()?;
        let moved = checkpoint.is_some();
        let progress = Progress {
            delta: written.counts,
            expected,
            checkpoint,
            status_message: None,
        };
        let area = self.mapping.area;
        let maybe_new = self.ledger_empty;
        // Records read again by a later run: kept, and forgotten once written or failed for good
        // (a check run changes nothing here).
        let check = self.ctx.job.check_only;
        if !written.retry.is_empty() && !check {
            self.retries
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let forget: Vec<String> =
            if self.retries.load(std::sync::atomic::Ordering::Relaxed) && !check {
                written
                    .ledger
                    .iter()
                    .map(|write| write.record_key.clone())
                    .chain(written.settled.iter().cloned())
                    .collect()
            } else {
                Vec::new()
            };
        let retry = if check { Vec::new() } else { written.retry };
        // Only a job that compares its listing with the ledger keeps what it saw.
        let seen: &[String] = if self.marks_seen() {
            &written.seen
        } else {
            &[]
        };
        self.ctx
            .fenced(async |fenced| {
                store_worker::retry_forget(fenced, object, &forget).await?;
                store_worker::retry_keep(fenced, area, object, &retry).await?;
                store_worker::ledger_record(fenced, area, object, &written.ledger, maybe_new)
                    .await?;
                store_worker::ledger_mark_seen(fenced, object, seen).await?;
                store_worker::deferred_add(fenced, &deferred).await?;
                store_worker::deferred_remove(fenced, &written.retired).await?;
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, written.events).await?;
                Ok(())
            })
            .await?;
        if moved {
            self.ctx.mark_progress();
        }
        self.count_records(&written.counts);
        Ok(())
    }

    /// Adds a commit's records to the worker's metrics.
    fn count_records(&self, counts: &Counts) {
        let records = &crate::metrics::METRICS.records;
        for (outcome, count) in [
            ("written", counts.written),
            ("unchanged", counts.unchanged),
            ("failed", counts.failed),
        ] {
            if count > 0 {
                records
                    .with_label_values(&[self.ctx.job.kind.as_str(), outcome])
                    .inc_by(count as u64);
            }
        }
    }
}

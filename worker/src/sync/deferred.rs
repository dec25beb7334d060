//! Records whose parent was missing in Salesforce: kept in `job_deferred` (up to a limit) by the
//! commits of the listing, and retried once the listing is done, when the parents have been
//! written (by this job or another).

use learnsync_store::worker as store_worker;

use super::JobRun;
use super::checkpoint::{Checkpoint, Deferred};
use super::pipeline::Pending;
use super::write::Written;
use crate::context::{Failure, SyncError, SyncResult};
use crate::mapping::MappedRecord;
use crate::salesforce::COLLECTION_SIZE;

/// Most records whose parent was missing that a job keeps for a retry at its end; beyond it they
/// fail at once, so that the retry phase stays short (ten collection calls).
const MAX_DEFERRED: usize = 2000;

/// Keeps a chunk's records whose parent was missing for the retry at the end of the listing,
/// up to [`MAX_DEFERRED`]; beyond it they fail now, with Salesforce's reason.
pub(super) fn admit_deferred(object: &str, checkpoint: &mut Checkpoint, written: &mut Written) {
    for deferred in std::mem::take(&mut written.deferred) {
        if checkpoint.deferred_count < MAX_DEFERRED {
            checkpoint.deferred_count += 1;
            written.deferred.push(deferred);
        } else {
            written.fail_to_retry(object, "INVALID_FIELD", deferred);
        }
    }
}

/// A deferred record as the write takes it again.
fn to_record(deferred: Deferred) -> Pending {
    Ok(MappedRecord {
        key: deferred.key,
        fields: deferred.fields,
        hash: hex::decode(&deferred.hash).unwrap_or_default(),
        updated_at: deferred.updated_at,
        matches: Vec::new(),
    })
}

impl JobRun<'_> {
    /// Retries the records whose parent was missing: parents written since (by this job, or by
    /// another) make them succeed; those still orphaned fail with Salesforce's reason.
    pub(super) async fn retry_deferred(&mut self) -> SyncResult<()> {
        loop {
            let batch = {
                let conn = self.ctx.store.conn().await?;
                store_worker::deferred_next(&conn, self.ctx.job.id, COLLECTION_SIZE as i64).await?
            };
            if batch.is_empty() {
                self.checkpoint.deferred_count = 0;
                self.checkpoint.phase = self.phase_after_deferred();
                return self
                    .commit(Some(&self.checkpoint), Written::default())
                    .await;
            }
            let mut retired = Vec::with_capacity(batch.len());
            let mut records: Vec<Pending> = Vec::with_capacity(batch.len());
            for record in batch {
                let deferred: Deferred = serde_json::from_value(record).map_err(|error| {
                    SyncError::Permanent(Failure::UnreadableState {
                        what: "deferred record",
                        detail: error.to_string(),
                    })
                })?;
                retired.push(deferred.key.clone());
                records.push(to_record(deferred));
            }
            let mut written = self.write(records, false).await?;
            if let Some(error) = written.interrupted.take() {
                self.commit_confirmed_only(written).await?;
                return Err(error);
            }
            self.checkpoint.deferred_count =
                self.checkpoint.deferred_count.saturating_sub(retired.len());
            written.retired = retired;
            self.commit(Some(&self.checkpoint), written).await?;
        }
    }

    /// Hands the records earlier runs kept to try again (with what they would write) to this
    /// job's deferred retry, once per job: runs not over all time (incremental, timeframe) try
    /// them from there without reading Docebo again. A run over all time reads every record (and
    /// forgets those its listing no longer has); a webhook or check run leaves them.
    pub(super) async fn load_retries(&mut self) -> SyncResult<()> {
        if self.checkpoint.retries_loaded || !self.loads_retries() {
            return Ok(());
        }
        let object = self.mapping.object.clone();
        let loaded = self
            .ctx
            .fenced(async |fenced| Ok(store_worker::retry_load(fenced, &object).await?))
            .await?;
        if loaded > 0 {
            tracing::info!(records = loaded, "trying again records earlier runs kept");
        }
        self.checkpoint.retries_loaded = true;
        self.checkpoint.deferred_count += loaded as usize;
        self.commit(Some(&self.checkpoint), Written::default())
            .await
    }

    /// Whether this job tries again the records earlier runs kept (see [`Self::load_retries`]):
    /// its listing then ends in the deferred phase even when it deferred nothing itself.
    pub(super) fn loads_retries(&self) -> bool {
        let job = &self.ctx.job;
        !job.compares_everything()
            && !job.check_only
            && self.targets.is_none()
            && self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the deferred records of a checkpoint written before `job_deferred` existed into it.
    pub(super) async fn move_legacy_deferred(&mut self) -> SyncResult<()> {
        if self.checkpoint.deferred.is_empty() {
            return Ok(());
        }
        let written = Written {
            deferred: std::mem::take(&mut self.checkpoint.deferred),
            ..Written::default()
        };
        self.checkpoint.deferred_count += written.deferred.len();
        self.commit(Some(&self.checkpoint), written).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_beyond_the_limit_fail_with_salesforce_s_reason() {
        let mut checkpoint = Checkpoint {
            deferred_count: MAX_DEFERRED - 1,
            ..Checkpoint::default()
        };
        let mut written = Written::default();
        for key in ["1-1", "1-2"] {
            written.deferred.push(Deferred {
                key: key.into(),
                fields: Default::default(),
                hash: String::new(),
                updated_at: None,
                reason: "Foreign key external ID: 1 not found".into(),
            });
        }
        admit_deferred("Object__c", &mut checkpoint, &mut written);
        assert_eq!(checkpoint.deferred_count, MAX_DEFERRED);
        assert_eq!(written.deferred.len(), 1);
        assert_eq!(written.counts.failed, 1);
        assert_eq!(written.events[0].record_key.as_deref(), Some("1-2"));
    }
}

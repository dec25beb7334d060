//! The verify phase of a run over all time: read what Salesforce holds of the job's object in
//! bulk (one Bulk API 2.0 query job: a few calls whatever the object's size), keep it in the
//! job's snapshot, and compare it with the ledger. Records learnsync wrote that someone deleted
//! or changed since are made to look unwritten, so the listing that follows writes them again
//! (Docebo is the master); a check run only counts them. The snapshot is scratch: cleared when
//! compared (a check run keeps it for its listing, which names the fields that differ).

use learnsync_store::model::{Counts, LogLevel, NewLogEvent};
use learnsync_store::worker::{self as store_worker, Drift, Progress, SeenRecord};

use super::JobRun;
use super::checkpoint::Phase;
use crate::context::{Failure, SyncError, SyncResult};

/// Records read per set of the query's results (Salesforce's `maxRecords`): a set is held in
/// memory while it is stored, so this bounds the phase's memory (about 10 MB of CSV).
const SET_RECORDS: usize = 50_000;

/// Keys of each kind of difference the log names.
const LOGGED_KEYS: usize = 20;

impl JobRun<'_> {
    /// Runs the verify phase, then moves to the listing.
    pub(super) async fn verify(&mut self) -> SyncResult<()> {
        self.ctx.status("reading what salesforce holds").await?;
        self.ctx
            .fenced(async |fenced| Ok(store_worker::snapshot_clear(fenced).await?))
            .await?;
        let read_back = self.mapping.read_back();
        let query = self
            .salesforce
            .start_query(self.ctx, &read_back.soql)
            .await?;
        let mut locator: Option<String> = None;
        let mut records = 0i64;
        loop {
            let set = self
                .salesforce
                .query_results(self.ctx, &query, locator.as_deref(), SET_RECORDS)
                .await?;
            let seen = self.seen_records(&read_back, &set.csv)?;
            records += seen.len() as i64;
            self.ctx
                .fenced(async |fenced| Ok(store_worker::snapshot_add(fenced, &seen).await?))
                .await?;
            self.ctx.check()?;
            match set.next {
                Some(next) => locator = Some(next),
                None => break,
            }
        }
        self.salesforce.delete_query(self.ctx, &query).await;
        self.compare_snapshot(records).await
    }

    /// The records of one set of results, with the hash of their values as learnsync writes
    /// them (and the values, for a check run).
    fn seen_records(
        &self,
        read_back: &crate::mapping::ReadBack,
        csv_text: &str,
    ) -> SyncResult<Vec<SeenRecord>> {
        let keep_fields = self.ctx.job.check_only;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(csv_text.as_bytes());
        let mut seen = Vec::new();
        for row in reader.records() {
            let row = row.map_err(|error| {
                SyncError::Transient(Failure::Unreadable(format!(
                    "salesforce query results: {error}"
                )))
            })?;
            let Some((key, fields)) = self.mapping.fields_of_row(read_back, &row) else {
                continue;
            };
            let value_hash = self.mapping.hash_of(&fields);
            let fields = keep_fields
                .then(|| serde_json::to_value(&fields))
                .transpose()
                .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))?;
            seen.push(SeenRecord {
                record_key: key,
                value_hash,
                fields,
            });
        }
        Ok(seen)
    }

    /// Compares the snapshot with the ledger (repairing the ledger, or only counting for a check
    /// run) and commits the outcome with the checkpoint of the listing.
    async fn compare_snapshot(&mut self, records: i64) -> SyncResult<()> {
        let object = self.mapping.object.clone();
        let area = self.mapping.area;
        let check = self.ctx.job.check_only;
        self.checkpoint.phase = Phase::List;
        self.checkpoint.snapshot_records = records;
        let checkpoint = serde_json::to_value(&self.checkpoint)
            .map_err(|error| SyncError::Permanent(Failure::Encode(error.to_string())))?;
        let drift = self
            .ctx
            .fenced(async |fenced| {
                let drift = if check {
                    store_worker::snapshot_drift(fenced, &object).await?
                } else {
                    let drift = store_worker::snapshot_repair(fenced, area, &object).await?;
                    store_worker::snapshot_clear(fenced).await?;
                    drift
                };
                let progress = Progress {
                    delta: Counts {
                        repaired: drift.missing + drift.changed,
                        ..Counts::default()
                    },
                    checkpoint: Some(checkpoint),
                    ..Progress::default()
                };
                store_worker::progress(fenced, &progress).await?;
                store_worker::log(fenced, drift_events(&object, records, &drift, check)).await?;
                Ok(drift)
            })
            .await?;
        tracing::info!(
            object = %object,
            records,
            missing = drift.missing,
            changed = drift.changed,
            check,
            "salesforce compared with the ledger"
        );
        Ok(())
    }
}

/// The log of a comparison: a summary, and a warning naming the first differences.
fn drift_events(object: &str, records: i64, drift: &Drift, check: bool) -> Vec<NewLogEvent> {
    let mut events = vec![
        NewLogEvent::new(
            LogLevel::Info,
            "salesforce read and compared with the ledger",
        )
        .field("object", object)
        .field("records", records)
        .field("missing", drift.missing)
        .field("changed", drift.changed),
    ];
    if drift.missing + drift.changed == 0 {
        return events;
    }
    let message = if check {
        "records changed or deleted in salesforce by someone else: a synchronization would put them back"
    } else {
        "records changed or deleted in salesforce by someone else: writing them again"
    };
    let first = |keys: &[String]| {
        keys.iter()
            .take(LOGGED_KEYS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    events.push(
        NewLogEvent::new(LogLevel::Warn, message)
            .code("SALESFORCE_DRIFT")
            .field("object", object)
            .field("missing", drift.missing)
            .field("changed", drift.changed)
            .field("first_missing", first(&drift.first_missing))
            .field("first_changed", first(&drift.first_changed)),
    );
    events
}

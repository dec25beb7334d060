//! Writing a chunk of records to Salesforce and classifying the answers into a [`Written`]:
//! unchanged records are skipped (the ledger says so), the rest upserted (collections, or Bulk
//! API 2.0 for large chunks), locked rows re-sent, records whose parent is missing deferred, and
//! what Salesforce confirmed before an error kept.

use std::collections::HashMap;

use learnsync_store::model::{Counts, LogLevel, NewLogEvent};
use learnsync_store::worker::{self as store_worker, LedgerEntry, LedgerWrite, RetryRecord};

use super::JobRun;
use super::checkpoint::Deferred;
use super::pipeline::Pending;
use crate::context::{Failure, Interrupt, SyncError, SyncResult};
use crate::mapping::{Fields, MappedRecord};
use crate::salesforce::{COLLECTION_SIZE, RecordResult};

/// Records a check run names in its log (per job), with the fields that differ.
const CHECK_LOGGED: usize = 20;

/// The log event of a record a check found a synchronization would write: the fields whose
/// values differ from what Salesforce holds (`held`: none when it does not hold the record).
fn would_write(
    object: &str,
    record: &MappedRecord,
    held: Option<&serde_json::Value>,
) -> NewLogEvent {
    let event = NewLogEvent::new(
        LogLevel::Info,
        "check: a synchronization would write this record",
    )
    .record(record.key.as_str())
    .field("object", object);
    let Some(serde_json::Value::Object(held)) = held else {
        return event.field("action", "create");
    };
    let held = Fields::from_map(held);
    let differing: Vec<&str> = record
        .fields
        .iter()
        .filter(|(name, value)| held.get(name) != Some(*value))
        .map(|(name, _)| name)
        .collect();
    event
        .field("action", "update")
        .field("fields", differing.join(", "))
}

/// Rounds of re-sending rows Salesforce could not lock; rows still locked after them make the job
/// retry later (from its checkpoint, the confirmed rows kept): contention never fails a record.
const LOCK_ROUNDS: u32 = 10;

/// What one write produced.
#[derive(Default)]
pub(super) struct Written {
    /// Confirmed writes, for the ledger.
    pub(super) ledger: Vec<LedgerWrite>,
    /// Keys the ledger holds that are present in the listing but were not written (unchanged,
    /// failed, deferred): marked seen so that the unenrollment comparison keeps them. A key the
    /// ledger does not hold has nothing to mark.
    pub(super) seen: Vec<String>,
    /// The job's counts this adds.
    pub(super) counts: Counts,
    /// Log events to commit with it.
    pub(super) events: Vec<NewLogEvent>,
    /// Records whose parent was missing, kept for a retry.
    pub(super) deferred: Vec<Deferred>,
    /// Deferred records retried (whatever the outcome): removed from `job_deferred`.
    pub(super) retired: Vec<String>,
    /// The chunk was cut short after some writes were confirmed: those go to the ledger (so a
    /// resumed job skips them), the checkpoint stays before the chunk, and the job ends with this.
    pub(super) interrupted: Option<SyncError>,
    /// Records that failed for a reason that can pass: the next run of the area reads them again.
    pub(super) retry: Vec<RetryRecord>,
    /// Records that failed for good: no longer read again.
    pub(super) settled: Vec<String>,
}

impl Written {
    /// Counts a record failed for good, with a log event naming it and the reason.
    pub(super) fn fail(&mut self, object: &str, key: &str, code: &str, reason: &str) {
        self.counts.failed += 1;
        self.settled.push(key.to_string());
        self.events.push(
            NewLogEvent::new(LogLevel::Error, reason.to_string())
                .record(key)
                .code(code)
                .field("object", object)
                .field("retry", "no"),
        );
    }

    /// Counts a record failed for a reason that can pass (a missing parent, a record Salesforce
    /// did not process): the next run of its area tries it again (an incremental run from what
    /// it would write, `record`, whose `reason` is Salesforce's message).
    pub(super) fn fail_to_retry(&mut self, object: &str, code: &str, record: Deferred) {
        self.counts.failed += 1;
        self.events.push(
            NewLogEvent::new(LogLevel::Error, record.reason.clone())
                .record(record.key.as_str())
                .code(code)
                .field("object", object)
                .field("retry", "next run"),
        );
        self.retry.push(RetryRecord {
            record_key: record.key.clone(),
            docebo_updated_at: record.updated_at,
            reason: format!("{code}: {}", record.reason),
            record: serde_json::to_value(&record).ok(),
        });
    }

    /// Keeps a confirmed write for the ledger.
    fn confirm(&mut self, record: MappedRecord, result: RecordResult) {
        self.ledger.push(LedgerWrite {
            record_key: record.key,
            salesforce_id: result.id,
            value_hash: record.hash,
            docebo_updated_at: record.updated_at,
            // Set by the commit, which knows the job's mapping version.
            mapping_version: None,
        });
    }
}

/// Per-record failures that can pass by themselves (besides a missing parent): a lock or a limit
/// that outlasted the job's rounds, a record a Bulk job did not process.
const RETRYABLE: &[&str] = &[
    "UNABLE_TO_LOCK_ROW",
    "REQUEST_LIMIT_EXCEEDED",
    "UNPROCESSED",
    "SERVER_UNAVAILABLE",
];

/// Whether a per-record failure means the parent is not in Salesforce yet.
fn is_missing_parent(code: &str, message: &str) -> bool {
    code == "INVALID_FIELD" && message.contains("Foreign key external ID")
}

/// The first lookup's value: children of one parent sort together.
fn parent_key(record: &MappedRecord) -> String {
    record
        .fields
        .first_lookup_key()
        .unwrap_or_default()
        .to_string()
}

/// Sorts a chunk's records out: those that do not fit fail (their keys returned), and of a key
/// listed twice only the last is kept. The same key twice in one request fails both: the later
/// one wins, the earlier one is superseded (counted unchanged).
fn sort_out(object: &str, records: Vec<Pending>) -> (Written, Vec<MappedRecord>, Vec<String>) {
    let mut written = Written::default();
    let mut mapped: Vec<MappedRecord> = Vec::with_capacity(records.len());
    let mut unfit: Vec<String> = Vec::new();
    for record in records {
        match record {
            Ok(record) => mapped.push(record),
            Err(error) => {
                written.fail(object, &error.key, &error.code, &error.message);
                unfit.push(error.key);
            }
        }
    }
    // Keys borrowed, not copied: which index of each key is its last.
    let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(mapped.len());
    for (index, record) in mapped.iter().enumerate() {
        last_index.insert(record.key.as_str(), index);
    }
    let last: Vec<bool> = mapped
        .iter()
        .enumerate()
        .map(|(index, record)| last_index.get(record.key.as_str()) == Some(&index))
        .collect();
    drop(last_index);
    let mut unique: Vec<MappedRecord> = Vec::with_capacity(mapped.len());
    for (record, last) in mapped.into_iter().zip(last) {
        if last {
            unique.push(record);
        } else {
            written.counts.unchanged += 1;
        }
    }
    (written, unique, unfit)
}

/// Classifies Salesforce's answers to one round: confirmed writes, records to defer (their parent
/// is missing, when `defer_missing_parents`), failures; returns the rows it could not lock.
fn classify(
    object: &str,
    written: &mut Written,
    sent: Vec<MappedRecord>,
    results: Vec<RecordResult>,
    ledger: &HashMap<String, LedgerEntry>,
    defer_missing_parents: bool,
) -> Vec<MappedRecord> {
    let mut locked = Vec::new();
    for (record, result) in sent.into_iter().zip(results) {
        if result.success {
            written.counts.written += 1;
            if !ledger.contains_key(&record.key) {
                written.counts.created += 1;
            }
            written.confirm(record, result);
            continue;
        }
        let failure = result.failure();
        if failure.code == "UNABLE_TO_LOCK_ROW" {
            locked.push(record);
        } else if is_missing_parent(&failure.code, &failure.message) && defer_missing_parents {
            if ledger.contains_key(&record.key) {
                written.seen.push(record.key.clone());
            }
            written.deferred.push(deferred(record, failure.message));
        } else {
            let passes = is_missing_parent(&failure.code, &failure.message)
                || RETRYABLE.contains(&failure.code.as_str());
            if ledger.contains_key(&record.key) {
                written.seen.push(record.key.clone());
            }
            if passes {
                written.fail_to_retry(object, &failure.code, deferred(record, failure.message));
            } else {
                written.fail(object, &record.key, &failure.code, &failure.message);
            }
        }
    }
    locked
}

/// A record kept to be written again, with Salesforce's `reason` for the failure.
fn deferred(record: MappedRecord, reason: String) -> Deferred {
    Deferred {
        key: record.key,
        fields: record.fields,
        hash: hex::encode(&record.hash),
        updated_at: record.updated_at,
        reason,
    }
}

impl JobRun<'_> {
    /// Writes a chunk of records: skips unchanged ones, sends the rest, classifies the answers.
    pub(super) async fn write(
        &self,
        records: Vec<Pending>,
        defer_missing_parents: bool,
    ) -> SyncResult<Written> {
        let object = self.mapping.object.as_str();
        let (mut written, mut unique, unfit) = sort_out(object, records);
        self.resolve_matches(&mut unique).await?;
        let mut ledger = self.ledger_of(&unique, &unfit).await?;
        // Records that do not fit stay enrolled if they were written before.
        written
            .seen
            .extend(unfit.into_iter().filter(|key| ledger.contains_key(key)));
        if self.ctx.job.check_only {
            return self.check_chunk(written, unique, &mut ledger).await;
        }
        let to_write = self.skip_unchanged(&mut written, unique, &ledger);
        if to_write.is_empty() {
            return Ok(written);
        }
        // A stop lands here, between two confirmed writes.
        self.ctx.check()?;
        // Chunks are gathered up to the bulk threshold; one whose changed records still number at
        // least half of it goes through Bulk API 2.0 (a handful of calls instead of one per 200).
        let use_bulk = to_write.len() > COLLECTION_SIZE
            && to_write.len() as i64 * 2 >= self.ctx.settings.bulk_threshold;
        // Room for every confirmed write at once (a bulk chunk's worth of entries).
        written.ledger.reserve(to_write.len());
        let rounds = Rounds {
            ledger: &ledger,
            use_bulk,
            defer_missing_parents,
        };
        self.send_rounds(&mut written, to_write, &rounds).await?;
        if written.interrupted.is_some() {
            return Ok(written);
        }
        written.events.push(
            NewLogEvent::new(LogLevel::Debug, "salesforce batch written")
                .field("object", object)
                .field("written", written.counts.written)
                .field("unchanged", written.counts.unchanged)
                .field("failed", written.counts.failed)
                .field("bulk", use_bulk),
        );
        Ok(written)
    }

    /// The ledger's entries of a chunk's keys (none looked up on a first sync).
    async fn ledger_of(
        &self,
        records: &[MappedRecord],
        unfit: &[String],
    ) -> SyncResult<HashMap<String, LedgerEntry>> {
        if self.ledger_empty {
            return Ok(HashMap::new());
        }
        let mut keys: Vec<String> = records.iter().map(|record| record.key.clone()).collect();
        keys.extend(unfit.iter().cloned());
        let conn = self.ctx.store.conn().await?;
        let object = self.mapping.object.as_str();
        Ok(store_worker::ledger_lookup(&conn, self.ctx.job.connection_id, object, &keys).await?)
    }

    /// A check run's chunk: what a synchronization would write, counted and (the first ones)
    /// logged with the fields that differ from what Salesforce holds; nothing is sent. The
    /// ledger is first seen as the verify phase would have repaired it from the snapshot.
    async fn check_chunk(
        &self,
        mut written: Written,
        records: Vec<MappedRecord>,
        ledger: &mut HashMap<String, LedgerEntry>,
    ) -> SyncResult<Written> {
        let keys: Vec<String> = records.iter().map(|record| record.key.clone()).collect();
        let compared = self.ctx.job.compares_everything();
        let snapshot = if compared {
            let conn = self.ctx.store.conn().await?;
            store_worker::snapshot_lookup(&conn, self.ctx.job.id, &keys).await?
        } else {
            HashMap::new()
        };
        // Listed records the ledger holds are seen, whatever a synchronization would do.
        written
            .seen
            .extend(keys.iter().filter(|key| ledger.contains_key(*key)).cloned());
        if compared {
            ledger.retain(|key, _| snapshot.contains_key(key));
            for (key, entry) in ledger.iter_mut() {
                if snapshot
                    .get(key)
                    .is_some_and(|(hash, _)| *hash != entry.value_hash)
                {
                    entry.value_hash = Vec::new();
                }
            }
        }
        let seen_before = written.seen.len();
        let to_write = self.skip_unchanged(&mut written, records, ledger);
        written.seen.truncate(seen_before);
        for record in &to_write {
            written.counts.written += 1;
            if !ledger.contains_key(&record.key) {
                written.counts.created += 1;
            }
            if self
                .check_logged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                < CHECK_LOGGED
            {
                let held = snapshot
                    .get(&record.key)
                    .and_then(|(_, fields)| fields.as_ref());
                written
                    .events
                    .push(would_write(&self.mapping.object, record, held));
            }
        }
        Ok(written)
    }

    /// Counts unchanged (and marks seen) the records the ledger holds with the same values;
    /// returns the others.
    fn skip_unchanged(
        &self,
        written: &mut Written,
        records: Vec<MappedRecord>,
        ledger: &HashMap<String, LedgerEntry>,
    ) -> Vec<MappedRecord> {
        let mut to_write = Vec::new();
        for record in records {
            let unchanged = !self.ctx.job.rewrite_unchanged
                && ledger
                    .get(&record.key)
                    .is_some_and(|entry| !entry.unenrolled && entry.value_hash == record.hash);
            if unchanged {
                written.counts.unchanged += 1;
                written.seen.push(record.key);
            } else {
                to_write.push(record);
            }
        }
        to_write
    }

    /// Sends records, then re-sends the rows Salesforce could not lock, up to [`LOCK_ROUNDS`]. An
    /// error before anything was confirmed is returned; after, it cuts the chunk short
    /// (`written.interrupted`), the confirmed writes kept.
    async fn send_rounds(
        &self,
        written: &mut Written,
        to_write: Vec<MappedRecord>,
        rounds: &Rounds<'_>,
    ) -> SyncResult<()> {
        let object = self.mapping.object.as_str();
        let mut outstanding = to_write;
        let mut round = 0;
        while !outstanding.is_empty() {
            round += 1;
            let (results, error) = self.send(&outstanding, rounds.use_bulk && round == 1).await;
            if let Some(error) = error {
                if written.ledger.is_empty() && results.iter().all(|result| !result.success) {
                    return Err(error);
                }
                for (record, result) in outstanding.into_iter().zip(results) {
                    if result.success {
                        written.confirm(record, result);
                    }
                }
                written.interrupted = Some(error);
                return Ok(());
            }
            let locked = classify(
                object,
                written,
                outstanding,
                results,
                rounds.ledger,
                rounds.defer_missing_parents,
            );
            if !locked.is_empty() && round >= LOCK_ROUNDS {
                written.interrupted = Some(SyncError::Transient(Failure::RowsLocked {
                    rows: locked.len(),
                    rounds: round,
                }));
                return Ok(());
            }
            outstanding = self.before_resending(written, locked, round).await?;
        }
        Ok(())
    }

    /// Logs and waits before re-sending locked rows (a stop does not cut the wait's round short),
    /// children of one parent together, so a retry contends with itself less.
    async fn before_resending(
        &self,
        written: &mut Written,
        mut locked: Vec<MappedRecord>,
        round: u32,
    ) -> SyncResult<Vec<MappedRecord>> {
        if locked.is_empty() {
            return Ok(locked);
        }
        written.events.push(
            NewLogEvent::new(
                LogLevel::Warn,
                "salesforce could not lock rows: re-sending them",
            )
            .code("UNABLE_TO_LOCK_ROW")
            .field("records", locked.len() as i64)
            .field("round", round as i64),
        );
        locked.sort_by_key(parent_key);
        self.ctx
            .sleep(self.ctx.settings.call_retry_base * 2u32.pow(round.min(5) - 1))
            .await
            .or_else(|error| match error {
                SyncError::Interrupted(Interrupt::Stop) => Ok(()),
                other => Err(other),
            })?;
        Ok(locked)
    }

    /// Resolves lookups by value (a user's `Contact` by email) with one query per object and
    /// field for the whole chunk, then hashes the records again with the ids found.
    async fn resolve_matches(&self, records: &mut [MappedRecord]) -> SyncResult<()> {
        let mut wanted: HashMap<(String, String), Vec<String>> = HashMap::new();
        for record in records.iter() {
            for pending in &record.matches {
                wanted
                    .entry((pending.object.clone(), pending.match_field.clone()))
                    .or_default()
                    .push(pending.value.clone());
            }
        }
        let mut found: HashMap<(String, String), HashMap<String, Option<String>>> = HashMap::new();
        for ((object, field), mut values) in wanted {
            values.sort();
            values.dedup();
            let mut ids = HashMap::new();
            for chunk in values.chunks(COLLECTION_SIZE) {
                ids.extend(
                    self.salesforce
                        .match_ids(self.ctx, &object, &field, chunk)
                        .await?,
                );
            }
            found.insert((object, field), ids);
        }
        for record in records.iter_mut() {
            if record.matches.is_empty() {
                continue;
            }
            self.mapping.resolve(record, |pending| {
                found
                    .get(&(pending.object.clone(), pending.match_field.clone()))
                    .and_then(|ids| ids.get(&pending.value).cloned().flatten())
            });
        }
        Ok(())
    }

    /// Sends records; returns the results of a prefix of them, and the error that cut the rest
    /// short, if any (so that what Salesforce confirmed is never forgotten).
    async fn send(
        &self,
        records: &[MappedRecord],
        bulk: bool,
    ) -> (Vec<RecordResult>, Option<SyncError>) {
        let object = &self.mapping.object;
        // The external id, or the field the mapping upserts by (a Contact's Email).
        let external_id = self.mapping.upsert_key();
        let fields: Vec<&Fields> = records.iter().map(|record| &record.fields).collect();
        if bulk {
            return match self
                .salesforce
                .upsert_bulk(self.ctx, object, external_id, &fields)
                .await
            {
                Ok(results) => (results, None),
                Err(error) => (Vec::new(), Some(error)),
            };
        }
        let mut results = Vec::with_capacity(records.len());
        for chunk in fields.chunks(COLLECTION_SIZE) {
            if !results.is_empty()
                && let Err(error) = self.ctx.check()
            {
                return (results, Some(error));
            }
            match self
                .salesforce
                .upsert_collection(self.ctx, object, external_id, chunk)
                .await
            {
                Ok(chunk_results) => results.extend(chunk_results),
                Err(error) => return (results, Some(error)),
            }
        }
        (results, None)
    }
}

/// What every round of one chunk's sending shares.
struct Rounds<'a> {
    /// The ledger's entries of the chunk's keys.
    ledger: &'a HashMap<String, LedgerEntry>,
    /// Whether the first round goes through Bulk API 2.0.
    use_bulk: bool,
    /// Whether records whose parent is missing are deferred (not on their retry).
    defer_missing_parents: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::RecordFailure;

    fn record(key: &str) -> MappedRecord {
        MappedRecord {
            key: key.to_string(),
            fields: Fields::default(),
            hash: vec![1],
            updated_at: None,
            matches: Vec::new(),
        }
    }

    fn answer(code: Option<&str>, message: &str) -> RecordResult {
        RecordResult {
            success: code.is_none(),
            id: code.is_none().then(|| "a01".to_string()),
            errors: code
                .map(|code| RecordFailure {
                    code: code.to_string(),
                    message: message.to_string(),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn recognises_a_missing_parent() {
        assert!(is_missing_parent(
            "INVALID_FIELD",
            "Foreign key external ID: 12301 not found for field Docebo_User_Id__c in entity Docebo_User__c"
        ));
        assert!(!is_missing_parent(
            "INVALID_FIELD",
            "No such column 'X' on sobject of type Y"
        ));
    }

    #[test]
    fn a_key_listed_twice_is_written_once_and_unfit_records_fail() {
        let unfit = Err(crate::mapping::RecordError {
            key: "9".into(),
            code: "INVALID_KEY".into(),
            message: "no key".into(),
        });
        let (written, unique, unfit) =
            sort_out("Object__c", vec![Ok(record("1")), unfit, Ok(record("1"))]);
        assert_eq!(unique.len(), 1);
        assert_eq!(unfit, ["9"]);
        assert_eq!(written.counts.unchanged, 1);
        assert_eq!(written.counts.failed, 1);
    }

    #[test]
    fn answers_are_classified_into_writes_deferrals_failures_and_locks() {
        let ledger: HashMap<String, LedgerEntry> = [(
            "3".to_string(),
            LedgerEntry {
                salesforce_id: None,
                value_hash: Vec::new(),
                unenrolled: false,
            },
        )]
        .into();
        let sent = vec![record("1"), record("2"), record("3"), record("4")];
        let results = vec![
            answer(None, ""),
            answer(
                Some("INVALID_FIELD"),
                "Foreign key external ID: 7 not found",
            ),
            answer(Some("STRING_TOO_LONG"), "too long"),
            answer(Some("UNABLE_TO_LOCK_ROW"), "locked"),
        ];
        let mut written = Written::default();
        let locked = classify("Object__c", &mut written, sent, results, &ledger, true);
        assert_eq!(locked.len(), 1);
        assert_eq!(locked[0].key, "4");
        assert_eq!(written.counts.written, 1);
        assert_eq!(written.ledger[0].salesforce_id.as_deref(), Some("a01"));
        assert_eq!(written.deferred[0].key, "2");
        assert_eq!(written.counts.failed, 1);
        // A failed record the ledger holds stays seen (the unenrollment comparison keeps it).
        assert_eq!(written.seen, ["3"]);
    }
}

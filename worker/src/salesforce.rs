//! The Salesforce client of a job: the thin client ([`crate::http::salesforce`]) under the retry
//! policy, with the job-level side around it: a session kept across calls and renewed once on 401
//! INVALID_SESSION_ID; REQUEST_LIMIT_EXCEEDED pausing the connection's writes in Postgres (for
//! every worker) and said in the job's log; 5xx answers logged and retried with backoff; Bulk API
//! 2.0 jobs polled to their end within a deadline (`Settings::bulk_timeout`). A write in flight is
//! never abandoned on a stop: its answer is recorded first (a closed Bulk ingest job's outcome is
//! awaited `Settings::bulk_stop_grace`, not for ever). No write request (collections upsert and delete, Bulk ingest job create, upload
//! and close) starts once the job's lease may have run out ([`JobCtx::may_write`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::SalesforceCredentials;
use learnsync_store::worker as store_worker;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::context::{Interrupt, JobCtx, SyncError, SyncResult};
use crate::error::Failure;
use crate::http::Answer;
pub use crate::http::salesforce::{API_VERSION, COLLECTION_SIZE, RecordFailure, RecordResult};
use crate::http::salesforce::{BulkState, ResultSet, SalesforceApi, Session};
use crate::mapping::{FieldValue, Fields};
use crate::retry::{Decision, Policy, Tally};

/// Whether an exchange writes Salesforce: a write request starts only while the job may write
/// ([`JobCtx::may_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    Read,
    Write,
}

/// A Salesforce client for one job.
pub struct Salesforce {
    api: SalesforceApi,
    session: Mutex<Option<Session>>,
}

impl Salesforce {
    /// A client for a connection's org.
    pub fn new(http: learnsync_upstream::Http, credentials: SalesforceCredentials) -> Salesforce {
        Salesforce {
            api: SalesforceApi::new(http, credentials),
            session: Mutex::new(None),
        }
    }

    /// The session, asked for when there is none (or `renew`).
    async fn session(&self, ctx: &JobCtx, renew: bool) -> SyncResult<Session> {
        let mut session = self.session.lock().await;
        if renew {
            *session = None;
        }
        if let Some(current) = session.as_ref() {
            return Ok(current.clone());
        }
        let policy = Policy::salesforce(&ctx.settings).for_token();
        let fresh = ctx
            .obtain(&policy, || async { Ok(self.api.token().await) })
            .await?;
        *session = Some(fresh.clone());
        Ok(fresh)
    }

    /// Waits while the connection's writes are paused (REQUEST_LIMIT_EXCEEDED, here or on another
    /// worker).
    async fn wait_for_limit(&self, ctx: &JobCtx) -> SyncResult<()> {
        let mut said = false;
        loop {
            let left = {
                let conn = ctx.store.conn().await?;
                store_worker::salesforce_pause_left(&conn, ctx.job.connection_id).await?
            };
            if left.is_zero() {
                if said {
                    ctx.status("running").await?;
                }
                return Ok(());
            }
            if !said {
                said = true;
                ctx.status("waiting: salesforce request limit exceeded")
                    .await?;
            }
            ctx.sleep(left.min(Duration::from_secs(30)) + Duration::from_millis(10))
                .await?;
        }
    }

    /// Runs one API exchange under the retry policy: waits out the connection's pause first,
    /// renews the session once, pauses the connection on request limits, backs off on 5xx. A write
    /// (and each of its retries) is sent only if the job may still write, checked last.
    async fn call<T, F>(
        &self,
        ctx: &JobCtx,
        kind: Exchange,
        exchange: impl Fn(Session) -> F,
    ) -> SyncResult<T>
    where
        F: Future<Output = Answer<T>>,
    {
        let policy = Policy::salesforce(&ctx.settings);
        let mut tally = Tally::default();
        loop {
            self.wait_for_limit(ctx).await?;
            let session = self.session(ctx, false).await?;
            if kind == Exchange::Write {
                ctx.may_write()?;
            }
            // A write in flight is not abandoned when a stop arrives: its answer is recorded first.
            let (signal, failure) = match exchange(session).await.into_result() {
                Ok(value) => return Ok(value),
                Err(refused) => refused,
            };
            match policy.decide(signal, &mut tally) {
                Decision::Renew => {
                    self.session(ctx, true).await?;
                }
                Decision::Backoff(wait) => {
                    match &failure {
                        Failure::Answered { status, code, .. } => {
                            ctx.log(vec![
                                NewLogEvent::new(
                                    LogLevel::Warn,
                                    format!("salesforce answered {status}: retrying the call"),
                                )
                                .code(code.as_deref().unwrap_or("UNKNOWN"))
                                .field("attempt", tally.failures() as i64),
                            ])
                            .await?;
                        }
                        _ => tracing::warn!(%failure, "salesforce call failed, retrying"),
                    }
                    ctx.sleep(wait).await?;
                }
                Decision::Pause(pause) => {
                    let reason = match &failure {
                        Failure::Throttled { message, .. } => message.as_str(),
                        _ => "",
                    };
                    ctx.log(vec![
                        NewLogEvent::new(
                            LogLevel::Warn,
                            "salesforce request limit exceeded: pausing writes",
                        )
                        .code("REQUEST_LIMIT_EXCEEDED")
                        .field("reason", reason)
                        .field("pause_ms", pause.as_millis() as i64),
                    ])
                    .await?;
                    let conn = ctx.store.conn().await?;
                    store_worker::pause_salesforce(&conn, ctx.job.connection_id, pause).await?;
                }
                Decision::GiveUp(class) => return Err(class.fail(failure)),
            }
        }
    }

    /// Describes an object (its fields, types, lengths, picklist values), to check the org
    /// against the mapping before writing.
    pub async fn describe(&self, ctx: &JobCtx, object: &str) -> SyncResult<Value> {
        self.call(ctx, Exchange::Read, |session: Session| async move {
            self.api.describe(&session, object).await
        })
        .await
        .map_err(|error| match error {
            // Whatever made it permanent (the object, the credentials), the org cannot be used.
            SyncError::Permanent(cause) => SyncError::Permanent(Failure::Describe {
                object: object.to_string(),
                cause: Box::new(cause),
            }),
            other => other,
        })
    }

    /// Finds the record ids of records by external id.
    pub async fn find_ids(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        keys: &[String],
    ) -> SyncResult<HashMap<String, String>> {
        Ok(self
            .query_pairs(ctx, object, external_id, keys)
            .await?
            .into_iter()
            .collect())
    }

    /// Runs `SELECT Id, field FROM object WHERE field IN (values)` (following `nextRecordsUrl`)
    /// and returns `(field value, Id)` pairs.
    async fn query_pairs(
        &self,
        ctx: &JobCtx,
        object: &str,
        field: &str,
        values: &[String],
    ) -> SyncResult<Vec<(String, String)>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let mut pairs = Vec::new();
        let mut path = crate::http::salesforce::query_path(object, field, values);
        loop {
            let current = path.as_str();
            let page = self
                .call(ctx, Exchange::Read, |session: Session| async move {
                    self.api.query(&session, current, field).await
                })
                .await?;
            pairs.extend(page.pairs);
            match page.next {
                Some(next) => path = next,
                None => return Ok(pairs),
            }
        }
    }

    /// Finds records of `object` whose `field` equals one of `values` (compared lowercased):
    /// value → its record id, or `None` when several records share the value (ambiguous).
    pub async fn match_ids(
        &self,
        ctx: &JobCtx,
        object: &str,
        field: &str,
        values: &[String],
    ) -> SyncResult<HashMap<String, Option<String>>> {
        let mut matched: HashMap<String, Option<String>> = HashMap::new();
        for (value, id) in self.query_pairs(ctx, object, field, values).await? {
            matched
                .entry(value.to_lowercase())
                .and_modify(|existing| *existing = None)
                .or_insert(Some(id));
        }
        Ok(matched)
    }

    /// Upserts up to 200 records of one object by external id through sObject Collections; one
    /// result per record, in request order.
    pub async fn upsert_collection(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        records: &[&Fields],
    ) -> SyncResult<Vec<RecordResult>> {
        self.call(ctx, Exchange::Write, |session: Session| async move {
            self.api
                .upsert_collection(&session, object, external_id, records)
                .await
        })
        .await
    }

    /// Deletes up to 200 records by id through sObject Collections; one result per id, in order.
    /// An already deleted record counts as deleted.
    pub async fn delete_collection(
        &self,
        ctx: &JobCtx,
        ids: &[String],
    ) -> SyncResult<Vec<RecordResult>> {
        self.call(ctx, Exchange::Write, |session: Session| async move {
            self.api.delete_collection(&session, ids).await
        })
        .await
    }

    /// Upserts records through a Bulk API 2.0 ingest job and reads back each record's outcome,
    /// matched by external id (results come back in any order). Records missing from every result
    /// file count as failed with `UNPROCESSED`.
    pub async fn upsert_bulk(
        &self,
        ctx: &JobCtx,
        object: &str,
        external_id: &str,
        records: &[&Fields],
    ) -> SyncResult<Vec<RecordResult>> {
        let csv_text =
            crate::http::salesforce::to_csv(records, external_id).map_err(SyncError::Permanent)?;
        let job_id = self
            .call(ctx, Exchange::Write, |session: Session| async move {
                self.api
                    .create_ingest_job(&session, object, external_id)
                    .await
            })
            .await?;
        let (job, csv) = (job_id.as_str(), csv_text.as_str());
        self.call(ctx, Exchange::Write, |session: Session| async move {
            self.api.upload_csv(&session, job, csv).await
        })
        .await?;
        drop(csv_text);
        self.call(ctx, Exchange::Write, |session: Session| async move {
            self.api.close_job(&session, job).await
        })
        .await?;
        self.wait_for_bulk_job(ctx, job, BulkJob::Ingest).await?;
        let mut files = Vec::with_capacity(2);
        for successful in [true, false] {
            let rows = self
                .call(ctx, Exchange::Read, |session: Session| async move {
                    self.api
                        .job_results(&session, job, successful, external_id)
                        .await
                })
                .await?;
            files.push(rows);
        }
        let failed = files.pop().unwrap_or_default();
        let successful = files.pop().unwrap_or_default();
        Ok(bulk_outcomes(records, external_id, successful, failed))
    }

    /// Starts a Bulk API 2.0 query job and waits until its results can be read; returns its id.
    /// A stop interrupts the wait (a query changes nothing).
    pub async fn start_query(&self, ctx: &JobCtx, soql: &str) -> SyncResult<String> {
        let job_id = self
            .call(ctx, Exchange::Read, |session: Session| async move {
                self.api.create_query_job(&session, soql).await
            })
            .await?;
        self.wait_for_bulk_job(ctx, &job_id, BulkJob::Query).await?;
        Ok(job_id)
    }

    /// One set of a complete query job's results (`locator`: `None` for the first).
    pub async fn query_results(
        &self,
        ctx: &JobCtx,
        job: &str,
        locator: Option<&str>,
        max_records: usize,
    ) -> SyncResult<ResultSet> {
        self.call(ctx, Exchange::Read, |session: Session| async move {
            self.api
                .query_results(&session, job, locator, max_records)
                .await
        })
        .await
    }

    /// Deletes a query job whose results were read (best effort: Salesforce drops them after
    /// seven days anyway).
    pub async fn delete_query(&self, ctx: &JobCtx, job: &str) {
        let deleted = self
            .call(ctx, Exchange::Read, |session: Session| async move {
                self.api.delete_query_job(&session, job).await
            })
            .await;
        if let Err(error) = deleted {
            tracing::debug!(%error, job, "bulk query job not deleted");
        }
    }

    /// Polls a bulk job until it completes, at most `Settings::bulk_timeout`: a job still in
    /// progress then is stuck, and the wait ends as a transient error (the job retries from its
    /// checkpoint; records sent are upserts by external id, so sending them again is safe). A
    /// stop ends a query job's wait at once; an ingest job's records were sent, so a stop waits
    /// `Settings::bulk_stop_grace` more for its outcome (recorded if it comes), then ends it too.
    /// An ingest job given up on is aborted.
    async fn wait_for_bulk_job(&self, ctx: &JobCtx, job: &str, kind: BulkJob) -> SyncResult<()> {
        let started = Instant::now();
        let mut stopped_at: Option<Instant> = None;
        let mut delay = ctx.settings.bulk_poll;
        loop {
            if started.elapsed() >= ctx.settings.bulk_timeout {
                self.abort_ingest(ctx, job, kind).await;
                return Err(SyncError::Transient(Failure::BulkJobEnded {
                    job_id: job.to_string(),
                    message: format!(
                        "still in progress after {} s: given up",
                        ctx.settings.bulk_timeout.as_secs()
                    ),
                }));
            }
            match stopped_at {
                // Stopped: the job's sleep would end at once, so the outcome is awaited with a
                // plain one, within the grace.
                Some(stop) if stop.elapsed() >= ctx.settings.bulk_stop_grace => {
                    self.abort_ingest(ctx, job, kind).await;
                    return Err(SyncError::Interrupted(Interrupt::Stop));
                }
                Some(_) => tokio::time::sleep(delay).await,
                None => match ctx.sleep(delay).await {
                    Err(SyncError::Interrupted(Interrupt::Stop)) if kind == BulkJob::Ingest => {
                        tracing::info!(job, "stop asked: waiting a little for the bulk outcome");
                        stopped_at = Some(Instant::now());
                    }
                    other => other?,
                },
            }
            let state = self
                .call(ctx, Exchange::Read, |session: Session| async move {
                    match kind {
                        BulkJob::Ingest => self.api.job_state(&session, job).await,
                        BulkJob::Query => self.api.query_job_state(&session, job).await,
                    }
                })
                .await?;
            match state {
                BulkState::Complete => return Ok(()),
                BulkState::Ended(message) => {
                    return Err(SyncError::Transient(Failure::BulkJobEnded {
                        job_id: job.to_string(),
                        message,
                    }));
                }
                // Quick first looks for small jobs, then at most one poll every 5 s: each poll is
                // an API call against the org's daily allowance.
                BulkState::InProgress => {
                    delay = (delay * 2).min(Duration::from_secs(5).max(ctx.settings.bulk_poll))
                }
            }
        }
    }
}

impl Salesforce {
    /// Aborts an ingest job given up on (best effort, one request): records it has not processed
    /// yet are then never written, so it cannot land later over what a retry writes. What it did
    /// process stays, and the retry writes those records again.
    async fn abort_ingest(&self, ctx: &JobCtx, job: &str, kind: BulkJob) {
        if kind != BulkJob::Ingest {
            return;
        }
        let aborted = match self.session(ctx, false).await {
            Ok(session) => self.api.abort_job(&session, job).await.into_result(),
            Err(error) => {
                tracing::warn!(%error, job, "bulk ingest job not aborted: no session");
                return;
            }
        };
        match aborted {
            Ok(()) => tracing::info!(job, "bulk ingest job given up on and aborted"),
            Err((_, failure)) => tracing::warn!(%failure, job, "bulk ingest job not aborted"),
        }
    }
}

/// The outcome of each record sent in a Bulk ingest job, in the order sent, from the job's
/// result files (`(external id, sf__Id)` and `(external id, sf__Error)` rows): a failure row wins
/// A record is in one file at most (in neither: failed with `UNPROCESSED`). Result files list
/// their rows in the order sent, so each record's row is first looked for at the head of each
/// file (no map of every key); rows met out of order send the rest through a map by key.
fn bulk_outcomes(
    records: &[&Fields],
    external_id: &str,
    successful: Vec<(String, String)>,
    failed: Vec<(String, String)>,
) -> Vec<RecordResult> {
    let success = |id: String| RecordResult {
        success: true,
        id: Some(id).filter(|id| !id.is_empty()),
        errors: Vec::new(),
    };
    let failure = |text: String| crate::http::salesforce::bulk_failure(&text);
    let mut successful = successful.into_iter().peekable();
    let mut failed = failed.into_iter().peekable();
    let mut strays: Option<HashMap<String, RecordResult>> = None;
    let mut outcomes = Vec::with_capacity(records.len());
    for record in records {
        let key = match record.get(external_id) {
            Some(FieldValue::Plain(Value::String(key))) => key.as_str(),
            _ => "",
        };
        let outcome = match &mut strays {
            Some(strays) => strays.remove(key),
            None if failed.peek().is_some_and(|(k, _)| k == key) => {
                failed.next().map(|(_, text)| failure(text))
            }
            None if successful.peek().is_some_and(|(k, _)| k == key) => {
                successful.next().map(|(_, id)| success(id))
            }
            None => {
                // Out of order: the rest by key, failures over successes as above.
                let mut by_key: HashMap<String, RecordResult> = HashMap::new();
                by_key.extend(successful.by_ref().map(|(k, id)| (k, success(id))));
                by_key.extend(failed.by_ref().map(|(k, text)| (k, failure(text))));
                strays.insert(by_key).remove(key)
            }
        };
        outcomes.push(outcome.unwrap_or_else(|| RecordResult {
            success: false,
            id: None,
            errors: vec![RecordFailure {
                code: "UNPROCESSED".into(),
                message: "salesforce did not process the record".into(),
            }],
        }));
    }
    outcomes
}

/// Which kind of Bulk API 2.0 job is polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BulkJob {
    /// An upsert: a stop waits for its end.
    Ingest,
    /// A query: a stop ends the wait.
    Query,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    fn record(key: &str) -> Fields {
        let mut fields = Fields::default();
        fields.insert_plain(Arc::from("Key__c"), Value::String(key.into()));
        fields
    }

    fn rows(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    /// What each record came to: its id, its error code, or `UNPROCESSED`.
    fn outcomes(
        keys: &[&str],
        successful: &[(&str, &str)],
        failed: &[(&str, &str)],
    ) -> Vec<String> {
        let records: Vec<Fields> = keys.iter().map(|key| record(key)).collect();
        let records: Vec<&Fields> = records.iter().collect();
        bulk_outcomes(&records, "Key__c", rows(successful), rows(failed))
            .into_iter()
            .map(|result| match result.id {
                Some(id) => id,
                None => result.errors[0].code.clone(),
            })
            .collect()
    }

    #[test]
    fn bulk_results_are_matched_to_records_in_and_out_of_order() {
        let in_order = outcomes(
            &["1", "2", "3", "4"],
            &[("1", "a1"), ("3", "a3")],
            &[("2", "INVALID_FIELD:bad:X__c --")],
        );
        assert_eq!(in_order, ["a1", "INVALID_FIELD", "a3", "UNPROCESSED"]);
        let shuffled = outcomes(
            &["1", "2", "3", "4"],
            &[("3", "a3"), ("4", "a4"), ("1", "a1")],
            &[("2", "STRING_TOO_LONG:long:Name --")],
        );
        assert_eq!(shuffled, ["a1", "STRING_TOO_LONG", "a3", "a4"]);
    }
}

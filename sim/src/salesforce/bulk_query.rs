//! Bulk API 2.0 query jobs: the job record, its state, and its result sets cut by locator.
//!
//! A job is created `UploadComplete`, moves to `InProgress` after the configured delay and to
//! `JobComplete` once the query has run. The query runs at the end of `InProgress`: the records a job
//! returns are the org as it was when the job completed (Salesforce reads at processing time too), so a
//! write made between creation and completion is seen.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::bulk::JobState;
use super::soql::CsvResult;

/// Rows of one result set when the caller gives no `maxRecords` (Salesforce sizes sets by bytes; a
/// fixed count keeps the simulator predictable).
pub const DEFAULT_MAX_RECORDS: usize = 50_000;

/// Query jobs an org may create per day (`DailyBulkV2QueryJobs`).
pub const DAILY_QUERY_JOBS: u64 = 10_000;

/// How long results stay readable after the job was created.
pub const RESULTS_KEPT_DAYS: i64 = 7;

/// `query` (live records) or `queryAll` (the recycle bin's records too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOp {
    Query,
    QueryAll,
}

impl QueryOp {
    pub fn parse(text: &str) -> Option<QueryOp> {
        match text {
            "query" => Some(QueryOp::Query),
            "queryAll" => Some(QueryOp::QueryAll),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QueryOp::Query => "query",
            QueryOp::QueryAll => "queryAll",
        }
    }
}

/// One query job.
#[derive(Debug)]
pub struct QueryJob {
    pub id: String,
    pub operation: QueryOp,
    pub object: String,
    pub soql: String,
    /// The API version the job was created with (`v62.0`); results are served to that version only.
    pub api_version: String,
    pub state: JobState,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub error_message: Option<String>,
    pub processing_ms: u64,
    pub results: Option<Arc<CsvResult>>,
}

fn sf_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

impl QueryJob {
    /// The job-info JSON of `GET /jobs/query/{id}`.
    pub fn info(&self, user_id: &str) -> Value {
        let number = self.api_version.trim_start_matches('v');
        let processed = self.results.as_ref().map_or(0, |r| r.row_ends.len());
        let mut info = json!({
            "id": self.id,
            "operation": self.operation.name(),
            "object": self.object,
            "createdById": user_id,
            "createdDate": sf_time(self.created),
            "systemModstamp": sf_time(self.modified),
            "state": self.state.name(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": number.parse::<f64>().unwrap_or(62.0),
            "jobType": "V2Query",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": processed,
            "retries": 0,
            "totalProcessingTime": self.processing_ms,
        });
        if let Some(message) = &self.error_message {
            info["errorMessage"] = Value::String(message.clone());
        }
        info
    }
}

/// Encodes a result-set locator (opaque to clients: the offset of the set's first row).
pub fn encode_locator(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(offset.to_string())
}

/// Decodes a locator given back by a client; `None` when it is not one this simulator issued.
pub fn decode_locator(locator: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(locator)
        .ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

/// One result set: the CSV body (header included), the rows in it, and the next set's locator.
pub struct ResultPage {
    pub body: Vec<u8>,
    pub rows: usize,
    pub next: Option<String>,
}

/// Cuts the result set starting at row `offset` with at most `max` rows.
pub fn page(result: &CsvResult, offset: usize, max: usize) -> ResultPage {
    let total = result.row_ends.len();
    let start_row = offset.min(total);
    let end_row = (start_row + max.max(1)).min(total);
    let byte = |row: usize| {
        if row == 0 {
            0
        } else {
            result.row_ends[row - 1]
        }
    };
    let (from, to) = (byte(start_row), byte(end_row));
    let mut body = Vec::with_capacity(result.header.len() + (to - from));
    body.extend_from_slice(&result.header);
    body.extend_from_slice(&result.body[from..to]);
    ResultPage {
        body,
        rows: end_row - start_row,
        next: (end_row < total).then(|| encode_locator(end_row)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn locators_round_trip_and_refuse_garbage() {
        assert_eq!(decode_locator(&encode_locator(150_000)), Some(150_000));
        assert_eq!(decode_locator("not a locator!"), None);
    }

    #[test]
    fn pages_cut_on_row_boundaries() {
        let result = CsvResult {
            header: b"\"Id\"\n".to_vec(),
            body: b"\"a\"\n\"b\"\n\"c\"\n".to_vec(),
            row_ends: vec![4, 8, 12],
        };
        let first = page(&result, 0, 2);
        assert_eq!(first.body, b"\"Id\"\n\"a\"\n\"b\"\n");
        assert_eq!(first.rows, 2);
        let next = decode_locator(first.next.as_deref().unwrap()).unwrap();
        let last = page(&result, next, 2);
        assert_eq!(last.body, b"\"Id\"\n\"c\"\n");
        assert!(last.next.is_none());
    }
}

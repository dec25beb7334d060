//! Bulk API 2.0 ingest jobs: state machine, background processing in 10,000-row batches, results as CSV.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::org::{Column, Op, Org, Outcome};

/// Salesforce processes ingest data in internal batches of this many records.
pub const INTERNAL_BATCH: usize = 10_000;

/// Bulk operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOp {
    Insert,
    Update,
    Upsert,
    Delete,
    HardDelete,
}

impl BulkOp {
    pub fn parse(text: &str) -> Option<BulkOp> {
        match text {
            "insert" => Some(BulkOp::Insert),
            "update" => Some(BulkOp::Update),
            "upsert" => Some(BulkOp::Upsert),
            "delete" => Some(BulkOp::Delete),
            "hardDelete" => Some(BulkOp::HardDelete),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BulkOp::Insert => "insert",
            BulkOp::Update => "update",
            BulkOp::Upsert => "upsert",
            BulkOp::Delete => "delete",
            BulkOp::HardDelete => "hardDelete",
        }
    }
}

/// Job states, as Salesforce names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Open => "Open",
            JobState::UploadComplete => "UploadComplete",
            JobState::InProgress => "InProgress",
            JobState::JobComplete => "JobComplete",
            JobState::Failed => "Failed",
            JobState::Aborted => "Aborted",
        }
    }
}

/// One ingest job.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub object: String,
    pub object_index: usize,
    pub operation: BulkOp,
    pub external_id_field: Option<String>,
    pub delimiter: u8,
    pub delimiter_name: String,
    pub line_ending: String,
    pub state: JobState,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub data: Option<Bytes>,
    pub processed: usize,
    pub failed: usize,
    pub error_message: Option<String>,
    pub outcomes: Vec<Outcome>,
    pub processing_ms: u64,
}

fn sf_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

impl Job {
    /// The job-info JSON of `GET /jobs/ingest/{id}`.
    pub fn info(&self, api_version: &str, user_id: &str) -> Value {
        let number = api_version.trim_start_matches('v');
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
            "jobType": "V2Ingest",
            "contentUrl": format!("services/data/{api_version}/jobs/ingest/{}/batches", self.id),
            "lineEnding": self.line_ending,
            "columnDelimiter": self.delimiter_name,
            "numberRecordsProcessed": self.processed,
            "numberRecordsFailed": self.failed,
            "retries": 0,
            "totalProcessingTime": self.processing_ms,
            "apiActiveProcessingTime": self.processing_ms,
            "apexProcessingTime": 0,
        });
        if let Some(field) = &self.external_id_field {
            info["externalIdFieldName"] = Value::String(field.clone());
        }
        if let Some(message) = &self.error_message {
            info["errorMessage"] = Value::String(message.clone());
        }
        info
    }
}

/// Maps a `columnDelimiter` name to its byte.
pub fn delimiter(name: &str) -> Option<u8> {
    match name {
        "COMMA" => Some(b','),
        "TAB" => Some(b'\t'),
        "PIPE" => Some(b'|'),
        "SEMICOLON" => Some(b';'),
        "CARET" => Some(b'^'),
        "BACKQUOTE" => Some(b'`'),
        _ => None,
    }
}

/// What processing needs from the job, read once.
pub struct Work {
    pub object_index: usize,
    pub operation: BulkOp,
    pub external_id_field: Option<String>,
    pub delimiter: u8,
    pub data: Bytes,
}

/// Prepared columns of a job's CSV, or the reason the job fails.
pub fn prepare(
    org: &Org,
    work: &Work,
    header: &csv::StringRecord,
) -> Result<(Vec<Column>, Option<Op>), String> {
    let columns = org.parse_header(work.object_index, header)?;
    let has_id = columns.iter().any(|c| matches!(c, Column::Id));
    let op = match work.operation {
        BulkOp::Insert => Some(Op::Insert),
        BulkOp::Update => {
            if !has_id {
                return Err("InvalidBatch : Field name not found : Id".into());
            }
            Some(Op::Update)
        }
        // Upserting on Id updates the records named (an insert needs an external id to match on).
        BulkOp::Upsert
            if work
                .external_id_field
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case("Id")) =>
        {
            if !has_id {
                return Err("InvalidBatch : Field name not found : Id".into());
            }
            Some(Op::Update)
        }
        BulkOp::Upsert => {
            let name = work.external_id_field.clone().unwrap_or_default();
            let field = org.objects[work.object_index]
                .field(&name)
                .ok_or_else(|| format!("InvalidBatch : Field name not found : {name}"))?;
            if !columns
                .iter()
                .any(|c| matches!(c, Column::Field(f) if *f == field))
            {
                return Err(format!("InvalidBatch : Field name not found : {name}"));
            }
            Some(Op::Upsert(field))
        }
        BulkOp::Delete | BulkOp::HardDelete => {
            if !has_id || columns.len() != 1 {
                return Err(
                    "InvalidBatch : Delete and hardDelete jobs take a single Id column".into(),
                );
            }
            None
        }
    };
    Ok((columns, op))
}

/// Which rows a results endpoint returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Successful,
    Failed,
    Unprocessed,
}

/// Renders a results CSV from the uploaded data and the outcomes.
pub fn results_csv(job: &Job, kind: ResultKind) -> Result<Vec<u8>, String> {
    let mut out = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let Some(data) = &job.data else {
        return Ok(Vec::new());
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(job.delimiter)
        .flexible(true)
        .from_reader(&data[..]);
    let header = reader.headers().map_err(|e| e.to_string())?.clone();
    let mut head: Vec<&str> = match kind {
        ResultKind::Successful => vec!["sf__Id", "sf__Created"],
        ResultKind::Failed => vec!["sf__Id", "sf__Error"],
        ResultKind::Unprocessed => vec![],
    };
    head.extend(header.iter());
    out.write_record(&head).map_err(|e| e.to_string())?;
    for (i, record) in reader.records().enumerate() {
        let Ok(record) = record else { continue };
        let outcome = job.outcomes.get(i);
        let mut line: Vec<String> = match (kind, outcome) {
            (ResultKind::Successful, Some(o)) if o.error.is_none() => vec![
                o.id.as_deref().unwrap_or("").to_string(),
                o.created.to_string(),
            ],
            (ResultKind::Failed, Some(o)) => match &o.error {
                Some(error) => vec![o.id.as_deref().unwrap_or("").to_string(), error.bulk_text()],
                None => continue,
            },
            (ResultKind::Unprocessed, None) => vec![],
            _ => continue,
        };
        line.extend(record.iter().map(str::to_string));
        out.write_record(&line).map_err(|e| e.to_string())?;
    }
    out.into_inner().map_err(|e| e.to_string())
}

//! The Bulk API 2.0 side of the thin Salesforce client: an upsert ingest job's steps (create,
//! upload its CSV, close, poll, read results), one exchange each, and the CSV both ways.

use serde_json::{Value, json};

use super::{API_VERSION, Body, RecordFailure, RecordResult, SalesforceApi, Session, not_json};
use crate::error::Failure;
use crate::http::{Answer, shown};
use crate::mapping::{FieldValue, Fields};

/// Where a Bulk API 2.0 ingest job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BulkState {
    /// Still being processed.
    InProgress,
    /// Done: its results can be read.
    Complete,
    /// Failed or aborted, with Salesforce's reason.
    Ended(String),
}

impl SalesforceApi {
    /// Creates a Bulk API 2.0 upsert job; returns its id.
    pub async fn create_ingest_job(
        &self,
        session: &Session,
        object: &str,
        external_id: &str,
    ) -> Answer<String> {
        let body =
            json!({"object": object, "operation": "upsert", "externalIdFieldName": external_id,
            "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"})
            .to_string();
        self.send(
            session,
            reqwest::Method::POST,
            &format!("/services/data/{API_VERSION}/jobs/ingest"),
            Body::Json(&body),
        )
        .await
        .and_then(|text| job_id_of(&text, "bulk job answer"))
    }

    /// Uploads a job's CSV ([`to_csv`]).
    pub async fn upload_csv(&self, session: &Session, job_id: &str, csv: &str) -> Answer<()> {
        self.send(
            session,
            reqwest::Method::PUT,
            &format!("{}/batches", job_path(job_id)),
            Body::Csv(csv),
        )
        .await
        .and_then(|_| Ok(()))
    }

    /// Marks a job's upload complete: Salesforce starts processing it.
    pub async fn close_job(&self, session: &Session, job_id: &str) -> Answer<()> {
        self.set_job_state(session, job_id, "UploadComplete").await
    }

    /// Aborts an ingest job: Salesforce processes none of its records not yet processed (a job
    /// given up on must not write later, over what a retry wrote since).
    pub async fn abort_job(&self, session: &Session, job_id: &str) -> Answer<()> {
        self.set_job_state(session, job_id, "Aborted").await
    }

    /// Moves an ingest job to `state` (the one change of a job Bulk API 2.0 takes).
    async fn set_job_state(&self, session: &Session, job_id: &str, state: &str) -> Answer<()> {
        let body = json!({ "state": state }).to_string();
        self.send(
            session,
            reqwest::Method::PATCH,
            &job_path(job_id),
            Body::Json(&body),
        )
        .await
        .and_then(|_| Ok(()))
    }

    /// Where a job stands.
    pub async fn job_state(&self, session: &Session, job_id: &str) -> Answer<BulkState> {
        self.send(session, reqwest::Method::GET, &job_path(job_id), Body::None)
            .await
            .and_then(|text| state_of(&text))
    }

    /// Reads a complete job's successful (`sf__Id` per external id) or failed (`sf__Error` per
    /// external id) results.
    pub async fn job_results(
        &self,
        session: &Session,
        job_id: &str,
        successful: bool,
        external_id: &str,
    ) -> Answer<Vec<(String, String)>> {
        let (file, column) = if successful {
            ("successfulResults", "sf__Id")
        } else {
            ("failedResults", "sf__Error")
        };
        self.send_capped(
            session,
            reqwest::Method::GET,
            &format!("{}/{file}/", job_path(job_id)),
            Body::None,
            learnsync_upstream::cap::BULK,
        )
        .await
        .and_then(|text| read_results(&text, external_id, column))
    }
}

/// One set of a query job's results: the CSV text and the locator of the next set, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// CSV with a header row named as in the SELECT.
    pub csv: String,
    /// `Sforce-Locator` of the next set (`None` on the last).
    pub next: Option<String>,
}

impl SalesforceApi {
    /// Creates a Bulk API 2.0 query job for `soql`; returns its id.
    pub async fn create_query_job(&self, session: &Session, soql: &str) -> Answer<String> {
        let body = json!({"operation": "query", "query": soql, "contentType": "CSV",
            "columnDelimiter": "COMMA", "lineEnding": "LF"})
        .to_string();
        self.send(
            session,
            reqwest::Method::POST,
            &format!("/services/data/{API_VERSION}/jobs/query"),
            Body::Json(&body),
        )
        .await
        .and_then(|text| job_id_of(&text, "bulk query job answer"))
    }

    /// Where a query job stands.
    pub async fn query_job_state(&self, session: &Session, job_id: &str) -> Answer<BulkState> {
        self.send(
            session,
            reqwest::Method::GET,
            &query_path(job_id),
            Body::None,
        )
        .await
        .and_then(|text| state_of(&text))
    }

    /// Reads one set of a complete query job's results (`locator`: the set, `None` the first).
    pub async fn query_results(
        &self,
        session: &Session,
        job_id: &str,
        locator: Option<&str>,
        max_records: usize,
    ) -> Answer<ResultSet> {
        let mut path = format!("{}/results?maxRecords={max_records}", query_path(job_id));
        if let Some(locator) = locator {
            path.push_str("&locator=");
            path.push_str(&urlencoding_lite(locator));
        }
        self.exchange(
            session,
            reqwest::Method::GET,
            &path,
            Body::None,
            learnsync_upstream::cap::BULK,
        )
        .await
        .and_then(|(csv, headers)| {
            let next = headers
                .get("sforce-locator")
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty() && *value != "null")
                .map(str::to_string);
            Ok(ResultSet { csv, next })
        })
    }

    /// Deletes a query job (its results are no longer needed).
    pub async fn delete_query_job(&self, session: &Session, job_id: &str) -> Answer<()> {
        self.send(
            session,
            reqwest::Method::DELETE,
            &query_path(job_id),
            Body::None,
        )
        .await
        .and_then(|_| Ok(()))
    }
}

/// A locator as a query parameter: Salesforce's are alphanumeric; anything else is escaped.
fn urlencoding_lite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The id in a bulk job's answer.
fn job_id_of(text: &str, what: &str) -> Result<String, Failure> {
    let info: Value = serde_json::from_str(text).map_err(|_| not_json(what))?;
    info.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Failure::Unreadable(format!("{what} has no id")))
}

/// A bulk job's state, from its description.
fn state_of(text: &str) -> Result<BulkState, Failure> {
    let state: Value = serde_json::from_str(text).map_err(|_| not_json("bulk job state"))?;
    Ok(
        match state.get("state").and_then(Value::as_str).unwrap_or("") {
            "JobComplete" => BulkState::Complete,
            "Failed" | "Aborted" => BulkState::Ended(
                state
                    .get("errorMessage")
                    .and_then(Value::as_str)
                    .map_or_else(|| "no reason given".to_string(), shown),
            ),
            _ => BulkState::InProgress,
        },
    )
}

/// The path of a bulk query job.
fn query_path(job_id: &str) -> String {
    format!("/services/data/{API_VERSION}/jobs/query/{job_id}")
}

/// The path of a bulk ingest job.
fn job_path(job_id: &str) -> String {
    format!("/services/data/{API_VERSION}/jobs/ingest/{job_id}")
}

/// Reads a bulk result's `sf__Error` into the record's outcome.
pub fn bulk_failure(text: &str) -> RecordResult {
    RecordResult {
        success: false,
        id: None,
        errors: vec![parse_bulk_error(text)],
    }
}

/// `CODE:message:fields --` as Bulk API 2.0 writes `sf__Error`.
fn parse_bulk_error(text: &str) -> RecordFailure {
    let text = text.trim().trim_end_matches("--").trim();
    match text.split_once(':') {
        Some((code, rest)) => {
            let message = match rest.rsplit_once(':') {
                Some((message, _fields)) => message,
                None => rest,
            };
            RecordFailure {
                code: shown(code),
                message: shown(message),
            }
        }
        None => RecordFailure {
            code: "UNKNOWN".into(),
            message: shown(text),
        },
    }
}

/// A CSV column: a field, and the parent's external id for a lookup (`Field__r.Ext__c`).
type Column<'a> = (&'a str, Option<&'a str>);

/// The column of a field's value.
fn column_of<'a>(field: &'a str, value: &'a FieldValue) -> Column<'a> {
    match value {
        FieldValue::Lookup { external_id, .. } => (field, Some(&**external_id)),
        FieldValue::Plain(_) => (field, None),
    }
}

/// Whether two columns are the same; names shared with the mapping compare by address first.
fn same_column(a: Column<'_>, b: Column<'_>) -> bool {
    let same = |x: &str, y: &str| std::ptr::eq(x, y) || x == y;
    same(a.0, b.0)
        && match (a.1, b.1) {
            (Some(x), Some(y)) => same(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// Writes records as Bulk API CSV: relationship columns as `Rel__r.Ext__c`, nulls as `#N/A`.
pub fn to_csv(records: &[&Fields], external_id: &str) -> Result<String, Failure> {
    // Columns in first-seen order; a lookup by external id is `Relationship__r.Field__c`.
    let mut columns: Vec<Column<'_>> = vec![(external_id, None)];
    for record in records {
        for (field, value) in record.iter() {
            // A handful of columns: a scan allocates nothing, unlike a set of owned names.
            let column = column_of(field, value);
            if !columns.iter().any(|known| same_column(*known, column)) {
                columns.push(column);
            }
        }
    }
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(records.len() * 160));
    let fail = |error: csv::Error| Failure::Encode(format!("cannot write bulk csv: {error}"));
    for (field, key) in &columns {
        match key {
            Some(key) => writer.write_field(format!("{field}.{key}")),
            None => writer.write_field(field),
        }
        .map_err(fail)?;
    }
    writer.write_record(None::<&[u8]>).map_err(fail)?;
    let mut row = Row {
        cells: vec![None; columns.len()],
        hints: Vec::new(),
        number: String::new(),
    };
    for record in records {
        row.fill(&columns, record);
        for cell in 0..columns.len() {
            writer.write_field(row.text(cell)?).map_err(fail)?;
        }
        writer.write_record(None::<&[u8]>).map_err(fail)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| Failure::Encode(format!("cannot write bulk csv: {error}")))?;
    String::from_utf8(bytes)
        .map_err(|error| Failure::Encode(format!("bulk csv is not utf-8: {error}")))
}

/// One CSV row being written: each column's value, placed by walking the record's fields once
/// (records of one chunk have the same fields in the same order, so the previous record's
/// columns are tried first) rather than looked up by name for every column.
struct Row<'a> {
    /// The value in each column, if the record has one.
    cells: Vec<Option<&'a FieldValue>>,
    /// The column of the previous record's field at each position.
    hints: Vec<usize>,
    /// A number's text.
    number: String,
}

impl<'a> Row<'a> {
    /// Places a record's values in their columns.
    fn fill(&mut self, columns: &[Column<'a>], record: &'a Fields) {
        self.cells.iter_mut().for_each(|cell| *cell = None);
        for (position, (field, value)) in record.iter().enumerate() {
            let column = column_of(field, value);
            let hinted = self
                .hints
                .get(position)
                .copied()
                .filter(|at| columns.get(*at).is_some_and(|c| same_column(*c, column)));
            let at = hinted.or_else(|| columns.iter().position(|c| same_column(*c, column)));
            let Some(at) = at else { continue };
            self.cells[at] = Some(value);
            match self.hints.get_mut(position) {
                Some(hint) => *hint = at,
                None => self.hints.push(at),
            }
        }
    }

    /// A column's text: a lookup's key, text, a number's or a boolean's text, `#N/A` for null.
    fn text(&mut self, cell: usize) -> Result<&str, Failure> {
        let text = match self.cells[cell] {
            Some(FieldValue::Lookup { key, .. }) => key.as_str(),
            Some(FieldValue::Plain(Value::String(text))) => text.as_str(),
            Some(FieldValue::Plain(Value::Null)) | None => "#N/A",
            Some(FieldValue::Plain(other)) => {
                self.number.clear();
                std::fmt::Write::write_fmt(&mut self.number, format_args!("{other}"))
                    .map_err(|error| Failure::Encode(error.to_string()))?;
                self.number.as_str()
            }
        };
        Ok(text)
    }
}

/// Reads a Bulk API 2.0 result CSV: `(external id value, value of column)` per row. Only the two
/// columns are kept (the results repeat every field sent).
fn read_results(
    text: &str,
    external_id: &str,
    column: &str,
) -> Result<Vec<(String, String)>, Failure> {
    let unreadable =
        |error: csv::Error| Failure::Unreadable(format!("bulk results unreadable: {error}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(unreadable)?;
    let position = |name: &str| headers.iter().position(|header| header == name);
    let (Some(key_at), value_at) = (position(external_id), position(column)) else {
        return Ok(Vec::new());
    };
    // A row a line (a quoted value may hold more): room for every row at once.
    let lines = text.bytes().filter(|byte| *byte == b'\n').count();
    let mut rows = Vec::with_capacity(lines);
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(unreadable)? {
        let Some(key) = record.get(key_at) else {
            continue;
        };
        let value = value_at.and_then(|at| record.get(at)).unwrap_or_default();
        rows.push((key.to_string(), value.to_string()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Map;

    use super::*;

    #[test]
    fn writes_bulk_csv_and_reads_bulk_errors() {
        let mut record = Map::new();
        record.insert("Enrollment_Key__c".into(), json!("1-2"));
        record.insert("Docebo_User__r".into(), json!({"Docebo_User_Id__c": "1"}));
        record.insert("Score__c".into(), Value::Null);
        record.insert("Name".into(), json!("a, \"b\""));
        let record = Fields::from_map(&record);
        let text = to_csv(&[&record], "Enrollment_Key__c").unwrap();
        let column = |name: &str| read_results(&text, "Enrollment_Key__c", name).unwrap();
        assert_eq!(
            column("Docebo_User__r.Docebo_User_Id__c"),
            vec![("1-2".to_string(), "1".to_string())]
        );
        assert_eq!(column("Score__c")[0].1, "#N/A");
        assert_eq!(column("Name")[0].1, "a, \"b\"");
        let error = parse_bulk_error(
            "INVALID_FIELD:Foreign key external ID: 9 not found for field X in entity Y:Docebo_User__c --",
        );
        assert_eq!(error.code, "INVALID_FIELD");
        assert!(
            error.message.starts_with("Foreign key external ID"),
            "{}",
            error.message
        );
    }
}

//! The Bulk API 2.0 side of the thin Salesforce client: an upsert ingest job's steps (create,
//! upload its CSV, close, poll, read results), one exchange each, and the CSV both ways.

use std::borrow::Cow;

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
    let mut csv = String::with_capacity(records.len() * 160);
    let header: Vec<String> = columns
        .iter()
        .map(|(field, key)| match key {
            Some(key) => format!("{field}.{key}"),
            None => field.to_string(),
        })
        .collect();
    push_row(&mut csv, header.iter().map(String::as_str));
    let mut row = Row {
        cells: vec![None; columns.len()],
        hints: Vec::new(),
        number: String::new(),
        integer: itoa::Buffer::new(),
    };
    let only = columns.len() == 1;
    for record in records {
        row.fill(&columns, record);
        for cell in 0..columns.len() {
            if cell > 0 {
                csv.push(',');
            }
            push_field(&mut csv, row.text(cell)?, only);
        }
        csv.push('\n');
    }
    Ok(csv)
}

/// Appends a row of fields and its line end.
fn push_row<'a>(csv: &mut String, fields: impl ExactSizeIterator<Item = &'a str>) {
    let only = fields.len() == 1;
    for (at, field) in fields.enumerate() {
        if at > 0 {
            csv.push(',');
        }
        push_field(csv, field, only);
    }
    csv.push('\n');
}

/// Appends a field as the csv crate writes one (`QuoteStyle::Necessary`): in quotes, its quotes
/// doubled, when it holds a comma, a quote or a line break (or is a row's only field, empty);
/// as it is otherwise. Written here, not through the crate's writer: this runs for every field
/// of every record sent in bulk.
fn push_field(csv: &mut String, field: &str, only: bool) {
    let special = field
        .bytes()
        .any(|byte| matches!(byte, b',' | b'"' | b'\n' | b'\r'));
    let quoted = special || (only && field.is_empty());
    if !quoted {
        csv.push_str(field);
        return;
    }
    csv.push('"');
    csv.push_str(&field.replace('"', "\"\""));
    csv.push('"');
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
    /// An integer's text.
    integer: itoa::Buffer,
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
            Some(FieldValue::Plain(Value::Bool(flag))) => {
                if *flag {
                    "true"
                } else {
                    "false"
                }
            }
            // Integers through itoa (their display's digits), without the formatting machinery.
            Some(FieldValue::Plain(Value::Number(number))) if number.is_i64() => {
                self.integer.format(number.as_i64().unwrap_or_default())
            }
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
/// columns are kept (the results repeat every field sent), read with [`CsvFields`] rather than
/// the csv crate's reader, which parses every field of every row.
fn read_results(
    text: &str,
    external_id: &str,
    column: &str,
) -> Result<Vec<(String, String)>, Failure> {
    let mut csv = CsvFields::new(text);
    if !csv.next_row() {
        return Ok(Vec::new());
    }
    let mut headers = Vec::new();
    loop {
        let (header, more) = csv.field();
        headers.push(header);
        if !more {
            break;
        }
    }
    let position = |name: &str| headers.iter().position(|header| header == name);
    let (Some(key_at), value_at) = (position(external_id), position(column)) else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    while csv.next_row() {
        let (mut key, mut value) = (None, None);
        let mut at = 0;
        loop {
            let (field, more) = csv.field();
            if at == key_at {
                key = Some(field);
            } else if Some(at) == value_at {
                value = Some(field);
            }
            at += 1;
            if !more {
                break;
            }
        }
        if let Some(key) = key {
            rows.push((key.into_owned(), value.unwrap_or_default().into_owned()));
        }
    }
    Ok(rows)
}

/// A CSV text read field by field as the csv crate reads it by default: `,` between fields, rows
/// ending at `\n`, `\r\n` or `\r`, empty lines skipped, a field in quotes holding any of these
/// with `""` for a quote (text after its closing quote is kept, as the crate does).
struct CsvFields<'a> {
    /// What is left to read.
    rest: &'a str,
}

impl<'a> CsvFields<'a> {
    /// A reader of `text` (a byte order mark before it is skipped).
    fn new(text: &'a str) -> CsvFields<'a> {
        CsvFields {
            rest: text.strip_prefix('\u{feff}').unwrap_or(text),
        }
    }

    /// Goes to the next row, past empty lines; false at the end of the text.
    fn next_row(&mut self) -> bool {
        self.rest = self.rest.trim_start_matches(['\r', '\n']);
        !self.rest.is_empty()
    }

    /// The row's next field, and whether the row goes on after it. Read byte by byte: the bytes
    /// looked for are ASCII, so every index found is a character boundary.
    fn field(&mut self) -> (Cow<'a, str>, bool) {
        let (text, bytes) = (self.rest, self.rest.as_bytes());
        let mut field = Cow::Borrowed("");
        // Where the part after the quotes (all of an unquoted field) starts.
        let mut plain = 0;
        if bytes.first() == Some(&b'"') {
            let mut from = 1;
            loop {
                let Some(offset) = bytes[from..].iter().position(|byte| *byte == b'"') else {
                    // Never closed: the rest of the text.
                    append(&mut field, &text[from..]);
                    self.rest = "";
                    return (field, false);
                };
                let quote = from + offset;
                append(&mut field, &text[from..quote]);
                if bytes.get(quote + 1) != Some(&b'"') {
                    plain = quote + 1;
                    break;
                }
                field.to_mut().push('"');
                from = quote + 2;
            }
        }
        let end = bytes[plain..]
            .iter()
            .position(|byte| matches!(byte, b',' | b'\r' | b'\n'))
            .map_or(bytes.len(), |offset| plain + offset);
        if end > plain {
            append(&mut field, &text[plain..end]);
        }
        let (more, next) = match bytes.get(end) {
            Some(b',') => (true, end + 1),
            Some(b'\r') if bytes.get(end + 1) == Some(&b'\n') => (false, end + 2),
            Some(_) => (false, end + 1),
            None => (false, end),
        };
        self.rest = &text[next..];
        (field, more)
    }
}

/// Appends text to a field, borrowing while it is one piece.
fn append<'a>(field: &mut Cow<'a, str>, text: &'a str) {
    if matches!(field, Cow::Borrowed("")) {
        *field = Cow::Borrowed(text);
        return;
    }
    field.to_mut().push_str(text);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Map;

    use super::*;

    /// The csv crate's writing of rows, which `to_csv` must match byte for byte.
    fn csv_crate(rows: &[Vec<&str>]) -> String {
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        for row in rows {
            writer.write_record(row).unwrap();
        }
        String::from_utf8(writer.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn bulk_csv_is_written_as_the_csv_crate_writes_it() {
        let texts = [
            "plain",
            "a, b",
            "say \"hi\"",
            "two\nlines",
            "cr\r",
            "",
            " spaced ",
            "#N/A",
            "ünïcödé",
        ];
        let mut records = Vec::new();
        for text in texts {
            let mut record = Map::new();
            record.insert("Key__c".into(), json!(text));
            record.insert("Name".into(), json!(format!("{text},{text}")));
            records.push(Fields::from_map(&record));
        }
        let refs: Vec<&Fields> = records.iter().collect();
        let mut rows = vec![vec!["Key__c", "Name"]];
        let names: Vec<String> = texts.iter().map(|text| format!("{text},{text}")).collect();
        rows.extend(texts.iter().zip(&names).map(|(t, n)| vec![*t, n.as_str()]));
        assert_eq!(to_csv(&refs, "Key__c").unwrap(), csv_crate(&rows));
        // A row's only field, empty, is quoted (else the line would read as no field).
        let mut record = Map::new();
        record.insert("Key__c".into(), json!(""));
        let alone = Fields::from_map(&record);
        let expected = csv_crate(&[vec!["Key__c"], vec![""]]);
        assert_eq!(to_csv(&[&alone], "Key__c").unwrap(), expected);
    }

    #[test]
    fn results_are_read_as_the_csv_crate_reads_them() {
        let text = "\u{feff}\"sf__Id\",sf__Created,Key__c,Name\r\n\
            a01,true,1,plain\r\n\
            \r\n\
            a02,false,\"2\",\"with \"\"quotes\"\", and a comma\"\n\
            a03,false,3,\"two\nlines\"\n\
            \"a\"04,true,\"4\"x,\n\
            ,,5\r\
            a06,true\n\
            a07,true,7,\"never closed";
        for (column, at) in [("Name", 3), ("sf__Id", 0), ("sf__Created", 1)] {
            let expected = crate_read(text, 2, at);
            assert_eq!(read_results(text, "Key__c", column).unwrap(), expected);
        }
        assert_eq!(
            crate_read(text, 2, 3).len(),
            6,
            "short and empty rows are skipped"
        );
    }

    /// The csv crate's reading of a result CSV: `(field key_at, field value_at)` per row.
    fn crate_read(text: &str, key_at: usize, value_at: usize) -> Vec<(String, String)> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(text.as_bytes());
        assert_eq!(
            &reader.headers().unwrap()[0],
            "sf__Id",
            "no byte order mark"
        );
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.unwrap();
            if let Some(key) = record.get(key_at) {
                let value = record.get(value_at).unwrap_or_default();
                rows.push((key.to_string(), value.to_string()));
            }
        }
        rows
    }

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

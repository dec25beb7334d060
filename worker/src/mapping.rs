//! The Salesforce data model as data: which object each Docebo entity becomes, its external id,
//! and how each field is derived and validated. The default mapping is `mapping.json`, compiled
//! in; a connection may carry its own in the same form (SetMapping stores it, versioned): see
//! `document` (a stored document read, defaults filled in, checked on its own) and `check` (a
//! mapping checked against the org's describes, every problem at once).
//!
//! Mapping a Docebo item gives the record to upsert (without `attributes`), its key, a hash of its
//! values (the ledger skips records whose hash did not change) and its Docebo change time; or the
//! reason the record cannot fit the org, which fails that one record, never the run.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use learnsync_store::model::Area;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest as _;

mod check;
mod document;
mod readback;

pub use check::{Describes, Problem};
pub use readback::ReadBack;

/// The default mapping (data-model.md), as JSON.
const DEFAULT_MAPPING: &str = include_str!("mapping.json");

pub use learnsync_store::model::Entity;

/// A mapping that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid mapping: {0}")]
pub struct InvalidMapping(pub String);

/// How every entity maps to Salesforce.
#[derive(Clone, Debug)]
pub struct Mapping {
    entities: BTreeMap<Entity, ObjectMapping>,
}

#[derive(Deserialize, Serialize)]
struct MappingFile {
    entities: BTreeMap<Entity, ObjectMapping>,
}

/// How one entity maps to one Salesforce object.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ObjectMapping {
    /// The object's API name.
    pub object: String,
    /// The area whose record count the object adds to.
    #[serde(deserialize_with = "area_from_str", serialize_with = "area_to_str")]
    pub area: Area,
    /// The external id field: it holds the record's key (the ledger's), and upserts match on it
    /// unless `upsert_by` says otherwise.
    pub external_id: Arc<str>,
    /// Upserts match on this mapped field instead (an `idLookup` field of a standard object,
    /// such as a Contact's or a Lead's `Email`): an existing record with the same value is taken
    /// over, its external id set, instead of a duplicate created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert_by: Option<Arc<str>>,
    /// The key template (`{user_id}-{course_id}`), made of numeric ids.
    pub key: String,
    /// Templates for `Name`, the first that renders non-empty wins (truncated to 80); none: the
    /// record gets no `Name` (a Contact's or a Lead's is compound, not writable).
    #[serde(default)]
    pub name: Vec<String>,
    /// The Docebo fields that mark a change; the latest wins.
    pub updated_at: Vec<String>,
    /// Fields.
    pub fields: Vec<FieldMapping>,
    /// Enrollments: how an unenrollment is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unenroll: Option<Unenroll>,
}

/// How an unenrolled record is marked.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Unenroll {
    /// The status field.
    pub status_field: String,
    /// Its unenrolled value.
    pub status_value: String,
    /// The field holding when it happened.
    pub time_field: String,
}

fn area_from_str<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Area, D::Error> {
    let text = String::deserialize(deserializer)?;
    Area::parse(&text).map_err(serde::de::Error::custom)
}

fn area_to_str<S: serde::Serializer>(area: &Area, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(area.as_str())
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// One Salesforce field and where its value comes from: one source (a Docebo field, a Docebo
/// additional field or a constant; lookups read a Docebo field), and a transform (`type`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FieldMapping {
    /// The field's API name (a relationship name for lookups), shared by every record.
    pub field: Arc<str>,
    /// The Docebo field it is read from (`_`-prefixed: context the sync adds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The Docebo additional field (users: its id or its title) it is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_field: Option<String>,
    /// A constant value, the same for every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    /// A null value fails the record.
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// The field's type and constraints.
    #[serde(flatten)]
    pub kind: FieldKind,
}

/// A field's type (the transform its value goes through), with what validation needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldKind {
    /// Text of at most `length` characters (the org's length when it is shorter).
    Text {
        /// Maximum length in characters.
        length: usize,
        /// Longer text is cut to the length instead of failing the record.
        #[serde(default, skip_serializing_if = "is_false")]
        truncate: bool,
    },
    /// An email address.
    Email {
        /// Maximum length in characters.
        length: usize,
    },
    /// A checkbox: JSON booleans, or one of `true_values`.
    Checkbox {
        /// Text values meaning true.
        true_values: Vec<String>,
    },
    /// A Docebo timestamp, written as ISO 8601 UTC.
    Datetime,
    /// A Docebo date or timestamp, written as `YYYY-MM-DD`.
    Date,
    /// A number with at most `precision` digits, `scale` of them decimals.
    Number {
        /// Total digits.
        precision: u32,
        /// Decimal digits.
        scale: u32,
    },
    /// A restricted picklist: Docebo value (lowercased) to Salesforce value.
    Picklist {
        /// The value map.
        values: BTreeMap<String, String>,
    },
    /// A lookup by external id: `{"<relationship>": {"<external id>": "<key>"}}`.
    Lookup {
        /// The parent object.
        object: String,
        /// The parent's external id field.
        external_id: Arc<str>,
    },
    /// Always null (clears a field the sync sets elsewhere, e.g. `Unenrolled_At__c`).
    Clear,
    /// A lookup to a record found by value (e.g. the `Contact` whose `Email` is the user's): the
    /// sync resolves it before writing; no match, or more than one, leaves it empty. Optional:
    /// an org without the field simply does not get it.
    Match {
        /// The object searched.
        object: String,
        /// Its field compared with the value.
        match_field: String,
    },
}

/// A lookup by value the sync must resolve before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMatch {
    /// The lookup field to set.
    pub field: Arc<str>,
    /// The object searched.
    pub object: String,
    /// Its field compared with the value.
    pub match_field: String,
    /// The value (lowercased).
    pub value: String,
}

/// The `Name` field every record carries.
static NAME_FIELD: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("Name"));

/// A value to send in one field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Text, a number, a boolean or null.
    Plain(Value),
    /// A lookup by external id: `{"<field>": {"<external id>": "<key>"}}` in JSON,
    /// `<field>.<external id>` in Bulk CSV.
    Lookup {
        /// The parent's external id field.
        external_id: Arc<str>,
        /// The parent's key.
        key: String,
    },
}

/// A record's fields, in name order: one small vector whose names are shared with the mapping,
/// instead of a JSON map per record (with a worker's budget of records in flight, maps and their
/// one-entry lookup maps were two thirds of its heap).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(Vec<(Arc<str>, FieldValue)>);

impl Fields {
    /// Sets a field (replacing its value, if it has one).
    pub fn insert(&mut self, name: Arc<str>, value: FieldValue) {
        match self.0.binary_search_by(|(n, _)| (**n).cmp(&*name)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (name, value)),
        }
    }

    /// Sets a plain value.
    pub fn insert_plain(&mut self, name: Arc<str>, value: Value) {
        self.insert(name, FieldValue::Plain(value));
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|at| &self.0[at].1)
    }

    /// The fields, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(name, value)| (&**name, value))
    }

    /// The first lookup's key (children of one parent sort together by it).
    pub fn first_lookup_key(&self) -> Option<&str> {
        self.0.iter().find_map(|(_, value)| match value {
            FieldValue::Lookup { key, .. } => Some(key.as_str()),
            FieldValue::Plain(_) => None,
        })
    }

    /// The fields as the JSON object Salesforce's REST API takes (their serialization).
    #[cfg(test)]
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Names and JSON values always serialize to an object.
            _ => Map::new(),
        }
    }

    /// Fields from such a JSON object (a one-entry object of text is a lookup).
    pub fn from_map(map: &Map<String, Value>) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in map {
            let lookup = match value {
                Value::Object(reference) if reference.len() == 1 => reference
                    .iter()
                    .next()
                    .and_then(|(external_id, key)| Some((external_id, key.as_str()?))),
                _ => None,
            };
            let value = match lookup {
                Some((external_id, key)) => FieldValue::Lookup {
                    external_id: Arc::from(external_id.as_str()),
                    key: key.to_string(),
                },
                None => FieldValue::Plain(value.clone()),
            };
            fields.insert(Arc::from(name.as_str()), value);
        }
        fields
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        Map::deserialize(deserializer).map(|map| Fields::from_map(&map))
    }
}

impl serde::Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        /// A lookup's `{"<external id>": "<key>"}`.
        struct Reference<'a>(&'a str, &'a str);
        impl serde::Serialize for Reference<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0, self.1)?;
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.iter() {
            match value {
                FieldValue::Plain(value) => map.serialize_entry(name, value)?,
                FieldValue::Lookup { external_id, key } => {
                    map.serialize_entry(name, &Reference(external_id, key))?
                }
            }
        }
        map.end()
    }
}

/// A record ready to upsert.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedRecord {
    /// The external id value (also the ledger's record key and the log's record key).
    pub key: String,
    /// The fields to send, external id included, `attributes` excluded.
    pub fields: Fields,
    /// A hash of the values.
    pub hash: Vec<u8>,
    /// The Docebo change time.
    pub updated_at: Option<DateTime<Utc>>,
    /// Lookups by value still to resolve (their fields are absent until then).
    pub matches: Vec<PendingMatch>,
}

/// Why a record cannot be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// The record's key, when it could be read.
    pub key: String,
    /// A stable code.
    pub code: String,
    /// The reason, for a person.
    pub message: String,
}

impl Mapping {
    /// The default mapping of data-model.md.
    pub fn default_mapping() -> Result<Mapping, InvalidMapping> {
        Mapping::from_json(DEFAULT_MAPPING)
    }

    /// Reads a mapping in the form of `mapping.json`.
    pub fn from_json(text: &str) -> Result<Mapping, InvalidMapping> {
        let file: MappingFile =
            serde_json::from_str(text).map_err(|error| InvalidMapping(error.to_string()))?;
        for (entity, mapping) in &file.entities {
            if mapping.key.is_empty() || mapping.external_id.is_empty() || mapping.object.is_empty()
            {
                return Err(InvalidMapping(format!(
                    "{entity:?}: object, key and external id are required"
                )));
            }
        }
        Ok(Mapping {
            entities: file.entities,
        })
    }

    /// Every entity's mapping, in entity order.
    pub fn entities(&self) -> impl Iterator<Item = (Entity, &ObjectMapping)> {
        self.entities
            .iter()
            .map(|(entity, mapping)| (*entity, mapping))
    }

    /// The mapping of one entity.
    pub fn entity(&self, entity: Entity) -> Result<&ObjectMapping, InvalidMapping> {
        self.entities
            .get(&entity)
            .ok_or_else(|| InvalidMapping(format!("no mapping for {entity:?}")))
    }
}

/// The value of a Docebo user's additional field, found by its id or its title among the item's
/// `additional_fields` (`[{"id": 3, "title": "Region", "type": "dropdown", "value": "EMEA"}]`).
pub fn additional_field<'a>(item: &'a Value, name: &str) -> Option<&'a Value> {
    item.get("additional_fields")?
        .as_array()?
        .iter()
        .find(|field| {
            field.get("id").and_then(text_of).as_deref() == Some(name)
                || field.get("title").and_then(Value::as_str) == Some(name)
        })?
        .get("value")
}

/// Reads an id that may be a JSON number or a numeric string.
pub fn id_of(item: &Value, field: &str) -> Option<i64> {
    match item.get(field)? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A course item's category id, in whichever shape the platform sends it (`category: {id}`,
/// `category_id`, `id_category`, or `category` as a bare id).
pub fn course_category(item: &Value) -> Option<i64> {
    match item.get("category") {
        Some(Value::Object(category)) => {
            if let Some(id) = id_of(&Value::Object(category.clone()), "id") {
                return Some(id);
            }
        }
        Some(Value::Number(_) | Value::String(_)) => {
            if let Some(id) = id_of(item, "category") {
                return Some(id);
            }
        }
        _ => {}
    }
    id_of(item, "category_id").or_else(|| id_of(item, "id_category"))
}

/// Parses a Docebo timestamp (`YYYY-MM-DD HH:MM:SS`, UTC); zero dates and nulls mean none.
pub fn parse_docebo_time(value: &Value) -> Result<Option<DateTime<Utc>>, String> {
    let Some(text) = value.as_str() else {
        return if value.is_null() {
            Ok(None)
        } else {
            Err(format!("{value} is not a date"))
        };
    };
    let text = text.trim();
    if text.is_empty() || text.starts_with("0000-00-00") {
        return Ok(None);
    }
    if let Some(time) = parse_plain_time(text) {
        return Ok(Some(time));
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(Some(time.and_utc()));
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(time.with_timezone(&Utc)));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(time) = date.and_hms_opt(0, 0, 0)
    {
        return Ok(Some(time.and_utc()));
    }
    Err(format!("{text:?} is not a date"))
}

/// Formats a time as Docebo's filters want it.
pub fn docebo_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Formats a time as Salesforce's REST API wants it (`%Y-%m-%dT%H:%M:%SZ`, written digit by
/// digit: this runs for every date of every record).
pub fn salesforce_time(time: DateTime<Utc>) -> String {
    use chrono::Timelike as _;
    let mut out = String::with_capacity(20);
    if !push_date(&mut out, time) {
        return time.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    }
    out.push('T');
    push_digits(&mut out, time.hour(), 2);
    out.push(':');
    push_digits(&mut out, time.minute(), 2);
    out.push(':');
    push_digits(&mut out, time.second(), 2);
    out.push('Z');
    out
}

/// Formats a time's date as Salesforce's date fields want it (`%Y-%m-%d`).
fn salesforce_date(time: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(10);
    if !push_date(&mut out, time) {
        return time.format("%Y-%m-%d").to_string();
    }
    out
}

/// Writes `YYYY-MM-DD`; false (nothing written) for a year outside 0 to 9999, which the format
/// strings write otherwise.
fn push_date(out: &mut String, time: DateTime<Utc>) -> bool {
    use chrono::Datelike as _;
    let Ok(year) = u32::try_from(time.year()) else {
        return false;
    };
    if year > 9999 {
        return false;
    }
    push_digits(out, year, 4);
    out.push('-');
    push_digits(out, time.month(), 2);
    out.push('-');
    push_digits(out, time.day(), 2);
    true
}

/// Writes the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (value / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Docebo's usual `YYYY-MM-DD HH:MM:SS`, read without a format string (every date of every
/// record goes through here); anything else is left to chrono's parsers.
fn parse_plain_time(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    if bytes.len() != 19 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b' ' {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        bytes[from..to].iter().try_fold(0u32, |acc, byte| {
            byte.is_ascii_digit()
                .then(|| acc * 10 + u32::from(byte - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(0, 4)?).ok()?,
        number(5, 7)?,
        number(8, 10)?,
    )?;
    let time = date.and_hms_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?)?;
    Some(time.and_utc())
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        other => Some(other.to_string()),
    }
}

/// Appends a value's text as [`text_of`] gives it (nothing for null), without a copy of it.
fn push_text(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::String(text) => out.push_str(text),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => {
            // Writing into a string cannot fail.
            let _ = std::fmt::Write::write_fmt(out, format_args!("{number}"));
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Renders a template: `{field}` placeholders take the item's values (missing ones: empty).
fn render(template: &str, item: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let field = &after[..close];
                if let Some(value) = item.get(field) {
                    push_text(&mut out, value);
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Renders a key template from numeric ids only, so that `"12"` and `12` give the same key.
fn render_key(template: &str, item: &Value) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        out.push_str(itoa::Buffer::new().format(id_of(item, &after[..close])?));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A best-effort key for a record whose key fields are unreadable (for the log).
fn raw_key(template: &str, item: &Value) -> String {
    let rendered = render(template, item);
    if rendered.trim_matches('-').is_empty() {
        "unknown".to_string()
    } else {
        rendered
    }
}

fn round_number(value: f64, precision: u32, scale: u32) -> Result<Value, String> {
    if !value.is_finite() {
        return Err(format!("{value} is not a number"));
    }
    let factor = 10f64.powi(scale as i32);
    let rounded = (value * factor).round() / factor;
    let integer_digits = precision.saturating_sub(scale);
    if rounded.abs() >= 10f64.powi(integer_digits as i32) {
        return Err(format!(
            "{value} has more than {integer_digits} integer digits"
        ));
    }
    if scale == 0 {
        return Ok(Value::from(rounded as i64));
    }
    serde_json::Number::from_f64(rounded)
        .map(Value::Number)
        .ok_or_else(|| format!("{value} is not a number"))
}

/// What one field mapping gives for an item.
enum Converted {
    /// A value, checked against `required`.
    Value(Value),
    /// A value set as it is (a lookup by external id, or an empty lookup by value).
    Set(FieldValue),
    /// A lookup by value still to resolve.
    Pending(PendingMatch),
}

/// Why a field's value does not fit: a stable code and the reason (the field's name is added).
type Misfit = (&'static str, String);

impl FieldMapping {
    /// The value this field's source gives for an item: the constant, the additional field's
    /// value, or the Docebo field's (null when the item has none).
    fn source_of<'a>(&'a self, item: &'a Value) -> &'a Value {
        if let Some(constant) = &self.constant {
            return constant;
        }
        if let Some(name) = &self.additional_field {
            return additional_field(item, name).unwrap_or(&Value::Null);
        }
        self.from
            .as_deref()
            .and_then(|from| item.get(from))
            .unwrap_or(&Value::Null)
    }

    /// Reads and validates this field's value from an item.
    fn convert(&self, item: &Value) -> Result<Converted, Misfit> {
        let source = self.source_of(item);
        let value = match &self.kind {
            FieldKind::Match {
                object,
                match_field,
            } => {
                return Ok(
                    match text_of(source).filter(|text| !text.trim().is_empty()) {
                        Some(text) => Converted::Pending(PendingMatch {
                            field: self.field.clone(),
                            object: object.clone(),
                            match_field: match_field.clone(),
                            value: text.trim().to_lowercase(),
                        }),
                        None => Converted::Set(FieldValue::Plain(Value::Null)),
                    },
                );
            }
            FieldKind::Lookup { external_id, .. } => {
                match self.from.as_deref().and_then(|from| id_of(item, from)) {
                    Some(id) => {
                        return Ok(Converted::Set(FieldValue::Lookup {
                            external_id: external_id.clone(),
                            key: itoa::Buffer::new().format(id).to_string(),
                        }));
                    }
                    None if source.is_null() => Value::Null,
                    None => return Err(("INVALID_KEY", format!("{source} is not a numeric id"))),
                }
            }
            FieldKind::Clear => Value::Null,
            FieldKind::Text {
                length,
                truncate: false,
            } => text_value(source, *length, false)?,
            FieldKind::Text {
                length,
                truncate: true,
            } => text_value(&cut(source, *length), *length, false)?,
            FieldKind::Email { length } => text_value(source, *length, true)?,
            FieldKind::Checkbox { true_values } => checkbox_value(source, true_values),
            FieldKind::Datetime => match parse_docebo_time(source) {
                Ok(time) => time.map_or(Value::Null, |time| Value::String(salesforce_time(time))),
                Err(reason) => return Err(("INVALID_DATE", reason)),
            },
            FieldKind::Date => match parse_docebo_time(source) {
                Ok(time) => time.map_or(Value::Null, |time| Value::String(salesforce_date(time))),
                Err(reason) => return Err(("INVALID_DATE", reason)),
            },
            FieldKind::Number { precision, scale } => number_value(source, *precision, *scale)?,
            FieldKind::Picklist { values } => picklist_value(source, values)?,
        };
        Ok(Converted::Value(value))
    }
}

/// Text cut to `length` characters (other values as they are).
fn cut(source: &Value, length: usize) -> Value {
    match source {
        Value::String(text) if text.chars().count() > length => {
            Value::String(text.chars().take(length).collect())
        }
        _ => source.clone(),
    }
}

/// A text or email value of at most `length` characters (empty text is null).
fn text_value(source: &Value, length: usize, email: bool) -> Result<Value, Misfit> {
    let Some(text) = text_of(source).filter(|text| !text.is_empty()) else {
        return Ok(Value::Null);
    };
    let count = text.chars().count();
    if count > length {
        return Err((
            "STRING_TOO_LONG",
            format!("{count} characters, at most {length} fit"),
        ));
    }
    if email && !text.contains('@') {
        return Err((
            "INVALID_EMAIL_ADDRESS",
            format!("{text:?} is not an email address"),
        ));
    }
    Ok(Value::String(text))
}

/// A checkbox: JSON booleans, or text among `true_values`; null is false.
fn checkbox_value(source: &Value, true_values: &[String]) -> Value {
    match source {
        Value::Bool(flag) => Value::Bool(*flag),
        Value::Null => Value::Bool(false),
        other => {
            let text = text_of(other).unwrap_or_default().to_ascii_lowercase();
            Value::Bool(
                true_values
                    .iter()
                    .any(|value| value.eq_ignore_ascii_case(&text)),
            )
        }
    }
}

/// A number (JSON or text) rounded to `scale` decimals within `precision` digits.
fn number_value(source: &Value, precision: u32, scale: u32) -> Result<Value, Misfit> {
    let number = match source {
        Value::Null => None,
        Value::Number(number) => number.as_f64(),
        Value::String(text) if text.trim().is_empty() => None,
        Value::String(text) => match text.trim().parse::<f64>() {
            Ok(number) => Some(number),
            Err(_) => return Err(("INVALID_NUMBER", format!("{text:?} is not a number"))),
        },
        other => return Err(("INVALID_NUMBER", format!("{other} is not a number"))),
    };
    match number {
        None => Ok(Value::Null),
        Some(number) => round_number(number, precision, scale)
            .map_err(|reason| ("NUMBER_OUTSIDE_VALID_RANGE", reason)),
    }
}

/// A restricted picklist's Salesforce value for a Docebo value (compared lowercased).
fn picklist_value(source: &Value, values: &BTreeMap<String, String>) -> Result<Value, Misfit> {
    let Some(text) = text_of(source) else {
        return Ok(Value::Null);
    };
    match values.get(&text.trim().to_ascii_lowercase()) {
        Some(value) => Ok(Value::String(value.clone())),
        None => Err((
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            format!("unknown value {text:?}"),
        )),
    }
}

impl ObjectMapping {
    /// Maps a Docebo item (with any `_` context fields the sync added) to a record.
    pub fn map(&self, item: &Value) -> Result<MappedRecord, RecordError> {
        self.mapper().map(item)
    }

    /// A mapper of many items: where each field goes in a record is worked out once.
    pub fn mapper(&self) -> Mapper<'_> {
        let mut names: Vec<Arc<str>> = vec![self.external_id.clone(), NAME_FIELD.clone()];
        names.extend(self.fields.iter().map(|field| field.field.clone()));
        names.sort();
        names.dedup();
        let slot = |name: &str| {
            names
                .binary_search_by(|known| (**known).cmp(name))
                .unwrap_or_default()
        };
        Mapper {
            external_id: slot(&self.external_id),
            name: slot(&NAME_FIELD),
            fields: self.fields.iter().map(|field| slot(&field.field)).collect(),
            names,
            mapping: self,
        }
    }

    /// Sets a record's resolved lookups by value and hashes it again.
    pub fn resolve(
        &self,
        record: &mut MappedRecord,
        found: impl Fn(&PendingMatch) -> Option<String>,
    ) {
        for pending in std::mem::take(&mut record.matches) {
            let value = found(&pending).map_or(Value::Null, Value::String);
            record.fields.insert_plain(pending.field.clone(), value);
        }
        record.hash = hash_fields(&self.object, &record.fields);
    }

    /// The field upserts match on: `upsert_by`, else the external id.
    pub fn upsert_key(&self) -> &Arc<str> {
        self.upsert_by.as_ref().unwrap_or(&self.external_id)
    }

    /// The change time of a raw item (for the timeframe test), when it has one.
    pub fn updated_at_of(&self, item: &Value) -> Option<DateTime<Utc>> {
        self.updated_at
            .iter()
            .filter_map(|marker| item.get(marker))
            .filter_map(|value| parse_docebo_time(value).ok().flatten())
            .max()
    }

    /// The record that marks an enrollment unenrolled.
    pub fn unenrolled_record(&self, key: &str, at: DateTime<Utc>) -> Option<Fields> {
        let unenroll = self.unenroll.as_ref()?;
        let mut fields = Fields::default();
        fields.insert_plain(self.external_id.clone(), Value::String(key.to_string()));
        fields.insert_plain(
            Arc::from(unenroll.status_field.as_str()),
            Value::String(unenroll.status_value.clone()),
        );
        fields.insert_plain(
            Arc::from(unenroll.time_field.as_str()),
            Value::String(salesforce_time(at)),
        );
        Some(fields)
    }
}

/// Maps items of one mapping to records. A record's fields are kept in name order: each field
/// mapping's place among the names a record may carry is worked out once
/// ([`ObjectMapping::mapper`]), not by a sorted insertion per field of every record.
pub struct Mapper<'a> {
    mapping: &'a ObjectMapping,
    /// The names a record may carry, sorted and distinct.
    names: Vec<Arc<str>>,
    /// The place of the external id among them.
    external_id: usize,
    /// The place of `Name`.
    name: usize,
    /// The place of each field mapping's field.
    fields: Vec<usize>,
}

impl Mapper<'_> {
    /// Maps a Docebo item (with any `_` context fields the sync added) to a record.
    pub fn map(&self, item: &Value) -> Result<MappedRecord, RecordError> {
        let mapping = self.mapping;
        let Some(key) = render_key(&mapping.key, item) else {
            return Err(RecordError {
                key: raw_key(&mapping.key, item),
                code: "INVALID_KEY".into(),
                message: format!("the item has no numeric key ({})", mapping.key),
            });
        };
        // Each name's value; a later field mapping of the same name wins.
        let mut cells: Vec<Option<FieldValue>> = vec![None; self.names.len()];
        cells[self.external_id] = Some(FieldValue::Plain(Value::String(key.clone())));
        if !mapping.name.is_empty() {
            cells[self.name] = Some(FieldValue::Plain(Value::String(record_name(
                &mapping.name,
                item,
                &key,
            ))));
        }
        let mut matches = Vec::new();
        for (field, &slot) in mapping.fields.iter().zip(&self.fields) {
            let converted = field.convert(item).map_err(|(code, message)| RecordError {
                key: key.clone(),
                code: code.to_string(),
                message: format!("{}: {message}", field.field),
            })?;
            cells[slot] = match converted {
                Converted::Pending(pending) => {
                    matches.push(pending);
                    continue;
                }
                Converted::Set(value) => Some(value),
                Converted::Value(value) if field.required && value.is_null() => {
                    return Err(RecordError {
                        key,
                        code: "REQUIRED_FIELD_MISSING".into(),
                        message: format!("{}: a value is required", field.field),
                    });
                }
                Converted::Value(value) => Some(FieldValue::Plain(value)),
            };
        }
        let fields = Fields(
            cells
                .into_iter()
                .zip(&self.names)
                .filter_map(|(cell, name)| Some((name.clone(), cell?)))
                .collect(),
        );
        Ok(MappedRecord {
            hash: hash_fields(&mapping.object, &fields),
            updated_at: mapping.updated_at_of(item),
            key,
            fields,
            matches,
        })
    }
}

/// A record's `Name`: the first template that renders to a name (not empty, no dangling `/`),
/// else the key; at most 80 characters (it is our own label, not Docebo data: shortening it
/// loses nothing).
fn record_name(templates: &[String], item: &Value, key: &str) -> String {
    for template in templates {
        let rendered = render(template, item);
        let name = rendered.trim();
        if !name.is_empty() && !name.starts_with('/') && !name.ends_with('/') {
            return first_chars(name, 80);
        }
    }
    first_chars(key, 80)
}

/// The first `count` characters of a text.
fn first_chars(text: &str, count: usize) -> String {
    match text.char_indices().nth(count) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

impl ObjectMapping {
    /// Checks the org against the mapping (`describe` is Salesforce's describe of the object) and
    /// returns the mapping tightened to the org: text lengths, number digits and picklist values
    /// the org is stricter about, so that a record that cannot fit fails before it is sent. A
    /// missing object or field is an error: nothing could be written.
    /// Problems are named as SetMapping names them (`entities.users.fields[3]`, the entity's
    /// path in the mapping document).
    pub fn fit_to_org(&self, entity: Entity, describe: &Value) -> Result<ObjectMapping, String> {
        let describes = check::Describes::from([(self.object.clone(), Some(describe.clone()))]);
        let problems = self.org_problems(&document::entity_path(entity), &describes, false);
        if !problems.is_empty() {
            let reasons: Vec<String> = problems.iter().map(Problem::to_string).collect();
            return Err(format!(
                "the org does not fit the mapping: {}",
                reasons.join("; ")
            ));
        }
        let fields: Vec<&Value> = describe
            .get("fields")
            .and_then(Value::as_array)
            .map(|fields| fields.iter().collect())
            .unwrap_or_default();
        let find = |key: &str, name: &str| {
            fields
                .iter()
                .copied()
                .find(|field| field.get(key).and_then(Value::as_str) == Some(name))
        };
        let mut fitted = self.clone();
        // Lookups by value are optional: an org without the field (or the object) goes without.
        fitted.fields.retain(|mapped| match &mapped.kind {
            FieldKind::Match { .. } => find("name", &mapped.field).is_some(),
            _ => true,
        });
        for mapped in &mut fitted.fields {
            let key = match mapped.kind {
                FieldKind::Lookup { .. } => "relationshipName",
                _ => "name",
            };
            if let Some(org_field) = find(key, &mapped.field) {
                tighten(&mut mapped.kind, org_field);
            }
        }
        Ok(fitted)
    }
}

/// Tightens a field's constraints to the org's field (`org_field`, from the describe): text
/// lengths, number digits, the active values of a restricted picklist.
fn tighten(kind: &mut FieldKind, org_field: &Value) {
    match kind {
        FieldKind::Text { length, .. } | FieldKind::Email { length } => {
            let org_length = org_field
                .get("length")
                .and_then(Value::as_u64)
                .filter(|length| *length > 0);
            if let Some(org) = org_length {
                *length = (*length).min(org as usize);
            }
        }
        FieldKind::Number { precision, scale } => {
            let org_precision = org_field
                .get("precision")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32;
            if org_precision > 0 {
                *precision = (*precision).min(org_precision);
                let org_scale = org_field.get("scale").and_then(Value::as_u64).unwrap_or(0) as u32;
                *scale = (*scale).min(org_scale);
            }
        }
        FieldKind::Picklist { values } => {
            let restricted = org_field
                .get("restrictedPicklist")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let org_values: Vec<&str> = org_field
                .get("picklistValues")
                .and_then(Value::as_array)
                .map(|values| {
                    values
                        .iter()
                        .filter(|value| {
                            value.get("active").and_then(Value::as_bool).unwrap_or(true)
                        })
                        .filter_map(|value| value.get("value").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if restricted && !org_values.is_empty() {
                values.retain(|_, value| org_values.contains(&value.as_str()));
            }
        }
        _ => {}
    }
}

/// Hashes the values with the keys in a fixed order, whatever the map's iteration order: the
/// object, then `{key:value,...}` with keys sorted and scalars in their compact JSON form. The
/// bytes are written into one buffer and hashed at once (not fed piece by piece).
fn hash_fields(object: &str, fields: &Fields) -> Vec<u8> {
    fn feed_map(bytes: &mut Vec<u8>, map: &Map<String, Value>) {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        // Sorted already unless serde_json keeps insertion order; then this sorts.
        if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
            entries.sort_by(|a, b| a.0.cmp(b.0));
        }
        bytes.push(b'{');
        for (key, value) in entries {
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(b':');
            feed(bytes, value);
            bytes.push(b',');
        }
        bytes.push(b'}');
    }
    fn feed(bytes: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Object(map) => feed_map(bytes, map),
            // Writing into a vector cannot fail.
            other => serde_json::to_writer(&mut *bytes, other).unwrap_or_default(),
        }
    }
    let mut bytes = Vec::with_capacity(512);
    bytes.extend_from_slice(object.as_bytes());
    // Fields are kept in name order: the bytes are those of the sorted JSON object.
    bytes.push(b'{');
    for (name, value) in fields.iter() {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b':');
        match value {
            FieldValue::Plain(value) => feed(&mut bytes, value),
            FieldValue::Lookup { external_id, key } => {
                bytes.push(b'{');
                bytes.extend_from_slice(external_id.as_bytes());
                bytes.push(b':');
                serde_json::to_writer(&mut bytes, key).unwrap_or_default();
                bytes.extend_from_slice(b",}");
            }
        }
        bytes.push(b',');
    }
    bytes.push(b'}');
    sha2::Sha256::digest(&bytes).to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn mapping() -> Mapping {
        Mapping::default_mapping().unwrap()
    }

    #[test]
    fn reads_and_writes_times_as_the_format_strings_do() {
        for text in [
            "2024-02-29 23:59:59",
            "1999-01-01 00:00:00",
            "2031-12-31 12:30:05",
        ] {
            let slow = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc();
            assert_eq!(parse_plain_time(text), Some(slow));
            assert_eq!(
                salesforce_time(slow),
                slow.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            );
        }
        for bad in [
            "2023-02-29 10:00:00",
            "2024-13-01 00:00:00",
            "2024-01-01T00:00:00",
        ] {
            assert_eq!(parse_plain_time(bad), None, "{bad}");
        }
        assert!(
            parse_docebo_time(&Value::from("2024-01-01T00:00:00Z"))
                .unwrap()
                .is_some()
        );
        assert!(parse_docebo_time(&Value::from("2023-02-29 10:00:00")).is_err());
    }

    #[test]
    fn hashes_as_the_first_version_did() {
        // The ledger keeps hashes across versions: a change here rewrites every record once.
        let mut fields = Map::new();
        fields.insert("B__c".into(), json!("x\"y"));
        fields.insert("A__c".into(), json!(1.5));
        fields.insert("C__r".into(), json!({"Ext__c": "7", "Alt__c": null}));
        fields.insert("D__r".into(), json!({"Ext__c": "9"}));
        let expected = {
            let mut hasher = sha2::Sha256::new();
            hasher.update(b"Obj__c");
            hasher.update(
                br#"{A__c:1.5,B__c:"x\"y",C__r:{Alt__c:null,Ext__c:"7",},D__r:{Ext__c:"9",},}"#,
            );
            hasher.finalize().to_vec()
        };
        let fields = Fields::from_map(&fields);
        assert!(matches!(
            fields.get("D__r"),
            Some(FieldValue::Lookup { .. })
        ));
        assert_eq!(hash_fields("Obj__c", &fields), expected);
        // JSON and back: what job_deferred keeps, lookups nested as Salesforce takes them.
        let value = serde_json::to_value(&fields).unwrap();
        assert_eq!(value["D__r"], json!({"Ext__c": "9"}));
        assert_eq!(value["C__r"], json!({"Ext__c": "7", "Alt__c": null}));
        assert_eq!(serde_json::from_value::<Fields>(value).unwrap(), fields);
    }

    #[test]
    fn maps_a_course_enrollment_as_the_spec_shows() {
        let item = json!({"user_id": 12301, "username": "jane@acme.example", "course_id": "55",
            "course_code": "SALES-101", "course_type": "elearning", "enrollment_level": "student",
            "enrollment_status": "completed", "enrollment_created_at": "2024-03-13 14:58:26",
            "enrollment_date_last_updated": "2024-03-20 09:01:02",
            "enrollment_completion_date": "2024-03-20 09:01:02", "enrollment_score": 87,
            "enrollment_time_spent": 3600, "enrollment_validity_begin_date": null,
            "enrollment_validity_end_date": "0000-00-00 00:00:00"});
        let record = mapping()
            .entity(Entity::CourseEnrollments)
            .unwrap()
            .map(&item)
            .unwrap();
        assert_eq!(record.key, "12301-55");
        assert_eq!(
            record.fields.to_map()["Enrollment_Key__c"],
            json!("12301-55")
        );
        assert_eq!(
            record.fields.to_map()["Docebo_User__r"],
            json!({"Docebo_User_Id__c": "12301"})
        );
        assert_eq!(
            record.fields.to_map()["Docebo_Course__r"],
            json!({"Docebo_Course_Id__c": "55"})
        );
        assert_eq!(record.fields.to_map()["Status__c"], json!("Completed"));
        assert_eq!(
            record.fields.to_map()["Completed_At__c"],
            json!("2024-03-20T09:01:02Z")
        );
        assert_eq!(record.fields.to_map()["Valid_To__c"], Value::Null);
        assert_eq!(record.fields.to_map()["Score__c"], json!(87.0));
        assert_eq!(record.fields.to_map()["Time_Spent_Seconds__c"], json!(3600));
        assert_eq!(
            record.fields.to_map()["Name"],
            json!("jane@acme.example / SALES-101")
        );
        assert_eq!(
            record.updated_at,
            Some(
                NaiveDateTime::parse_from_str("2024-03-20 09:01:02", "%Y-%m-%d %H:%M:%S")
                    .unwrap()
                    .and_utc()
            )
        );
    }

    #[test]
    fn fails_records_that_do_not_fit_with_a_reason() {
        let users = mapping();
        let users = users.entity(Entity::Users).unwrap();
        let long = json!({"user_id": "10007", "first_name": "x".repeat(81), "last_name": "y", "username": "u"});
        let error = users.map(&long).unwrap_err();
        assert_eq!(error.key, "10007");
        assert_eq!(error.code, "STRING_TOO_LONG");
        assert!(error.message.contains("First_Name__c"), "{}", error.message);

        let mapping = mapping();
        let enrollments = mapping.entity(Entity::CourseEnrollments).unwrap();
        let unknown = json!({"user_id": 1, "course_id": 2, "enrollment_status": "pending_review"});
        let error = enrollments.map(&unknown).unwrap_err();
        assert_eq!(error.key, "1-2");
        assert_eq!(error.code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");

        let malformed = json!({"user_id": "abc", "enrollment_status": "completed"});
        assert_eq!(enrollments.map(&malformed).unwrap_err().code, "INVALID_KEY");
    }

    #[test]
    fn the_hash_depends_on_values_only() {
        let mapping = mapping();
        let users = mapping.entity(Entity::Users).unwrap();
        let a = json!({"user_id": "1", "username": "a", "first_name": "A", "status": "1"});
        let b = json!({"status": "1", "first_name": "A", "username": "a", "user_id": 1, "lang_code": "x"});
        assert_eq!(users.map(&a).unwrap().hash, users.map(&b).unwrap().hash);
        let c = json!({"user_id": "1", "username": "a", "first_name": "B", "status": "1"});
        assert_ne!(users.map(&a).unwrap().hash, users.map(&c).unwrap().hash);
    }

    #[test]
    fn the_org_tightens_the_mapping_and_missing_fields_are_refused() {
        let mapping = mapping();
        let courses = mapping.entity(Entity::Courses).unwrap();
        let mut fields = vec![
            json!({"name": "Docebo_Course_Id__c", "type": "string", "length": 50, "externalId": true}),
            json!({"name": "Name", "type": "string", "length": 80}),
        ];
        for field in &courses.fields {
            let kind = check::types_taken(&field.kind)[0];
            fields.push(json!({"name": field.field, "type": kind, "length": 0, "precision": 0}));
        }
        fields.retain(|field| field["name"] != "Code__c");
        fields.push(json!({"name": "Code__c", "type": "string", "length": 5}));
        fields.retain(|field| field["name"] != "Type__c");
        fields.push(
            json!({"name": "Type__c", "type": "picklist", "restrictedPicklist": true,
            "picklistValues": [{"value": "Elearning", "active": true}]}),
        );
        let fitted = courses
            .fit_to_org(Entity::Courses, &json!({ "fields": fields }))
            .unwrap();
        let course =
            json!({"id_course": 1, "name": "x", "code": "ABCDEF", "course_type": "elearning"});
        assert_eq!(fitted.map(&course).unwrap_err().code, "STRING_TOO_LONG");
        let webinar = json!({"id_course": 1, "name": "x", "code": "AB", "course_type": "webinar"});
        assert_eq!(
            fitted.map(&webinar).unwrap_err().code,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        );
        fields.retain(|field| field["name"] != "Language__c");
        let error = courses
            .fit_to_org(Entity::Courses, &json!({ "fields": fields }))
            .unwrap_err();
        assert!(error.contains("Language__c"), "{error}");
        // Every problem at once: a deleted field, a field of another type, an external id
        // that is not one.
        for field in &mut fields {
            if field["name"] == "Credits__c" {
                field["type"] = json!("boolean");
            }
            if field["name"] == "Docebo_Course_Id__c" {
                field["externalId"] = json!(false);
            }
        }
        let error = courses
            .fit_to_org(Entity::Courses, &json!({ "fields": fields }))
            .unwrap_err();
        for expected in [
            "entities.courses.fields[2]: the org has no field Language__c on Docebo_Course__c",
            "entities.courses.fields[3]: the field is of type boolean",
            "entities.courses.external_id: Docebo_Course_Id__c on Docebo_Course__c is not an external id",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
    }

    #[test]
    fn every_job_kind_s_description_agrees_with_the_default_mapping() {
        let mapping = mapping();
        for kind in learnsync_store::model::JobKind::ALL {
            let spec = kind.spec();
            let object = mapping.entity(spec.entity).unwrap();
            assert_eq!(object.key, spec.key, "{kind}");
            assert_eq!(object.area, spec.area, "{kind}");
            assert_eq!(object.unenroll.is_some(), spec.unenrolls, "{kind}");
        }
    }

    #[test]
    fn reads_a_course_category_in_any_shape() {
        assert_eq!(
            course_category(&json!({"category": {"id": 7, "name": "x"}})),
            Some(7)
        );
        assert_eq!(course_category(&json!({"category": "8"})), Some(8));
        assert_eq!(course_category(&json!({"id_category": 9})), Some(9));
        assert_eq!(course_category(&json!({"category_id": "10"})), Some(10));
        assert_eq!(course_category(&json!({"name": "no category"})), None);
    }

    #[test]
    fn numbers_are_rounded_and_range_checked() {
        assert_eq!(round_number(1.005, 8, 2).unwrap(), json!(1.0));
        assert_eq!(round_number(2.5, 6, 2).unwrap(), json!(2.5));
        assert!(round_number(12345.0, 6, 2).is_err());
        assert_eq!(round_number(3600.4, 12, 0).unwrap(), json!(3600));
    }
}

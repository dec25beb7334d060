//! The org schema as data (objects, fields, types, lengths, picklists, required fields, external ids,
//! lookups) and the validation of one field value against it.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default org schema (the seven objects of learnsync's data model, plus `Contact` and `Lead`).
pub const DEFAULT_SCHEMA_JSON: &str = include_str!("../../schema/default.json");

/// An org schema: the objects it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schema {
    /// Objects, in any order.
    pub objects: Vec<ObjectDef>,
}

impl Schema {
    /// Returns the default schema of learnsync's data model.
    pub fn default_org() -> Schema {
        // The file ships inside the crate and a unit test parses it, so this cannot fail at run time.
        serde_json::from_str(DEFAULT_SCHEMA_JSON).unwrap_or(Schema {
            objects: Vec::new(),
        })
    }

    /// Checks the schema is usable (prefixes, lookups pointing at known objects, lengths set).
    pub fn validate(&self) -> Result<(), String> {
        for object in &self.objects {
            if object.key_prefix.len() != 3 {
                return Err(format!(
                    "{}: key_prefix must have 3 characters",
                    object.name
                ));
            }
            for field in &object.fields {
                if field.name.eq_ignore_ascii_case("Id") {
                    return Err(format!("{}: Id is implicit", object.name));
                }
                if field.kind == FieldType::Reference {
                    let target = field.reference_to.as_deref().unwrap_or("");
                    if !self
                        .objects
                        .iter()
                        .any(|o| o.name.eq_ignore_ascii_case(target))
                    {
                        return Err(format!(
                            "{}.{}: reference_to {target:?} is not an object of the schema",
                            object.name, field.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One sObject type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectDef {
    /// API name, e.g. `Docebo_User__c`.
    pub name: String,
    /// Human label.
    #[serde(default)]
    pub label: String,
    /// The 3-character id prefix of its records.
    pub key_prefix: String,
    /// Its fields, `Id` excluded (always present).
    pub fields: Vec<FieldDef>,
}

/// Field data types the simulator knows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Text(length).
    String,
    /// Email (length 80 unless set).
    Email,
    /// Checkbox.
    Boolean,
    /// DateTime.
    Datetime,
    /// Date.
    Date,
    /// Number(precision, scale).
    Double,
    /// Percent(precision, scale).
    Percent,
    /// Picklist (restricted unless `restricted: false`).
    Picklist,
    /// Lookup to `reference_to`.
    Reference,
}

fn yes() -> bool {
    true
}

/// One field of an object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldDef {
    /// API name, e.g. `Status__c`.
    pub name: String,
    /// Data type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Maximum characters of text fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// Total digits of number fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// Decimal digits of number fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// Whether a record must hold a value.
    #[serde(default)]
    pub required: bool,
    /// Whether upserts may match on it.
    #[serde(default)]
    pub external_id: bool,
    /// Whether upserts may match on it though it is no external id: a standard field with the
    /// `idLookup` property, such as a Contact's or a Lead's `Email`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub id_lookup: bool,
    /// Whether two records may not share a value.
    #[serde(default)]
    pub unique: bool,
    /// Picklist values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Whether a picklist refuses other values.
    #[serde(default = "yes")]
    pub restricted: bool,
    /// Object a lookup points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_to: Option<String>,
    /// Relationship name of a lookup, e.g. `Docebo_User__r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship_name: Option<String>,
}

impl FieldDef {
    /// Whether upserts may match on the field (an external id or an idLookup field).
    pub fn upsert_key(&self) -> bool {
        self.external_id || self.id_lookup
    }
}

/// A stored field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// No value.
    Null,
    /// Text, picklist, email, id, date (`2024-03-20`) and datetime (`2024-03-20T09:01:02.000+0000`).
    Str(std::sync::Arc<str>),
    /// Numbers and percents.
    Num(f64),
    /// Checkboxes.
    Bool(bool),
}

impl Val {
    /// Converts to JSON as the REST API returns it.
    pub fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Str(text) => Value::String(text.to_string()),
            Val::Num(number) => serde_json::Number::from_f64(*number)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Val::Bool(flag) => Value::Bool(*flag),
        }
    }

    /// Text form, as compared by SOQL and written to CSV.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Val::Null => None,
            Val::Str(text) => Some(text.to_string()),
            Val::Num(number) => Some(format_number(*number)),
            Val::Bool(flag) => Some(flag.to_string()),
        }
    }

    /// The value as an index key; cheap for text (the `Arc` is shared).
    pub fn key(&self) -> Option<std::sync::Arc<str>> {
        match self {
            Val::Str(text) => Some(text.clone()),
            Val::Null => None,
            other => other.as_text().map(std::sync::Arc::from),
        }
    }

    /// Whether the field holds no value.
    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }
}

fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        number.to_string()
    }
}

/// A per-record failure: Salesforce's `statusCode`, `message` and `fields`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordError {
    /// `statusCode`, e.g. `STRING_TOO_LONG`.
    #[serde(rename = "statusCode")]
    pub code: String,
    /// Human message.
    pub message: String,
    /// Fields involved.
    pub fields: Vec<String>,
}

impl RecordError {
    /// Builds an error from its status code, message and fields.
    pub fn new(code: &str, message: impl Into<String>, fields: Vec<String>) -> RecordError {
        RecordError {
            code: code.to_string(),
            message: message.into(),
            fields,
        }
    }

    /// The Bulk API `sf__Error` form: `CODE:message:fields --`.
    pub fn bulk_text(&self) -> String {
        if self.fields.is_empty() {
            format!("{}:{}:--", self.code, self.message)
        } else {
            format!(
                "{}:{}:{} --",
                self.code,
                self.message,
                self.fields.join(",")
            )
        }
    }
}

/// An input value before validation: JSON from REST, text from a CSV cell.
pub enum Input<'a> {
    /// A value of a REST request body.
    Json(&'a Value),
    /// A Bulk API CSV cell (never empty: empty cells leave fields unchanged).
    Text(&'a str),
}

fn type_error(field: &FieldDef, shown: &str) -> RecordError {
    RecordError::new(
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        format!("{}: value not of required type: {shown}", field.name),
        vec![field.name.clone()],
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|+0000|+00:00)` without chrono's formatter: bulk uploads carry
/// millions of datetimes in exactly this form.
fn parse_utc_datetime_fast(text: &str) -> Option<std::sync::Arc<str>> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes[range].iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    NaiveDate::from_ymd_opt(year as i32, month, day)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut out = [b'0'; 28];
    out[..19].copy_from_slice(&bytes[..19]);
    out[19] = b'.';
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        for (slot, digit) in out[20..23].iter_mut().zip(fraction[..end].bytes()) {
            *slot = digit;
        }
        rest = &fraction[end..];
    }
    if !matches!(rest, "Z" | "+0000" | "+00:00") {
        return None;
    }
    out[23..].copy_from_slice(b"+0000");
    // Only ASCII digits and separators were copied in.
    std::str::from_utf8(&out).ok().map(std::sync::Arc::from)
}

/// Parses the datetime forms Salesforce accepts and normalizes to its output form.
pub fn parse_datetime(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(fast) = parse_utc_datetime_fast(text) {
        return Some(fast.to_string());
    }
    let parsed: Option<DateTime<Utc>> = DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        });
    parsed.map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
}

/// Validates and converts one value for `field` (a JSON `null` or CSV `#N/A` gives `Val::Null`).
pub fn coerce(field: &FieldDef, input: Input<'_>) -> Result<Val, RecordError> {
    let text: std::borrow::Cow<'_, str> = match input {
        Input::Json(Value::Null) => return Ok(Val::Null),
        Input::Text("#N/A") => return Ok(Val::Null),
        Input::Json(Value::String(text)) => text.as_str().into(),
        Input::Json(Value::Number(number)) => match field.kind {
            FieldType::Double | FieldType::Percent => {
                return check_number(
                    field,
                    number.as_f64().unwrap_or(f64::NAN),
                    &number.to_string(),
                );
            }
            _ => number.to_string().into(),
        },
        Input::Json(Value::Bool(flag)) => match field.kind {
            FieldType::Boolean => return Ok(Val::Bool(*flag)),
            _ => flag.to_string().into(),
        },
        Input::Json(other) => return Err(type_error(field, &other.to_string())),
        Input::Text(text) => text.into(),
    };
    let text = text.as_ref();
    match field.kind {
        FieldType::String | FieldType::Reference => {
            let max = field.length.unwrap_or(255);
            // Bytes bound characters from above: count characters only when it can matter.
            if field.kind == FieldType::String && text.len() > max && text.chars().count() > max {
                return Err(RecordError::new(
                    "STRING_TOO_LONG",
                    format!(
                        "{}: data value too large: {text} (max length={max})",
                        field.name
                    ),
                    vec![field.name.clone()],
                ));
            }
            Ok(Val::Str(text.into()))
        }
        FieldType::Email => {
            let max = field.length.unwrap_or(80);
            let valid = text.chars().count() <= max
                && text
                    .split_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                && !text.contains(char::is_whitespace);
            if !valid {
                return Err(RecordError::new(
                    "INVALID_EMAIL_ADDRESS",
                    format!("{}: invalid email address: {text}", field.name),
                    vec![field.name.clone()],
                ));
            }
            Ok(Val::Str(text.into()))
        }
        FieldType::Picklist => {
            if field.restricted && !field.values.iter().any(|v| v == text) {
                return Err(RecordError::new(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!(
                        "{}: bad value for restricted picklist field: {text}",
                        field.name
                    ),
                    vec![field.name.clone()],
                ));
            }
            Ok(Val::Str(text.into()))
        }
        FieldType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Val::Bool(true)),
            "false" | "0" => Ok(Val::Bool(false)),
            _ => Err(type_error(field, text)),
        },
        FieldType::Double | FieldType::Percent => match text.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => check_number(field, number, text),
            _ => Err(type_error(field, text)),
        },
        FieldType::Datetime => parse_utc_datetime_fast(text.trim())
            .or_else(|| parse_datetime(text).map(std::sync::Arc::from))
            .map(Val::Str)
            .ok_or_else(|| type_error(field, text)),
        FieldType::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(|date| Val::Str(date.format("%Y-%m-%d").to_string().into()))
            .map_err(|_| type_error(field, text)),
    }
}

fn check_number(field: &FieldDef, number: f64, shown: &str) -> Result<Val, RecordError> {
    if !number.is_finite() {
        return Err(type_error(field, shown));
    }
    let precision = field.precision.unwrap_or(18);
    let scale = field.scale.unwrap_or(0);
    let integer_digits = precision.saturating_sub(scale);
    let factor = 10f64.powi(scale as i32);
    let rounded = (number * factor).round() / factor;
    if rounded.abs() >= 10f64.powi(integer_digits as i32) {
        return Err(RecordError::new(
            "NUMBER_OUTSIDE_VALID_RANGE",
            format!(
                "{}: value outside of valid range on numeric field: {shown}",
                field.name
            ),
            vec![field.name.clone()],
        ));
    }
    Ok(Val::Num(rounded))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_schema_parses_and_validates() {
        let schema: Schema = serde_json::from_str(DEFAULT_SCHEMA_JSON).expect("default schema");
        assert_eq!(schema.objects.len(), 9);
        schema.validate().expect("valid");
    }

    #[test]
    fn datetimes_normalize() {
        assert_eq!(
            parse_datetime("2024-03-20T09:01:02Z").as_deref(),
            Some("2024-03-20T09:01:02.000+0000")
        );
        assert_eq!(
            parse_datetime("2024-03-20T09:01:02.000+0000").as_deref(),
            Some("2024-03-20T09:01:02.000+0000")
        );
        assert!(parse_datetime("2024-03-20 09:01:02").is_none());
    }

    #[test]
    fn fast_datetime_path_agrees() {
        for text in [
            "2024-03-20T09:01:02Z",
            "2024-03-20T09:01:02.5Z",
            "2024-03-20T09:01:02.123456+00:00",
            "2024-02-29T23:59:59.000+0000",
        ] {
            assert_eq!(
                parse_utc_datetime_fast(text).map(|t| t.to_string()),
                DateTime::parse_from_rfc3339(&text.replace("+0000", "+00:00"))
                    .ok()
                    .map(|t| t
                        .with_timezone(&Utc)
                        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
                        .to_string()),
                "{text}"
            );
        }
        assert!(parse_utc_datetime_fast("2023-02-29T00:00:00Z").is_none());
        assert!(parse_utc_datetime_fast("2024-03-20T24:00:00Z").is_none());
        assert!(parse_utc_datetime_fast("2024-03-20T09:01:02+0100").is_none());
        assert_eq!(
            parse_datetime("2024-03-20T10:01:02+01:00").as_deref(),
            Some("2024-03-20T09:01:02.000+0000")
        );
    }

    #[test]
    fn bulk_error_text() {
        let error = RecordError::new(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [Name]",
            vec!["Name".into()],
        );
        assert_eq!(
            error.bulk_text(),
            "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
        );
    }
}

//! Reading back what Salesforce holds: the columns a Bulk API 2.0 query selects for an object
//! mapping, and a result row turned into [`Fields`] in the very form [`ObjectMapping::map`] gives
//! them, so that its hash compares with the ledger's (what learnsync last wrote).

use std::sync::Arc;

use serde_json::Value;

use super::salesforce_time;
use super::{FieldKind, FieldValue, Fields, NAME_FIELD, ObjectMapping, hash_fields, round_number};

/// Where a column's cell goes in the record's fields.
#[derive(Clone, Debug)]
enum Target {
    /// The external id.
    Key,
    /// `Name`.
    Name,
    /// A mapped field (index into the mapping's fields).
    Field(usize),
}

/// The query of an object's records as learnsync writes them: the SOQL and how to read a row.
#[derive(Clone, Debug)]
pub struct ReadBack {
    /// `SELECT <columns> FROM <object>`.
    pub soql: String,
    /// What each selected column is, in SELECT order.
    targets: Vec<Target>,
}

impl ObjectMapping {
    /// The Bulk API 2.0 query that reads back every field this mapping writes (lookups by
    /// external id through their relationship: `Rel__r.External_Id__c`).
    pub fn read_back(&self) -> ReadBack {
        let mut columns = vec![self.external_id.to_string()];
        let mut targets = vec![Target::Key];
        if !self.name.is_empty() {
            columns.push(NAME_FIELD.to_string());
            targets.push(Target::Name);
        }
        for (index, mapped) in self.fields.iter().enumerate() {
            if *mapped.field == *self.external_id || *mapped.field == **NAME_FIELD {
                continue;
            }
            columns.push(match &mapped.kind {
                FieldKind::Lookup { external_id, .. } => format!("{}.{external_id}", mapped.field),
                _ => mapped.field.to_string(),
            });
            targets.push(Target::Field(index));
        }
        ReadBack {
            soql: format!("SELECT {} FROM {}", columns.join(", "), self.object),
            targets,
        }
    }

    /// A result row (cells in SELECT order) as the record's key and fields, or `None` for a row
    /// without a key (a record learnsync did not write).
    pub fn fields_of_row(
        &self,
        read_back: &ReadBack,
        row: &csv::StringRecord,
    ) -> Option<(String, Fields)> {
        let mut key = None;
        let mut fields = Fields(Vec::with_capacity(read_back.targets.len()));
        for (target, cell) in read_back.targets.iter().zip(row.iter()) {
            match target {
                Target::Key => {
                    if cell.is_empty() {
                        return None;
                    }
                    key = Some(cell.to_string());
                    fields.insert_plain(self.external_id.clone(), Value::String(cell.to_string()));
                }
                Target::Name => fields.insert_plain(NAME_FIELD.clone(), text(cell)),
                Target::Field(index) => {
                    let mapped = &self.fields[*index];
                    fields.insert(mapped.field.clone(), value_of_cell(&mapped.kind, cell));
                }
            }
        }
        Some((key?, fields))
    }

    /// The hash of a record's fields, comparable with [`super::MappedRecord::hash`].
    pub fn hash_of(&self, fields: &Fields) -> Vec<u8> {
        hash_fields(&self.object, fields)
    }
}

/// Text: an empty cell is null (Salesforce keeps no empty strings, and the mapping writes none).
fn text(cell: &str) -> Value {
    if cell.is_empty() {
        Value::Null
    } else {
        Value::String(cell.to_string())
    }
}

/// A cell as the mapping would have written the field's value.
fn value_of_cell(kind: &FieldKind, cell: &str) -> FieldValue {
    let plain = match kind {
        FieldKind::Lookup { external_id, .. } if !cell.is_empty() => {
            return FieldValue::Lookup {
                external_id: Arc::clone(external_id),
                key: cell.to_string(),
            };
        }
        FieldKind::Checkbox { .. } => Value::Bool(cell.eq_ignore_ascii_case("true")),
        FieldKind::Datetime if !cell.is_empty() => parse_salesforce_time(cell)
            .map(|time| Value::String(salesforce_time(time)))
            .unwrap_or_else(|| text(cell)),
        FieldKind::Number { precision, scale } if !cell.is_empty() => cell
            .parse::<f64>()
            .ok()
            .and_then(|number| round_number(number, *precision, *scale).ok())
            .unwrap_or_else(|| text(cell)),
        _ => text(cell),
    };
    FieldValue::Plain(plain)
}

/// A Salesforce datetime (`2024-03-20T09:01:02.000Z`, or `+0000` as the REST API writes it).
fn parse_salesforce_time(cell: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(cell)
        .or_else(|_| chrono::DateTime::parse_from_str(cell, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|time| time.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use learnsync_store::model::Entity;
    use serde_json::json;

    /// What a mapped record and the row Salesforce gives back for it hash the same.
    #[test]
    fn a_row_read_back_hashes_as_the_record_written() {
        let mapping = Mapping::default_mapping().expect("mapping");
        let enrollments = mapping.entity(Entity::CourseEnrollments).expect("entity");
        let item = json!({"user_id": 7, "course_id": 12, "enrollment_status": "completed",
            "enrollment_created_at": "2024-03-20 09:01:02", "enrollment_completion_date": "2024-04-01 10:00:00",
            "enrollment_score": 87.5, "enrollment_time_spent": 3600, "course_name": "Safety"});
        let record = enrollments.map(&item).expect("maps");
        let read_back = enrollments.read_back();
        // The row as Salesforce's CSV gives it: the record's values, datetimes in the `.000Z`
        // form, nulls as empty cells, lookups by their parent's key.
        let cells: Vec<String> = read_back
            .targets
            .iter()
            .map(|target| {
                let value = match target {
                    Target::Key => return record.key.clone(),
                    Target::Name => record.fields.get("Name"),
                    Target::Field(index) => record.fields.get(&enrollments.fields[*index].field),
                };
                match value {
                    Some(FieldValue::Lookup { key, .. }) => key.clone(),
                    Some(FieldValue::Plain(Value::String(text)))
                        if text.ends_with('Z') && text.len() == 20 =>
                    {
                        format!("{}.000Z", &text[..19])
                    }
                    Some(FieldValue::Plain(Value::Null)) | None => String::new(),
                    Some(FieldValue::Plain(Value::String(text))) => text.clone(),
                    Some(FieldValue::Plain(other)) => other.to_string(),
                }
            })
            .collect();
        let row = csv::StringRecord::from(cells);
        let (key, fields) = enrollments.fields_of_row(&read_back, &row).expect("a key");
        assert_eq!(key, record.key);
        assert_eq!(fields, record.fields);
        assert_eq!(enrollments.hash_of(&fields), record.hash);
        assert!(read_back.soql.starts_with("SELECT "), "{}", read_back.soql);
        assert!(
            read_back.soql.contains("__r."),
            "lookups read through their relationship: {}",
            read_back.soql
        );
    }

    /// A value someone changed in Salesforce gives another hash.
    #[test]
    fn a_changed_cell_changes_the_hash() {
        let mapping = Mapping::default_mapping().expect("mapping");
        let users = mapping.entity(Entity::Users).expect("entity");
        let mut record = users
            .map(
                &json!({"user_id": 3, "username": "ann", "email": "ann@example.com",
                "first_name": "Ann", "last_name": "Lee", "status": "1"}),
            )
            .expect("maps");
        // The Contact lookup by email is resolved before writing (here: no Contact matches).
        users.resolve(&mut record, |_| None);
        let read_back = users.read_back();
        let row_of = |email: &str| {
            let cells: Vec<String> = read_back
                .targets
                .iter()
                .map(|target| match target {
                    Target::Key => record.key.clone(),
                    Target::Name => match record.fields.get("Name") {
                        Some(FieldValue::Plain(Value::String(name))) => name.clone(),
                        _ => String::new(),
                    },
                    Target::Field(index) => match record.fields.get(&users.fields[*index].field) {
                        Some(FieldValue::Plain(Value::String(_)))
                            if &*users.fields[*index].field == "Email__c" =>
                        {
                            email.to_string()
                        }
                        Some(FieldValue::Plain(Value::String(text))) => text.clone(),
                        Some(FieldValue::Plain(Value::Bool(flag))) => flag.to_string(),
                        Some(FieldValue::Plain(Value::Number(number))) => number.to_string(),
                        _ => String::new(),
                    },
                })
                .collect();
            csv::StringRecord::from(cells)
        };
        let same = users
            .fields_of_row(&read_back, &row_of("ann@example.com"))
            .expect("key")
            .1;
        let edited = users
            .fields_of_row(&read_back, &row_of("someone@else.com"))
            .expect("key")
            .1;
        assert_eq!(users.hash_of(&same), record.hash);
        assert_ne!(users.hash_of(&edited), record.hash);
    }
}

//! A connection's mapping as a document: the JSON form of `mapping.json` that SetMapping stores
//! (versioned) and workers read at a job's start. A document may leave an entity out (it keeps the
//! default mapping's) and an entity's `key`, `area` and `updated_at` out (the job kinds fix them);
//! [`Mapping::read_document`] fills those in and names every problem the document has on its own,
//! before any org is asked.

use std::collections::BTreeMap;
use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{Entity, FieldKind, FieldMapping, InvalidMapping, Mapping, MappingFile, ObjectMapping};
use super::{NAME_FIELD, Problem};

/// The entity names a document may use, in `mapping.json`'s spelling.
fn entity_name(entity: Entity) -> String {
    serde_json::to_value(entity)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The path of an entity in a document (`entities.users`).
pub(super) fn entity_path(entity: Entity) -> String {
    format!("entities.{}", entity_name(entity))
}

impl Mapping {
    /// Reads a connection's stored mapping document (checked when it was set).
    pub fn from_document(document: &Value) -> Result<Mapping, InvalidMapping> {
        Mapping::read_document(document).map_err(|problems| {
            let reasons: Vec<String> = problems.iter().map(Problem::to_string).collect();
            InvalidMapping(reasons.join("; "))
        })
    }

    /// The mapping as a document (every entity, every field): what GetMapping answers.
    pub fn to_document(&self) -> Value {
        let file = MappingFile {
            entities: self.entities.clone(),
        };
        serde_json::to_value(&file).unwrap_or(Value::Null)
    }

    /// Reads a document, the defaults filled in, or every problem it has on its own.
    pub fn read_document(document: &Value) -> Result<Mapping, Vec<Problem>> {
        let defaults = Mapping::default_mapping()
            .map_err(|error| vec![Problem::new("entities", "", error.0)])?;
        let Some(given) = document.get("entities").and_then(Value::as_object) else {
            return Err(vec![Problem::new(
                "entities",
                "",
                "required: an object of entity mappings",
            )]);
        };
        let mut problems = Vec::new();
        let known: HashSet<String> = defaults
            .entities()
            .map(|(entity, _)| entity_name(entity))
            .collect();
        for name in given.keys().filter(|name| !known.contains(*name)) {
            let mut names: Vec<&String> = known.iter().collect();
            names.sort();
            problems.push(Problem::new(
                format!("entities.{name}"),
                "",
                format!("unknown entity: one of {names:?}"),
            ));
        }
        let mut entities = BTreeMap::new();
        for (entity, default) in defaults.entities() {
            let path = entity_path(entity);
            let Some(value) = given.get(&entity_name(entity)) else {
                entities.insert(entity, default.clone());
                continue;
            };
            match read_entity(value, default) {
                Ok(object) => {
                    problems.extend(object.problems(&path, default));
                    entities.insert(entity, object);
                }
                Err(reason) => problems.push(Problem::new(path, "", reason)),
            }
        }
        if problems.is_empty() {
            Ok(Mapping { entities })
        } else {
            Err(problems)
        }
    }
}

/// One entity's mapping, with what the job kind fixes taken from the default when left out.
fn read_entity(value: &Value, default: &ObjectMapping) -> Result<ObjectMapping, String> {
    let Some(given) = value.as_object() else {
        return Err("must be an object".into());
    };
    let mut filled: Map<String, Value> = given.clone();
    let default_value = serde_json::to_value(default).map_err(|error| error.to_string())?;
    for fixed in ["key", "area", "updated_at"] {
        if !filled.contains_key(fixed)
            && let Some(value) = default_value.get(fixed)
        {
            filled.insert(fixed.to_string(), value.clone());
        }
    }
    serde_json::from_value(Value::Object(filled)).map_err(|error| error.to_string())
}

impl ObjectMapping {
    /// What is wrong with an entity's mapping on its own (`path`: where it is in the document).
    fn problems(&self, path: &str, default: &ObjectMapping) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: String, reason: String| problems.push(Problem::new(at, "", reason));
        if self.key != default.key {
            problem(
                format!("{path}.key"),
                format!("fixed by the job kind: {:?}", default.key),
            );
        }
        if self.area != default.area {
            problem(
                format!("{path}.area"),
                format!("fixed by the job kind: {}", default.area.as_str()),
            );
        }
        if self.updated_at != default.updated_at {
            problem(
                format!("{path}.updated_at"),
                format!("fixed by the job kind: {:?}", default.updated_at),
            );
        }
        if !is_api_name(&self.object) {
            problem(
                format!("{path}.object"),
                "required: an object API name".into(),
            );
        }
        if !is_api_name(&self.external_id) {
            problem(
                format!("{path}.external_id"),
                "required: a field API name".into(),
            );
        }
        let users = default.area == learnsync_store::model::Area::Users;
        let mut seen = HashSet::new();
        for (index, field) in self.fields.iter().enumerate() {
            let at = format!("{path}.fields[{index}]");
            if !seen.insert(field.field.clone()) {
                problem(at.clone(), format!("{} is mapped twice", field.field));
            }
            if *field.field == *self.external_id
                || (*field.field == **NAME_FIELD && !self.name.is_empty())
            {
                problem(
                    at.clone(),
                    format!("{} is written by the mapping itself", field.field),
                );
            }
            if let Some(reason) = field.problem(users) {
                problem(at, reason);
            }
        }
        if let Some(upsert_by) = &self.upsert_by
            && !self
                .fields
                .iter()
                .any(|field| field.field == *upsert_by && field.required)
        {
            problem(
                format!("{path}.upsert_by"),
                format!("{upsert_by} must be a mapped field with required set"),
            );
        }
        if let Some(unenroll) = &self.unenroll
            && [
                &unenroll.status_field,
                &unenroll.status_value,
                &unenroll.time_field,
            ]
            .iter()
            .any(|text| text.is_empty())
        {
            problem(
                format!("{path}.unenroll"),
                "status_field, status_value and time_field are required".into(),
            );
        }
        problems
    }
}

impl FieldMapping {
    /// What is wrong with a field's mapping on its own.
    fn problem(&self, users: bool) -> Option<String> {
        if !is_api_name(&self.field) {
            return Some("field: required, a field API name".into());
        }
        let sources = usize::from(self.from.is_some())
            + usize::from(self.additional_field.is_some())
            + usize::from(self.constant.is_some());
        match &self.kind {
            FieldKind::Clear if sources > 0 => {
                return Some("a cleared field takes no source".into());
            }
            FieldKind::Clear => {}
            FieldKind::Lookup { .. } | FieldKind::Match { .. } if self.from.is_none() => {
                return Some("a lookup reads a docebo field (from), and nothing else".into());
            }
            FieldKind::Lookup { .. } | FieldKind::Match { .. } if sources > 1 => {
                return Some("a lookup reads a docebo field (from), and nothing else".into());
            }
            _ if sources != 1 => {
                return Some("exactly one source: from, additional_field or constant".into());
            }
            _ => {}
        }
        if self.additional_field.is_some() && !users {
            return Some("additional fields are read for users only".into());
        }
        match &self.kind {
            FieldKind::Text { length: 0, .. } | FieldKind::Email { length: 0 } => {
                Some("length must be at least 1".into())
            }
            FieldKind::Number { precision, scale } if *precision == 0 || scale > precision => {
                Some("precision must be at least 1 and at least the scale".into())
            }
            FieldKind::Picklist { values } if values.is_empty() => {
                Some("a picklist needs its value map (docebo value: salesforce value)".into())
            }
            FieldKind::Lookup {
                object,
                external_id,
            } if !is_api_name(object) || !is_api_name(external_id) => {
                Some("a lookup names its parent object and the parent's external id".into())
            }
            FieldKind::Match {
                object,
                match_field,
            } if !is_api_name(object) || !is_api_name(match_field) => {
                Some("a match names the object searched and its field".into())
            }
            _ => None,
        }
    }
}

/// A Salesforce API name: letters, digits and underscores, starting with a letter.
fn is_api_name(name: &str) -> bool {
    name.len() <= 80
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_mapping_reads_back_from_its_document() {
        let default = Mapping::default_mapping().expect("default");
        let read = Mapping::read_document(&default.to_document()).expect("reads");
        assert_eq!(read.to_document(), default.to_document());
        // An empty document is the default mapping.
        let empty = Mapping::read_document(&json!({"entities": {}})).expect("reads");
        assert_eq!(empty.to_document(), default.to_document());
    }

    #[test]
    fn every_problem_of_a_document_is_named() {
        let document = json!({"entities": {
            "user": {},
            "users": {"object": "Contact", "external_id": "Docebo_User_Id__c", "key": "{email}",
                "fields": [
                    {"field": "LastName", "type": "text", "length": 80},
                    {"field": "Region__c", "from": "x", "additional_field": "1", "type": "text", "length": 9},
                    {"field": "Active__c", "from": "status", "type": "picklist", "values": {}}
                ]},
            "courses": {"object": "Docebo_Course__c", "external_id": "Docebo_Course_Id__c",
                "fields": [{"field": "Region__c", "additional_field": "1", "type": "text", "length": 9}]}
        }});
        let problems = Mapping::read_document(&document).expect_err("problems");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "entities.user",
                "entities.users.key",
                "entities.users.fields[0]",
                "entities.users.fields[1]",
                "entities.users.fields[2]",
                "entities.courses.fields[0]",
            ],
            "{problems:?}"
        );
    }
}

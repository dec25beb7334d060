//! A `Mapping` message and its JSON document (the form of the worker's `mapping.json`, which
//! mapping files and the stored versions use), both ways: one conversion for the server and the
//! CLI.

use serde_json::{Map, Value, json};

use crate::v1::{FieldMapping, Mapping, ObjectMapping, Unenroll, field_mapping::Source};

/// The document of a mapping message (`version`, `create_time` and the output-only fields of
/// each object left out).
pub fn to_document(mapping: &Mapping) -> Value {
    let mut names: Vec<&String> = mapping.entities.keys().collect();
    names.sort();
    let entities: Map<String, Value> = names
        .into_iter()
        .map(|name| (name.clone(), object_document(&mapping.entities[name])))
        .collect();
    json!({ "entities": entities })
}

fn object_document(object: &ObjectMapping) -> Value {
    let mut out = Map::new();
    out.insert("object".into(), json!(object.object));
    out.insert("external_id".into(), json!(object.external_id));
    if !object.upsert_by.is_empty() {
        out.insert("upsert_by".into(), json!(object.upsert_by));
    }
    out.insert("name".into(), json!(object.name));
    let fields: Vec<Value> = object.fields.iter().map(field_document).collect();
    out.insert("fields".into(), Value::Array(fields));
    if let Some(unenroll) = &object.unenroll {
        out.insert(
            "unenroll".into(),
            json!({"status_field": unenroll.status_field, "status_value": unenroll.status_value,
                "time_field": unenroll.time_field}),
        );
    }
    Value::Object(out)
}

fn field_document(field: &FieldMapping) -> Value {
    let mut out = Map::new();
    out.insert("field".into(), json!(field.field));
    match &field.source {
        Some(Source::DoceboField(name)) => out.insert("from".into(), json!(name)),
        Some(Source::AdditionalField(name)) => out.insert("additional_field".into(), json!(name)),
        Some(Source::Constant(value)) => out.insert("constant".into(), json!(value)),
        None => None,
    };
    out.insert("type".into(), json!(field.r#type));
    if field.required {
        out.insert("required".into(), json!(true));
    }
    match field.r#type.as_str() {
        "text" | "email" => {
            out.insert("length".into(), json!(field.length));
            if field.truncate {
                out.insert("truncate".into(), json!(true));
            }
        }
        "checkbox" => {
            out.insert("true_values".into(), json!(field.true_values));
        }
        "number" => {
            out.insert("precision".into(), json!(field.precision));
            out.insert("scale".into(), json!(field.scale));
        }
        "picklist" => {
            let values: std::collections::BTreeMap<&String, &String> =
                field.values.iter().collect();
            out.insert("values".into(), json!(values));
        }
        "lookup" => {
            out.insert("object".into(), json!(field.lookup_object));
            out.insert("external_id".into(), json!(field.lookup_external_id));
        }
        "match" => {
            out.insert("object".into(), json!(field.lookup_object));
            out.insert("match_field".into(), json!(field.match_field));
        }
        _ => {}
    }
    Value::Object(out)
}

/// A mapping message from a document; `version` and `create_time` are left unset. Problems name
/// their place in the document.
pub fn from_document(document: &Value) -> Result<Mapping, String> {
    let entities = document
        .get("entities")
        .and_then(Value::as_object)
        .ok_or("entities: required, an object of entity mappings")?;
    let mut mapping = Mapping::default();
    for (name, object) in entities {
        let object = object_of(object).map_err(|reason| format!("entities.{name}{reason}"))?;
        mapping.entities.insert(name.clone(), object);
    }
    Ok(mapping)
}

fn text(value: &Value, key: &str) -> Result<String, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(Value::Bool(flag)) => Ok(flag.to_string()),
        Some(_) => Err(format!(".{key}: must be text")),
    }
}

fn texts(value: &Value, key: &str) -> Result<Vec<String>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| format!(".{key}: must be a list of text")),
        Some(_) => Err(format!(".{key}: must be a list of text")),
    }
}

fn number(value: &Value, key: &str) -> Result<u32, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(found) => found
            .as_u64()
            .and_then(|number| u32::try_from(number).ok())
            .ok_or_else(|| format!(".{key}: must be a whole number")),
    }
}

fn object_of(value: &Value) -> Result<ObjectMapping, String> {
    if !value.is_object() {
        return Err(": must be an object".into());
    }
    let fields = match value.get("fields") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(fields)) => fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                field_of(field).map_err(|reason| format!(".fields[{index}]{reason}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(".fields: must be a list".into()),
    };
    let unenroll = match value.get("unenroll") {
        None | Some(Value::Null) => None,
        Some(unenroll) => Some(Unenroll {
            status_field: text(unenroll, "status_field").map_err(|r| format!(".unenroll{r}"))?,
            status_value: text(unenroll, "status_value").map_err(|r| format!(".unenroll{r}"))?,
            time_field: text(unenroll, "time_field").map_err(|r| format!(".unenroll{r}"))?,
        }),
    };
    Ok(ObjectMapping {
        object: text(value, "object")?,
        external_id: text(value, "external_id")?,
        upsert_by: text(value, "upsert_by")?,
        name: texts(value, "name")?,
        fields,
        unenroll,
        ..ObjectMapping::default()
    })
}

fn field_of(value: &Value) -> Result<FieldMapping, String> {
    if !value.is_object() {
        return Err(": must be an object".into());
    }
    let mut sources = Vec::new();
    if value.get("from").is_some_and(|from| !from.is_null()) {
        sources.push(Source::DoceboField(text(value, "from")?));
    }
    if value
        .get("additional_field")
        .is_some_and(|from| !from.is_null())
    {
        sources.push(Source::AdditionalField(text(value, "additional_field")?));
    }
    if value.get("constant").is_some_and(|from| !from.is_null()) {
        sources.push(Source::Constant(text(value, "constant")?));
    }
    if sources.len() > 1 {
        return Err(": at most one source of from, additional_field and constant".into());
    }
    let values = match value.get("values") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
            .collect::<Option<_>>()
            .ok_or(".values: must map text to text")?,
        Some(_) => return Err(".values: must map text to text".into()),
    };
    let kind = text(value, "type")?;
    let (lookup_object, lookup_external_id, match_field) = match kind.as_str() {
        "lookup" | "match" => (
            text(value, "object")?,
            text(value, "external_id")?,
            text(value, "match_field")?,
        ),
        _ => Default::default(),
    };
    Ok(FieldMapping {
        field: text(value, "field")?,
        source: sources.pop(),
        r#type: kind,
        required: value
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        length: number(value, "length")?,
        truncate: value
            .get("truncate")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        precision: number(value, "precision")?,
        scale: number(value, "scale")?,
        true_values: texts(value, "true_values")?,
        values,
        lookup_object,
        lookup_external_id,
        match_field,
    })
}

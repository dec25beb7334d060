//! The org's records: per-object storage with id and external-id indexes, and the write engine shared
//! by sObject Collections and Bulk API 2.0 (validation, lookups by external id, allOrNone).

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::{FastMap, FastSet};

use serde_json::{Map, Value};

use super::schema::{FieldDef, FieldType, Input, ObjectDef, RecordError, Schema, Val, coerce};

/// A request-level error: HTTP status, `errorCode`, `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl RequestError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> RequestError {
        RequestError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// One stored record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub id: Arc<str>,
    pub vals: Vec<Val>,
}

/// The records of one object.
#[derive(Debug)]
pub struct ObjStore {
    pub def: ObjectDef,
    fields: HashMap<String, usize>,
    rels: HashMap<String, usize>,
    pub records: Vec<Option<Rec>>,
    pub by_id: FastMap<Arc<str>, usize>,
    /// Value -> slot, for external-id and unique fields.
    ext: Vec<Option<FastMap<Arc<str>, usize>>>,
    /// The recycle bin: soft-deleted records as they were when deleted (`queryAll` reads them).
    deleted: FastMap<Arc<str>, Rec>,
    pub live: usize,
}

impl ObjStore {
    fn new(def: ObjectDef) -> ObjStore {
        let fields = def
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.to_ascii_lowercase(), i))
            .collect();
        let rels = def
            .fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                f.relationship_name
                    .as_ref()
                    .map(|r| (r.to_ascii_lowercase(), i))
            })
            .collect();
        let ext = def
            .fields
            .iter()
            .map(|f| (f.upsert_key() || f.unique).then(FastMap::default))
            .collect();
        ObjStore {
            def,
            fields,
            rels,
            records: Vec::new(),
            by_id: FastMap::default(),
            ext,
            deleted: FastMap::default(),
            live: 0,
        }
    }

    /// Finds a field by API name, case-insensitively.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields.get(&name.to_ascii_lowercase()).copied()
    }

    /// Finds a lookup field by its relationship name (`Docebo_User__r`).
    pub fn relationship(&self, name: &str) -> Option<usize> {
        self.rels.get(&name.to_ascii_lowercase()).copied()
    }

    pub fn field_def(&self, index: usize) -> &FieldDef {
        &self.def.fields[index]
    }

    fn ext_lookup(&self, field: usize, value: &str) -> Option<usize> {
        self.ext.get(field)?.as_ref()?.get(value).copied()
    }

    pub fn get(&self, id: &str) -> Option<&Rec> {
        let slot = *self.by_id.get(id)?;
        self.records.get(slot)?.as_ref()
    }

    /// Iterates live records in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Rec> {
        self.records.iter().flatten()
    }

    /// Iterates the recycle bin (soft-deleted records), in no particular order.
    pub fn recycled(&self) -> impl Iterator<Item = &Rec> {
        self.deleted.values()
    }

    /// A record as JSON: `Id` plus every field.
    pub fn record_json(&self, record: &Rec) -> Value {
        let mut object = Map::with_capacity(record.vals.len() + 1);
        object.insert("Id".into(), Value::String(record.id.to_string()));
        for (field, value) in self.def.fields.iter().zip(&record.vals) {
            object.insert(field.name.clone(), value.to_json());
        }
        Value::Object(object)
    }
}

/// A lookup given by the parent's external id (`Docebo_User__r: {Docebo_User_Id__c: "1"}`).
#[derive(Debug, Clone)]
pub struct RefInput {
    pub field: usize,
    pub parent: usize,
    pub parent_field: usize,
    pub value: String,
}

/// One record to write, parsed but not yet checked against the org.
#[derive(Debug, Clone, Default)]
pub struct RowInput {
    pub id: Option<String>,
    pub sets: Vec<(usize, Val)>,
    pub refs: Vec<RefInput>,
    pub error: Option<RecordError>,
}

/// The write operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Insert,
    Update,
    Upsert(usize),
}

/// The outcome of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: Option<Arc<str>>,
    pub created: bool,
    pub error: Option<RecordError>,
}

impl Outcome {
    fn failed(id: Option<Arc<str>>, error: RecordError) -> Outcome {
        Outcome {
            id,
            created: false,
            error: Some(error),
        }
    }
}

/// Builds one row from CSV cells of an object: an empty cell leaves the field unchanged, `#N/A`
/// nulls it. It needs only the object's definition, so it runs outside the org lock.
pub fn parse_csv_row(
    def: &ObjectDef,
    picklists: &Picklists,
    columns: &[Column],
    cells: &csv::StringRecord,
) -> RowInput {
    let mut row = RowInput {
        sets: Vec::with_capacity(columns.len()),
        ..RowInput::default()
    };
    for (column, cell) in columns.iter().zip(cells.iter()) {
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::Id => row.id = Some(cell.trim().to_string()),
            Column::Field(field) => {
                if let Some(value) = picklists.get(*field, cell) {
                    row.sets.push((*field, Val::Str(value)));
                    continue;
                }
                match coerce(&def.fields[*field], Input::Text(cell)) {
                    Ok(val) => row.sets.push((*field, val)),
                    Err(error) => {
                        row.error.get_or_insert(error);
                    }
                }
            }
            Column::Ref {
                field,
                parent,
                parent_field,
            } => {
                if cell == "#N/A" {
                    row.sets.push((*field, Val::Null));
                } else {
                    row.refs.push(RefInput {
                        field: *field,
                        parent: *parent,
                        parent_field: *parent_field,
                        value: cell.to_string(),
                    });
                }
            }
        }
    }
    row
}

/// Picklist values of an object, shared: millions of rows carry a handful of distinct values.
#[derive(Debug, Clone, Default)]
pub struct Picklists(Vec<Vec<Arc<str>>>);

impl Picklists {
    pub fn new(def: &ObjectDef) -> Picklists {
        Picklists(
            def.fields
                .iter()
                .map(|field| match field.kind {
                    FieldType::Picklist => {
                        field.values.iter().map(|v| Arc::from(v.as_str())).collect()
                    }
                    _ => Vec::new(),
                })
                .collect(),
        )
    }

    fn get(&self, field: usize, value: &str) -> Option<Arc<str>> {
        self.0.get(field)?.iter().find(|v| ***v == *value).cloned()
    }
}

/// A CSV column of a bulk upload.
#[derive(Debug, Clone)]
pub enum Column {
    Id,
    Field(usize),
    Ref {
        field: usize,
        parent: usize,
        parent_field: usize,
    },
}

/// The whole org.
#[derive(Debug)]
pub struct Org {
    pub schema: Schema,
    pub objects: Vec<ObjStore>,
    by_name: HashMap<String, usize>,
    by_prefix: HashMap<String, usize>,
    next_id: u64,
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Computes the 3-character case-safe suffix of a 15-character id.
pub fn case_safe_suffix(id15: &str) -> String {
    let bytes = id15.as_bytes();
    let mut suffix = String::with_capacity(3);
    for chunk in 0..3 {
        let mut bits = 0usize;
        for i in 0..5 {
            if bytes
                .get(chunk * 5 + i)
                .is_some_and(|b| b.is_ascii_uppercase())
            {
                bits |= 1 << i;
            }
        }
        suffix.push(SUFFIX[bits] as char);
    }
    suffix
}

/// Accepts 15- or 18-character ids and returns the 18-character form.
pub fn normalize_id(id: &str) -> Option<String> {
    let id = id.trim();
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(format!("{id}{}", case_safe_suffix(id))),
        18 => Some(id.to_string()),
        _ => None,
    }
}

impl Org {
    pub fn new(schema: Schema) -> Org {
        let objects: Vec<ObjStore> = schema.objects.iter().cloned().map(ObjStore::new).collect();
        let by_name = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.def.name.to_ascii_lowercase(), i))
            .collect();
        let by_prefix = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.def.key_prefix.clone(), i))
            .collect();
        Org {
            schema,
            objects,
            by_name,
            by_prefix,
            // Starts high enough that ids mix digits and both letter cases, as real ids do.
            next_id: 62u64.pow(7) * 5 + 1_234_567,
        }
    }

    pub fn object(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.to_ascii_lowercase()).copied()
    }

    /// Allocates a new 18-character id with the given key prefix.
    pub fn new_id(&mut self, prefix: &str) -> Arc<str> {
        let mut n = self.next_id;
        self.next_id += 1;
        let mut body = [b'0'; 12];
        for slot in body.iter_mut().rev() {
            *slot = BASE62[(n % 62) as usize];
            n /= 62;
        }
        let mut id = [b'0'; 18];
        for (slot, byte) in id[..3].iter_mut().zip(prefix.bytes()) {
            *slot = byte;
        }
        id[3..15].copy_from_slice(&body);
        let id15 = std::str::from_utf8(&id[..15]).unwrap_or("000000000000000");
        let suffix = case_safe_suffix(id15);
        id[15..].copy_from_slice(&suffix.as_bytes()[..3]);
        Arc::from(std::str::from_utf8(&id).unwrap_or("000000000000000AAA"))
    }

    /// Parses one REST record of object `obj`: unknown fields are request-level errors, bad values are
    /// per-record errors.
    pub fn parse_json_record(
        &self,
        obj: usize,
        record: &Map<String, Value>,
    ) -> Result<RowInput, RequestError> {
        let store = &self.objects[obj];
        let mut row = RowInput::default();
        for (name, value) in record {
            if name == "attributes" {
                continue;
            }
            if name.eq_ignore_ascii_case("Id") {
                row.id = value.as_str().map(str::to_string);
                continue;
            }
            if let Some(field) = store.field(name) {
                match coerce(store.field_def(field), Input::Json(value)) {
                    Ok(val) => row.sets.push((field, val)),
                    Err(error) => {
                        row.error.get_or_insert(error);
                    }
                }
                continue;
            }
            if let Some(field) = store.relationship(name) {
                let reference = self.parse_json_ref(store, field, value)?;
                match reference {
                    Some(reference) => row.refs.push(reference),
                    None => row.sets.push((field, Val::Null)),
                }
                continue;
            }
            return Err(RequestError::new(
                400,
                "INVALID_FIELD",
                format!(
                    "No such column '{name}' on sobject of type {}",
                    store.def.name
                ),
            ));
        }
        Ok(row)
    }

    fn parse_json_ref(
        &self,
        store: &ObjStore,
        field: usize,
        value: &Value,
    ) -> Result<Option<RefInput>, RequestError> {
        let relationship = store.field_def(field);
        let parent = relationship
            .reference_to
            .as_deref()
            .and_then(|name| self.object(name))
            .ok_or_else(|| RequestError::new(400, "INVALID_FIELD", "lookup without a target"))?;
        let Some(object) = value.as_object() else {
            if value.is_null() {
                return Ok(None);
            }
            return Err(RequestError::new(
                400,
                "JSON_PARSER_ERROR",
                format!(
                    "Cannot deserialize instance of {} from a non-object value",
                    relationship.relationship_name.as_deref().unwrap_or("")
                ),
            ));
        };
        let parent_store = &self.objects[parent];
        let mut found = None;
        for (name, inner) in object {
            if name == "attributes" {
                continue;
            }
            let parent_field = parent_store
                .field(name)
                .filter(|&i| parent_store.field_def(i).external_id)
                .ok_or_else(|| {
                    RequestError::new(
                        400,
                        "INVALID_FIELD",
                        format!(
                            "No such column '{name}' on sobject of type {}",
                            parent_store.def.name
                        ),
                    )
                })?;
            let text = match inner {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                _ => {
                    return Err(RequestError::new(
                        400,
                        "INVALID_FIELD",
                        format!("Invalid external id value for field {name}"),
                    ));
                }
            };
            found = Some(RefInput {
                field,
                parent,
                parent_field,
                value: text,
            });
        }
        found.map(Some).ok_or_else(|| {
            RequestError::new(
                400,
                "INVALID_FIELD",
                "A relationship lookup needs one external id field",
            )
        })
    }

    /// Maps a CSV header to columns; an unknown name fails the whole job.
    pub fn parse_header(
        &self,
        obj: usize,
        header: &csv::StringRecord,
    ) -> Result<Vec<Column>, String> {
        let store = &self.objects[obj];
        header
            .iter()
            .map(|name| {
                let name = name.trim();
                if name.eq_ignore_ascii_case("Id") {
                    return Ok(Column::Id);
                }
                if let Some(field) = store.field(name) {
                    return Ok(Column::Field(field));
                }
                if let Some((relationship, parent_field_name)) = name.split_once('.')
                    && let Some(field) = store.relationship(relationship)
                {
                    let parent = store
                        .field_def(field)
                        .reference_to
                        .as_deref()
                        .and_then(|n| self.object(n));
                    if let Some(parent) = parent
                        && let Some(parent_field) = self.objects[parent]
                            .field(parent_field_name)
                            .filter(|&i| self.objects[parent].field_def(i).external_id)
                    {
                        return Ok(Column::Ref {
                            field,
                            parent,
                            parent_field,
                        });
                    }
                }
                Err(format!("InvalidBatch : Field name not found : {name}"))
            })
            .collect()
    }

    /// Validates and (unless allOrNone fails) applies a batch of writes to one object.
    pub fn write(
        &mut self,
        obj: usize,
        op: Op,
        rows: Vec<RowInput>,
        all_or_none: bool,
        lock_fault: &mut dyn FnMut() -> bool,
    ) -> Vec<Outcome> {
        // Growing the id index and the record slots once per batch, not record by record.
        {
            let store = &mut self.objects[obj];
            store.records.reserve(rows.len());
            store.by_id.reserve(rows.len());
            for index in store.ext.iter_mut().flatten() {
                index.reserve(rows.len());
            }
        }
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(rows.len());
        let mut plans: Vec<Option<PlanOut>> = Vec::with_capacity(rows.len());

        // Duplicate external ids inside the batch fail every record that carries them.
        let mut duplicates: FastSet<String> = FastSet::default();
        if let Op::Upsert(ext_field) = op {
            let mut seen: FastSet<&str> =
                FastSet::with_capacity_and_hasher(rows.len(), Default::default());
            for row in &rows {
                if let Some((_, Val::Str(value))) = row.sets.iter().find(|(f, _)| *f == ext_field)
                    && !seen.insert(value)
                {
                    duplicates.insert(value.to_string());
                }
            }
        }
        let mut batch_unique: FastSet<(usize, String)> = FastSet::default();

        {
            let store = &self.objects[obj];
            for row in rows {
                let (plan, outcome) = self.plan_row(
                    obj,
                    store,
                    op,
                    row,
                    &duplicates,
                    &mut batch_unique,
                    lock_fault,
                );
                plans.push(plan);
                outcomes.push(outcome);
            }
        }
        let any_failed = outcomes.iter().any(|o| o.error.is_some());
        if all_or_none && any_failed {
            for outcome in outcomes.iter_mut().filter(|o| o.error.is_none()) {
                *outcome = Outcome::failed(
                    None,
                    RecordError::new(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "The transaction was rolled back since another operation in the same transaction failed.",
                        vec![],
                    ),
                );
            }
            return outcomes;
        }
        for (plan, outcome) in plans.into_iter().zip(outcomes.iter_mut()) {
            match plan {
                Some(PlanOut::Create(vals)) => {
                    let id = self.insert_record(obj, vals);
                    outcome.id = Some(id);
                    outcome.created = true;
                }
                Some(PlanOut::Update(slot, vals)) => self.update_record(obj, slot, vals),
                None => {}
            }
        }
        outcomes
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_row(
        &self,
        obj: usize,
        store: &ObjStore,
        op: Op,
        mut row: RowInput,
        duplicates: &FastSet<String>,
        batch_unique: &mut FastSet<(usize, String)>,
        lock_fault: &mut dyn FnMut() -> bool,
    ) -> (Option<PlanOut>, Outcome) {
        let _ = obj;
        if let Some(error) = row.error.take() {
            return (None, Outcome::failed(None, error));
        }
        for reference in &row.refs {
            let parent = &self.objects[reference.parent];
            match parent.ext_lookup(reference.parent_field, &reference.value) {
                Some(slot) => {
                    if let Some(Some(record)) = parent.records.get(slot) {
                        row.sets
                            .push((reference.field, Val::Str(record.id.clone())));
                    }
                }
                None => {
                    let parent_field = &parent.field_def(reference.parent_field).name;
                    return (
                        None,
                        Outcome::failed(
                            None,
                            RecordError::new(
                                "INVALID_FIELD",
                                format!(
                                    "Foreign key external ID: {} not found for field {parent_field} in entity {}",
                                    reference.value, parent.def.name
                                ),
                                vec![],
                            ),
                        ),
                    );
                }
            }
        }
        // Lookups given as record ids must point at live records of the right object.
        for (field, value) in &row.sets {
            let def = store.field_def(*field);
            if def.kind != FieldType::Reference {
                continue;
            }
            if let Val::Str(id) = value {
                let target = def.reference_to.as_deref().and_then(|n| self.object(n));
                let exists = normalize_id(id).zip(target).is_some_and(|(id, target)| {
                    self.objects[target].by_id.contains_key(id.as_str())
                });
                if !exists {
                    return (
                        None,
                        Outcome::failed(
                            None,
                            RecordError::new(
                                "INVALID_CROSS_REFERENCE_KEY",
                                format!("invalid cross reference id: {id}"),
                                vec![def.name.clone()],
                            ),
                        ),
                    );
                }
            }
        }
        let target_slot = match op {
            Op::Insert => None,
            Op::Update => {
                let Some(id) = row.id.as_deref() else {
                    return (
                        None,
                        Outcome::failed(
                            None,
                            RecordError::new(
                                "MISSING_ARGUMENT",
                                "Id not specified in an update call",
                                vec![],
                            ),
                        ),
                    );
                };
                let normalized = normalize_id(id).unwrap_or_default();
                match store.by_id.get(normalized.as_str()) {
                    Some(slot) => Some(*slot),
                    None if store.deleted.contains_key(normalized.as_str()) => {
                        return (
                            None,
                            Outcome::failed(
                                Some(normalized.into()),
                                RecordError::new("ENTITY_IS_DELETED", "entity is deleted", vec![]),
                            ),
                        );
                    }
                    None => {
                        return (
                            None,
                            Outcome::failed(
                                None,
                                RecordError::new(
                                    "INVALID_CROSS_REFERENCE_KEY",
                                    format!("invalid cross reference id: {id}"),
                                    vec![],
                                ),
                            ),
                        );
                    }
                }
            }
            Op::Upsert(ext_field) => {
                let ext_name = &store.field_def(ext_field).name;
                let value = match row.sets.iter().find(|(f, _)| *f == ext_field) {
                    Some((_, Val::Str(value))) => value.to_string(),
                    _ => {
                        return (
                            None,
                            Outcome::failed(
                                None,
                                RecordError::new(
                                    "MISSING_ARGUMENT",
                                    format!("{ext_name} not specified"),
                                    vec![ext_name.clone()],
                                ),
                            ),
                        );
                    }
                };
                if duplicates.contains(&value) {
                    return (
                        None,
                        Outcome::failed(
                            None,
                            RecordError::new(
                                "DUPLICATE_EXTERNAL_ID",
                                format!("Duplicate external id specified: {value}"),
                                vec![ext_name.clone()],
                            ),
                        ),
                    );
                }
                store.ext_lookup(ext_field, &value)
            }
        };
        let existing_id: Option<Arc<str>> = target_slot
            .and_then(|slot| store.records.get(slot))
            .and_then(|r| r.as_ref())
            .map(|r| r.id.clone());
        if lock_fault() {
            return (
                None,
                Outcome::failed(
                    existing_id.clone(),
                    RecordError::new(
                        "UNABLE_TO_LOCK_ROW",
                        "unable to obtain exclusive access to this record or 1 records",
                        vec![],
                    ),
                ),
            );
        }
        let mut vals = match target_slot
            .and_then(|slot| store.records.get(slot))
            .and_then(|r| r.as_ref())
        {
            Some(record) => record.vals.clone(),
            None => vec![Val::Null; store.def.fields.len()],
        };
        for (field, value) in row.sets {
            vals[field] = value;
        }
        let any_missing = store
            .def
            .fields
            .iter()
            .zip(&vals)
            .any(|(def, value)| def.required && value.is_null());
        if any_missing {
            let missing: Vec<String> = store
                .def
                .fields
                .iter()
                .zip(&vals)
                .filter(|(def, value)| def.required && value.is_null())
                .map(|(def, _)| def.name.clone())
                .collect();
            return (
                None,
                Outcome::failed(
                    existing_id,
                    RecordError::new(
                        "REQUIRED_FIELD_MISSING",
                        format!("Required fields are missing: [{}]", missing.join(", ")),
                        missing,
                    ),
                ),
            );
        }
        for (field, def) in store.def.fields.iter().enumerate() {
            if !def.unique && !def.external_id {
                continue;
            }
            if matches!(op, Op::Upsert(ext) if ext == field) {
                continue;
            }
            let Some(text) = vals[field].as_text() else {
                continue;
            };
            let clash = store
                .ext_lookup(field, &text)
                .filter(|slot| Some(*slot) != target_slot)
                .and_then(|slot| store.records.get(slot))
                .and_then(|r| r.as_ref())
                .map(|r| r.id.to_string());
            let in_batch = def.unique && !batch_unique.insert((field, text.to_string()));
            if def.unique && (clash.is_some() || in_batch) {
                return (
                    None,
                    Outcome::failed(
                        existing_id,
                        RecordError::new(
                            "DUPLICATE_VALUE",
                            format!(
                                "duplicate value found: {} duplicates value on record with id: {}",
                                def.name,
                                clash.unwrap_or_default()
                            ),
                            vec![def.name.clone()],
                        ),
                    ),
                );
            }
        }
        match target_slot {
            Some(slot) => (
                Some(PlanOut::Update(slot, vals)),
                Outcome {
                    id: existing_id,
                    created: false,
                    error: None,
                },
            ),
            None => (
                Some(PlanOut::Create(vals)),
                Outcome {
                    id: None,
                    created: true,
                    error: None,
                },
            ),
        }
    }

    fn insert_record(&mut self, obj: usize, vals: Vec<Val>) -> Arc<str> {
        let prefix = self.objects[obj].def.key_prefix.clone();
        let id = self.new_id(&prefix);
        let store = &mut self.objects[obj];
        let slot = store.records.len();
        for (field, index) in store.ext.iter_mut().enumerate() {
            if let Some(index) = index
                && let Some(key) = vals[field].key()
            {
                index.insert(key, slot);
            }
        }
        store.by_id.insert(id.clone(), slot);
        store.records.push(Some(Rec {
            id: id.clone(),
            vals,
        }));
        store.live += 1;
        id
    }

    fn update_record(&mut self, obj: usize, slot: usize, vals: Vec<Val>) {
        let store = &mut self.objects[obj];
        let Some(Some(record)) = store.records.get_mut(slot) else {
            return;
        };
        for (field, index) in store.ext.iter_mut().enumerate() {
            if let Some(index) = index
                && record.vals[field] != vals[field]
            {
                if let Some(old) = record.vals[field].as_text() {
                    index.remove(old.as_str());
                }
                if let Some(new) = vals[field].key() {
                    index.insert(new, slot);
                }
            }
        }
        record.vals = vals;
    }

    /// Deletes records by id (any object, found by key prefix; `only` restricts to one object).
    pub fn delete(
        &mut self,
        ids: &[String],
        hard: bool,
        all_or_none: bool,
        only: Option<usize>,
        lock_fault: &mut dyn FnMut() -> bool,
    ) -> Vec<Outcome> {
        let mut targets: Vec<Result<DeleteTarget, Outcome>> = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(normalized) = normalize_id(id) else {
                targets.push(Err(Outcome::failed(
                    None,
                    RecordError::new("MALFORMED_ID", format!("malformed id {id}"), vec![]),
                )));
                continue;
            };
            let object = self
                .by_prefix
                .get(&normalized[..3])
                .copied()
                .filter(|o| only.is_none_or(|only| only == *o));
            let found = object.and_then(|o| {
                self.objects[o]
                    .by_id
                    .get(normalized.as_str())
                    .map(|slot| (o, *slot))
            });
            let outcome = match found {
                Some((o, slot)) if lock_fault() => {
                    let _ = (o, slot);
                    Err(Outcome::failed(
                        Some(normalized.into()),
                        RecordError::new(
                            "UNABLE_TO_LOCK_ROW",
                            "unable to obtain exclusive access to this record or 1 records",
                            vec![],
                        ),
                    ))
                }
                Some((o, slot)) => Ok((o, slot, Arc::from(normalized))),
                None if object
                    .is_some_and(|o| self.objects[o].deleted.contains_key(normalized.as_str())) =>
                {
                    Err(Outcome::failed(
                        Some(normalized.into()),
                        RecordError::new("ENTITY_IS_DELETED", "entity is deleted", vec![]),
                    ))
                }
                None => Err(Outcome::failed(
                    Some(normalized.into()),
                    RecordError::new(
                        "INVALID_CROSS_REFERENCE_KEY",
                        "invalid cross reference id",
                        vec![],
                    ),
                )),
            };
            targets.push(outcome);
        }
        let any_failed = targets.iter().any(Result::is_err);
        if all_or_none && any_failed {
            return targets
                .into_iter()
                .map(|t| match t {
                    Err(outcome) => outcome,
                    Ok((_, _, id)) => Outcome::failed(
                        Some(id),
                        RecordError::new(
                            "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                            "The transaction was rolled back since another operation in the same transaction failed.",
                            vec![],
                        ),
                    ),
                })
                .collect();
        }
        targets
            .into_iter()
            .map(|t| match t {
                Err(outcome) => outcome,
                Ok((o, slot, id)) => {
                    self.remove_record(o, slot, hard);
                    Outcome {
                        id: Some(id),
                        created: false,
                        error: None,
                    }
                }
            })
            .collect()
    }

    fn remove_record(&mut self, obj: usize, slot: usize, hard: bool) {
        let store = &mut self.objects[obj];
        let Some(record) = store.records.get_mut(slot).and_then(Option::take) else {
            return;
        };
        for (field, index) in store.ext.iter_mut().enumerate() {
            if let Some(index) = index
                && let Some(text) = record.vals[field].as_text()
            {
                index.remove(text.as_str());
            }
        }
        store.by_id.remove(&record.id);
        store.live -= 1;
        if !hard {
            store.deleted.insert(record.id.clone(), record);
        }
    }
}

/// A record to delete: object, slot, id.
type DeleteTarget = (usize, usize, Arc<str>);

/// What `plan_row` decided for one row.
enum PlanOut {
    Create(Vec<Val>),
    Update(usize, Vec<Val>),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matches_known_id() {
        // A well-known example: 001A0000006Vm9r -> 001A0000006Vm9rIAC.
        assert_eq!(case_safe_suffix("001A0000006Vm9r"), "IAC");
    }

    #[test]
    fn generated_ids_are_18_chars_with_prefix() {
        let mut org = Org::new(Schema::default_org());
        let id = org.new_id("a01");
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("a01"));
        assert_eq!(&id[15..], case_safe_suffix(&id[..15]));
    }
}

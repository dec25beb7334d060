//! A mapping checked against the org: every object and field exists, each field's type takes the
//! mapped value, the external id field is one, lookups point at the parent they name (whose
//! external id is one), picklist values exist. Every problem is named at once, with the mapping's
//! path and the org's field. SetMapping checks a whole mapping with every describe
//! ([`Mapping::org_problems`]); a job checks its own object again at its start
//! ([`ObjectMapping::fit_to_org`]), before it writes anything.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::{FieldKind, Mapping, NAME_FIELD, ObjectMapping, document::entity_path};

/// Describes of the org's objects by API name: `None` when the org has no such object; an object
/// left out was not described (its checks are skipped).
pub type Describes = HashMap<String, Option<Value>>;

/// One problem of a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where it is in the mapping document (`entities.users.fields[2]`).
    pub path: String,
    /// The org's object or field it concerns (`Contact.Region__c`), or empty.
    pub org_field: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Problem {
    /// A problem at `path` about `org_field`.
    pub fn new(
        path: impl Into<String>,
        org_field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Problem {
        Problem {
            path: path.into(),
            org_field: org_field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)?;
        if !self.org_field.is_empty() {
            write!(f, " (org: {})", self.org_field)?;
        }
        Ok(())
    }
}

/// The describe's field types each transform can write.
pub(super) fn types_taken(kind: &FieldKind) -> &'static [&'static str] {
    match kind {
        FieldKind::Text { .. } => &[
            "string", "textarea", "phone", "url", "email", "picklist", "combobox",
        ],
        FieldKind::Email { .. } => &["email", "string"],
        FieldKind::Checkbox { .. } => &["boolean"],
        FieldKind::Datetime => &["datetime"],
        FieldKind::Date => &["date"],
        FieldKind::Number { .. } => &["double", "percent", "currency", "int", "long"],
        FieldKind::Picklist { .. } => &["picklist", "multipicklist", "string"],
        FieldKind::Lookup { .. } | FieldKind::Match { .. } => &["reference"],
        FieldKind::Clear => &[],
    }
}

/// An object's fields from its describe.
struct OrgObject<'a> {
    name: &'a str,
    fields: Vec<&'a Value>,
}

impl<'a> OrgObject<'a> {
    fn new(name: &'a str, describe: &'a Value) -> OrgObject<'a> {
        let fields = describe
            .get("fields")
            .and_then(Value::as_array)
            .map(|fields| fields.iter().collect())
            .unwrap_or_default();
        OrgObject { name, fields }
    }

    fn by(&self, key: &str, name: &str) -> Option<&'a Value> {
        self.fields
            .iter()
            .copied()
            .find(|field| field.get(key).and_then(Value::as_str) == Some(name))
    }

    fn field(&self, name: &str) -> Option<&'a Value> {
        self.by("name", name)
    }

    fn relationship(&self, name: &str) -> Option<&'a Value> {
        self.by("relationshipName", name)
    }

    fn qualified(&self, field: &str) -> String {
        format!("{}.{field}", self.name)
    }
}

fn flag(field: &Value, key: &str, default: bool) -> bool {
    field.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// The active values of a picklist field.
fn picklist_values(field: &Value) -> Vec<&str> {
    field
        .get("picklistValues")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter(|value| flag(value, "active", true))
                .filter_map(|value| value.get("value").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

impl Mapping {
    /// The objects a check of the mapping describes: each entity's object and lookups' parents.
    pub fn objects_to_describe(&self) -> BTreeSet<String> {
        let mut objects = BTreeSet::new();
        for (_, object) in self.entities() {
            objects.insert(object.object.clone());
            for field in &object.fields {
                if let FieldKind::Lookup { object, .. } = &field.kind {
                    objects.insert(object.clone());
                }
            }
        }
        objects
    }

    /// Every problem of the mapping against the org (`describes`: [`Mapping::objects_to_describe`]).
    pub fn org_problems(&self, describes: &Describes) -> Vec<Problem> {
        self.entities()
            .flat_map(|(entity, object)| object.org_problems(&entity_path(entity), describes, true))
            .collect()
    }
}

impl ObjectMapping {
    /// Every problem of this object's mapping against the org. `strict` also checks what a job
    /// tolerates at run time (picklist values the org lacks fail their records alone).
    pub fn org_problems(&self, path: &str, describes: &Describes, strict: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        let describe = match describes.get(&self.object) {
            None => return problems,
            Some(None) => {
                problems.push(Problem::new(
                    format!("{path}.object"),
                    &self.object,
                    format!("the org has no object {}", self.object),
                ));
                return problems;
            }
            Some(Some(describe)) => describe,
        };
        let org = OrgObject::new(&self.object, describe);
        if org.fields.is_empty() {
            problems.push(Problem::new(
                format!("{path}.object"),
                &self.object,
                format!("the describe of {} lists no fields", self.object),
            ));
            return problems;
        }
        self.key_problems(path, &org, &mut problems);
        for (index, mapped) in self.fields.iter().enumerate() {
            let at = format!("{path}.fields[{index}]");
            if let Some(problem) =
                field_problem(&at, &org, &mapped.field, &mapped.kind, describes, strict)
            {
                problems.push(problem);
            }
        }
        self.unenroll_problems(path, &org, strict, &mut problems);
        problems
    }

    /// The external id and `Name`.
    fn key_problems(&self, path: &str, org: &OrgObject<'_>, problems: &mut Vec<Problem>) {
        let at = format!("{path}.external_id");
        let qualified = org.qualified(&self.external_id);
        match org.field(&self.external_id) {
            None => problems.push(Problem::new(
                at,
                qualified,
                format!(
                    "the org has no field {} on {}",
                    self.external_id, self.object
                ),
            )),
            Some(field) if !flag(field, "externalId", false) => problems.push(Problem::new(
                at,
                qualified,
                format!(
                    "{} on {} is not an external id field",
                    self.external_id, self.object
                ),
            )),
            Some(_) => {}
        }
        if let Some(upsert_by) = &self.upsert_by {
            let matches = org.field(upsert_by).is_some_and(|field| {
                flag(field, "idLookup", false) || flag(field, "externalId", false)
            });
            if !matches {
                problems.push(Problem::new(
                    format!("{path}.upsert_by"),
                    org.qualified(upsert_by),
                    format!(
                        "{upsert_by} on {} is neither an external id nor an idLookup field",
                        self.object
                    ),
                ));
            }
        }
        if self.name.is_empty() {
            return;
        }
        let name = &**NAME_FIELD;
        match org.field(name) {
            Some(field) if flag(field, "createable", true) => {}
            found => problems.push(Problem::new(
                format!("{path}.name"),
                org.qualified(name),
                match found {
                    None => format!(
                        "the org has no field Name on {}: leave name empty",
                        self.object
                    ),
                    Some(_) => format!("Name on {} is not writable: leave name empty", self.object),
                },
            )),
        }
    }

    fn unenroll_problems(
        &self,
        path: &str,
        org: &OrgObject<'_>,
        strict: bool,
        problems: &mut Vec<Problem>,
    ) {
        let Some(unenroll) = &self.unenroll else {
            return;
        };
        for name in [&unenroll.status_field, &unenroll.time_field] {
            if org.field(name).is_none() {
                problems.push(Problem::new(
                    format!("{path}.unenroll"),
                    org.qualified(name),
                    format!("the org has no field {name} on {}", self.object),
                ));
            }
        }
        if let Some(status) = org.field(&unenroll.status_field)
            && strict
        {
            let values = picklist_values(status);
            if !values.is_empty() && !values.contains(&unenroll.status_value.as_str()) {
                problems.push(Problem::new(
                    format!("{path}.unenroll.status_value"),
                    org.qualified(&unenroll.status_field),
                    format!("the picklist has no value {:?}", unenroll.status_value),
                ));
            }
        }
    }
}

/// What is wrong with one mapped field in the org, if anything.
fn field_problem(
    at: &str,
    org: &OrgObject<'_>,
    name: &str,
    kind: &FieldKind,
    describes: &Describes,
    strict: bool,
) -> Option<Problem> {
    let qualified = org.qualified(name);
    let problem = |reason: String| Some(Problem::new(at, &qualified, reason));
    let found = match kind {
        FieldKind::Lookup { .. } => org.relationship(name),
        _ => org.field(name),
    };
    let Some(field) = found else {
        // Lookups by value are optional: an org without the field goes without.
        if matches!(kind, FieldKind::Match { .. }) {
            return None;
        }
        return problem(match kind {
            FieldKind::Lookup { .. } => {
                format!(
                    "the org has no lookup whose relationship is {name} on {}",
                    org.name
                )
            }
            _ => format!("the org has no field {name} on {}", org.name),
        });
    };
    let org_type = field.get("type").and_then(Value::as_str).unwrap_or("");
    let taken = types_taken(kind);
    if !taken.is_empty() && !taken.contains(&org_type) {
        return problem(format!(
            "the field is of type {org_type}, which this transform cannot write (it writes {})",
            taken.join(" or ")
        ));
    }
    if !flag(field, "createable", true) {
        return problem(format!("{name} on {} is not writable", org.name));
    }
    match kind {
        FieldKind::Lookup {
            object,
            external_id,
        } => lookup_problem(at, field, object, external_id, describes),
        FieldKind::Match { object, .. } => points_to(field, object).then_some(()).map_or_else(
            || {
                problem(format!(
                    "the lookup points to {:?}, not {object}",
                    references(field)
                ))
            },
            |()| None,
        ),
        FieldKind::Picklist { values } if strict => {
            let org_values = picklist_values(field);
            let mut missing: Vec<&str> = values
                .values()
                .map(String::as_str)
                .filter(|value| !org_values.is_empty() && !org_values.contains(value))
                .collect();
            missing.dedup();
            (!missing.is_empty()).then(|| {
                Problem::new(
                    at,
                    &qualified,
                    format!("the picklist has no value {}", missing.join(", ")),
                )
            })
        }
        _ => None,
    }
}

fn references(field: &Value) -> Vec<&str> {
    field
        .get("referenceTo")
        .and_then(Value::as_array)
        .map(|objects| objects.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn points_to(field: &Value, object: &str) -> bool {
    references(field).contains(&object)
}

/// A lookup by external id: it points to its parent, whose external id field is one.
fn lookup_problem(
    at: &str,
    field: &Value,
    object: &str,
    external_id: &str,
    describes: &Describes,
) -> Option<Problem> {
    let name = field.get("name").and_then(Value::as_str).unwrap_or("");
    if !points_to(field, object) {
        return Some(Problem::new(
            at,
            name,
            format!("the lookup points to {:?}, not {object}", references(field)),
        ));
    }
    let parent = match describes.get(object) {
        Some(Some(describe)) => OrgObject::new(object, describe),
        Some(None) => {
            return Some(Problem::new(
                at,
                object,
                format!("the org has no object {object}"),
            ));
        }
        None => return None,
    };
    match parent.field(external_id) {
        Some(field) if flag(field, "externalId", false) => None,
        Some(_) => Some(Problem::new(
            at,
            parent.qualified(external_id),
            format!("{external_id} on {object} is not an external id field"),
        )),
        None => Some(Problem::new(
            at,
            parent.qualified(external_id),
            format!("the org has no field {external_id} on {object}"),
        )),
    }
}

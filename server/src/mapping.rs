//! GetMapping and SetMapping's work: a stored mapping version as the API's message, a requested
//! one read and checked on its own, and checked against the org. The check reads the org's
//! describes itself, with the workers' thin Salesforce client (`learnsync_worker::http`) over the
//! upstream policy's `Http`: one token request, the object list, one describe per object the
//! mapping names. That is the one place the server talks to Salesforce (ARCHITECTURE.md).

use std::time::Duration;

use learnsync_proto::v1 as pb;
use learnsync_store::ErrorCode;
use learnsync_store::mappings::{self, StoredMapping};
use learnsync_store::secrets::SalesforceCredentials;
use learnsync_worker::http::Answer;
use learnsync_worker::http::salesforce::{API_VERSION, Body, SalesforceApi, Session};
use learnsync_worker::mapping::{Describes, Mapping, Problem};
use serde_json::Value;
use tonic::Status;
use tonic_types::FieldViolation;

use crate::error;

/// How long one call to the org may take while a SetMapping waits for it.
const ORG_TIMEOUT: Duration = Duration::from_secs(20);

/// The `PreconditionFailure` type of a mapping's problem with the org.
const MAPPING_VIOLATION: &str = "MAPPING";

/// The API's message of a stored version (`None`: the default mapping, version 0).
pub fn to_proto(stored: Option<&StoredMapping>) -> Result<pb::Mapping, Status> {
    let (mapping, version, create_time) = match stored {
        Some(stored) => (
            Mapping::from_document(&stored.document)
                .map_err(|error| Status::internal(format!("stored mapping: {error}")))?,
            stored.version,
            Some(crate::convert::to_timestamp(stored.create_time)),
        ),
        None => (
            Mapping::default_mapping().map_err(|error| Status::internal(error.to_string()))?,
            mappings::DEFAULT_VERSION,
            None,
        ),
    };
    message_of(&mapping, version, create_time)
}

/// A mapping as the API's message, with its output-only fields.
fn message_of(
    mapping: &Mapping,
    version: i32,
    create_time: Option<prost_types::Timestamp>,
) -> Result<pb::Mapping, Status> {
    let mut message = learnsync_proto::mapping::from_document(&mapping.to_document())
        .map_err(|error| Status::internal(format!("mapping document: {error}")))?;
    for (entity, object) in mapping.entities() {
        let name = serde_json::to_value(entity)
            .ok()
            .and_then(|name| name.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Some(out) = message.entities.get_mut(&name) {
            out.key = object.key.clone();
            out.area = object.area.as_str().to_string();
            out.updated_at = object.updated_at.clone();
        }
    }
    message.version = version;
    message.create_time = create_time;
    Ok(message)
}

/// A requested mapping read and checked on its own (defaults filled in), or `INVALID_ARGUMENT`
/// naming every problem.
pub fn read_request(requested: Option<&pb::Mapping>) -> Result<Mapping, Status> {
    let Some(requested) = requested else {
        return Err(error::invalid_field("mapping", "required"));
    };
    // Far more than the seven entities and their fields.
    crate::convert::at_most(
        "mapping.entities",
        &requested.entities.keys().collect::<Vec<_>>(),
        16,
    )?;
    for (name, object) in &requested.entities {
        crate::convert::at_most(
            &format!("mapping.entities.{name}.fields"),
            &object.fields,
            200,
        )?;
    }
    let document = learnsync_proto::mapping::to_document(requested);
    Mapping::read_document(&document).map_err(|problems| {
        let violations = problems
            .iter()
            .take(crate::convert::MAX_VIOLATIONS)
            .map(|problem| {
                FieldViolation::new(format!("mapping.{}", problem.path), problem.reason.clone())
            })
            .collect();
        error::invalid_argument(violations)
    })
}

/// The answer to a SetMapping: the mapping checked (and saved, when `stored` is the new version).
pub fn answer(mapping: &Mapping, stored: Option<&StoredMapping>) -> Result<pb::Mapping, Status> {
    match stored {
        Some(stored) => message_of(
            mapping,
            stored.version,
            Some(crate::convert::to_timestamp(stored.create_time)),
        ),
        None => message_of(mapping, mappings::DEFAULT_VERSION, None),
    }
}

/// Checks a mapping against the org: `FAILED_PRECONDITION` naming every problem.
pub async fn check_against_org(
    http: learnsync_upstream::Http,
    credentials: SalesforceCredentials,
    mapping: &Mapping,
) -> Result<(), Status> {
    let describes = describe_org(http, credentials, mapping).await?;
    let problems = mapping.org_problems(&describes);
    if problems.is_empty() {
        return Ok(());
    }
    Err(error::failed_preconditions(
        ErrorCode::MappingDoesNotFitOrg,
        problems.iter().map(violation).collect(),
    ))
}

fn violation(problem: &Problem) -> (String, String, String) {
    let description = if problem.org_field.is_empty() {
        problem.reason.clone()
    } else {
        format!("{} (org: {})", problem.reason, problem.org_field)
    };
    (
        MAPPING_VIOLATION.to_string(),
        format!("mapping.{}", problem.path),
        description,
    )
}

/// The describes of every object the mapping names (`None` for those the org lacks).
async fn describe_org(
    http: learnsync_upstream::Http,
    credentials: SalesforceCredentials,
    mapping: &Mapping,
) -> Result<Describes, Status> {
    let api = SalesforceApi::new(http, credentials);
    let session = answered("the salesforce token request", api.token().await)?;
    let listed = answered(
        "the salesforce object list",
        api.send(
            &session,
            reqwest::Method::GET,
            &format!("/services/data/{API_VERSION}/sobjects"),
            Body::None,
        )
        .await,
    )?;
    let listed: Value = serde_json::from_str(&listed).map_err(|_| {
        error::upstream_unavailable(false, "the salesforce object list is not JSON")
    })?;
    let names: Vec<&str> = listed
        .get("sobjects")
        .and_then(Value::as_array)
        .map(|objects| {
            objects
                .iter()
                .filter_map(|object| object.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut describes = Describes::new();
    for object in mapping.objects_to_describe() {
        let describe = if names.contains(&object.as_str()) {
            Some(describe(&api, &session, &object).await?)
        } else {
            None
        };
        describes.insert(object, describe);
    }
    Ok(describes)
}

async fn describe(api: &SalesforceApi, session: &Session, object: &str) -> Result<Value, Status> {
    answered(
        &format!("the describe of {object}"),
        api.describe(session, object).await,
    )
}

/// An answer's value, or the status that says why the org could not be asked (sanitized by the
/// thin client: the upstream's documented code and message, bounded).
fn answered<T>(what: &str, answer: Answer<T>) -> Result<T, Status> {
    match answer {
        Answer::Ok(value) => Ok(value),
        Answer::Permanent(failure) | Answer::SessionExpired(failure) => Err(
            error::upstream_unavailable(true, &format!("{what} failed: {failure}")),
        ),
        Answer::Throttled { failure, .. }
        | Answer::Transient(failure)
        | Answer::Unreadable(failure) => Err(error::upstream_unavailable(
            false,
            &format!("{what} failed: {failure}"),
        )),
    }
}

/// The HTTP client of SetMapping's calls to the orgs, under the server's upstream policy: built
/// once when the server starts, its connections pooled across calls.
pub fn http(
    policy: &learnsync_upstream::Policy,
) -> Result<learnsync_upstream::Http, reqwest::Error> {
    learnsync_upstream::Http::new(policy.clone(), ORG_TIMEOUT)
}

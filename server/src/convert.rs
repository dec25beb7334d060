//! Wire types and domain types kept apart: incoming messages are validated once here (every
//! offending field named in a `BadRequest`), and domain values are turned into messages here.

use chrono::{DateTime, TimeZone as _, Utc};
use learnsync_proto::v1 as pb;
use learnsync_store::model;
use learnsync_store::secrets;
use learnsync_upstream::Policy;
use tonic::Status;
use tonic_types::FieldViolation;
use uuid::Uuid;

use crate::error::invalid_argument;

/// Most violations one answer lists: a request with more says how many it left out, so that a
/// small request cannot make a large answer.
pub const MAX_VIOLATIONS: usize = 20;

/// Collects field violations and turns them into one `INVALID_ARGUMENT`.
#[derive(Default)]
pub struct Violations {
    listed: Vec<FieldViolation>,
    /// Violations past [`MAX_VIOLATIONS`], counted but not kept.
    more: usize,
}

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        if self.listed.len() < MAX_VIOLATIONS {
            self.listed.push(FieldViolation::new(field, description));
        } else {
            self.more += 1;
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn check(mut self) -> Result<(), Status> {
        if self.listed.is_empty() {
            return Ok(());
        }
        if self.more > 0 {
            self.listed.push(FieldViolation::new(
                "request",
                format!("and {} more violations not listed", self.more),
            ));
        }
        Err(invalid_argument(self.listed))
    }
}

/// Refuses a repeated field with more than `max` values, before anything else reads it (a request
/// of a few bytes per value must not make work per value).
pub fn at_most<T>(field: &str, values: &[T], max: usize) -> Result<(), Status> {
    if values.len() > max {
        return Err(crate::error::invalid_field(
            field,
            format!("at most {max} values"),
        ));
    }
    Ok(())
}

/// Parses a UUID field, recording a violation when it is not one.
pub fn parse_id(violations: &mut Violations, field: &str, value: &str) -> Uuid {
    if value.is_empty() {
        violations.add(field, "required");
        return Uuid::nil();
    }
    match Uuid::parse_str(value) {
        Ok(id) => id,
        Err(_) => {
            violations.add(field, "must be a UUID");
            Uuid::nil()
        }
    }
}

/// Parses a required connection id.
pub fn connection_id(value: &str) -> Result<Uuid, Status> {
    let mut violations = Violations::default();
    let id = parse_id(&mut violations, "connection_id", value);
    violations.check()?;
    Ok(id)
}

/// Reads an area, recording a violation for UNSPECIFIED or unknown values.
pub fn area(violations: &mut Violations, field: &str, value: i32) -> model::Area {
    match pb::Area::try_from(value) {
        Ok(pb::Area::Users) => model::Area::Users,
        Ok(pb::Area::Courses) => model::Area::Courses,
        Ok(pb::Area::Enrollments) => model::Area::Enrollments,
        Ok(pb::Area::Unspecified) => {
            violations.add(
                field,
                "required: AREA_USERS, AREA_COURSES or AREA_ENROLLMENTS",
            );
            model::Area::Users
        }
        Err(_) => {
            violations.add(field, format!("unknown area {value}"));
            model::Area::Users
        }
    }
}

/// Checks a request id (optional; at most 128 characters).
pub fn request_id(violations: &mut Violations, value: &str) {
    if value.len() > 128 {
        violations.add("request_id", "at most 128 characters");
    }
}

/// A timestamp from the wire.
pub fn timestamp(
    violations: &mut Violations,
    field: &str,
    value: &prost_types::Timestamp,
) -> Option<DateTime<Utc>> {
    match u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| Utc.timestamp_opt(value.seconds, nanos).single())
    {
        Some(time) => Some(time),
        None => {
            violations.add(field, "not a valid timestamp");
            None
        }
    }
}

/// A timeframe from the wire: both ends optional, the end not before the start.
pub fn timeframe(
    violations: &mut Violations,
    field: &str,
    value: Option<&pb::Timeframe>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let Some(value) = value else {
        return (None, None);
    };
    let start = value
        .start_time
        .as_ref()
        .and_then(|t| timestamp(violations, &format!("{field}.start_time"), t));
    let end = value
        .end_time
        .as_ref()
        .and_then(|t| timestamp(violations, &format!("{field}.end_time"), t));
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        violations.add(
            &format!("{field}.end_time"),
            "must not precede timeframe.start_time",
        );
    }
    (start, end)
}

fn check_url(violations: &mut Violations, field: &str, value: &str) -> String {
    check_target(violations, None, field, value)
}

/// Checks a URL the workers will call: a valid URL, and one the operator's upstream policy allows
/// (https, no address of a private or special range, unless `LEARNSYNC_UPSTREAM_ALLOW` admits it).
fn check_target(
    violations: &mut Violations,
    policy: Option<&Policy>,
    field: &str,
    value: &str,
) -> String {
    let trimmed = value.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        violations.add(field, "required");
        return String::new();
    }
    let valid = trimmed.parse::<http::Uri>().ok().is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|host| !host.is_empty())
            && uri.query().is_none()
    });
    if !valid {
        violations.add(field, "must be an absolute http(s) URL without a query");
    } else if let Some(Err(refusal)) = policy.map(|policy| policy.check_url(trimmed)) {
        violations.add(field, refusal.to_string());
    }
    trimmed.to_string()
}

fn required(violations: &mut Violations, field: &str, value: &str) -> String {
    if value.trim().is_empty() {
        violations.add(field, "required");
    }
    value.to_string()
}

/// Validates Docebo credentials.
pub fn docebo_credentials(
    violations: &mut Violations,
    policy: &Policy,
    field: &str,
    value: &pb::DoceboCredentials,
) -> secrets::DoceboCredentials {
    let base_url = check_target(
        violations,
        Some(policy),
        &format!("{field}.base_url"),
        &value.base_url,
    );
    let client_id = required(violations, &format!("{field}.client_id"), &value.client_id);
    let client_secret = required(
        violations,
        &format!("{field}.client_secret"),
        &value.client_secret,
    );
    let grant = match &value.grant {
        Some(pb::docebo_credentials::Grant::ClientCredentials(_)) => {
            secrets::DoceboGrant::ClientCredentials
        }
        Some(pb::docebo_credentials::Grant::Password(password)) => secrets::DoceboGrant::Password {
            username: required(
                violations,
                &format!("{field}.password.username"),
                &password.username,
            ),
            password: required(
                violations,
                &format!("{field}.password.password"),
                &password.password,
            ),
        },
        None => {
            violations.add(
                &format!("{field}.grant"),
                "required: client_credentials or password",
            );
            secrets::DoceboGrant::ClientCredentials
        }
    };
    secrets::DoceboCredentials {
        base_url,
        client_id,
        client_secret,
        grant,
    }
}

/// Validates Salesforce credentials (a JWT key must be a usable RSA private key).
pub fn salesforce_credentials(
    violations: &mut Violations,
    policy: &Policy,
    field: &str,
    value: &pb::SalesforceCredentials,
) -> secrets::SalesforceCredentials {
    let login_url = check_target(
        violations,
        Some(policy),
        &format!("{field}.login_url"),
        &value.login_url,
    );
    let client_id = required(violations, &format!("{field}.client_id"), &value.client_id);
    let grant = match &value.grant {
        Some(pb::salesforce_credentials::Grant::ClientCredentials(grant)) => {
            secrets::SalesforceGrant::ClientCredentials {
                client_secret: required(
                    violations,
                    &format!("{field}.client_credentials.client_secret"),
                    &grant.client_secret,
                ),
            }
        }
        Some(pb::salesforce_credentials::Grant::JwtBearer(grant)) => {
            let key_field = format!("{field}.jwt_bearer.private_key_pem");
            if grant.private_key_pem.trim().is_empty() {
                violations.add(&key_field, "required");
            } else if jsonwebtoken::EncodingKey::from_rsa_pem(grant.private_key_pem.as_bytes())
                .is_err()
            {
                violations.add(
                    &key_field,
                    "must be a PEM-encoded RSA private key (PKCS#1 or PKCS#8)",
                );
            }
            let audience = if grant.audience.trim().is_empty() {
                "https://login.salesforce.com".to_string()
            } else {
                check_url(
                    violations,
                    &format!("{field}.jwt_bearer.audience"),
                    &grant.audience,
                )
            };
            secrets::SalesforceGrant::JwtBearer {
                username: required(
                    violations,
                    &format!("{field}.jwt_bearer.username"),
                    &grant.username,
                ),
                private_key_pem: grant.private_key_pem.clone(),
                audience,
            }
        }
        None => {
            violations.add(
                &format!("{field}.grant"),
                "required: client_credentials or jwt_bearer",
            );
            secrets::SalesforceGrant::ClientCredentials {
                client_secret: String::new(),
            }
        }
    };
    secrets::SalesforceCredentials {
        login_url,
        client_id,
        grant,
    }
}

/// Validates a display name.
pub fn display_name(violations: &mut Violations, field: &str, value: &str) -> String {
    let trimmed = value.trim();
    let length = trimmed.chars().count();
    if length == 0 {
        violations.add(field, "required: a name a person recognises");
    } else if length > 200 {
        violations.add(field, "at most 200 characters");
    }
    trimmed.to_string()
}

/// Validates a call budget (0: the default).
pub fn calls_per_hour(violations: &mut Violations, field: &str, value: i32) -> i32 {
    match value {
        0 => 1000,
        1..=100_000 => value,
        _ => {
            violations.add(field, "between 1 and 100000 (0 means 1000)");
            1000
        }
    }
}

/// Reads an unenrollment policy.
pub fn unenrollment_policy(
    violations: &mut Violations,
    field: &str,
    value: i32,
) -> model::UnenrollmentPolicy {
    match pb::UnenrollmentPolicy::try_from(value) {
        Ok(pb::UnenrollmentPolicy::Unspecified | pb::UnenrollmentPolicy::MarkUnenrolled) => {
            model::UnenrollmentPolicy::MarkUnenrolled
        }
        Ok(pb::UnenrollmentPolicy::Delete) => model::UnenrollmentPolicy::Delete,
        Err(_) => {
            violations.add(field, format!("unknown unenrollment policy {value}"));
            model::UnenrollmentPolicy::MarkUnenrolled
        }
    }
}

/// Reads an unenrollment guard (the defaults when absent).
pub fn unenrollment_guard(
    violations: &mut Violations,
    field: &str,
    value: Option<&pb::UnenrollmentGuard>,
) -> model::UnenrollmentGuard {
    let Some(guard) = value else {
        return model::UnenrollmentGuard::default();
    };
    if !(0..=100).contains(&guard.max_percent) {
        violations.add(
            &format!("{field}.max_percent"),
            format!("{} is not a percentage from 0 to 100", guard.max_percent),
        );
    }
    if guard.min_records < 0 {
        violations.add(
            &format!("{field}.min_records"),
            format!("{} is negative", guard.min_records),
        );
    }
    model::UnenrollmentGuard {
        max_percent: guard.max_percent,
        min_records: guard.min_records,
    }
}

/// Reads an optional duration in whole seconds between `min` and `max` (`default` when absent).
pub fn seconds(
    violations: &mut Violations,
    field: &str,
    value: Option<&prost_types::Duration>,
    (min, default, max): (i64, i64, i64),
    why: &str,
) -> i32 {
    let Some(duration) = value else {
        return default as i32;
    };
    if duration.nanos != 0 || duration.seconds < min || duration.seconds > max {
        violations.add(field, format!("whole seconds between {min} and {max}{why}"));
    }
    duration.seconds.clamp(1, max) as i32
}

/// Reads a page size (0: the default of 100).
pub fn page_size(violations: &mut Violations, value: i32) -> i64 {
    match value {
        0 => 100,
        1..=1000 => i64::from(value),
        _ => {
            violations.add("page_size", "between 0 and 1000");
            100
        }
    }
}

/// Encodes a listing cursor as an opaque page token.
pub fn page_token(time: DateTime<Utc>, id: Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{id}", time.timestamp_micros()))
}

/// Trims a page read with one row more than `limit` and returns the token of the next page
/// (empty on the last page): the extra row says whether there is one.
pub fn next_page_token<T>(
    page: &mut Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> String {
    if page.len() as i64 <= limit {
        return String::new();
    }
    page.truncate(limit as usize);
    page.last()
        .map(|last| {
            let (time, id) = cursor(last);
            page_token(time, id)
        })
        .unwrap_or_default()
}

/// Decodes a page token.
pub fn parse_page_token(violations: &mut Violations, value: &str) -> Option<(DateTime<Utc>, Uuid)> {
    use base64::Engine as _;
    if value.is_empty() {
        return None;
    }
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (micros, id) = text.split_once(':')?;
            Some((
                DateTime::from_timestamp_micros(micros.parse().ok()?)?,
                Uuid::parse_str(id).ok()?,
            ))
        });
    if decoded.is_none() {
        violations.add("page_token", "not a token this server issued");
    }
    decoded
}

/// A timestamp for the wire.
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn opt_timestamp(time: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    time.map(to_timestamp)
}

/// The wire value of an area.
pub fn area_to_proto(area: model::Area) -> pb::Area {
    match area {
        model::Area::Users => pb::Area::Users,
        model::Area::Courses => pb::Area::Courses,
        model::Area::Enrollments => pb::Area::Enrollments,
    }
}

/// A connection for the wire: never its credentials.
pub fn connection_to_proto(connection: &model::Connection) -> pb::Connection {
    pb::Connection {
        id: connection.id.to_string(),
        display_name: connection.display_name.clone(),
        tenant: connection.tenant.clone(),
        docebo: None,
        salesforce: None,
        credentials_info: Some(pb::CredentialsInfo {
            docebo_grant: connection.docebo_grant.clone(),
            salesforce_grant: connection.salesforce_grant.clone(),
            update_time: Some(to_timestamp(connection.credentials_time)),
        }),
        unenrollment_policy: match connection.unenrollment_policy {
            model::UnenrollmentPolicy::MarkUnenrolled => pb::UnenrollmentPolicy::MarkUnenrolled,
            model::UnenrollmentPolicy::Delete => pb::UnenrollmentPolicy::Delete,
        } as i32,
        docebo_calls_per_hour: connection.docebo_calls_per_hour,
        unenrollment_guard: Some(pb::UnenrollmentGuard {
            max_percent: connection.unenrollment_guard.max_percent,
            min_records: connection.unenrollment_guard.min_records,
        }),
        create_time: Some(to_timestamp(connection.create_time)),
        update_time: Some(to_timestamp(connection.update_time)),
    }
}

/// An area configuration for the wire (the defaults when never configured).
pub fn area_config_to_proto(
    area: model::Area,
    config: Option<&model::AreaConfig>,
) -> pb::AreaConfig {
    match config {
        Some(config) => pb::AreaConfig {
            area: area_to_proto(area) as i32,
            enabled: config.enabled,
            mode: match config.mode {
                model::Mode::Manual => pb::Mode::Manual,
                model::Mode::Realtime => pb::Mode::Realtime,
            } as i32,
            interval: Some(prost_types::Duration {
                seconds: i64::from(config.interval_seconds),
                nanos: 0,
            }),
            course_category_ids: config.course_category_ids.clone(),
            update_time: Some(to_timestamp(config.update_time)),
            full_comparison_interval: Some(prost_types::Duration {
                seconds: i64::from(config.full_interval_seconds),
                nanos: 0,
            }),
        },
        None => pb::AreaConfig {
            area: area_to_proto(area) as i32,
            enabled: false,
            mode: pb::Mode::Manual as i32,
            interval: Some(prost_types::Duration {
                seconds: 900,
                nanos: 0,
            }),
            course_category_ids: Vec::new(),
            update_time: None,
            full_comparison_interval: Some(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
        },
    }
}

fn counts_to_proto(counts: model::Counts) -> pb::Counts {
    pb::Counts {
        read: counts.read,
        written: counts.written,
        unchanged: counts.unchanged,
        failed: counts.failed,
        expected: counts.expected,
        created: counts.created,
        repaired: counts.repaired,
        unenrolled: counts.unenrolled,
    }
}

fn job_to_proto(job: &model::Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        kind: match job.kind {
            model::JobKind::Users => pb::JobKind::Users,
            model::JobKind::Courses => pb::JobKind::Courses,
            model::JobKind::LearningPlans => pb::JobKind::LearningPlans,
            model::JobKind::Sessions => pb::JobKind::Sessions,
            model::JobKind::CourseEnrollments => pb::JobKind::CourseEnrollments,
            model::JobKind::LearningPlanEnrollments => pb::JobKind::LearningPlanEnrollments,
            model::JobKind::WebinarSessionEnrollments => pb::JobKind::WebinarSessionEnrollments,
            model::JobKind::IltSessionEnrollments => pb::JobKind::IltSessionEnrollments,
        } as i32,
        state: match job.state {
            model::JobState::Queued => pb::JobState::Queued,
            model::JobState::Running => pb::JobState::Running,
            model::JobState::Succeeded => pb::JobState::Succeeded,
            model::JobState::SucceededWithErrors => pb::JobState::SucceededWithErrors,
            model::JobState::Failed => pb::JobState::Failed,
            model::JobState::Stopped => pb::JobState::Stopped,
        } as i32,
        attempt: job.attempt,
        counts: Some(counts_to_proto(job.counts)),
        status_message: job.status_message.clone(),
        error_message: job.error_message.clone().unwrap_or_default(),
        start_time: opt_timestamp(job.start_time),
        end_time: opt_timestamp(job.end_time),
    }
}

/// The wire value of a run state.
pub fn run_state_to_proto(state: model::RunState) -> pb::RunState {
    match state {
        model::RunState::Queued => pb::RunState::Queued,
        model::RunState::Running => pb::RunState::Running,
        model::RunState::Stopping => pb::RunState::Stopping,
        model::RunState::Succeeded => pb::RunState::Succeeded,
        model::RunState::SucceededWithErrors => pb::RunState::SucceededWithErrors,
        model::RunState::Failed => pb::RunState::Failed,
        model::RunState::Stopped => pb::RunState::Stopped,
    }
}

/// A run for the wire.
pub fn run_to_proto(run: &model::Run) -> pb::Run {
    let timeframe =
        (run.timeframe_start.is_some() || run.timeframe_end.is_some()).then(|| pb::Timeframe {
            start_time: opt_timestamp(run.timeframe_start),
            end_time: opt_timestamp(run.timeframe_end),
        });
    pb::Run {
        id: run.id.to_string(),
        connection_id: run.connection_id.to_string(),
        area: area_to_proto(run.area) as i32,
        trigger: match run.trigger {
            model::Trigger::Start => pb::Trigger::Start,
            model::Trigger::Resynchronize => pb::Trigger::Resynchronize,
            model::Trigger::Schedule => pb::Trigger::Schedule,
            model::Trigger::Webhook => pb::Trigger::Webhook,
        } as i32,
        timeframe,
        state: run_state_to_proto(run.state) as i32,
        jobs: run.jobs.iter().map(job_to_proto).collect(),
        counts: Some(counts_to_proto(run.counts())),
        full: run.full_sync,
        rewrite_unchanged: run.rewrite_unchanged,
        check_only: run.check_only,
        confirm_unenrollments: run.confirm_unenrollments,
        first_error_sequence: run.first_error_sequence.unwrap_or(0),
        error_message: run.error_message.clone().unwrap_or_default(),
        create_time: Some(to_timestamp(run.create_time)),
        start_time: opt_timestamp(run.start_time),
        end_time: opt_timestamp(run.end_time),
        stop_time: opt_timestamp(run.stop_time),
        trace_id: run.trace_id.clone(),
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`), when the
/// header is there and well formed; a malformed one is ignored, as the specification asks.
pub fn traceparent_trace_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let header = metadata.get("traceparent")?.to_str().ok()?.trim();
    let mut parts = header.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |text: &str| text.bytes().all(|b| b == b'0');
    let known_version = version == "00" && parts.next().is_none();
    let later_version = hex(version, 2) && version != "00" && version != "ff";
    let valid = (known_version || later_version)
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2);
    valid.then(|| trace_id.to_string())
}

/// Reads a log level filter.
pub fn min_level(violations: &mut Violations, value: i32) -> Option<model::LogLevel> {
    match pb::LogLevel::try_from(value) {
        Ok(pb::LogLevel::Unspecified) => None,
        Ok(pb::LogLevel::Debug) => Some(model::LogLevel::Debug),
        Ok(pb::LogLevel::Info) => Some(model::LogLevel::Info),
        Ok(pb::LogLevel::Warn) => Some(model::LogLevel::Warn),
        Ok(pb::LogLevel::Error) => Some(model::LogLevel::Error),
        Err(_) => {
            violations.add("min_level", format!("unknown log level {value}"));
            None
        }
    }
}

/// A log event for the wire.
pub fn log_event_to_proto(event: &model::LogEvent) -> pb::LogEvent {
    pb::LogEvent {
        sequence: event.sequence,
        connection_id: event.connection_id.to_string(),
        run_id: event.run_id.map(|id| id.to_string()).unwrap_or_default(),
        job_id: event.job_id.map(|id| id.to_string()).unwrap_or_default(),
        time: Some(to_timestamp(event.time)),
        level: match event.level {
            model::LogLevel::Debug => pb::LogLevel::Debug,
            model::LogLevel::Info => pb::LogLevel::Info,
            model::LogLevel::Warn => pb::LogLevel::Warn,
            model::LogLevel::Error => pb::LogLevel::Error,
        } as i32,
        message: event.message.clone(),
        record_key: event.record_key.clone().unwrap_or_default(),
        error_code: event.error_code.clone().unwrap_or_default(),
        fields: event
            .fields
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_answer_lists_at_most_max_violations_and_counts_the_rest() {
        let mut violations = Violations::default();
        for index in 0..1000 {
            violations.add(&format!("field[{index}]"), "wrong");
        }
        let status = violations.check().unwrap_err();
        let bad = tonic_types::StatusExt::get_details_bad_request(&status).unwrap();
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS + 1);
        let last = bad.field_violations.last().unwrap();
        assert_eq!(last.field, "request");
        assert!(
            last.description.contains("980 more"),
            "{}",
            last.description
        );
    }
}

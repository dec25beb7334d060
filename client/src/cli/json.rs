//! JSON renderings of the API's messages for `--json` (the generated types carry no serde).

use learnsync_client::pb;
use serde_json::{Value, json};

fn time(value: &Option<prost_types::Timestamp>) -> Value {
    match value {
        Some(ts) => chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
            .map(|t| Value::String(t.to_rfc3339()))
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}

fn name<E: std::fmt::Debug>(value: Result<E, prost::UnknownEnumValue>) -> Value {
    match value {
        Ok(known) => Value::String(format!("{known:?}")),
        Err(unknown) => Value::String(format!("{}", unknown.0)),
    }
}

/// A connection.
pub fn connection(c: &pb::Connection) -> Value {
    json!({
        "id": c.id,
        "display_name": c.display_name,
        "tenant": c.tenant,
        "credentials_info": c.credentials_info.as_ref().map(|i| json!({
            "docebo_grant": i.docebo_grant,
            "salesforce_grant": i.salesforce_grant,
            "update_time": time(&i.update_time),
        })),
        "unenrollment_policy": name(pb::UnenrollmentPolicy::try_from(c.unenrollment_policy)),
        "docebo_calls_per_hour": c.docebo_calls_per_hour,
        "unenrollment_guard": c.unenrollment_guard.map(|g| json!({
            "max_percent": g.max_percent,
            "min_records": g.min_records,
        })),
        "create_time": time(&c.create_time),
        "update_time": time(&c.update_time),
    })
}

/// An area configuration.
pub fn area_config(c: &pb::AreaConfig) -> Value {
    json!({
        "area": name(pb::Area::try_from(c.area)),
        "enabled": c.enabled,
        "mode": name(pb::Mode::try_from(c.mode)),
        "interval_seconds": c.interval.as_ref().map(|d| d.seconds),
        "course_category_ids": c.course_category_ids,
        "update_time": time(&c.update_time),
    })
}

fn counts(c: &Option<pb::Counts>) -> Value {
    let c = c.unwrap_or_default();
    json!({"read": c.read, "written": c.written, "unchanged": c.unchanged, "failed": c.failed,
        "expected": c.expected, "created": c.created, "repaired": c.repaired,
        "unenrolled": c.unenrolled})
}

/// A run with its jobs.
pub fn run(r: &pb::Run) -> Value {
    json!({
        "id": r.id,
        "connection_id": r.connection_id,
        "area": name(pb::Area::try_from(r.area)),
        "trigger": name(pb::Trigger::try_from(r.trigger)),
        "timeframe": r.timeframe.as_ref().map(|t| json!({"start_time": time(&t.start_time), "end_time": time(&t.end_time)})),
        "state": name(pb::RunState::try_from(r.state)),
        "full": r.full,
        "rewrite_unchanged": r.rewrite_unchanged,
        "check_only": r.check_only,
        "confirm_unenrollments": r.confirm_unenrollments,
        "counts": counts(&r.counts),
        "first_error_sequence": r.first_error_sequence,
        "error_message": r.error_message,
        "create_time": time(&r.create_time),
        "start_time": time(&r.start_time),
        "end_time": time(&r.end_time),
        "stop_time": time(&r.stop_time),
        "jobs": r.jobs.iter().map(|j| json!({
            "id": j.id,
            "kind": name(pb::JobKind::try_from(j.kind)),
            "state": name(pb::JobState::try_from(j.state)),
            "attempt": j.attempt,
            "counts": counts(&j.counts),
            "status_message": j.status_message,
            "error_message": j.error_message,
            "start_time": time(&j.start_time),
            "end_time": time(&j.end_time),
        })).collect::<Vec<_>>(),
    })
}

/// A connection's status.
pub fn status(s: &pb::GetStatusResponse) -> Value {
    json!({
        "connection_id": s.connection_id,
        "areas": s.areas.iter().map(|a| json!({
            "area": name(pb::Area::try_from(a.area)),
            "configured": a.configured,
            "config": a.config.as_ref().map(area_config),
            "active_run": a.active_run.as_ref().map(run),
            "last_run": a.last_run.as_ref().map(run),
            "last_success_time": time(&a.last_success_time),
            "records_imported": a.records_imported,
            "first_error_sequence": a.first_error_sequence,
            "next_run_time": time(&a.next_run_time),
            "unenrollments_tracked": a.unenrollments_tracked,
        })).collect::<Vec<_>>(),
    })
}

/// A log event.
pub fn log_event(e: &pb::LogEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "connection_id": e.connection_id,
        "run_id": e.run_id,
        "job_id": e.job_id,
        "time": time(&e.time),
        "level": name(pb::LogLevel::try_from(e.level)),
        "message": e.message,
        "record_key": e.record_key,
        "error_code": e.error_code,
        "fields": e.fields,
    })
}

//! Text renderings for people.

use crate::pb;

fn time(value: &Option<prost_types::Timestamp>) -> String {
    value
        .as_ref()
        .and_then(|ts| chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// A short lowercase name of an enum value: `RunState::SucceededWithErrors` → `succeeded with errors`.
pub fn enum_name<E: std::fmt::Debug>(value: Result<E, prost::UnknownEnumValue>) -> String {
    let raw = match value {
        Ok(known) => format!("{known:?}"),
        Err(unknown) => return format!("unknown({})", unknown.0),
    };
    let mut out = String::new();
    for (index, ch) in raw.chars().enumerate() {
        if ch.is_uppercase() && index > 0 {
            out.push(' ');
        }
        out.extend(ch.to_lowercase());
    }
    out
}

/// A connection.
pub fn connection(c: &pb::Connection) -> String {
    let info = c.credentials_info.clone().unwrap_or_default();
    let guard = c.unenrollment_guard.unwrap_or_default();
    format!(
        "connection {}  {:?}  tenant {}  docebo {}  salesforce {}  {} calls/h  unenrolled: {}  \
         held above: max({}, {}%)",
        c.id,
        c.display_name,
        c.tenant,
        info.docebo_grant,
        info.salesforce_grant,
        c.docebo_calls_per_hour,
        enum_name(pb::UnenrollmentPolicy::try_from(c.unenrollment_policy)),
        guard.min_records,
        guard.max_percent,
    )
}

/// An area configuration.
pub fn area_config(c: &pb::AreaConfig) -> String {
    let mut text = format!(
        "{} {} {}",
        enum_name(pb::Area::try_from(c.area)),
        if c.enabled { "enabled" } else { "disabled" },
        enum_name(pb::Mode::try_from(c.mode)),
    );
    if c.mode == pb::Mode::Realtime as i32 {
        let seconds = c.interval.as_ref().map_or(900, |d| d.seconds.max(0) as u64);
        text.push_str(&format!(
            " every {}",
            humantime::format_duration(std::time::Duration::from_secs(seconds))
        ));
    }
    if !c.course_category_ids.is_empty() {
        text.push_str(&format!(" categories {:?}", c.course_category_ids));
    }
    text
}

fn counts(c: &Option<pb::Counts>) -> String {
    let c = c.unwrap_or_default();
    let mut text = format!(
        "read {} written {} unchanged {} failed {}",
        c.read, c.written, c.unchanged, c.failed
    );
    for (name, count) in [
        ("created", c.created),
        ("repaired", c.repaired),
        ("unenrolled", c.unenrolled),
    ] {
        if count > 0 {
            text.push_str(&format!(" {name} {count}"));
        }
    }
    text
}

/// A run with its jobs.
pub fn run(r: &pb::Run) -> String {
    let mut text = format!(
        "run {}  {}  {}  {}  created {}  ended {}\n  {}",
        r.id,
        enum_name(pb::Area::try_from(r.area)),
        enum_name(pb::Trigger::try_from(r.trigger)),
        enum_name(pb::RunState::try_from(r.state)),
        time(&r.create_time),
        time(&r.end_time),
        counts(&r.counts),
    );
    if let Some(tf) = &r.timeframe {
        text.push_str(&format!(
            "  timeframe {} .. {}",
            time(&tf.start_time),
            time(&tf.end_time)
        ));
    }
    if r.check_only {
        text.push_str(
            "\n  check: nothing was written; the counts say what a synchronization would do",
        );
    }
    if !r.trace_id.is_empty() {
        text.push_str(&format!("\n  trace {}", r.trace_id));
    }
    if !r.error_message.is_empty() {
        text.push_str(&format!("\n  error: {}", r.error_message));
    }
    if r.first_error_sequence > 0 {
        text.push_str(&format!(
            "\n  first error at log #{} (learnsync logs {} --run {} --from-first-error)",
            r.first_error_sequence, r.connection_id, r.id
        ));
    }
    for job in &r.jobs {
        text.push_str(&format!(
            "\n  - {:<30} {:<22} attempt {}  {}{}",
            enum_name(pb::JobKind::try_from(job.kind)),
            enum_name(pb::JobState::try_from(job.state)),
            job.attempt,
            counts(&job.counts),
            if job.status_message.is_empty() {
                String::new()
            } else {
                format!("  ({})", job.status_message)
            }
        ));
        if !job.error_message.is_empty() {
            text.push_str(&format!("\n      error: {}", job.error_message));
        }
    }
    text
}

/// A connection's status as a table.
pub fn status(s: &pb::GetStatusResponse) -> String {
    let mut text = format!(
        "connection {}\n{:<12} {:<9} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>10}  {}\n",
        s.connection_id,
        "AREA",
        "ENABLED",
        "MODE",
        "RUN",
        "READ",
        "WRITTEN",
        "UNCHANGED",
        "FAILED",
        "IMPORTED",
        "LAST SUCCESS"
    );
    for area in &s.areas {
        let config = area.config.clone().unwrap_or_default();
        let run = area.active_run.as_ref().or(area.last_run.as_ref());
        let c = run.and_then(|r| r.counts).unwrap_or_default();
        let mode = if area.configured {
            area_config(&config)
        } else {
            "not configured".to_string()
        };
        let mode = mode.split_once(' ').map_or(mode.clone(), |(_, rest)| {
            rest.trim_start_matches("enabled ")
                .trim_start_matches("disabled ")
                .to_string()
        });
        text.push_str(&format!(
            "{:<12} {:<9} {:<24} {:<22} {:>10} {:>10} {:>10} {:>8} {:>10}  {}\n",
            enum_name(pb::Area::try_from(area.area)),
            if config.enabled { "yes" } else { "no" },
            mode,
            run.map_or("-".to_string(), |r| enum_name(pb::RunState::try_from(
                r.state
            ))),
            c.read,
            c.written,
            c.unchanged,
            c.failed,
            area.records_imported,
            time(&area.last_success_time),
        ));
        if area.first_error_sequence > 0 {
            text.push_str(&format!(
                "{:<12} first error at log #{}\n",
                "", area.first_error_sequence
            ));
        }
        if area.next_run_time.is_some() {
            text.push_str(&format!(
                "{:<12} next run {}\n",
                "",
                time(&area.next_run_time)
            ));
        }
    }
    text.trim_end().to_string()
}

/// A log event on one line.
pub fn log_event(e: &pb::LogEvent) -> String {
    let mut text = format!(
        "#{:<6} {} {:<5} {}",
        e.sequence,
        time(&e.time),
        enum_name(pb::LogLevel::try_from(e.level)),
        e.message
    );
    if !e.record_key.is_empty() {
        text.push_str(&format!(" record={}", e.record_key));
    }
    if !e.error_code.is_empty() {
        text.push_str(&format!(" code={}", e.error_code));
    }
    let mut fields: Vec<_> = e.fields.iter().collect();
    fields.sort();
    for (key, value) in fields {
        text.push_str(&format!(" {key}={value}"));
    }
    text
}

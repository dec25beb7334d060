//! The console's HTML, rendered with `maud`, which escapes every value it interpolates: names,
//! messages and record keys come from tenants and from Docebo, and are treated as hostile.

use learnsync_proto::v1 as pb;
use maud::{DOCTYPE, Markup, html};

use crate::auth::Principal;

/// The connection pages' tabs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// The three areas.
    Status,
    /// The runs, newest first.
    Runs,
    /// The log.
    Log,
}

/// A whole page: header, navigation, the signed-in principal and a sign-out button.
pub fn layout(title: &str, principal: Option<&Principal>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · learnsync" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "learnsync" }
                    span.muted { "console (read-only)" }
                    @if let Some(principal) = principal {
                        span.who { "signed in as " strong { (principal.name()) } }
                        form.signout method="post" action="/sign-out" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form (the token travels in a POST body, never in a URL).
pub fn sign_in(refused: bool) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if refused {
                p.error #sign-in-error { "The token is not valid." }
            }
            form.signin method="post" action="/sign-in" autocomplete="off" {
                label for="token" { "Bearer token" }
                input #token type="password" name="token" required autofocus;
                button #sign-in type="submit" { "Sign in" }
            }
            p.muted { "The same tokens as the gRPC API: a tenant's token shows that tenant's connections only." }
        },
    )
}

/// A page that says what went wrong.
pub fn problem(principal: Option<&Principal>, title: &str, message: &str) -> Markup {
    layout(
        title,
        principal,
        html! {
            h1 { (title) }
            p.error #problem { (message) }
            p { a href="/" { "Back to the connections" } }
        },
    )
}

/// The connections a principal may see.
pub fn connections(
    principal: &Principal,
    connections: &[pb::Connection],
    next_page: Option<&str>,
) -> Markup {
    layout(
        "Connections",
        Some(principal),
        html! {
            h1 { "Connections" }
            @if connections.is_empty() {
                p.muted #no-connections { "No connection yet." }
            } @else {
                table #connections {
                    thead { tr { th { "Name" } th { "Tenant" } th { "Id" } th { "Created" } } }
                    tbody {
                        @for connection in connections {
                            tr.connection data-id=(connection.id) {
                                td { a href={ "/connections/" (connection.id) } { (connection.display_name) } }
                                td { (connection.tenant) }
                                td.mono { (connection.id) }
                                td { (time(connection.create_time.as_ref())) }
                            }
                        }
                    }
                }
            }
            @if let Some(token) = next_page {
                p { a href={ "/?page=" (url_encode(token)) } { "More connections" } }
            }
        },
    )
}

fn connection_header(connection: &pb::Connection, tab: Tab) -> Markup {
    let base = format!("/connections/{}", connection.id);
    html! {
        p.crumbs { a href="/" { "Connections" } " / " (connection.display_name) }
        h1 { (connection.display_name) }
        p.muted { "tenant " (connection.tenant) " · " span.mono { (connection.id) } }
        nav.tabs {
            a.active[tab == Tab::Status] href=(base) { "Status" }
            a.active[tab == Tab::Runs] href={ (base) "/runs" } { "Runs" }
            a.active[tab == Tab::Log] href={ (base) "/logs" } { "Log" }
        }
    }
}

/// One connection's three areas, refreshed in place while the page is open.
pub fn status(
    principal: &Principal,
    connection: &pb::Connection,
    status: &pb::GetStatusResponse,
) -> Markup {
    layout(
        &connection.display_name,
        Some(principal),
        html! {
            (connection_header(connection, Tab::Status))
            div #areas data-live={ "/connections/" (connection.id) "/live/status" } {
                (areas(&connection.id, status))
            }
            p.muted.live { "Updates live. " span #updated {} }
        },
    )
}

/// The areas' cards: what the status page shows and its live refresh replaces.
pub fn areas(connection_id: &str, status: &pb::GetStatusResponse) -> Markup {
    html! {
        div.areas {
            @for area in &status.areas {
                (area_card(connection_id, area))
            }
        }
    }
}

fn area_card(connection_id: &str, status: &pb::AreaStatus) -> Markup {
    let area = label(
        pb::Area::try_from(status.area).map(|a| a.as_str_name()),
        "AREA_",
    );
    let config = status.config.as_ref();
    let run = status.active_run.as_ref().or(status.last_run.as_ref());
    html! {
        section.area #{ "area-" (area) } data-area=(area) {
            h2 { (capitalize(&area)) }
            dl {
                dt { "Enabled" }
                dd.enabled {
                    @if !status.configured { "not configured" }
                    @else if config.is_some_and(|c| c.enabled) { "yes" }
                    @else { "no" }
                }
                dt { "Mode" }
                dd.mode { (config.map(mode).unwrap_or_else(|| "—".to_string())) }
                dt { "State" }
                dd.state {
                    @match run {
                        Some(run) => {
                            (state_badge(run))
                            @if status.active_run.is_none() { " " span.muted { "(last run)" } }
                        }
                        None => span.muted { "never run" },
                    }
                }
                dt { "Last successful synchronization" }
                dd.last-success { (time(status.last_success_time.as_ref())) }
                dt { "Records imported" }
                dd.imported { (number(status.records_imported)) }
                dt { "Next scheduled run" }
                dd.next-run { (time(status.next_run_time.as_ref())) }
            }
            @if let Some(run) = run {
                (jobs_table(&run.jobs))
                p.links {
                    a href={ "/connections/" (connection_id) "/runs/" (run.id) } { "Run details" }
                    " · "
                    (view_logs(connection_id, run))
                }
            }
        }
    }
}

/// The "View Logs" link: on the first error when the run failed or ended with errors.
fn view_logs(connection_id: &str, run: &pb::Run) -> Markup {
    let failed = [pb::RunState::Failed, pb::RunState::SucceededWithErrors]
        .iter()
        .any(|state| *state as i32 == run.state);
    html! {
        @if failed && run.first_error_sequence > 0 {
            a.view-logs.first-error href={
                "/connections/" (connection_id) "/logs?run=" (run.id)
                "&from=" (run.first_error_sequence) "#event-" (run.first_error_sequence)
            } { "View logs (first error)" }
        } @else {
            a.view-logs href={ "/connections/" (connection_id) "/logs?run=" (run.id) } { "View logs" }
        }
    }
}

/// A run's jobs with their progress.
pub fn jobs_table(jobs: &[pb::Job]) -> Markup {
    html! {
        table.jobs {
            thead { tr {
                th { "Job" } th { "State" } th { "Progress" } th.num { "Read" } th.num { "Written" }
                th.num { "Unchanged" } th.num { "Failed" } th { "Doing" }
            } }
            tbody {
                @for job in jobs {
                    @let counts = job.counts.unwrap_or_default();
                    @let done = counts.written + counts.unchanged + counts.failed;
                    @let kind = label(pb::JobKind::try_from(job.kind).map(|k| k.as_str_name()), "JOB_KIND_");
                    @let state = label(pb::JobState::try_from(job.state).map(|s| s.as_str_name()), "JOB_STATE_");
                    tr.job data-kind=(kind) data-done=(done) data-state=(state) {
                        td { (kind) }
                        td { span class={ "badge " (state.replace(' ', "-")) } { (state) } }
                        td {
                            @if counts.expected > 0 {
                                progress value=(done.min(counts.expected)) max=(counts.expected) {}
                                " " (percent(done, counts.expected))
                            } @else if job.state == pb::JobState::Running as i32 {
                                progress {}
                            } @else {
                                span.muted { "—" }
                            }
                        }
                        td.num { (number(counts.read)) }
                        td.num { (number(counts.written)) }
                        td.num { (number(counts.unchanged)) }
                        td.num.failed[counts.failed > 0] { (number(counts.failed)) }
                        td.doing {
                            (job.status_message)
                            @if !job.error_message.is_empty() { br; span.error { (job.error_message) } }
                        }
                    }
                }
            }
        }
    }
}

/// A connection's runs, newest first.
pub fn runs(
    principal: &Principal,
    connection: &pb::Connection,
    runs: &[pb::Run],
    next_page: Option<&str>,
) -> Markup {
    let base = format!("/connections/{}", connection.id);
    layout(
        &format!("Runs of {}", connection.display_name),
        Some(principal),
        html! {
            (connection_header(connection, Tab::Runs))
            @if runs.is_empty() {
                p.muted #no-runs { "No run yet." }
            } @else {
                table #runs {
                    thead { tr {
                        th { "Created" } th { "Area" } th { "Trigger" } th { "State" } th { "Timeframe" }
                        th.num { "Read" } th.num { "Written" } th.num { "Unchanged" } th.num { "Failed" }
                        th { "Duration" } th {}
                    } }
                    tbody {
                        @for run in runs {
                            @let counts = run.counts.unwrap_or_default();
                            tr.run data-id=(run.id) {
                                td { a href={ (base) "/runs/" (run.id) } { (time(run.create_time.as_ref())) } }
                                td { (label(pb::Area::try_from(run.area).map(|a| a.as_str_name()), "AREA_")) }
                                td { (trigger(run)) }
                                td { (state_badge(run)) }
                                td { (timeframe(run)) }
                                td.num { (number(counts.read)) }
                                td.num { (number(counts.written)) }
                                td.num { (number(counts.unchanged)) }
                                td.num.failed[counts.failed > 0] { (number(counts.failed)) }
                                td { (duration(run)) }
                                td { (view_logs(&connection.id, run)) }
                            }
                        }
                    }
                }
            }
            @if let Some(token) = next_page {
                p { a href={ (base) "/runs?page=" (url_encode(token)) } { "Older runs" } }
            }
        },
    )
}

/// One run and its jobs, refreshed in place while the run is active.
pub fn run(principal: &Principal, connection: &pb::Connection, run: &pb::Run) -> Markup {
    layout(
        "Run",
        Some(principal),
        html! {
            (connection_header(connection, Tab::Runs))
            div #run data-live={ "/connections/" (connection.id) "/live/runs/" (run.id) } {
                (run_detail(&connection.id, run))
            }
            p.muted.live { "Updates live. " span #updated {} }
        },
    )
}

/// A run's summary and jobs: what the run page shows and its live refresh replaces.
pub fn run_detail(connection_id: &str, run: &pb::Run) -> Markup {
    let counts = run.counts.unwrap_or_default();
    html! {
        h2 { "Run " span.mono { (run.id) } }
        dl.run-summary {
            dt { "Area" } dd { (label(pb::Area::try_from(run.area).map(|a| a.as_str_name()), "AREA_")) }
            dt { "State" } dd.state { (state_badge(run)) }
            dt { "Trigger" } dd { (trigger(run)) }
            dt { "Timeframe" } dd { (timeframe(run)) }
            dt { "Created" } dd { (time(run.create_time.as_ref())) }
            dt { "Duration" } dd { (duration(run)) }
            dt { "Records" } dd {
                (number(counts.read)) " read, " (number(counts.written)) " written, "
                (number(counts.unchanged)) " unchanged, " (number(counts.failed)) " failed"
            }
            dt { "Trace id" } dd.mono { (run.trace_id) }
            @if !run.error_message.is_empty() {
                dt { "Error" } dd.error { (run.error_message) }
            }
        }
        (jobs_table(&run.jobs))
        p.links { (view_logs(connection_id, run)) }
    }
}

/// What the log page shows: its filter and where it starts.
pub struct LogView<'a> {
    /// The run the log is limited to, when it is.
    pub run: Option<&'a pb::Run>,
    /// The minimum level shown (`Unspecified`: all).
    pub level: pb::LogLevel,
    /// The first sequence shown.
    pub from: i64,
    /// The URL the live rows come from (without `after`).
    pub live: String,
}

/// A connection's log, from a position, followed live.
pub fn log(
    principal: &Principal,
    connection: &pb::Connection,
    view: &LogView<'_>,
    events: &[pb::LogEvent],
) -> Markup {
    let base = format!("/connections/{}/logs", connection.id);
    let first_error = view.run.map(|run| run.first_error_sequence).unwrap_or(0);
    let after = events.last().map(|e| e.sequence).unwrap_or(view.from - 1);
    html! {
        (layout(&format!("Log of {}", connection.display_name), Some(principal), html! {
            (connection_header(connection, Tab::Log))
            @if let Some(run) = view.run {
                p { "Run " a.mono href={ "/connections/" (connection.id) "/runs/" (run.id) } { (run.id) }
                    " · " (state_badge(run)) }
            }
            form.filter method="get" action=(base) {
                @if let Some(run) = view.run { input type="hidden" name="run" value=(run.id); }
                label for="level" { "Level" }
                select #level name="level" {
                    @for (value, name) in [(pb::LogLevel::Unspecified, "all"), (pb::LogLevel::Debug, "debug"),
                        (pb::LogLevel::Info, "info"), (pb::LogLevel::Warn, "warn"), (pb::LogLevel::Error, "error")] {
                        option value=(name) selected[view.level == value] { (name) }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if view.from > 1 {
                p.muted { "From event " (view.from) ". "
                    a href={ (base) "?" (log_query(view.run, view.level, 1)) } { "From the beginning" } }
            }
            table #log {
                thead { tr { th.num { "#" } th { "Time" } th { "Level" } th { "Message" } th { "Record" } th { "Code" } th { "Details" } } }
                tbody #log-rows data-follow=(view.live) data-after=(after) {
                    (log_rows(events, first_error))
                }
            }
            p.muted.live { "Follows live. " span #updated {} }
        }))
    }
}

/// The query string of a log view.
pub fn log_query(run: Option<&pb::Run>, level: pb::LogLevel, from: i64) -> String {
    let mut query = Vec::new();
    if let Some(run) = run {
        query.push(format!("run={}", run.id));
    }
    if level != pb::LogLevel::Unspecified {
        query.push(format!("level={}", level_name(level as i32)));
    }
    if from > 1 {
        query.push(format!("from={from}"));
    }
    query.join("&")
}

/// Log rows: what the log page shows and its live follow appends.
pub fn log_rows(events: &[pb::LogEvent], first_error: i64) -> Markup {
    html! {
        @for event in events {
            @let level = level_name(event.level);
            tr id={ "event-" (event.sequence) } class={ "event " (level) @if event.sequence == first_error { " first-error" } }
                data-sequence=(event.sequence) {
                td.num { (event.sequence) }
                td.nowrap { (time(event.time.as_ref())) }
                td { span class={ "badge " (level) } { (level) } }
                td { (event.message) }
                td.mono { (event.record_key) }
                td.mono { (event.error_code) }
                td.fields {
                    @let fields: std::collections::BTreeMap<_, _> = event.fields.iter().collect();
                    @for (key, value) in fields { span.field { (key) "=" (value) } " " }
                }
            }
        }
    }
}

/// The name of a log level.
pub fn level_name(level: i32) -> &'static str {
    match pb::LogLevel::try_from(level) {
        Ok(pb::LogLevel::Debug) => "debug",
        Ok(pb::LogLevel::Info) => "info",
        Ok(pb::LogLevel::Warn) => "warn",
        Ok(pb::LogLevel::Error) => "error",
        _ => "all",
    }
}

fn state_badge(run: &pb::Run) -> Markup {
    let state = label(
        pb::RunState::try_from(run.state).map(|s| s.as_str_name()),
        "RUN_STATE_",
    );
    html! { span class={ "badge run-state " (state.replace(' ', "-")) } { (state) } }
}

fn trigger(run: &pb::Run) -> String {
    let trigger = label(
        pb::Trigger::try_from(run.trigger).map(|t| t.as_str_name()),
        "TRIGGER_",
    );
    if run.full {
        trigger
    } else {
        format!("{trigger} (incremental)")
    }
}

fn timeframe(run: &pb::Run) -> String {
    let frame = run.timeframe.as_ref();
    let start = frame.and_then(|f| f.start_time.as_ref());
    let end = frame.and_then(|f| f.end_time.as_ref());
    match (start, end) {
        (None, None) => "everything".to_string(),
        (start, end) => format!(
            "{} → {}",
            start.map(|t| time(Some(t))).unwrap_or_else(|| "…".into()),
            end.map(|t| time(Some(t))).unwrap_or_else(|| "now".into())
        ),
    }
}

fn duration(run: &pb::Run) -> String {
    let Some(start) = run.start_time.as_ref().and_then(to_chrono) else {
        return "—".to_string();
    };
    let end = run
        .end_time
        .as_ref()
        .and_then(to_chrono)
        .unwrap_or_else(chrono::Utc::now);
    let seconds = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        format!(
            "{}m {:02}s",
            (seconds / 60.0) as i64,
            (seconds % 60.0) as i64
        )
    } else {
        format!(
            "{}h {:02}m",
            (seconds / 3600.0) as i64,
            ((seconds % 3600.0) / 60.0) as i64
        )
    }
}

fn mode(config: &pb::AreaConfig) -> String {
    match pb::Mode::try_from(config.mode) {
        Ok(pb::Mode::Realtime) => match config.interval.as_ref() {
            Some(interval) => format!(
                "realtime, every {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    interval.seconds.max(0) as u64
                ))
            ),
            None => "realtime".to_string(),
        },
        Ok(pb::Mode::Manual) => "manual".to_string(),
        _ => "—".to_string(),
    }
}

fn to_chrono(timestamp: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(timestamp.seconds, timestamp.nanos.max(0) as u32)
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    match timestamp.and_then(to_chrono) {
        Some(time) => time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "—".to_string(),
    }
}

fn number(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 { format!("-{out}") } else { out }
}

fn percent(done: i64, expected: i64) -> String {
    format!("{}%", (done.min(expected) * 100) / expected.max(1))
}

/// A proto enum value's name without its prefix, lowercase with spaces ("succeeded with errors").
fn label(name: Result<&str, prost::UnknownEnumValue>, prefix: &str) -> String {
    match name {
        Ok(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_lowercase()
            .replace('_', " "),
        Err(_) => "unknown".to_string(),
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Percent-encodes a value for a query string (page tokens are base64 with `+`, `/`, `=`).
pub fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped() {
        let connection = pb::Connection {
            id: "c1".into(),
            display_name: "<script>alert(1)</script>".into(),
            tenant: "\"><img src=x onerror=alert(1)>".into(),
            ..Default::default()
        };
        let page = connections(&Principal::Operator, &[connection], None).into_string();
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("<img src=x"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn numbers_and_labels_read_well() {
        assert_eq!(number(1_234_567), "1,234,567");
        assert_eq!(number(12), "12");
        assert_eq!(number(-1000), "-1,000");
        assert_eq!(
            label(Ok("RUN_STATE_SUCCEEDED_WITH_ERRORS"), "RUN_STATE_"),
            "succeeded with errors"
        );
        assert_eq!(url_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}

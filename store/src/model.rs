//! The domain types of learnsync's job state, and their names in SQL. These are kept apart from
//! the wire types of the proto: the server converts at its edge.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Error, Result};

mod kinds;

pub use kinds::{COURSES_PATH, Entity, KindSpec, Listing, WebhookParents, WebhookSpec};

/// Declares a fieldless enum stored as text, with its SQL names.
macro_rules! sql_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $sql:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name in SQL (and in logs).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $sql),+ }
            }

            /// Reads a value stored in SQL.
            pub fn parse(text: &str) -> Result<$name> {
                match text {
                    $($sql => Ok($name::$variant),)+
                    other => Err(Error::Corrupt(format!(concat!("unknown ", stringify!($name), " {:?}"), other))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

sql_enum! {
    /// One of the three things a connection synchronizes.
    Area {
        /// Docebo users.
        Users = "users",
        /// Courses, learning plans and sessions.
        Courses = "courses",
        /// The four kinds of enrollment.
        Enrollments = "enrollments",
    }
}

sql_enum! {
    /// Manual or realtime replication.
    Mode {
        /// Only when a caller asks.
        Manual = "manual",
        /// Incrementally, on a schedule.
        Realtime = "realtime",
    }
}

sql_enum! {
    /// What started a run.
    Trigger {
        /// A caller's Start.
        Start = "start",
        /// A caller's Resynchronize.
        Resynchronize = "resynchronize",
        /// The realtime schedule.
        Schedule = "schedule",
        /// A Docebo webhook.
        Webhook = "webhook",
    }
}

sql_enum! {
    /// The lifecycle of a run.
    RunState {
        /// No job claimed yet.
        Queued = "queued",
        /// A job has been claimed.
        Running = "running",
        /// Stop was asked.
        Stopping = "stopping",
        /// Every record written.
        Succeeded = "succeeded",
        /// Finished, with records that could not be written.
        SucceededWithErrors = "succeeded_with_errors",
        /// A job could not finish.
        Failed = "failed",
        /// Stopped by Stop.
        Stopped = "stopped",
    }
}

impl RunState {
    /// The states in which a run is active (at most one per area).
    pub const ACTIVE: &'static [RunState] =
        &[RunState::Queued, RunState::Running, RunState::Stopping];

    /// Whether the run is still active.
    pub fn is_active(self) -> bool {
        RunState::ACTIVE.contains(&self)
    }

    /// Whether the run completed (the area counts as synchronized).
    pub fn is_completed(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::SucceededWithErrors)
    }
}

sql_enum! {
    /// One background job of a run.
    JobKind {
        /// Users.
        Users = "users",
        /// Courses.
        Courses = "courses",
        /// Learning plans.
        LearningPlans = "learning_plans",
        /// ILT and webinar sessions.
        Sessions = "sessions",
        /// Course enrollments.
        CourseEnrollments = "course_enrollments",
        /// Learning-plan enrollments.
        LearningPlanEnrollments = "learning_plan_enrollments",
        /// Webinar-session enrollments.
        WebinarSessionEnrollments = "webinar_session_enrollments",
        /// ILT-classroom-session enrollments.
        IltSessionEnrollments = "ilt_session_enrollments",
    }
}

impl JobKind {
    /// The area the job belongs to.
    pub fn area(self) -> Area {
        self.spec().area
    }
}

impl Area {
    /// The jobs a run of the area consists of, with the job each must wait for (by index).
    pub fn jobs(self) -> &'static [(JobKind, Option<usize>)] {
        match self {
            Area::Users => &[(JobKind::Users, None)],
            // Sessions look their course up in Salesforce: they wait for the courses job.
            Area::Courses => &[
                (JobKind::Courses, None),
                (JobKind::LearningPlans, None),
                (JobKind::Sessions, Some(0)),
            ],
            Area::Enrollments => &[
                (JobKind::CourseEnrollments, None),
                (JobKind::LearningPlanEnrollments, None),
                (JobKind::WebinarSessionEnrollments, None),
                (JobKind::IltSessionEnrollments, None),
            ],
        }
    }
}

sql_enum! {
    /// The lifecycle of a job.
    JobState {
        /// Waiting for a worker.
        Queued = "queued",
        /// Held by a worker under a lease.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Done, with records that could not be written.
        SucceededWithErrors = "succeeded_with_errors",
        /// Could not finish.
        Failed = "failed",
        /// Stopped by Stop.
        Stopped = "stopped",
    }
}

impl JobState {
    /// Whether the job reached a final state.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

sql_enum! {
    /// What to do with an enrollment that disappears from Docebo.
    UnenrollmentPolicy {
        /// Keep the record, marked unenrolled.
        MarkUnenrolled = "mark_unenrolled",
        /// Delete the record.
        Delete = "delete",
    }
}

/// The severity of a log event (stored as 1 to 4, as in the proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Detail.
    Debug = 1,
    /// Milestones.
    Info = 2,
    /// Retries, skips.
    Warn = 3,
    /// Records not written, jobs failed.
    Error = 4,
}

impl LogLevel {
    /// Reads a stored level.
    pub fn from_i16(value: i16) -> Result<LogLevel> {
        match value {
            1 => Ok(LogLevel::Debug),
            2 => Ok(LogLevel::Info),
            3 => Ok(LogLevel::Warn),
            4 => Ok(LogLevel::Error),
            other => Err(Error::Corrupt(format!("unknown log level {other}"))),
        }
    }
}

/// A connection as the control plane sees it (credentials stay encrypted).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// The connection's id.
    pub id: Uuid,
    /// The owning tenant.
    pub tenant: String,
    /// A name a person recognises.
    pub display_name: String,
    /// `client_credentials` or `password`.
    pub docebo_grant: String,
    /// `client_credentials` or `jwt_bearer`.
    pub salesforce_grant: String,
    /// When the credentials were last set.
    pub credentials_time: DateTime<Utc>,
    /// The Docebo platform key the call budget is shared under.
    pub docebo_platform: String,
    /// The platform's call budget.
    pub docebo_calls_per_hour: i32,
    /// What happens to enrollments that disappear from Docebo.
    pub unenrollment_policy: UnenrollmentPolicy,
    /// How many unenrollments one run may make before holding them for a confirmation.
    pub unenrollment_guard: UnenrollmentGuard,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last change.
    pub update_time: DateTime<Utc>,
}

/// The configuration and synchronization state of one area.
#[derive(Clone, Debug, PartialEq)]
pub struct AreaConfig {
    /// The connection.
    pub connection_id: Uuid,
    /// The area.
    pub area: Area,
    /// Whether it synchronizes at all.
    pub enabled: bool,
    /// Manual or realtime.
    pub mode: Mode,
    /// The realtime interval, in seconds.
    pub interval_seconds: i32,
    /// Courses only: the category filter (empty: all).
    pub course_category_ids: Vec<i64>,
    /// Last change of the configuration.
    pub update_time: DateTime<Utc>,
    /// When the first run completed.
    pub first_success_time: Option<DateTime<Utc>>,
    /// When the last successful run finished.
    pub last_success_time: Option<DateTime<Utc>>,
    /// Where incremental runs read from.
    pub watermark: Option<DateTime<Utc>>,
    /// When the next scheduled run is due.
    pub next_run_time: Option<DateTime<Utc>>,
    /// Realtime: seconds between two full comparisons.
    pub full_interval_seconds: i32,
    /// Realtime: when the next full comparison is due.
    pub next_full_time: Option<DateTime<Utc>>,
}

/// A run that would unenroll more than `max(min_records, max_percent % of the object's live
/// records)` unenrolls nothing and waits for a confirmed Resynchronize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnenrollmentGuard {
    /// 0 to 100.
    pub max_percent: i32,
    /// 0 or more.
    pub min_records: i32,
}

impl Default for UnenrollmentGuard {
    /// 10 percent, 100 records: a day's real unenrollments stay far below a tenth of a platform's
    /// enrollments, while a listing that lost a course or a page loses far more; small platforms
    /// keep their ordinary churn under the floor.
    fn default() -> UnenrollmentGuard {
        UnenrollmentGuard {
            max_percent: 10,
            min_records: 100,
        }
    }
}

impl UnenrollmentGuard {
    /// Whether `count` unenrollments out of `live` records exceed the guard.
    pub fn holds(&self, count: i64, live: i64) -> bool {
        let share = live * i64::from(self.max_percent) / 100;
        count > share.max(i64::from(self.min_records))
    }
}

/// The progress of a job or run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Read from Docebo.
    pub read: i64,
    /// Confirmed written by Salesforce.
    pub written: i64,
    /// Skipped as unchanged.
    pub unchanged: i64,
    /// Could not be written.
    pub failed: i64,
    /// Expected in total (0: unknown).
    pub expected: i64,
    /// Of the written, those Salesforce did not hold before (created).
    pub created: i64,
    /// Found missing or changed in Salesforce by someone else, and put back (a check run: would
    /// be).
    pub repaired: i64,
    /// Marked unenrolled (or deleted) because Docebo no longer holds them; not records read.
    pub unenrolled: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.read += other.read;
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.failed += other.failed;
        self.expected += other.expected;
        self.created += other.created;
        self.repaired += other.repaired;
        self.unenrolled += other.unenrolled;
    }
}

/// One job of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The job's id.
    pub id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// The connection.
    pub connection_id: Uuid,
    /// What it synchronizes.
    pub kind: JobKind,
    /// Its lifecycle state.
    pub state: JobState,
    /// Claims so far.
    pub attempt: i32,
    /// Progress.
    pub counts: Counts,
    /// What it is doing or waiting for.
    pub status_message: String,
    /// Why it failed.
    pub error_message: Option<String>,
    /// First claim.
    pub start_time: Option<DateTime<Utc>>,
    /// Final state reached.
    pub end_time: Option<DateTime<Utc>>,
}

/// One synchronization of one area.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// The run's id.
    pub id: Uuid,
    /// The connection.
    pub connection_id: Uuid,
    /// The area.
    pub area: Area,
    /// What started it.
    pub trigger: Trigger,
    /// Timeframe start (inclusive).
    pub timeframe_start: Option<DateTime<Utc>>,
    /// Timeframe end (exclusive).
    pub timeframe_end: Option<DateTime<Utc>>,
    /// Full (everything in the timeframe) or incremental.
    pub full_sync: bool,
    /// Incremental runs: read changes from here.
    pub updated_from: Option<DateTime<Utc>>,
    /// Write even unchanged records.
    pub rewrite_unchanged: bool,
    /// A check: reads both sides, reports what a synchronization would do, writes nothing.
    pub check_only: bool,
    /// Unenrollments above the connection's threshold were confirmed.
    pub confirm_unenrollments: bool,
    /// Lifecycle state.
    pub state: RunState,
    /// When Stop was asked.
    pub stop_time: Option<DateTime<Utc>>,
    /// Log position of the first error event.
    pub first_error_sequence: Option<i64>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Creation.
    pub create_time: DateTime<Utc>,
    /// First claim of a job.
    pub start_time: Option<DateTime<Utc>>,
    /// Final state reached.
    pub end_time: Option<DateTime<Utc>>,
    /// The run's jobs, in creation order.
    /// The W3C trace id every log line about the run carries (server and workers).
    pub trace_id: String,
    pub jobs: Vec<Job>,
}

impl Run {
    /// The sum of the jobs' counts.
    pub fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for job in &self.jobs {
            total += job.counts;
        }
        total
    }
}

/// One entry of a connection's log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    /// The connection.
    pub connection_id: Uuid,
    /// Position in the connection's log.
    pub sequence: i64,
    /// The run, if any.
    pub run_id: Option<Uuid>,
    /// The job, if any.
    pub job_id: Option<Uuid>,
    /// When it was written.
    pub time: DateTime<Utc>,
    /// Severity.
    pub level: LogLevel,
    /// What happened.
    pub message: String,
    /// The Docebo key of the record concerned.
    pub record_key: Option<String>,
    /// A stable error code.
    pub error_code: Option<String>,
    /// Structured details.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A log event to append (the sequence and time are assigned on write).
#[derive(Clone, Debug, PartialEq)]
pub struct NewLogEvent {
    /// The run, if any.
    pub run_id: Option<Uuid>,
    /// The job, if any.
    pub job_id: Option<Uuid>,
    /// Severity.
    pub level: LogLevel,
    /// What happened, lowercase.
    pub message: String,
    /// The Docebo key of the record concerned.
    pub record_key: Option<String>,
    /// A stable error code.
    pub error_code: Option<String>,
    /// Structured details.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl NewLogEvent {
    /// An event with a level and message and nothing else.
    pub fn new(level: LogLevel, message: impl Into<String>) -> NewLogEvent {
        NewLogEvent {
            run_id: None,
            job_id: None,
            level,
            message: message.into(),
            record_key: None,
            error_code: None,
            fields: serde_json::Map::new(),
        }
    }

    /// Attaches the event to a run.
    pub fn run(mut self, run_id: Uuid) -> NewLogEvent {
        self.run_id = Some(run_id);
        self
    }

    /// Attaches the event to a job (and its run).
    pub fn job(mut self, run_id: Uuid, job_id: Uuid) -> NewLogEvent {
        self.run_id = Some(run_id);
        self.job_id = Some(job_id);
        self
    }

    /// Names the record concerned.
    pub fn record(mut self, record_key: impl Into<String>) -> NewLogEvent {
        self.record_key = Some(record_key.into());
        self
    }

    /// Sets a stable error code.
    pub fn code(mut self, error_code: impl Into<String>) -> NewLogEvent {
        self.error_code = Some(error_code.into());
        self
    }

    /// Adds a structured field.
    pub fn field(mut self, key: &str, value: impl Into<serde_json::Value>) -> NewLogEvent {
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// The subject string of an area in precondition failures.
pub fn area_subject(connection_id: Uuid, area: Area) -> String {
    format!("connections/{connection_id}/areas/{area}")
}

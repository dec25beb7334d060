//! The worker's settings: [`Settings`] for the library (tests build it directly), and the
//! binary's [`Options`], where every flag also reads an environment variable. Secrets (the
//! credentials key) come from the environment or a file only, never from argv.

use std::path::PathBuf;
use std::time::Duration;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Names this worker in leases and logs (unique per process).
    pub worker_id: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a lease lasts without a heartbeat: a dead worker's jobs are taken over after it
    /// and the write grace ([`Settings::lease_terms`]). A job starts no Salesforce write once
    /// [`Settings::write_window`] has passed since the last heartbeat it sent.
    pub lease: Duration,
    /// How often a held lease is extended (well under the write window, nine tenths of `lease`).
    pub heartbeat: Duration,
    /// How often the queue is polled when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Docebo page size.
    pub page_size: u32,
    /// From this many records per job on, writes go through Bulk API 2.0 instead of collections.
    pub bulk_threshold: i64,
    /// Records per Bulk API 2.0 job once a job is large (Salesforce processes 10,000-record
    /// batches; fewer, larger jobs mean fewer polls). Bounds the records held in memory.
    pub bulk_chunk: i64,
    /// Chunks of one job being written to Salesforce at once, while the next is read from Docebo
    /// (their checkpoints still commit in order). Bounds memory at about this many chunks plus two.
    pub writes_in_flight: usize,
    /// Records the whole worker holds at once, read but not yet committed, across all its jobs:
    /// what bounds its memory whatever the platform's size and the number of jobs. A job's
    /// listing waits for room (after handing over what it gathered).
    pub records_in_flight: usize,
    /// First retry delay of a job after a transient failure (doubles per retry).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Retries of a job whose attempts confirmed writes.
    pub max_retries_with_progress: i32,
    /// Retries of a job whose attempts confirmed nothing.
    pub max_retries_without_progress: i32,
    /// Claims of one job after which it fails (a job that kills its workers must not circulate
    /// forever).
    pub max_attempts: i32,
    /// Docebo calls a platform's shared budget lets out at once after an idle spell (its bucket's
    /// capacity, at most the connection's `docebo_calls_per_hour`); then calls go out at that
    /// rate. Docebo's limiter is a leaky bucket with a small burst and answers 429 to calls beyond
    /// it: the budget mirrors it so that a paced sync draws none.
    pub docebo_burst: u32,
    /// First pause of a Docebo platform after a 429 or 503 (doubles while they go on).
    pub docebo_pause: Duration,
    /// How long a connection's Salesforce writes pause after REQUEST_LIMIT_EXCEEDED.
    pub salesforce_limit_pause: Duration,
    /// First delay of an in-call retry (Salesforce 5xx, row locks, network errors).
    pub call_retry_base: Duration,
    /// Timeout of one HTTP request to Docebo or Salesforce, from its start to the end of its
    /// answer's body. It bounds how long a Salesforce write stays in flight, so it is also the
    /// write grace: how long after this worker's lease runs out its job waits before another
    /// worker may take it over ([`Settings::lease_terms`]).
    pub http_timeout: Duration,
    /// How long a shutting-down worker waits for its jobs to hand back before it aborts them.
    pub shutdown_grace: Duration,
    /// How often a bulk ingest job's state is polled (the first poll; it backs off to 10x).
    pub bulk_poll: Duration,
    /// How long a Bulk API 2.0 job may take to complete: past it the wait ends as a transient
    /// error (the job retries from its checkpoint) instead of polling a stuck job for ever.
    pub bulk_timeout: Duration,
    /// How long a stopped job still waits for the outcome of a Bulk ingest job it closed (its
    /// records were sent: learnsync records what Salesforce did when it soon knows), before the
    /// stop interrupts the wait.
    pub bulk_stop_grace: Duration,
    /// What upstream URLs may reach (strict by default: https, public addresses only).
    pub upstream: learnsync_upstream::Policy,
}

/// Every default of [`Settings`], written once: `Settings::default` and the binary's flags read
/// them.
pub mod defaults {
    use std::time::Duration;

    /// Jobs run at once.
    pub const CONCURRENCY: usize = 4;
    /// Lease length.
    pub const LEASE: Duration = Duration::from_secs(10);
    /// Heartbeat interval.
    pub const HEARTBEAT: Duration = Duration::from_millis(2500);
    /// Queue poll interval.
    pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
    /// Docebo page size.
    pub const PAGE_SIZE: u32 = 200;
    /// Records per job from which writes go through Bulk API 2.0.
    pub const BULK_THRESHOLD: i64 = 2000;
    /// Records per Bulk API 2.0 job.
    pub const BULK_CHUNK: i64 = 5_000;
    /// Chunks of one job written at once.
    pub const WRITES_IN_FLIGHT: usize = 3;
    /// Records the worker holds at once.
    pub const RECORDS_IN_FLIGHT: usize = 25_000;
    /// First retry delay of a job.
    pub const RETRY_BASE: Duration = Duration::from_secs(2);
    /// Longest retry delay of a job.
    pub const RETRY_MAX: Duration = Duration::from_secs(300);
    /// Retries of a job whose attempts confirmed writes.
    pub const MAX_RETRIES_WITH_PROGRESS: i32 = 20;
    /// Retries of a job whose attempts confirmed nothing.
    pub const MAX_RETRIES_WITHOUT_PROGRESS: i32 = 5;
    /// Claims of one job after which it fails.
    pub const MAX_ATTEMPTS: i32 = 50;
    /// Docebo calls let out at once: the burst Docebo's limiter allows (about 20).
    pub const DOCEBO_BURST: u32 = 20;
    /// First pause of a Docebo platform after a 429 or 503.
    pub const DOCEBO_PAUSE: Duration = Duration::from_secs(5);
    /// Pause of a connection's Salesforce writes after REQUEST_LIMIT_EXCEEDED.
    pub const SALESFORCE_LIMIT_PAUSE: Duration = Duration::from_secs(300);
    /// First delay of an in-call retry.
    pub const CALL_RETRY_BASE: Duration = Duration::from_millis(500);
    /// Timeout of one HTTP request, and so the write grace a takeover waits after a lease runs out:
    /// a crashed worker's job resumes after `LEASE` plus this. 30 s is far above a healthy write
    /// (a 200-record collection or a Bulk upload takes seconds) and above Salesforce's 20 s
    /// threshold of a long-running request (which already means trouble); a request that slow is
    /// retried (writes are upserts by external id, so a retry is safe).
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long shutdown waits for jobs to hand back.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
    /// First poll of a bulk ingest job's state.
    pub const BULK_POLL: Duration = Duration::from_millis(100);
    /// Longest wait for a Bulk API 2.0 job to complete: a 5,000-record job takes seconds to a few
    /// minutes even in a busy org; one still in progress after half an hour is stuck.
    pub const BULK_TIMEOUT: Duration = Duration::from_secs(1800);
    /// How long a stop waits for a closed Bulk ingest job's outcome.
    pub const BULK_STOP_GRACE: Duration = Duration::from_secs(30);
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            worker_id: default_worker_id(),
            concurrency: defaults::CONCURRENCY,
            lease: defaults::LEASE,
            heartbeat: defaults::HEARTBEAT,
            poll_interval: defaults::POLL_INTERVAL,
            page_size: defaults::PAGE_SIZE,
            bulk_threshold: defaults::BULK_THRESHOLD,
            bulk_chunk: defaults::BULK_CHUNK,
            writes_in_flight: defaults::WRITES_IN_FLIGHT,
            records_in_flight: defaults::RECORDS_IN_FLIGHT,
            retry_base: defaults::RETRY_BASE,
            retry_max: defaults::RETRY_MAX,
            max_retries_with_progress: defaults::MAX_RETRIES_WITH_PROGRESS,
            max_retries_without_progress: defaults::MAX_RETRIES_WITHOUT_PROGRESS,
            max_attempts: defaults::MAX_ATTEMPTS,
            docebo_burst: defaults::DOCEBO_BURST,
            docebo_pause: defaults::DOCEBO_PAUSE,
            salesforce_limit_pause: defaults::SALESFORCE_LIMIT_PAUSE,
            call_retry_base: defaults::CALL_RETRY_BASE,
            http_timeout: defaults::HTTP_TIMEOUT,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            bulk_poll: defaults::BULK_POLL,
            bulk_timeout: defaults::BULK_TIMEOUT,
            bulk_stop_grace: defaults::BULK_STOP_GRACE,
            upstream: learnsync_upstream::Policy::strict(),
        }
    }
}

impl Settings {
    /// The terms this worker holds its jobs on: its lease, and the write grace a takeover waits
    /// after the lease runs out (the request timeout, the longest a write may stay in flight; for
    /// a Bulk API job the write is its create, upload or close request, not Salesforce's
    /// processing, which the new attempt's results never depend on).
    pub fn lease_terms(&self) -> learnsync_store::worker::Lease {
        learnsync_store::worker::Lease {
            length: self.lease,
            write_grace: self.http_timeout,
        }
    }

    /// How long after the last heartbeat a job sent (or its claim) it may still start a Salesforce
    /// write: the lease less a tenth of it (at most 1 s is taken off a 10 s lease). Postgres starts
    /// the lease when the statement arrives, after the worker sent it, so the lease never runs out
    /// before `sent + lease`; the margin covers what lies between the check and the start of the
    /// request's timeout (building the body, the task being scheduled late) and the drift between
    /// the worker's and Postgres's clocks over one lease. A write started within the window ends
    /// (or times out) before `lease expiry + write grace`, the first moment another worker may
    /// take the job over.
    pub fn write_window(&self) -> Duration {
        self.lease - self.lease / 10
    }
}

/// A worker id unique enough to tell processes apart in leases and logs.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_string());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Parses `10s`, `500ms`, `2m` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration flag: parsed by [`parse_duration`], shown in the unit that writes it whole (so a
/// default shows as `2500ms` or `5m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millis = self.0.as_millis();
        if !millis.is_multiple_of(1000) {
            write!(formatter, "{millis}ms")
        } else if millis >= 60_000 && millis.is_multiple_of(60_000) {
            write!(formatter, "{}m", millis / 60_000)
        } else {
            write!(formatter, "{}s", millis / 1000)
        }
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        parse_duration(text).map(Span)
    }
}

/// The `learnsync-worker` binary's flags.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "learnsync-worker",
    about = "Claims learnsync sync jobs and synchronizes Docebo into Salesforce"
)]
pub struct Options {
    /// Postgres URL (the server runs the migrations; the worker waits for the schema).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A direct Postgres URL for LISTEN, when DATABASE_URL goes through PgBouncer in transaction
    /// mode (which keeps no LISTEN): without it the worker relies on its poll.
    #[arg(long, env = "LEARNSYNC_DIRECT_DATABASE_URL", hide_env_values = true)]
    pub direct_database_url: Option<String>,
    /// A file holding the credentials key (base64 or hex, 32 bytes); otherwise
    /// LEARNSYNC_SECRET_KEY is read from the environment.
    #[arg(long, env = "LEARNSYNC_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// This worker's id in leases and logs (default: host, pid and a random suffix).
    #[arg(long, env = "LEARNSYNC_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Jobs run at once.
    #[arg(long, env = "LEARNSYNC_WORKER_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Lease length.
    #[arg(long, env = "LEARNSYNC_WORKER_LEASE", default_value_t = Span(defaults::LEASE))]
    pub lease: Span,
    /// Heartbeat interval.
    #[arg(long, env = "LEARNSYNC_WORKER_HEARTBEAT", default_value_t = Span(defaults::HEARTBEAT))]
    pub heartbeat: Span,
    /// Queue poll interval (NOTIFY wakes the worker sooner).
    #[arg(long, env = "LEARNSYNC_WORKER_POLL_INTERVAL", default_value_t = Span(defaults::POLL_INTERVAL))]
    pub poll_interval: Span,
    /// Records per job from which writes go through Bulk API 2.0.
    #[arg(long, env = "LEARNSYNC_WORKER_BULK_THRESHOLD", default_value_t = defaults::BULK_THRESHOLD)]
    pub bulk_threshold: i64,
    /// Records per Bulk API 2.0 job once a job is large.
    #[arg(long, env = "LEARNSYNC_WORKER_BULK_CHUNK", default_value_t = defaults::BULK_CHUNK)]
    pub bulk_chunk: i64,
    /// Chunks of one job written to Salesforce at once while the next is read.
    #[arg(long, env = "LEARNSYNC_WORKER_WRITES_IN_FLIGHT", default_value_t = defaults::WRITES_IN_FLIGHT)]
    pub writes_in_flight: usize,
    /// Records the worker holds at once across its jobs (bounds its memory).
    #[arg(
        long,
        env = "LEARNSYNC_WORKER_RECORDS_IN_FLIGHT",
        default_value_t = defaults::RECORDS_IN_FLIGHT
    )]
    pub records_in_flight: usize,
    /// Docebo page size.
    #[arg(long, env = "LEARNSYNC_WORKER_PAGE_SIZE", default_value_t = defaults::PAGE_SIZE)]
    pub page_size: u32,
    /// Docebo calls a platform's budget lets out at once (then its `docebo_calls_per_hour`
    /// rate): the burst Docebo's limiter allows. The same on every worker.
    #[arg(long, env = "LEARNSYNC_WORKER_DOCEBO_BURST", default_value_t = defaults::DOCEBO_BURST)]
    pub docebo_burst: u32,
    /// Pause of a connection's writes after Salesforce's REQUEST_LIMIT_EXCEEDED.
    #[arg(long, env = "LEARNSYNC_WORKER_SALESFORCE_LIMIT_PAUSE", default_value_t = Span(defaults::SALESFORCE_LIMIT_PAUSE))]
    pub salesforce_limit_pause: Span,
    /// How long shutdown waits for jobs to hand back.
    #[arg(long, env = "LEARNSYNC_WORKER_SHUTDOWN_GRACE", default_value_t = Span(defaults::SHUTDOWN_GRACE))]
    pub shutdown_grace: Span,
    /// Timeout of one Docebo or Salesforce request; also how long after this worker's lease runs
    /// out its job waits before another worker takes it over (a write may be in flight that long).
    #[arg(long, env = "LEARNSYNC_WORKER_HTTP_TIMEOUT", default_value_t = Span(defaults::HTTP_TIMEOUT))]
    pub http_timeout: Span,
    /// Longest wait for a Bulk API 2.0 job to complete; a job still in progress then is given up
    /// as a transient error (the job retries from its checkpoint).
    #[arg(long, env = "LEARNSYNC_WORKER_BULK_TIMEOUT", default_value_t = Span(defaults::BULK_TIMEOUT))]
    pub bulk_timeout: Span,
    /// Connections in the worker's Postgres pool (default: 2 per job plus 4).
    #[arg(long, env = "LEARNSYNC_WORKER_DB_CONNECTIONS")]
    pub db_connections: Option<usize>,
    /// Address to serve Prometheus metrics on (`/metrics`). Off when unset.
    #[arg(long, env = "LEARNSYNC_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Exceptions to the upstream policy (https and public addresses only), comma separated:
    /// `http`, an address (`127.0.0.1`), a range (`10.0.0.0/8`), a host (`localhost`) or
    /// `*.domain`.
    #[arg(long, env = learnsync_upstream::ENV)]
    pub upstream_allow: Option<learnsync_upstream::Policy>,
    /// Log as JSON lines.
    #[arg(long, env = "LEARNSYNC_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

impl Options {
    /// The library settings these flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            concurrency: self.concurrency.max(1),
            lease: self.lease.0,
            heartbeat: self.heartbeat.0,
            poll_interval: self.poll_interval.0,
            page_size: self.page_size.clamp(1, 1000),
            bulk_threshold: self.bulk_threshold,
            bulk_chunk: self.bulk_chunk.max(1),
            writes_in_flight: self.writes_in_flight.clamp(1, 16),
            records_in_flight: self.records_in_flight.max(1000),
            docebo_burst: self.docebo_burst.max(1),
            salesforce_limit_pause: self.salesforce_limit_pause.0,
            shutdown_grace: self.shutdown_grace.0,
            http_timeout: self.http_timeout.0,
            bulk_timeout: self.bulk_timeout.0,
            upstream: self.upstream_allow.clone().unwrap_or_default(),
            ..Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn flags_read_the_environment_names() {
        use clap::Parser as _;
        let options = Options::try_parse_from([
            "learnsync-worker",
            "--database-url",
            "postgres://x/y",
            "--lease",
            "4s",
            "--upstream-allow",
            "http,127.0.0.1",
        ])
        .unwrap();
        let settings = options.settings();
        assert_eq!(settings.lease, Duration::from_secs(4));
        assert_eq!(settings.concurrency, 4);
        assert_eq!(settings.upstream.to_string(), "http,127.0.0.1");
        assert!(
            Options::try_parse_from([
                "learnsync-worker",
                "--database-url",
                "postgres://x/y",
                "--upstream-allow",
                "https",
            ])
            .is_err()
        );
    }

    #[test]
    fn flags_default_to_the_library_defaults() {
        use clap::Parser as _;
        let options =
            Options::try_parse_from(["learnsync-worker", "--database-url", "postgres://x/y"])
                .unwrap();
        let (flags, library) = (options.settings(), Settings::default());
        assert_eq!(flags.concurrency, library.concurrency);
        assert_eq!(flags.lease, library.lease);
        assert_eq!(flags.heartbeat, library.heartbeat);
        assert_eq!(flags.poll_interval, library.poll_interval);
        assert_eq!(flags.page_size, library.page_size);
        assert_eq!(flags.bulk_threshold, library.bulk_threshold);
        assert_eq!(flags.bulk_chunk, library.bulk_chunk);
        assert_eq!(flags.writes_in_flight, library.writes_in_flight);
        assert_eq!(flags.records_in_flight, library.records_in_flight);
        assert_eq!(flags.docebo_burst, library.docebo_burst);
        assert_eq!(flags.salesforce_limit_pause, library.salesforce_limit_pause);
        assert_eq!(flags.shutdown_grace, library.shutdown_grace);
        assert_eq!(flags.http_timeout, library.http_timeout);
        assert_eq!(flags.bulk_timeout, library.bulk_timeout);
        assert_eq!(flags.lease_terms().write_grace, flags.http_timeout);
        assert_eq!(flags.write_window(), Duration::from_secs(9));
        assert_eq!(flags.upstream, library.upstream);
        assert_eq!(Span(Duration::from_millis(2500)).to_string(), "2500ms");
        assert_eq!(Span(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(Span(Duration::from_secs(20)).to_string(), "20s");
    }
}

//! `learnsync-bench`: measures learnsync on the simulators, as the product runs: a private
//! PostgreSQL cluster, the simulators and the gRPC server in this process, and workers as separate
//! `learnsync-worker` processes (so their CPU time and peak memory are theirs alone). Every figure
//! comes with the command that produced it; BENCHMARKS.md keeps them with the machine described.
//!
//! Build first: `cargo build --release -p learnsync-worker -p learnsync-e2e --bin learnsync-bench`.
//! - `sync --enrollments N`: a full sync (users, courses, enrollments) with rate limits off;
//!   with `--docebo-rate R --docebo-burst B` the Docebo simulator limits calls like Docebo (a
//!   leaky bucket, R an hour, B at once), the connection's budget is R and the workers' burst B:
//!   it reports the 429s drawn and the run's time against its paced time.
//! - `realtime --enrollments N`: Docebo calls of a realtime day against a full reload every 15 min.
//! - `compare --enrollments N`: learnsync against a Python script (requests + simple-salesforce
//!   Bulk 2.0) doing the same work on the same simulators; both Docebo call counts, by family.
//! - `control`: GetStatus throughput and latency, Start-to-claim delay, StreamLogs delivery delay.
//! - `status --clients N --seconds S [--pool P]`: GetStatus alone, N concurrent clients for S seconds, on a
//!   connection with finished runs (with their jobs), records in the ledger and an active run.
//! - `purge --runs N`: the hourly retention purge over a history of N ended runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use learnsync_client::{Client, pb};
use learnsync_e2e::signals::ShutdownSignals;
use learnsync_server::{Principal, Tokens};
use learnsync_sim::{
    DoceboConfig, DoceboSim, EntityKind, GenerateParams, SalesforceConfig, SalesforceSim,
};
use learnsync_store::embedded::PrivatePostgres;
use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::Cipher;
use rand::RngCore as _;
use tokio_util::sync::CancellationToken;

#[path = "bench/calls.rs"]
mod calls;
#[path = "bench/fleet.rs"]
mod fleet;
#[path = "bench/purge.rs"]
mod purge;
#[path = "bench/wal.rs"]
mod wal;

/// Benchmarks of learnsync on the simulators.
#[derive(Debug, Parser)]
#[command(name = "learnsync-bench", about)]
struct Args {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// A full sync of a generated platform.
    Sync {
        /// Course enrollments (users, courses, sessions, learning plans in proportion).
        #[arg(long, default_value_t = 10_000)]
        enrollments: usize,
        /// Worker processes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Jobs per worker at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Docebo calls an hour the simulator lets through (a leaky bucket) and the connection's
        /// budget; off by default.
        #[arg(long)]
        docebo_rate: Option<u32>,
        /// Calls the simulator's bucket lets through at once (with `--docebo-rate`), and the
        /// workers' `LEARNSYNC_WORKER_DOCEBO_BURST`.
        #[arg(long, default_value_t = 20, requires = "docebo_rate")]
        docebo_burst: u32,
    },
    /// The Docebo calls of a realtime day (0.1% of enrollments changing per hour) against a full
    /// reload every 15 minutes.
    Realtime {
        /// Course enrollments on the platform.
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
    },
    /// learnsync against a Python script doing the same work (requests + simple-salesforce Bulk 2.0)
    /// on the same simulators, in the same run.
    Compare {
        /// Course enrollments (users, courses, sessions, learning plans in proportion).
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
        /// A python with simple-salesforce installed.
        #[arg(
            long,
            env = "LEARNSYNC_PYTHON",
            default_value = ".learnsync/venv/bin/python"
        )]
        python: PathBuf,
    },
    /// What keeping Salesforce true costs: a Resynchronize of the enrollments of an unchanged
    /// platform (each object read back with a Bulk API 2.0 query job), then one after an admin
    /// deleted and edited 0.1% of the course enrollments in the org (put back).
    Drift {
        /// Course enrollments on the platform.
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
    },
    /// Control-plane latency and throughput.
    Control {
        /// Concurrent GetStatus clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long GetStatus is hammered.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Start-to-claim and log-delivery samples.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// GetStatus throughput and latency alone, on a connection with runs.
    Status {
        /// Concurrent GetStatus clients (each its own gRPC connection).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long GetStatus is hammered.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The server's Postgres pool size (LEARNSYNC_DB_POOL_SIZE; 16 by default).
        #[arg(long, default_value_t = 16)]
        pool: usize,
    },
    /// What a full comparison of an unchanged platform writes to Postgres (WAL bytes per record)
    /// and the ledger's bytes per record.
    Wal {
        /// Course enrollments on the platform.
        #[arg(long, default_value_t = 100_000)]
        enrollments: usize,
        /// Keep the generated platform's deliberately bad records (they fail, and are sent again,
        /// on every run: the platform is then not unchanged).
        #[arg(long)]
        bad_records: bool,
        /// Change this percentage of the course enrollments in Docebo between the first sync and
        /// the comparisons (their score), and report the WAL per changed record too.
        #[arg(long, value_parser = clap::value_parser!(f64))]
        changed: Option<f64>,
    },
    /// A fleet of connections in realtime mode: schedule lateness, claim delay, CPU and Postgres.
    Fleet(fleet::Args),
    /// What the hourly retention purge costs over a history of ended runs.
    Purge {
        /// Ended runs past the retention (as many again are kept within it).
        #[arg(long, default_value_t = 100_000)]
        runs: i64,
    },
}

const TOKEN: &str = "bench-operator-token-000000000000000";

/// Everything a benchmark runs against.
struct Bed {
    postgres: PrivatePostgres,
    store: learnsync_store::Store,
    key_hex: String,
    docebo: DoceboSim,
    salesforce: SalesforceSim,
    endpoint: String,
    shutdown: CancellationToken,
    workers: Vec<Child>,
    connection_id: String,
    /// The Docebo limiter, when the simulator has one: calls an hour and burst.
    limit: Option<(u32, u32)>,
}

fn platform(enrollments: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        seed,
        users: Some((enrollments / 10).max(50)),
        courses: Some((enrollments / 200).max(10)),
        learning_plans: Some((enrollments / 2000).max(3)),
        course_enrollments: Some(enrollments),
        learning_plan_enrollments: Some(enrollments / 10),
        session_enrollments: Some(enrollments / 10),
        ..GenerateParams::default()
    }
}

impl Bed {
    async fn start(params: &GenerateParams) -> anyhow::Result<Bed> {
        Bed::start_limited(params, None, 16).await
    }

    /// A bed whose Docebo simulator lets `limit` (calls an hour, burst) through, the connection's
    /// budget the same (no limit: the simulator lets everything through and the budget is as
    /// large as a connection's can be), and whose server's pool opens at most `pool` Postgres
    /// connections (the server's default is 16).
    async fn start_limited(
        params: &GenerateParams,
        limit: Option<(u32, u32)>,
        pool: usize,
    ) -> anyhow::Result<Bed> {
        let postgres = tokio::task::spawn_blocking(PrivatePostgres::start).await??;
        let store = learnsync_store::Store::connect(&learnsync_store::Options {
            database_url: postgres.url(),
            max_connections: pool,
        })?;
        store.migrate().await?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let cipher = Cipher::new(&key);
        let docebo = DoceboSim::start(DoceboConfig {
            rate_limit_per_hour: limit.map(|(per_hour, _)| per_hour),
            rate_limit_burst: limit.map(|(_, burst)| burst),
            ..DoceboConfig::default()
        })
        .await?;
        docebo.generate(params);
        let salesforce = SalesforceSim::start(SalesforceConfig {
            daily_api_limit: u64::MAX / 2,
            ..SalesforceConfig::default()
        })
        .await?;
        let mut tokens = Tokens::default();
        tokens.add(TOKEN, Principal::Operator);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let mut options = learnsync_server::Options::new(tokens, cipher);
        options.min_interval = Duration::from_secs(1);
        // The simulators listen on plain http at 127.0.0.1: the policy must admit them.
        options.upstream = learnsync_e2e::sim_policy();
        tokio::spawn(learnsync_server::serve(
            store.clone(),
            options,
            listener,
            async move { stop.cancelled().await },
        ));
        let mut client = Client::connect(&endpoint, TOKEN).await?;
        let mut connection = learnsync_e2e::sim_connection("bench", &docebo, &salesforce);
        if let Some((per_hour, _)) = limit {
            connection.docebo_calls_per_hour = i32::try_from(per_hour)?;
        }
        let connection = client
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(connection),
                request_id: String::new(),
            })
            .await?;
        Ok(Bed {
            postgres,
            store,
            key_hex: hex::encode(key),
            docebo,
            salesforce,
            endpoint,
            shutdown,
            workers: Vec::new(),
            connection_id: connection.id,
            limit,
        })
    }

    fn spawn_worker(&mut self, concurrency: usize) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let worker = exe
            .parent()
            .map(|dir| dir.join("learnsync-worker"))
            .filter(|path| path.is_file())
            .context("learnsync-worker is not built next to this binary: cargo build --release -p learnsync-worker")?;
        let child = Command::new(worker)
            .env("DATABASE_URL", self.postgres.url())
            .env("LEARNSYNC_SECRET_KEY", &self.key_hex)
            .env("LEARNSYNC_WORKER_CONCURRENCY", concurrency.to_string())
            .env("LEARNSYNC_WORKER_POLL_INTERVAL", "200ms")
            // The burst Docebo's limiter allows; without a limiter, as large as a budget can be.
            .env(
                "LEARNSYNC_WORKER_DOCEBO_BURST",
                self.limit.map_or(100_000, |(_, burst)| burst).to_string(),
            )
            .env(
                "LEARNSYNC_UPSTREAM_ALLOW",
                learnsync_e2e::SIM_UPSTREAM_ALLOW,
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        self.workers.push(child);
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.endpoint, TOKEN).await?)
    }

    /// Runs an area's first sync (or a resync) and waits for it; returns the run and its wall time.
    async fn sync(&self, area: pb::Area, first: bool) -> anyhow::Result<(pb::Run, Duration)> {
        let mut client = self.client().await?;
        let started = Instant::now();
        let run = if first {
            client
                .configure(
                    &self.connection_id,
                    pb::AreaConfig {
                        area: area as i32,
                        enabled: true,
                        mode: pb::Mode::Manual as i32,
                        ..Default::default()
                    },
                )
                .await?;
            client.start(&self.connection_id, area, None).await?
        } else {
            client
                .resynchronize(&self.connection_id, area, None, false)
                .await?
        };
        let run = self.wait(&run.id).await?;
        Ok((run, started.elapsed()))
    }

    async fn wait(&self, run_id: &str) -> anyhow::Result<pb::Run> {
        let mut client = self.client().await?;
        loop {
            let run = client.get_run(&self.connection_id, run_id).await?;
            if run.end_time.is_some() {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn calls(&self) -> (u64, u64) {
        (
            self.docebo.counters().values().sum(),
            self.salesforce.counters().values().sum(),
        )
    }

    fn clear_calls(&self) {
        self.docebo.clear_counters();
        self.salesforce.clear_counters();
    }

    fn stop(self) {
        drop(self);
    }
}

/// A bench ended early (an error, a signal) still stops its worker processes, which would
/// otherwise outlive it; the server stops with the token, the cluster with its handle.
impl Drop for Bed {
    fn drop(&mut self) {
        for mut child in self.workers.drain(..) {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        self.shutdown.cancel();
    }
}

/// CPU seconds and peak resident memory (MiB) of a live process.
fn process_stats(pid: u32) -> Option<(f64, f64)> {
    let ticks = ticks_per_second();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(((utime + stime) / ticks, hwm_kb / 1024.0))
}

/// CPU seconds of a PostgreSQL cluster: the postmaster, its reaped children, its live children.
fn postgres_cpu(postmaster: u32) -> f64 {
    let ticks = ticks_per_second();
    let times = |pid: u32, with_children: bool| -> Option<(u32, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ppid: u32 = fields.get(1)?.parse().ok()?;
        let mut total: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        if with_children {
            total += fields.get(13)?.parse::<f64>().ok()? + fields.get(14)?.parse::<f64>().ok()?;
        }
        Some((ppid, total / ticks))
    };
    let mut total = times(postmaster, true).map_or(0.0, |(_, t)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && let Some((ppid, cpu)) = times(pid, false)
                && ppid == postmaster
            {
                total += cpu;
            }
        }
    }
    total
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn written(run: &pb::Run) -> i64 {
    run.counts.map_or(0, |c| c.written + c.unchanged + c.failed)
}

async fn bench_sync(
    enrollments: usize,
    workers: usize,
    concurrency: usize,
    limit: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    let params = platform(enrollments, 42);
    let mut bed = Bed::start_limited(&params, limit, 16).await?;
    for _ in 0..workers {
        bed.spawn_worker(concurrency)?;
    }
    let postmaster = bed.postgres.postmaster_pid().context("postmaster pid")?;
    let pg_before = postgres_cpu(postmaster);
    bed.clear_calls();
    let started = Instant::now();
    let (users, users_time) = bed.sync(pb::Area::Users, true).await?;
    let (courses, courses_time) = bed.sync(pb::Area::Courses, true).await?;
    let (enrolled, enrollments_time) = bed.sync(pb::Area::Enrollments, true).await?;
    let wall = started.elapsed();
    let (docebo_calls, salesforce_calls) = bed.calls();
    let docebo_by_family = calls::by_family(&bed.docebo.counters());
    let pg_cpu = postgres_cpu(postmaster) - pg_before;
    let records: i64 = [&users, &courses, &enrolled]
        .iter()
        .map(|r| written(r))
        .sum();
    let failed: i64 = [&users, &courses, &enrolled]
        .iter()
        .map(|r| r.counts.map_or(0, |c| c.failed))
        .sum();
    let mut worker_cpu = 0.0;
    let mut worker_peak: f64 = 0.0;
    for child in &bed.workers {
        if let Some((cpu, peak)) = process_stats(child.id()) {
            worker_cpu += cpu;
            worker_peak = worker_peak.max(peak);
        }
    }
    for run in [&users, &courses, &enrolled] {
        if run.state != pb::RunState::Succeeded as i32
            && run.state != pb::RunState::SucceededWithErrors as i32
        {
            bail!(
                "run {} ended {:?}: {}",
                run.id,
                run.state,
                run.error_message
            );
        }
    }
    println!(
        "| course enrollments | records | wall s | records/s | docebo calls /1k | salesforce calls /1k | worker cpu s | worker peak MiB | postgres cpu s | failed (by design) |"
    );
    println!(
        "| {enrollments} | {records} | {:.1} (users {:.1}, courses {:.1}, enrollments {:.1}) | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {failed} |",
        wall.as_secs_f64(),
        users_time.as_secs_f64(),
        courses_time.as_secs_f64(),
        enrollments_time.as_secs_f64(),
        records as f64 / wall.as_secs_f64(),
        docebo_calls as f64 * 1000.0 / records as f64,
        salesforce_calls as f64 * 1000.0 / records as f64,
        worker_cpu,
        worker_peak,
        pg_cpu,
    );
    println!(
        "worker cpu per record: {:.2} us",
        worker_cpu * 1e6 / records as f64
    );
    println!("docebo calls: {docebo_calls} ({docebo_by_family})");
    if let Some((per_hour, burst)) = limit {
        let limiter = bed.docebo.rate_limit();
        // Token requests: the simulator's limiter lets them through, Docebo counts them, and so
        // does learnsync's budget.
        let tokens = bed
            .docebo
            .counters()
            .get("POST /oauth2/token")
            .copied()
            .unwrap_or(0);
        // What the limit allows: the burst at once, then the rest at the hourly rate; calls it
        // refused (429) are not in it.
        let paced = (limiter.allowed + tokens).saturating_sub(u64::from(burst)) as f64 * 3600.0
            / f64::from(per_hour);
        println!(
            "| docebo limit (per hour, burst) | docebo calls let through + token requests | 429s | wall s | paced s ((calls + tokens - burst) / rate) | wall / paced |"
        );
        println!(
            "| {per_hour}, {burst} | {} + {tokens} | {} | {:.1} | {paced:.1} | {} |",
            limiter.allowed,
            limiter.refused,
            wall.as_secs_f64(),
            if paced > 0.0 {
                format!("{:.2}", wall.as_secs_f64() / paced)
            } else {
                "- (within the burst)".to_string()
            },
        );
    }
    bed.stop();
    Ok(())
}

/// Deletes and edits course enrollments in the org as someone else would (its REST API).
async fn admin_changes(bed: &Bed, count: usize) -> anyhow::Result<()> {
    const OBJECT: &str = "Docebo_Course_Enrollment__c";
    let records = bed.salesforce.records(OBJECT)?;
    let http = reqwest::Client::new();
    let token = bed.salesforce.issue_token();
    let base = format!("{}/services/data/v62.0", bed.salesforce.base_url());
    let ids: Vec<&str> = records
        .iter()
        .step_by(records.len() / (2 * count).max(1))
        .filter_map(|record| record["Id"].as_str())
        .take(2 * count)
        .collect();
    let (deleted, edited) = ids.split_at(count.min(ids.len()));
    for chunk in deleted.chunks(200) {
        http.delete(format!("{base}/composite/sobjects?ids={}", chunk.join(",")))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?;
    }
    for id in edited {
        http.patch(format!("{base}/sobjects/{OBJECT}/{id}"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"Name": "edited by an admin"}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// Salesforce calls by endpoint family: the Bulk query jobs, and the rest.
fn salesforce_calls(bed: &Bed) -> (u64, u64) {
    let counters = bed.salesforce.counters();
    let query: u64 = counters
        .iter()
        .filter(|(endpoint, _)| endpoint.contains("jobs/query"))
        .map(|(_, calls)| calls)
        .sum();
    (query, counters.values().sum::<u64>() - query)
}

async fn bench_drift(enrollments: usize) -> anyhow::Result<()> {
    let params = platform(enrollments, 44);
    let mut bed = Bed::start(&params).await?;
    bed.spawn_worker(4)?;
    bed.sync(pb::Area::Users, true).await?;
    bed.sync(pb::Area::Courses, true).await?;
    bed.sync(pb::Area::Enrollments, true).await?;
    println!(
        "| course enrollments | resynchronize of enrollments | records read | repaired | written | wall s | bulk query calls | other salesforce calls | calls per object |"
    );
    let changed = (enrollments / 1000).max(25);
    for (label, admin) in [("unchanged org", false), ("after an admin's edits", true)] {
        if admin {
            admin_changes(&bed, changed).await?;
        }
        bed.clear_calls();
        let (run, wall) = bed.sync(pb::Area::Enrollments, false).await?;
        let (query, other) = salesforce_calls(&bed);
        let counts = run.counts.unwrap_or_default();
        let per_object: Vec<String> = bed
            .salesforce
            .object_calls()
            .iter()
            .map(|(object, calls)| format!("{object} {calls}"))
            .collect();
        let label = if admin {
            format!("{label} ({changed} deleted, {changed} edited)")
        } else {
            label.to_string()
        };
        eprintln!(
            "salesforce calls by endpoint: {:?}",
            bed.salesforce.counters()
        );
        println!(
            "| {enrollments} | {label} | {} | {} | {} | {:.1} | {query} | {other} | {} |",
            counts.read,
            counts.repaired,
            counts.written,
            wall.as_secs_f64(),
            per_object.join(", "),
        );
    }
    bed.stop();
    Ok(())
}

async fn bench_realtime(enrollments: usize) -> anyhow::Result<()> {
    let params = platform(enrollments, 43);
    let mut bed = Bed::start(&params).await?;
    bed.spawn_worker(4)?;
    bed.sync(pb::Area::Users, true).await?;
    bed.sync(pb::Area::Courses, true).await?;
    bed.clear_calls();
    let (full, full_time) = bed.sync(pb::Area::Enrollments, true).await?;
    let (full_calls, _) = bed.calls();

    // 0.1% of the enrollments change per hour: a quarter of that between two 15-minute runs.
    let changes = (enrollments as f64 * 0.001 / 4.0).ceil() as usize;
    let keys: Vec<String> = enrollment_keys(&bed).into_iter().take(changes).collect();
    for key in &keys {
        bed.docebo.update(
            EntityKind::CourseEnrollments,
            key,
            serde_json::json!({"enrollment_score": 99}),
        )?;
    }
    // What the scheduler does at a tick: an incremental run of each area from its watermark
    // minus the overlap, the courses area first.
    let (_, courses_time, courses_calls, courses_families) =
        incremental_run(&bed, learnsync_store::model::Area::Courses).await?;
    let (incremental, incremental_time, incremental_calls, incremental_families) =
        incremental_run(&bed, learnsync_store::model::Area::Enrollments).await?;
    let incremental_sf = incremental_calls.1;
    let incremental_calls = incremental_calls.0;
    let per_day = 96.0;
    let realtime_day = per_day * incremental_calls as f64 + full_calls as f64;
    let reload_day = per_day * full_calls as f64;
    println!(
        "| course enrollments | changed per 15 min | full run: docebo calls, s | incremental run: docebo calls, salesforce calls, s, written | realtime day (96 incremental + 1 full comparison) | full reload every 15 min | ratio |"
    );
    println!(
        "| {enrollments} | {changes} | {full_calls}, {:.1} | {incremental_calls}, {incremental_sf}, {:.2}, {} | {:.0} calls | {:.0} calls | {:.1}x fewer |",
        full_time.as_secs_f64(),
        incremental_time.as_secs_f64(),
        incremental.counts.map_or(0, |c| c.written),
        realtime_day,
        reload_day,
        reload_day / realtime_day,
    );
    println!("incremental enrollments run's docebo calls: {incremental_families}");
    println!(
        "incremental courses run: {} docebo calls ({courses_families}), {} salesforce calls, {:.2} s",
        courses_calls.0,
        courses_calls.1,
        courses_time.as_secs_f64()
    );
    let _ = full;
    bed.stop();
    Ok(())
}

/// Runs what the scheduler runs for `area` at a tick (an incremental run from the area's
/// watermark minus the 2-minute overlap) with the call counters cleared first: the run, its
/// time, its Docebo and Salesforce calls, and its Docebo calls by family.
async fn incremental_run(
    bed: &Bed,
    area: learnsync_store::model::Area,
) -> anyhow::Result<(pb::Run, Duration, (u64, u64), String)> {
    bed.clear_calls();
    let started = Instant::now();
    let run_id = {
        let mut conn = bed.store.conn().await?;
        let tx = conn.transaction().await?;
        let connection_id = uuid::Uuid::parse_str(&bed.connection_id)?;
        let config = learnsync_store::areas::get(&tx, connection_id, area)
            .await?
            .context("area configured")?;
        let request = learnsync_store::runs::RunRequest::incremental(
            config.watermark,
            chrono::Duration::minutes(2),
        );
        let run = learnsync_store::runs::create(&tx, connection_id, area, &request).await?;
        tx.commit().await?;
        run.id.to_string()
    };
    let run = bed.wait(&run_id).await?;
    let time = started.elapsed();
    Ok((
        run,
        time,
        bed.calls(),
        calls::by_family(&bed.docebo.counters()),
    ))
}

/// The keys of the Docebo simulator's course enrollments (`"<user>-<course>"`, as
/// `DoceboSim::update` takes them), oldest update first.
fn enrollment_keys(bed: &Bed) -> Vec<String> {
    bed.docebo
        .items(EntityKind::CourseEnrollments)
        .iter()
        .filter_map(|item| {
            Some(format!(
                "{}-{}",
                item.get("user_id")?,
                item.get("course_id")?
            ))
        })
        .map(|key| key.replace('"', ""))
        .collect()
}

async fn bench_compare(enrollments: usize, python: PathBuf) -> anyhow::Result<()> {
    let params = platform(enrollments, 44);
    let mut bed = Bed::start(&params).await?;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/baseline_sync.py");
    bed.clear_calls();
    let started = Instant::now();
    // Killed if the bench is stopped while it runs.
    let output = tokio::process::Command::new(&python)
        .kill_on_drop(true)
        .arg(&script)
        .arg(bed.docebo.base_url())
        .arg(bed.salesforce.base_url())
        .env("DOCEBO_CLIENT_ID", &bed.docebo.config().client_id)
        .env("DOCEBO_CLIENT_SECRET", &bed.docebo.config().client_secret)
        .env("SF_CLIENT_ID", &bed.salesforce.config().client_id)
        .env("SF_CLIENT_SECRET", &bed.salesforce.config().client_secret)
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (run scripts/test.sh once to install simple-salesforce)",
                python.display()
            )
        })?;
    let python_time = started.elapsed();
    if !output.status.success() {
        bail!(
            "baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (python_docebo, python_salesforce) = bed.calls();
    let python_by_family = calls::by_family(&bed.docebo.counters());
    let report = String::from_utf8_lossy(&output.stdout).trim().to_string();
    bed.salesforce.reset();

    bed.spawn_worker(4)?;
    bed.clear_calls();
    let started = Instant::now();
    let mut records = 0;
    for area in [pb::Area::Users, pb::Area::Courses, pb::Area::Enrollments] {
        let (run, _) = bed.sync(area, true).await?;
        records += written(&run);
    }
    let learnsync_time = started.elapsed();
    let (docebo_calls, salesforce_calls) = bed.calls();
    let learnsync_by_family = calls::by_family(&bed.docebo.counters());
    println!(
        "| course enrollments | python baseline: s, docebo calls, salesforce calls | learnsync: s, docebo calls, salesforce calls | learnsync faster by |"
    );
    println!(
        "| {enrollments} | {:.1}, {python_docebo}, {python_salesforce} ({report}) | {:.1}, {docebo_calls}, {salesforce_calls} ({records} records) | {:.1}x |",
        python_time.as_secs_f64(),
        learnsync_time.as_secs_f64(),
        python_time.as_secs_f64() / learnsync_time.as_secs_f64(),
    );
    println!("| course enrollments | docebo calls: python baseline | docebo calls: learnsync |");
    println!("| {enrollments} | {python_by_family} | {learnsync_by_family} |");
    bed.stop();
    Ok(())
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    if samples.is_empty() {
        return f64::NAN;
    }
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// GetStatus under load: `clients` concurrent callers (each on its own gRPC connection) calling
/// it in a loop for `seconds`; prints calls/s and the latency percentiles of the calls answered.
async fn get_status_load(bed: &Bed, clients: usize, seconds: u64) -> anyhow::Result<()> {
    let mut callers = Vec::new();
    for _ in 0..clients {
        callers.push(bed.client().await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut client in callers {
        let id = bed.connection_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            while Instant::now() < deadline {
                let call = Instant::now();
                if client.get_status(&id, &[]).await.is_ok() {
                    latencies.push(call.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (some, failures) = task.await?;
        latencies.extend(some);
        failed += failures;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = latencies.len();
    println!(
        "GetStatus: {clients} clients, {seconds} s: {calls} calls ({failed} failed), {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        calls as f64 / elapsed,
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99)
    );
    Ok(())
}

/// GetStatus alone, on a connection whose areas have what a status shows: finished runs with
/// their jobs (users, then courses with three jobs), records in the ledger, an active run (a users
/// resynchronize queued once the worker is gone) and an area never configured (enrollments).
async fn bench_status(clients: usize, seconds: u64, pool: usize) -> anyhow::Result<()> {
    let params = GenerateParams {
        seed: 5,
        users: Some(50),
        courses: Some(10),
        learning_plans: Some(3),
        course_enrollments: Some(100),
        learning_plan_enrollments: Some(10),
        session_enrollments: Some(10),
        bad_records: Some(true),
        ..GenerateParams::default()
    };
    let mut bed = Bed::start_limited(&params, None, pool).await?;
    bed.spawn_worker(4)?;
    bed.sync(pb::Area::Users, true).await?;
    bed.sync(pb::Area::Courses, true).await?;
    for mut child in bed.workers.drain(..) {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    let mut client = bed.client().await?;
    client
        .resynchronize(&bed.connection_id, pb::Area::Users, None, false)
        .await?;
    let status = client.get_status(&bed.connection_id, &[]).await?;
    let runs = status
        .areas
        .iter()
        .map(|area| area.active_run.iter().chain(&area.last_run).count())
        .sum::<usize>();
    let records = status
        .areas
        .iter()
        .map(|area| area.records_imported)
        .sum::<i64>();
    println!(
        "connection {}: {runs} runs shown, {records} records imported",
        bed.connection_id
    );
    get_status_load(&bed, clients, seconds).await?;
    bed.stop();
    Ok(())
}

async fn bench_control(clients: usize, seconds: u64, samples: usize) -> anyhow::Result<()> {
    let params = GenerateParams {
        seed: 5,
        users: Some(5),
        courses: Some(2),
        learning_plans: Some(1),
        course_enrollments: Some(5),
        learning_plan_enrollments: Some(1),
        session_enrollments: Some(1),
        bad_records: Some(false),
        ..GenerateParams::default()
    };
    let mut bed = Bed::start(&params).await?;
    bed.spawn_worker(4)?;
    bed.sync(pb::Area::Users, true).await?;

    get_status_load(&bed, clients, seconds).await?;

    // Start-to-claim: from the call's return to the worker's claim (job start_time, same clock).
    let mut client = bed.client().await?;
    let mut claim_ms = Vec::new();
    for _ in 0..samples {
        let run = client
            .resynchronize(&bed.connection_id, pb::Area::Users, None, false)
            .await?;
        let issued = chrono::Utc::now();
        let done = bed.wait(&run.id).await?;
        if let Some(start) = done.jobs.first().and_then(|j| j.start_time) {
            let claimed =
                chrono::DateTime::from_timestamp(start.seconds, start.nanos.max(0) as u32)
                    .unwrap_or(issued);
            let created = done
                .create_time
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                .unwrap_or(issued);
            claim_ms.push((claimed - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    println!(
        "Start-to-claim: {} runs, p50 {:.1} ms, p99 {:.1} ms",
        claim_ms.len(),
        percentile(&mut claim_ms, 0.5),
        percentile(&mut claim_ms, 0.99)
    );

    // StreamLogs delivery: an event appended while a follower waits, until it arrives.
    let connection_id = uuid::Uuid::parse_str(&bed.connection_id)?;
    let conn = bed.store.conn().await?;
    let last = learnsync_store::logs::last_sequence(&conn, connection_id).await?;
    let mut stream = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: bed.connection_id.clone(),
            position: Some(pb::stream_logs_request::Position::FromSequence(last + 1)),
            follow: true,
            ..Default::default()
        })
        .await?;
    let mut delivery_ms = Vec::new();
    let mut sent: BTreeMap<i64, Instant> = BTreeMap::new();
    for index in 0..samples {
        let at = Instant::now();
        let sequences = learnsync_store::logs::append(
            &conn,
            connection_id,
            &[NewLogEvent::new(LogLevel::Debug, "bench event").field("index", index as i64)],
        )
        .await?;
        sent.insert(sequences[0], at);
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await?
            .context("stream ended")??;
        if let Some(at) = sent.remove(&event.sequence) {
            delivery_ms.push(at.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!(
        "StreamLogs delivery: {} events, p50 {:.2} ms, p99 {:.2} ms",
        delivery_ms.len(),
        percentile(&mut delivery_ms, 0.5),
        percentile(&mut delivery_ms, 0.99)
    );
    drop(stream);
    bed.stop();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Exports (the in-process server's spans; the worker processes inherit the variables) when
    // OTEL_EXPORTER_OTLP_ENDPOINT is set: the overhead measurement in BENCHMARKS.md.
    let _telemetry = learnsync_telemetry::init(
        learnsync_telemetry::Output::Text,
        "error",
        "learnsync-bench",
    );
    // Ctrl-C, SIGTERM and SIGHUP stop the bench: its worker processes, the server, the simulators
    // and the private cluster, instead of leaving the processes behind.
    let mut signals = ShutdownSignals::install()?;
    let mut bench = tokio::spawn(run(args.command));
    tokio::select! {
        finished = &mut bench => finished?,
        signal = signals.recv() => {
            eprintln!("{signal}: stopping the workers, the server, the simulators and the private postgres");
            bench.abort();
            let _ = bench.await;
            eprintln!("stopped");
            std::process::exit(learnsync_e2e::signals::exit_code(signal));
        }
    }
}

async fn run(command: Bench) -> anyhow::Result<()> {
    match command {
        Bench::Sync {
            enrollments,
            workers,
            concurrency,
            docebo_rate,
            docebo_burst,
        } => {
            let limit = docebo_rate.map(|per_hour| (per_hour, docebo_burst));
            bench_sync(enrollments, workers, concurrency, limit).await
        }
        Bench::Realtime { enrollments } => bench_realtime(enrollments).await,
        Bench::Drift { enrollments } => bench_drift(enrollments).await,
        Bench::Compare {
            enrollments,
            python,
        } => bench_compare(enrollments, python).await,
        Bench::Control {
            clients,
            seconds,
            samples,
        } => bench_control(clients, seconds, samples).await,
        Bench::Status {
            clients,
            seconds,
            pool,
        } => bench_status(clients, seconds, pool).await,
        Bench::Wal {
            enrollments,
            bad_records,
            changed,
        } => wal::bench_wal(enrollments, bad_records, changed).await,
        Bench::Fleet(args) => fleet::bench_fleet(args).await,
        Bench::Purge { runs } => purge::bench_purge(runs).await,
    }
}

//! `learnsync-bench fleet --connections N`: a fleet of N connections in realtime mode at the
//! default interval (15 min), each with its own small Docebo platform and Salesforce org (one
//! simulator server for all, `learnsync_sim::Fleet`), the `learnsync-server` binary and several
//! `learnsync-worker` processes on the bench's private Postgres.
//!
//! After every area's first synchronization, each area's next run is spread uniformly over its
//! interval (`store::observe::spread_schedule`: the schedule of a fleet that has run for a while),
//! and the fleet runs for `--seconds` while a few enrollments change. It reports, for the
//! scheduled runs of that window: the schedule's lateness (run created minus due), Start-to-claim
//! (run created to its first job claimed), the CPU time of the server, the workers and Postgres
//! (from /proc) as a share of the machine, and Postgres's size and WAL per hour.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use learnsync_client::{Client, pb};
use learnsync_sim::{DoceboConfig, EntityKind, Fleet, GenerateParams, SalesforceConfig};
use learnsync_store::embedded::PrivatePostgres;
use learnsync_store::model::Area;
use learnsync_store::observe::{self, ScheduledRun};
use rand::{Rng as _, RngCore as _};
use uuid::Uuid;

use super::{TOKEN, percentile, postgres_cpu, process_stats};

/// The fleet benchmark's options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Connections, each with its own platform and org, all three areas realtime.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Jobs per worker at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long the fleet runs once spread (the measured window).
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Course enrollments changed per minute across the fleet during the window.
    #[arg(long, default_value_t = 10)]
    changes_per_minute: u32,
    /// The `learnsync-server` binary to run (another build, to compare); the one built next to
    /// this binary by default.
    #[arg(long)]
    server: Option<std::path::PathBuf>,
}

/// A small platform: a few users, courses and enrollments, different for each connection.
fn small_platform(seed: u64) -> GenerateParams {
    GenerateParams {
        seed,
        users: Some(10),
        courses: Some(3),
        learning_plans: Some(1),
        sessions_per_course: Some(1),
        course_enrollments: Some(20),
        learning_plan_enrollments: Some(3),
        session_enrollments: Some(3),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

/// The fleet and the processes measured: the server and the workers are processes of their own,
/// so /proc gives each its CPU time; this process runs the simulators and the measuring.
struct FleetBed {
    postgres: PrivatePostgres,
    store: learnsync_store::Store,
    sims: Fleet,
    endpoint: String,
    server: Child,
    workers: Vec<Child>,
}

impl Drop for FleetBed {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.server))
        {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// A binary built next to this one (`cargo build --release -p ...`).
fn sibling(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file())
        .with_context(|| {
            format!("{name} is not built next to this binary: cargo build --release -p {name}")
        })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl FleetBed {
    async fn start(args: &Args) -> anyhow::Result<FleetBed> {
        let postgres = tokio::task::spawn_blocking(PrivatePostgres::start).await??;
        let store = learnsync_store::Store::connect(&learnsync_store::Options {
            database_url: postgres.url(),
            max_connections: 4,
        })?;
        store.migrate().await?;
        let sims = Fleet::start(
            ([127, 0, 0, 1], 0).into(),
            args.connections,
            &DoceboConfig {
                rate_limit_per_hour: None,
                ..DoceboConfig::default()
            },
            &SalesforceConfig {
                daily_api_limit: u64::MAX / 2,
                ..SalesforceConfig::default()
            },
        )
        .await?;
        for (index, platform) in sims.platforms().iter().enumerate() {
            platform.generate(&small_platform(index as u64 + 1));
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let key_hex = hex::encode(key);
        let listen = format!("127.0.0.1:{}", free_port()?);
        let server_binary = match &args.server {
            Some(path) => path.clone(),
            None => sibling("learnsync-server")?,
        };
        let server = Command::new(server_binary)
            .env("DATABASE_URL", postgres.url())
            .env("LEARNSYNC_LISTEN", &listen)
            .env("LEARNSYNC_TOKENS", format!("operator={TOKEN}"))
            .env("LEARNSYNC_SECRET_KEY", &key_hex)
            .env(
                "LEARNSYNC_UPSTREAM_ALLOW",
                learnsync_e2e::SIM_UPSTREAM_ALLOW,
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let mut bed = FleetBed {
            postgres,
            store,
            sims,
            endpoint: format!("http://{listen}"),
            server,
            workers: Vec::new(),
        };
        for _ in 0..args.workers {
            let worker = Command::new(sibling("learnsync-worker")?)
                .env("DATABASE_URL", bed.postgres.url())
                .env("LEARNSYNC_SECRET_KEY", &key_hex)
                .env("LEARNSYNC_WORKER_CONCURRENCY", args.concurrency.to_string())
                .env(
                    "LEARNSYNC_UPSTREAM_ALLOW",
                    learnsync_e2e::SIM_UPSTREAM_ALLOW,
                )
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?;
            bed.workers.push(worker);
        }
        Ok(bed)
    }

    /// A client of the server, once it answers (it runs the migrations first).
    async fn client(&self) -> anyhow::Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.endpoint, TOKEN).await {
                Ok(client) => return Ok(client),
                Err(error) if Instant::now() > deadline => {
                    return Err(error).context("the server never answered");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// CPU seconds so far of the server, the workers together and Postgres.
    fn cpu(&self) -> anyhow::Result<Cpu> {
        let postmaster = self.postgres.postmaster_pid().context("postmaster pid")?;
        let server = process_stats(self.server.id()).map_or(0.0, |(cpu, _)| cpu);
        let workers = self
            .workers
            .iter()
            .filter_map(|child| process_stats(child.id()))
            .map(|(cpu, _)| cpu)
            .sum();
        Ok(Cpu {
            server,
            workers,
            postgres: postgres_cpu(postmaster),
            simulators: process_stats(std::process::id()).map_or(0.0, |(cpu, _)| cpu),
        })
    }
}

/// CPU seconds of each part.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    server: f64,
    workers: f64,
    postgres: f64,
    /// This process: the simulators (not learnsync) and the measuring.
    simulators: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            workers: self.workers - before.workers,
            postgres: self.postgres - before.postgres,
            simulators: self.simulators - before.simulators,
        }
    }
}

/// Creates one connection per platform, 16 calls at a time; returns their ids in platform order.
async fn create_connections(bed: &FleetBed) -> anyhow::Result<Vec<String>> {
    let client = bed.client().await?;
    // Futures collected first, each owning what it needs: a stream over a closure that borrows
    // would make this future's Send depend on a lifetime the compiler cannot name.
    let mut requests = Vec::with_capacity(bed.sims.len());
    for index in 0..bed.sims.len() {
        let mut client = client.clone();
        let connection = learnsync_e2e::sim_connection(
            &format!("fleet {index}"),
            &bed.sims.platforms()[index],
            &bed.sims.orgs()[index],
        );
        requests.push(async move {
            client
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(connection),
                    request_id: String::new(),
                })
                .await
                .map(|created| created.id)
        });
    }
    let ids: Vec<_> = futures::stream::iter(requests)
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    Ok(ids.into_iter().collect::<Result<_, _>>()?)
}

/// Configures `area` realtime at the default interval on every connection and starts its first
/// synchronization, 16 calls at a time; returns once no run is active.
async fn first_syncs(bed: &FleetBed, ids: &[String], areas: &[pb::Area]) -> anyhow::Result<()> {
    let client = bed.client().await?;
    let mut calls = Vec::new();
    for id in ids {
        for area in areas {
            let (mut client, id, area) = (client.clone(), id.clone(), *area);
            calls.push(async move {
                let config = pb::AreaConfig {
                    area: area as i32,
                    enabled: true,
                    mode: pb::Mode::Realtime as i32,
                    ..Default::default()
                };
                client.configure(&id, config).await?;
                client.start(&id, area, None).await
            });
        }
    }
    let started: Vec<Result<pb::Run, tonic::Status>> = futures::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    for run in started {
        run?;
    }
    let conn = bed.store.conn().await?;
    loop {
        let states = observe::run_states(&conn).await?;
        let active: i64 = states
            .iter()
            .filter(|(state, _)| ["queued", "running", "stopping"].contains(&state.as_str()))
            .map(|(_, count)| count)
            .sum();
        if active == 0 {
            println!("first syncs of {areas:?} done: runs by state {states:?}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Changes `per_minute` course enrollments a minute, on platforms picked at random, until
/// cancelled; returns how many it changed.
async fn change_enrollments(
    sims: &Fleet,
    per_minute: u32,
    cancel: tokio_util::sync::CancellationToken,
) -> usize {
    if per_minute == 0 {
        cancel.cancelled().await;
        return 0;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(60.0 / f64::from(per_minute)));
    let mut changed = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return changed,
            _ = tick.tick() => {}
        }
        let platform = &sims.platforms()[rand::rng().random_range(0..sims.len())];
        let items = platform.items(EntityKind::CourseEnrollments);
        let Some(item) = items.get(rand::rng().random_range(0..items.len().max(1))) else {
            continue;
        };
        let key = format!("{}-{}", item["user_id"], item["course_id"]).replace('"', "");
        let score = rand::rng().random_range(0..100);
        if platform
            .update(
                EntityKind::CourseEnrollments,
                &key,
                serde_json::json!({"enrollment_score": score}),
            )
            .is_ok()
        {
            changed += 1;
        }
    }
}

/// What the database held and wrote.
struct DbState {
    wal: i64,
    size: i64,
    tables: Vec<observe::TableSize>,
}

async fn db_state(store: &learnsync_store::Store) -> anyhow::Result<DbState> {
    let conn = store.conn().await?;
    Ok(DbState {
        wal: observe::wal_position(&conn).await?,
        size: observe::database_size(&conn).await?,
        tables: observe::table_sizes(&conn).await?,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The fleet benchmark.
pub(crate) async fn bench_fleet(args: Args) -> anyhow::Result<()> {
    println!("load average at start: {}", load_average());
    let setup = Instant::now();
    let bed = FleetBed::start(&args).await?;
    let ids = create_connections(&bed).await?;
    println!(
        "{} connections created in {:.1} s",
        ids.len(),
        setup.elapsed().as_secs_f64()
    );
    first_syncs(&bed, &ids, &[pb::Area::Users, pb::Area::Courses]).await?;
    first_syncs(&bed, &ids, &[pb::Area::Enrollments]).await?;
    println!("set up in {:.1} s", setup.elapsed().as_secs_f64());

    let dues = observe::spread_schedule(&bed.store.conn().await?).await?;
    let window = measure_window(&bed, &args).await?;
    let conn = bed.store.conn().await?;
    let runs = observe::scheduled_runs(&conn, window.start).await?;
    report(&args, &dues, &runs, &window);
    Ok(())
}

/// What the measured window saw.
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    seconds: f64,
    cpu: Cpu,
    before: DbState,
    after: DbState,
    changed: usize,
    load: String,
}

async fn measure_window(bed: &FleetBed, args: &Args) -> anyhow::Result<Window> {
    let before = db_state(&bed.store).await?;
    let cpu_before = bed.cpu()?;
    let start = Utc::now();
    let started = Instant::now();
    let cancel = tokio_util::sync::CancellationToken::new();
    let changes = change_enrollments(&bed.sims, args.changes_per_minute, cancel.clone());
    let wait = async {
        let conn = bed.store.conn().await?;
        for _ in 0..args.seconds.div_ceil(30) {
            let left = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(30))).await;
            let so_far = observe::scheduled_runs(&conn, start).await?.len();
            println!(
                "{:>4.0} s: {so_far} scheduled runs, load {}",
                started.elapsed().as_secs_f64(),
                load_average()
            );
        }
        cancel.cancel();
        anyhow::Ok(())
    };
    let (changed, waited) = tokio::join!(changes, wait);
    waited?;
    let cpu = bed.cpu()? - cpu_before;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Window {
        start,
        end: Utc::now(),
        seconds,
        cpu,
        before,
        after: db_state(&bed.store).await?,
        changed,
        load: load_average(),
    })
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Lateness of each run (seconds after its area was due), and how many areas fell due in the
/// window without a run by its end.
fn lateness(dues: &[observe::Due], runs: &[ScheduledRun], window: &Window) -> (Vec<f64>, usize) {
    let due: HashMap<(Uuid, Area), DateTime<Utc>> = dues
        .iter()
        .map(|d| ((d.connection_id, d.area), d.next_run_time))
        .collect();
    let mut late = Vec::new();
    let mut started = std::collections::HashSet::new();
    for run in runs {
        if let Some(at) = due.get(&(run.connection_id, run.area))
            && started.insert((run.connection_id, run.area))
        {
            late.push(seconds_between(*at, run.create_time));
        }
    }
    let missed = dues
        .iter()
        .filter(|d| d.next_run_time <= window.end)
        .filter(|d| !started.contains(&(d.connection_id, d.area)))
        .count();
    (late, missed)
}

fn report(args: &Args, dues: &[observe::Due], runs: &[ScheduledRun], window: &Window) {
    let (mut late, missed) = lateness(dues, runs, window);
    let mut claim: Vec<f64> = runs
        .iter()
        .filter_map(|run| Some(seconds_between(run.create_time, run.first_claim_time?)))
        .collect();
    let unclaimed = runs
        .iter()
        .filter(|run| run.first_claim_time.is_none())
        .count();
    let ended = runs.iter().filter(|run| run.end_time.is_some()).count();
    let written: i64 = runs.iter().map(|run| run.written).sum();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let machine = window.seconds * cores;
    let cpu = window.cpu;
    let learnsync = cpu.server + cpu.workers + cpu.postgres;
    let wal = (window.after.wal - window.before.wal) as f64;
    println!(
        "fleet: {} connections, {} workers x {}, {:.0} s window, {} enrollments changed, load at end {}",
        args.connections,
        args.workers,
        args.concurrency,
        window.seconds,
        window.changed,
        window.load
    );
    println!(
        "scheduled runs: {} ({:.2}/s; {ended} ended, {unclaimed} unclaimed at the end, {written} records written); areas due in the window without a run: {missed}",
        runs.len(),
        runs.len() as f64 / window.seconds
    );
    println!(
        "lateness: p50 {:.2} s, p99 {:.2} s, max {:.2} s; start-to-claim: p50 {:.3} s, p99 {:.3} s",
        percentile(&mut late, 0.5),
        percentile(&mut late, 0.99),
        late.iter().copied().fold(f64::NAN, f64::max),
        percentile(&mut claim, 0.5),
        percentile(&mut claim, 0.99),
    );
    println!(
        "cpu s: server {:.1}, workers {:.1}, postgres {:.1} = {:.1} ({:.1}% of {cores} cores); simulators {:.1}; per scheduled run {:.1} ms",
        cpu.server,
        cpu.workers,
        cpu.postgres,
        learnsync,
        100.0 * learnsync / machine,
        cpu.simulators,
        1000.0 * learnsync / runs.len().max(1) as f64,
    );
    println!(
        "postgres: {:.1} MiB (was {:.1}), wal {:.1} MiB in the window = {:.0} MiB/hour, {:.0} bytes per scheduled run",
        window.after.size as f64 / 1048576.0,
        window.before.size as f64 / 1048576.0,
        wal / 1048576.0,
        wal * 3600.0 / window.seconds / 1048576.0,
        wal / runs.len().max(1) as f64,
    );
    for (after, before) in window.after.tables.iter().zip(&window.before.tables) {
        let bytes = after.table_bytes + after.index_bytes;
        println!(
            "  {}: {} rows (+{} in the window), {:.1} MiB, {:.0} bytes/row (table {:.0}, indexes {:.0})",
            after.table,
            after.rows,
            after.rows - before.rows,
            bytes as f64 / 1048576.0,
            bytes as f64 / after.rows.max(1) as f64,
            after.table_bytes as f64 / after.rows.max(1) as f64,
            after.index_bytes as f64 / after.rows.max(1) as f64,
        );
    }
}

//! `learnsync-demo`: the whole system on this machine with nothing configured. It starts a private
//! PostgreSQL cluster (unless `DATABASE_URL` is set), the Docebo and Salesforce simulators with a
//! generated platform, the gRPC server and two workers, then drives a complete synchronization
//! through the API as a user would: a connection, users and courses, then enrollments, with live
//! progress, and a summary checked against what the Salesforce simulator holds.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use learnsync_client::{Client, pb};
use learnsync_e2e::signals::ShutdownSignals;
use learnsync_server::{Principal, Tokens};
use learnsync_sim::{DoceboConfig, DoceboSim, GenerateParams, SalesforceConfig, SalesforceSim};
use learnsync_store::embedded::PrivatePostgres;
use learnsync_store::secrets::Cipher;
use tokio_util::sync::CancellationToken;

/// Runs a complete demo synchronization on simulators.
#[derive(Debug, Parser)]
#[command(name = "learnsync-demo", version, about)]
struct Args {
    /// Users on the generated Docebo platform (courses, sessions and enrollments scale with it).
    #[arg(long, env = "LEARNSYNC_DEMO_USERS", default_value_t = 2000)]
    users: usize,
    /// Course enrollments on the generated platform.
    #[arg(long, env = "LEARNSYNC_DEMO_ENROLLMENTS", default_value_t = 20000)]
    enrollments: usize,
    /// Seed of the generated platform.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Workers to run.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The gRPC address (a free port is used if it is taken).
    #[arg(long, env = "LEARNSYNC_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The web console's address (a free port is used if it is taken).
    #[arg(
        long,
        env = "LEARNSYNC_CONSOLE_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    console_listen: SocketAddr,
    /// Keep everything running after the sync, for exploring with grpcurl and the CLI (Ctrl-C ends).
    #[arg(long)]
    keep_running: bool,
    /// Postgres to use instead of a private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

const DEMO_TOKEN: &str = "demo-operator-token-0000000000000000";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry =
        learnsync_telemetry::init(learnsync_telemetry::Output::Text, "warn", "learnsync-demo");
    let started = Instant::now();

    // Ctrl-C, SIGTERM (`kill`, a CI timeout) and SIGHUP (a closed terminal) stop everything the
    // demo started; a second signal exits at once (the private cluster's watchdog still removes it).
    let mut signals = ShutdownSignals::install()?;
    let shutdown = CancellationToken::new();
    let signalled = Arc::new(OnceLock::new());
    tokio::spawn({
        let (shutdown, signalled) = (shutdown.clone(), signalled.clone());
        async move {
            let signal = signals.recv().await;
            println!("\n{signal}: stopping the server, the workers and the simulators");
            let _ = signalled.set(signal);
            shutdown.cancel();
            let signal = signals.recv().await;
            println!("{signal} again: exiting now");
            std::process::exit(learnsync_e2e::signals::exit_code(signal));
        }
    });

    // Postgres: the caller's, or a private cluster from the machine's binaries.
    let (database_url, private) = match args.database_url.clone().filter(|url| !url.is_empty()) {
        Some(url) => {
            println!("postgres      {}", redact(&url));
            (url, None)
        }
        None => {
            let private = tokio::task::spawn_blocking(PrivatePostgres::start)
                .await?
                .context("starting a private postgres (install PostgreSQL or set DATABASE_URL)")?;
            println!("postgres      private cluster at {}", private.url());
            (private.url(), Some(private))
        }
    };
    let store = learnsync_store::Store::connect(&learnsync_store::Options {
        database_url: database_url.clone(),
        max_connections: 16,
    })?;
    store.migrate().await.context("running migrations")?;

    // The simulators, with a generated platform.
    let docebo = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        ..DoceboConfig::default()
    })
    .await?;
    let salesforce = SalesforceSim::start(SalesforceConfig::default()).await?;
    let summary = docebo.generate(&GenerateParams {
        seed: args.seed,
        users: Some(args.users),
        courses: Some((args.users / 20).max(10)),
        learning_plans: Some((args.users / 100).max(3)),
        course_enrollments: Some(args.enrollments),
        learning_plan_enrollments: Some(args.enrollments / 5),
        session_enrollments: Some(args.enrollments / 4),
        ..GenerateParams::default()
    });
    println!(
        "docebo sim    {}  {}",
        docebo.base_url(),
        counts_line(&summary.counts)
    );
    println!("salesforce    {}", salesforce.base_url());

    // The control plane and the workers.
    let cipher = Cipher::random();
    let mut tokens = Tokens::default();
    tokens.add(DEMO_TOKEN, Principal::Operator);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let endpoint = format!("http://{}", listener.local_addr()?);
    let console = match tokio::net::TcpListener::bind(args.console_listen).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let console_url = format!("http://{}", console.local_addr()?);
    let server_shutdown = shutdown.clone();
    let listeners = learnsync_server::Listeners {
        grpc: listener,
        webhooks: None,
        metrics: None,
        console: Some(console),
    };
    // The simulators listen on plain http at 127.0.0.1: the demo's server and workers admit
    // them (a deployment's policy is https to public addresses only).
    let mut options = learnsync_server::Options::new(tokens, cipher.clone());
    options.upstream = learnsync_e2e::sim_policy();
    let server = tokio::spawn(learnsync_server::serve_on(
        store.clone(),
        options,
        listeners,
        async move { server_shutdown.cancelled().await },
    ));
    println!("grpc server   {endpoint}");
    println!("web console   {console_url}   (sign in with the token {DEMO_TOKEN})");
    let mut workers = Vec::new();
    for index in 0..args.workers {
        let settings = learnsync_worker::Settings {
            worker_id: format!("demo-worker-{index}"),
            upstream: learnsync_e2e::sim_policy(),
            ..learnsync_worker::Settings::default()
        };
        let worker = learnsync_worker::Worker::new(settings, store.clone(), cipher.clone())?;
        workers.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    println!("workers       {}", args.workers);

    // Everything below goes through the public API, as any caller would.
    let drive = async {
        let mut client = Client::connect(&endpoint, DEMO_TOKEN).await?;
        let connection = client
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(pb::Connection {
                    tenant: "demo".into(),
                    ..learnsync_e2e::sim_connection("Demo: Acme Academy", &docebo, &salesforce)
                }),
                request_id: String::new(),
            })
            .await?;
        let id = connection.id.clone();
        println!("connection    {id}\n");

        for area in [pb::Area::Users, pb::Area::Courses] {
            client.configure(&id, manual(area)).await?;
            client.start(&id, area, None).await?;
        }
        learnsync_client::watch::watch(&mut client, &id, &[pb::Area::Users, pb::Area::Courses])
            .await?;
        client.configure(&id, manual(pb::Area::Enrollments)).await?;
        client.start(&id, pb::Area::Enrollments, None).await?;
        println!();
        learnsync_client::watch::watch(&mut client, &id, &[pb::Area::Enrollments]).await?;

        // The summary, checked against what the Salesforce simulator holds.
        let status = client.get_status(&id, &[]).await?;
        println!("\nsummary (took {:.1} s)", started.elapsed().as_secs_f64());
        for area in &status.areas {
            let run = area.last_run.clone().unwrap_or_default();
            let counts = run.counts.unwrap_or_default();
            println!(
                "  {:<12} {:<22} {:>8} imported  {:>7} failed",
                learnsync_client::text::enum_name(pb::Area::try_from(area.area)),
                learnsync_client::text::enum_name(pb::RunState::try_from(run.state)),
                area.records_imported,
                counts.failed,
            );
            if counts.failed > 0 {
                println!(
                    "  {:<12} why: learnsync logs {id} --run {} --level error",
                    "", run.id
                );
            }
        }
        println!("  salesforce now holds:");
        for object in [
            "Docebo_User__c",
            "Docebo_Course__c",
            "Docebo_Learning_Plan__c",
            "Docebo_Session__c",
            "Docebo_Course_Enrollment__c",
            "Docebo_Learning_Plan_Enrollment__c",
            "Docebo_Session_Enrollment__c",
        ] {
            println!("    {:<36} {:>8}", object, salesforce.record_count(object));
        }
        println!(
            "  docebo calls {}   salesforce calls {}",
            docebo.counters().values().sum::<u64>(),
            salesforce.counters().values().sum::<u64>()
        );
        Ok::<_, anyhow::Error>(id)
    };
    // The connection's id once the sync has run; none if a signal came first.
    let synchronized = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        finished = drive => Some(finished?),
    };

    if args.keep_running
        && let Some(id) = &synchronized
    {
        println!("\neverything keeps running; try:");
        println!("  export LEARNSYNC_ENDPOINT={endpoint} LEARNSYNC_TOKEN={DEMO_TOKEN}");
        println!("  cargo run -q -p learnsync-client --bin learnsync -- status {id}");
        println!("  cargo run -q -p learnsync-client --bin learnsync -- logs {id} --level warn");
        let address = endpoint.trim_start_matches("http://");
        println!("  grpcurl -plaintext {address} list");
        println!("  grpcurl -plaintext {address} describe learnsync.v1.SyncService");
        println!(
            "  grpcurl -plaintext -H 'authorization: Bearer {DEMO_TOKEN}' -d '{{\"connection_id\": \"{id}\"}}' \\\n      {address} learnsync.v1.SyncService/GetStatus"
        );
        println!("press ctrl-c to stop (or send SIGTERM or SIGHUP)");
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    for worker in workers {
        worker.await??;
    }
    server.await??;
    docebo.shutdown().await;
    salesforce.shutdown().await;
    let had_private = private.is_some();
    // The pool's connections close before the cluster goes, rather than being cut by it.
    drop(store);
    drop(private);
    if let Some(signal) = signalled.get() {
        println!(
            "stopped the server, the workers, the simulators{}",
            if had_private {
                " and the private postgres"
            } else {
                ""
            }
        );
        if synchronized.is_none() {
            std::process::exit(learnsync_e2e::signals::exit_code(signal));
        }
    }
    Ok(())
}

fn manual(area: pb::Area) -> pb::AreaConfig {
    pb::AreaConfig {
        area: area as i32,
        enabled: true,
        mode: pb::Mode::Manual as i32,
        ..Default::default()
    }
}

fn counts_line(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

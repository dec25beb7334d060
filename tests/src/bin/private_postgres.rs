//! `learnsync-private-postgres`: starts a private PostgreSQL cluster, prints its directory, URL and
//! postmaster pid, and runs until it is ended. It always starts its own cluster (it never reads
//! `DATABASE_URL`). Handy as a throwaway database; `tests/tests/private_postgres.rs` uses it to
//! end a cluster's owner in each way a program can end and check that the cluster goes too.

use clap::{Parser, ValueEnum};
use learnsync_e2e::signals::ShutdownSignals;
use learnsync_store::embedded::PrivatePostgres;

/// Runs a private PostgreSQL cluster until ended.
#[derive(Debug, Parser)]
#[command(name = "learnsync-private-postgres", about)]
struct Args {
    /// What to do once the cluster runs.
    #[arg(long, value_enum, default_value_t = Then::WaitForSignal)]
    then: Then,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Then {
    /// Wait for SIGINT, SIGTERM or SIGHUP, then stop the cluster and exit.
    WaitForSignal,
    /// Wait without handling any signal, as a test binary does: a signal ends the process at once.
    Sleep,
    /// Panic once a line (or the end of input) arrives on stdin; the handle is dropped while
    /// unwinding.
    Panic,
    /// Abort once a line (or the end of input) arrives on stdin; nothing is dropped.
    Abort,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = learnsync_telemetry::init_with(
        learnsync_telemetry::Output::Stderr,
        "info",
        "learnsync-private-postgres",
        None,
    );
    let postgres = PrivatePostgres::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Caught before "ready", so a signal sent on "ready" finds them caught.
    let mut signals = match args.then {
        Then::WaitForSignal => Some(runtime.block_on(async { ShutdownSignals::install() })?),
        _ => None,
    };
    println!("dir {}", postgres.dir().display());
    println!("url {}", postgres.url());
    if let Some(pid) = postgres.postmaster_pid() {
        println!("postmaster {pid}");
    }
    println!("ready");
    match (args.then, signals.as_mut()) {
        (Then::WaitForSignal, Some(signals)) => {
            let signal = runtime.block_on(signals.recv());
            println!("{signal}: stopping the private postgres");
            drop(postgres);
            println!("stopped");
        }
        (Then::Panic, _) => {
            std::io::stdin().read_line(&mut String::new())?;
            panic!("asked to panic with a private postgres running");
        }
        (Then::Abort, _) => {
            std::io::stdin().read_line(&mut String::new())?;
            std::process::abort();
        }
        _ => loop {
            std::thread::park();
        },
    }
    Ok(())
}

//! The `learnsync-server` binary: runs the migrations, then serves the gRPC API until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use learnsync_store::secrets::Cipher;

/// learnsync's gRPC control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Postgres URL of the job state.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// A direct Postgres URL for LISTEN and migrations, when DATABASE_URL goes through PgBouncer in
    /// transaction mode (which keeps neither a LISTEN nor a session lock).
    #[arg(long, env = "LEARNSYNC_DIRECT_DATABASE_URL", hide_env_values = true)]
    direct_database_url: Option<String>,
    /// Address to serve gRPC on.
    #[arg(long, env = "LEARNSYNC_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address to receive Docebo webhooks on (plain HTTP; put TLS in front). Off when unset.
    #[arg(long, env = "LEARNSYNC_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// Address to serve Prometheus metrics on (`/metrics`). Off when unset.
    #[arg(long, env = "LEARNSYNC_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Address to serve the read-only web console on (plain HTTP; browsers send its `Secure`
    /// session cookie only over HTTPS or to localhost, so put TLS in front). Off when unset.
    #[arg(long, env = "LEARNSYNC_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// The longest the realtime scheduler sleeps between passes, e.g. 5s (it wakes sooner, at most
    /// once a second, when the next area falls due).
    #[arg(long, env = "LEARNSYNC_SCHEDULE_TICK", default_value = "5s", value_parser = humantime::parse_duration)]
    schedule_tick: Duration,
    /// How far before the watermark incremental runs read (a change at the boundary is never missed).
    #[arg(long, env = "LEARNSYNC_WATERMARK_OVERLAP", default_value = "2m", value_parser = humantime::parse_duration)]
    watermark_overlap: Duration,
    /// A file with the bearer tokens, instead of the LEARNSYNC_TOKENS environment variable: entries
    /// `operator=<token>` or `tenant:<name>=<token>`, comma or newline separated. Tokens are never
    /// taken from the command line.
    #[arg(long, env = "LEARNSYNC_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// A file holding the 32-byte credentials key (base64 or hex), instead of LEARNSYNC_SECRET_KEY.
    #[arg(long, env = "LEARNSYNC_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// The shortest realtime interval Configure accepts, in seconds.
    #[arg(long, env = "LEARNSYNC_MIN_INTERVAL_SECONDS", default_value_t = 60)]
    min_interval_seconds: u64,
    /// Database pool size.
    #[arg(long, env = "LEARNSYNC_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: usize,
    /// Exceptions to the upstream policy (https and public addresses only), comma separated:
    /// `http`, an address (`127.0.0.1`), a range (`10.0.0.0/8`), a host (`localhost`) or
    /// `*.domain`. Connections whose URLs the policy refuses are not saved.
    #[arg(long, env = learnsync_upstream::ENV)]
    upstream_allow: Option<learnsync_upstream::Policy>,
    /// Log as JSON lines.
    #[arg(long, env = "LEARNSYNC_LOG_JSON")]
    log_json: bool,
}

fn read_secret(env: &str, file: Option<&PathBuf>, what: &str) -> anyhow::Result<String> {
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading {what} from {}", path.display()));
    }
    std::env::var(env)
        .with_context(|| format!("{what} missing: set {env} or pass its --*-file option"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Flushes the spans still to export when main returns.
    let _telemetry = learnsync_telemetry::init(
        if config.log_json {
            learnsync_telemetry::Output::Json
        } else {
            learnsync_telemetry::Output::Text
        },
        "info",
        "learnsync-server",
    );
    // Secrets are read from the environment or a file, never from argv, and clap never sees them.
    let tokens_text = read_secret(
        "LEARNSYNC_TOKENS",
        config.tokens_file.as_ref(),
        "bearer tokens",
    )?;
    let tokens = learnsync_server::Tokens::parse(&tokens_text)?;
    anyhow::ensure!(
        !tokens.is_empty(),
        "no bearer token configured: every call would be refused"
    );
    let key = read_secret(
        "LEARNSYNC_SECRET_KEY",
        config.secret_key_file.as_ref(),
        "credentials key",
    )?;
    let cipher = Cipher::from_encoded(&key)?;

    let store = learnsync_store::Store::connect(&learnsync_store::Options {
        database_url: config.database_url.clone(),
        max_connections: config.db_pool_size,
    })?
    .with_direct_url(config.direct_database_url.clone());
    store.migrate().await.context("running migrations")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let webhooks = match config.webhook_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    let console = match config.console_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    let mut options = learnsync_server::Options::new(tokens, cipher);
    options.min_interval = Duration::from_secs(config.min_interval_seconds);
    options.realtime.schedule_tick = config.schedule_tick;
    options.realtime.overlap = config.watermark_overlap;
    options.upstream = config.upstream_allow.clone().unwrap_or_default();
    tracing::info!(upstream_allow = %options.upstream, "upstream policy");
    let listeners = learnsync_server::Listeners {
        grpc: listener,
        webhooks,
        metrics,
        console,
    };
    learnsync_server::serve_on(store, options, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

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
    /// Address to receive Docebo webhooks on (HTTPS with --tls-cert, else plain HTTP). Off when
    /// unset.
    #[arg(long, env = "LEARNSYNC_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// Address to serve Prometheus metrics on (`/metrics`). Off when unset.
    #[arg(long, env = "LEARNSYNC_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Address to serve the read-only web console on (HTTPS with --tls-cert, else plain HTTP:
    /// browsers send its `Secure` session cookie only over HTTPS or to localhost). Off when unset.
    #[arg(long, env = "LEARNSYNC_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// The longest the realtime scheduler sleeps between passes, e.g. 5s (it wakes sooner, at most
    /// once a second, when the next area falls due).
    #[arg(long, env = "LEARNSYNC_SCHEDULE_TICK", default_value = "5s", value_parser = humantime::parse_duration)]
    schedule_tick: Duration,
    /// How far before the watermark incremental runs read (a change at the boundary is never missed).
    #[arg(long, env = "LEARNSYNC_WATERMARK_OVERLAP", default_value = "2m", value_parser = humantime::parse_duration)]
    watermark_overlap: Duration,
    /// How many webhook messages a connection may hold waiting to be handled; past it the
    /// receiver answers 429 with Retry-After and records nothing.
    #[arg(long, env = "LEARNSYNC_WEBHOOK_MAX_PENDING", default_value_t = 10_000)]
    webhook_max_pending: i64,
    /// How long an ended run is kept, with its jobs and log, e.g. 30d; the hourly housekeeping
    /// purges older ones, each area's latest run excepted.
    #[arg(long, env = "LEARNSYNC_RUN_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    run_retention: Duration,
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
    /// How long a call waits for a pooled database connection when all are busy, e.g. 2s; past
    /// it the call is shed with RESOURCE_EXHAUSTED (and a RetryInfo) instead of queueing.
    #[arg(long, env = "LEARNSYNC_DB_ACQUIRE_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    db_acquire_wait: Duration,
    /// Most StreamLogs calls one token may hold open at once.
    #[arg(long, env = "LEARNSYNC_MAX_LOG_STREAMS", default_value_t = learnsync_server::DEFAULT_MAX_LOG_STREAMS)]
    max_log_streams: usize,
    /// Exceptions to the upstream policy (https and public addresses only), comma separated:
    /// `http`, an address (`127.0.0.1`), a range (`10.0.0.0/8`), a host (`localhost`) or
    /// `*.domain`. Connections whose URLs the policy refuses are not saved.
    #[arg(long, env = learnsync_upstream::ENV)]
    upstream_allow: Option<learnsync_upstream::Policy>,
    /// A PEM certificate chain (the server's first) to serve gRPC, the webhook receiver and the
    /// console over TLS with; the metrics stay plain. Plain TCP when unset.
    #[arg(long, env = "LEARNSYNC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The file holding the certificate's PEM private key.
    #[arg(long, env = "LEARNSYNC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A PEM file of CA certificates: gRPC callers must present a client certificate one of
    /// them signed (mTLS). Needs --tls-cert.
    #[arg(long, env = "LEARNSYNC_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "LEARNSYNC_LOG_JSON")]
    log_json: bool,
}

/// The server's TLS, when a certificate is configured.
fn read_tls(config: &Config) -> anyhow::Result<Option<learnsync_server::Tls>> {
    let (Some(certificate), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let mut tls = learnsync_server::Tls::read(certificate, key)?;
    if let Some(ca) = &config.tls_client_ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        tls = tls.require_client_certificates(&pem)?;
    }
    Ok(Some(tls))
}

/// Binds `address` when one is given.
async fn bind(address: Option<SocketAddr>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    Ok(Some(listener))
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
    .with_direct_url(config.direct_database_url.clone())
    .with_acquire_wait(Some(config.db_acquire_wait));
    store.migrate().await.context("running migrations")?;
    let mut options = learnsync_server::Options::new(tokens, cipher);
    options.tls = read_tls(&config)?;
    let listeners = learnsync_server::Listeners {
        grpc: bind(Some(config.listen))
            .await?
            .context("no grpc listener")?,
        webhooks: bind(config.webhook_listen).await?,
        metrics: bind(config.metrics_listen).await?,
        console: bind(config.console_listen).await?,
    };
    options.min_interval = Duration::from_secs(config.min_interval_seconds);
    options.max_log_streams = config.max_log_streams;
    options.realtime.schedule_tick = config.schedule_tick;
    options.realtime.overlap = config.watermark_overlap;
    options.realtime.webhook_max_pending = config.webhook_max_pending.max(1);
    options.realtime.run_retention = config.run_retention;
    options.upstream = config.upstream_allow.clone().unwrap_or_default();
    tracing::info!(upstream_allow = %options.upstream, "upstream policy");
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

//! `learnsync-sim`: serves the Docebo and Salesforce simulators until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use learnsync_sim::docebo::GenerateParams;
use learnsync_sim::{DoceboConfig, DoceboSim, SalesforceConfig, SalesforceSim};

/// Runs HTTP simulators of Docebo and Salesforce (API v62.0) for demos, tests and benchmarks.
///
/// Secrets come from the environment only, never from the command line:
/// `LEARNSYNC_SIM_DOCEBO_CLIENT_SECRET` (default `docebo-secret`), `LEARNSYNC_SIM_DOCEBO_PASSWORD`
/// (password grant of user `admin`, default `admin-password`) and `LEARNSYNC_SIM_SF_CLIENT_SECRET`
/// (default `learnsync-consumer-secret`).
#[derive(Debug, Parser)]
#[command(name = "learnsync-sim", version)]
struct Config {
    /// Address of the Docebo simulator.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_DOCEBO_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    docebo_addr: SocketAddr,
    /// Address of the Salesforce simulator.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_SALESFORCE_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    salesforce_addr: SocketAddr,
    /// Docebo OAuth client id.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_DOCEBO_CLIENT_ID",
        default_value = "learnsync"
    )]
    docebo_client_id: String,
    /// Docebo access-token lifetime in seconds.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_DOCEBO_TOKEN_LIFETIME_SECS",
        default_value_t = 3600
    )]
    docebo_token_lifetime_secs: u64,
    /// Docebo calls per hour and client (leaky bucket); 0 turns rate limiting off.
    #[arg(long, env = "LEARNSYNC_SIM_DOCEBO_RATE_LIMIT", default_value_t = 1000)]
    docebo_rate_limit: u32,
    /// Docebo limiter's burst: calls a full bucket lets through at once; 0 makes it the hourly
    /// allowance.
    #[arg(long, env = "LEARNSYNC_SIM_DOCEBO_RATE_BURST", default_value_t = 0)]
    docebo_rate_burst: u32,
    /// Largest Docebo page size.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_DOCEBO_MAX_PAGE_SIZE",
        default_value_t = 200
    )]
    docebo_max_page_size: usize,
    /// Generates a Docebo data set with this seed at start-up.
    #[arg(long, env = "LEARNSYNC_SIM_SEED")]
    seed: Option<u64>,
    /// Scale of the start-up data set (1.0 = 100 users, 20 courses, 500 course enrollments, ...).
    #[arg(long, env = "LEARNSYNC_SIM_SCALE", default_value_t = 1.0)]
    scale: f64,
    /// Salesforce consumer key.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_SF_CLIENT_ID",
        default_value = "learnsync-consumer-key"
    )]
    sf_client_id: String,
    /// Salesforce integration username (JWT `sub`).
    #[arg(
        long,
        env = "LEARNSYNC_SIM_SF_USERNAME",
        default_value = "integration@acme.example"
    )]
    sf_username: String,
    /// File holding the PEM public key that verifies JWT bearer assertions.
    #[arg(long, env = "LEARNSYNC_SIM_SF_JWT_PUBLIC_KEY_FILE")]
    sf_jwt_public_key_file: Option<std::path::PathBuf>,
    /// Salesforce daily API request allowance.
    #[arg(long, env = "LEARNSYNC_SIM_SF_DAILY_LIMIT", default_value_t = 100_000)]
    sf_daily_limit: u64,
    /// Salesforce session idle timeout in seconds.
    #[arg(
        long,
        env = "LEARNSYNC_SIM_SF_IDLE_TIMEOUT_SECS",
        default_value_t = 7200
    )]
    sf_idle_timeout_secs: u64,
    /// JSON file with an org schema replacing the default one.
    #[arg(long, env = "LEARNSYNC_SIM_SF_SCHEMA_FILE")]
    sf_schema_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let docebo = DoceboSim::start(DoceboConfig {
        bind: config.docebo_addr,
        client_id: config.docebo_client_id.clone(),
        client_secret: secret("LEARNSYNC_SIM_DOCEBO_CLIENT_SECRET", "docebo-secret"),
        password: secret("LEARNSYNC_SIM_DOCEBO_PASSWORD", "admin-password"),
        token_lifetime: Duration::from_secs(config.docebo_token_lifetime_secs),
        rate_limit_per_hour: (config.docebo_rate_limit > 0).then_some(config.docebo_rate_limit),
        rate_limit_burst: (config.docebo_rate_burst > 0).then_some(config.docebo_rate_burst),
        max_page_size: config.docebo_max_page_size,
        ..DoceboConfig::default()
    })
    .await?;
    if let Some(seed) = config.seed {
        let summary = docebo.generate(&GenerateParams {
            seed,
            scale: Some(config.scale),
            ..GenerateParams::default()
        });
        tracing::info!(seed, counts = ?summary.counts, "data set generated");
    }
    let jwt_public_key_pem = match &config.sf_jwt_public_key_file {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => None,
    };
    let schema = match &config.sf_schema_file {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => learnsync_sim::salesforce::Schema::default_org(),
    };
    let salesforce = SalesforceSim::start(SalesforceConfig {
        bind: config.salesforce_addr,
        client_id: config.sf_client_id.clone(),
        client_secret: secret(
            "LEARNSYNC_SIM_SF_CLIENT_SECRET",
            "learnsync-consumer-secret",
        ),
        username: config.sf_username.clone(),
        jwt_public_key_pem,
        daily_api_limit: config.sf_daily_limit,
        session_idle_timeout: Duration::from_secs(config.sf_idle_timeout_secs),
        schema,
        ..SalesforceConfig::default()
    })
    .await?;
    println!("docebo     {}", docebo.base_url());
    println!("salesforce {}", salesforce.base_url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    docebo.shutdown().await;
    salesforce.shutdown().await;
    Ok(())
}

/// Reads a secret from the environment, with the simulator's well-known default.
fn secret(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

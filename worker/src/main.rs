//! The `learnsync-worker` binary: claims sync jobs until SIGINT/SIGTERM, then hands them back.

use std::process::ExitCode;

use clap::Parser as _;
use learnsync_store::Store;
use learnsync_store::secrets::Cipher;
use learnsync_worker::Worker;
use learnsync_worker::config::Options;
use tokio_util::sync::CancellationToken;

/// mimalloc: the worker allocates many small JSON values from several threads; glibc's allocator
/// spent a fifth of the worker's CPU on them (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reads the credentials key from the file named by the flag, or from LEARNSYNC_SECRET_KEY.
fn cipher(options: &Options) -> Result<Cipher, String> {
    let text = match &options.secret_key_file {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            format!(
                "cannot read the secret key file {}: {error}",
                path.display()
            )
        })?,
        None => std::env::var("LEARNSYNC_SECRET_KEY")
            .map_err(|_| "set LEARNSYNC_SECRET_KEY or LEARNSYNC_SECRET_KEY_FILE".to_string())?,
    };
    Cipher::from_encoded(text.trim()).map_err(|error| format!("invalid secret key: {error}"))
}

async fn shutdown_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    token.cancel();
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
    tracing::info!("shutdown signal received");
    token.cancel();
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    // Flushes the spans still to export when main returns.
    let _telemetry = learnsync_telemetry::init(
        if options.log_json {
            learnsync_telemetry::Output::Json
        } else {
            learnsync_telemetry::Output::Text
        },
        "info",
        "learnsync-worker",
    );
    let cipher = match cipher(&options) {
        Ok(cipher) => cipher,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let settings = options.settings();
    tracing::info!(upstream_allow = %settings.upstream, "upstream policy");
    let store = match Store::connect(&learnsync_store::Options {
        database_url: options.database_url.clone(),
        max_connections: options
            .db_connections
            .unwrap_or(settings.concurrency * 2 + 4),
    }) {
        Ok(store) => store.with_direct_url(options.direct_database_url.clone()),
        Err(error) => {
            tracing::error!(%error, "cannot open the database");
            return ExitCode::FAILURE;
        }
    };
    let worker = match Worker::new(settings, store, cipher) {
        Ok(worker) => worker,
        Err(error) => {
            tracing::error!(%error, "cannot start the worker");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    if let Some(address) = options.metrics_listen {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                tracing::info!(%address, "metrics listening");
                tokio::spawn(learnsync_worker::metrics::serve(listener, shutdown.clone()));
            }
            Err(error) => {
                tracing::error!(%error, %address, "cannot serve metrics");
                return ExitCode::FAILURE;
            }
        }
    }
    match worker.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "worker failed");
            ExitCode::FAILURE
        }
    }
}

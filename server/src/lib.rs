//! learnsync's control plane: the `learnsync.v1.SyncService` gRPC API over the job state in
//! Postgres, with `grpc.health.v1` and server reflection (v1 and v1alpha). The server holds no
//! state of its own that must be unique: any number of servers may run against one database.
//!
//! Layout:
//! - [`Options`] and [`serve`]: build and run a server on a listener until a shutdown future
//!   completes (tests run it in-process on port 0).
//! - [`auth`]: bearer tokens, operator and tenant scopes.
//! - `service`: the RPC handlers; `convert`: validation and wire conversions; `error`: every
//!   `Status` the server sends.
//! - [`metrics`]: Prometheus metrics (gRPC calls, runs and jobs by state) on `/metrics`.
//! - [`realtime`]: the scheduler and the webhook dispatcher loops; `webhooks`: the HTTP receiver
//!   of Docebo webhooks.
//! - `console`: the read-only web console (HTML over the same handlers), on a port of its own.
//! - `main.rs`: the `learnsync-server` binary.

pub mod auth;
mod console;
mod convert;
mod error;
pub mod metrics;
pub mod realtime;
mod service;
mod webhooks;

use std::future::Future;
use std::time::Duration;

use learnsync_proto::v1::sync_service_server::SyncServiceServer;
use learnsync_store::{Store, secrets::Cipher};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

pub use auth::{Principal, Tokens};
pub use convert::MAX_VIOLATIONS;
pub use realtime::RealtimeOptions;

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bearer tokens the server accepts.
    pub tokens: Tokens,
    /// Encrypts connection credentials at rest.
    pub cipher: Cipher,
    /// The shortest realtime interval Configure accepts (protects the Docebo call budget).
    pub min_interval: Duration,
    /// How often a following log stream polls when no NOTIFY arrives.
    pub log_poll_interval: Duration,
    /// How long in-flight calls may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The realtime loops (schedule, webhooks).
    pub realtime: RealtimeOptions,
    /// What connections' Docebo and Salesforce URLs may reach (strict by default; the binary
    /// reads `LEARNSYNC_UPSTREAM_ALLOW`): CreateConnection and UpdateConnection refuse others.
    pub upstream: learnsync_upstream::Policy,
}

/// The listeners a server serves on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Docebo webhooks (plain HTTP), when received.
    pub webhooks: Option<TcpListener>,
    /// Prometheus `/metrics`, when exported.
    pub metrics: Option<TcpListener>,
    /// The read-only web console (plain HTTP), when served.
    pub console: Option<TcpListener>,
}

impl Options {
    /// Options with the defaults for everything but the tokens and the key.
    pub fn new(tokens: Tokens, cipher: Cipher) -> Options {
        Options {
            tokens,
            cipher,
            min_interval: Duration::from_secs(60),
            log_poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            realtime: RealtimeOptions::default(),
            upstream: learnsync_upstream::Policy::strict(),
        }
    }
}

/// What stopped a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The webhook receiver failed.
    #[error("webhook receiver: {0}")]
    Webhooks(#[from] std::io::Error),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serves the API on `listener` until `shutdown` completes, then stops taking calls, ends open log
/// streams, and lets in-flight calls finish (up to `shutdown_grace`). Migrations are the caller's
/// (the binary runs them before it listens).
pub async fn serve(
    store: Store,
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listeners = Listeners {
        grpc: listener,
        webhooks: None,
        metrics: None,
        console: None,
    };
    serve_on(store, options, listeners, shutdown).await
}

/// Serves gRPC, and webhooks and metrics when their listeners are given, until `shutdown`.
pub async fn serve_on(
    store: Store,
    options: Options,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Listeners {
        grpc: listener,
        webhooks,
        metrics: metrics_listener,
        console: console_listener,
    } = listeners;
    let metrics = metrics::Metrics::new()?;
    let cancel = CancellationToken::new();
    let notifications = learnsync_store::listen::spawn(
        store.direct_url().to_string(),
        &[
            learnsync_store::CHANNEL_LOGS,
            learnsync_store::CHANNEL_RUNS,
            learnsync_store::realtime::CHANNEL_WEBHOOKS,
        ],
        cancel.child_token(),
    );
    // The realtime loops and housekeeping run on every server: each step is safe to repeat.
    tokio::spawn(realtime::schedule(
        store.clone(),
        options.realtime.clone(),
        cancel.child_token(),
    ));
    tokio::spawn(realtime::dispatch(
        store.clone(),
        options.realtime.clone(),
        notifications.subscribe(),
        cancel.child_token(),
    ));
    tokio::spawn(maintenance(store.clone(), cancel.child_token()));
    let webhook_task = webhooks.map(|listener| {
        let router = webhooks::router(
            store.clone(),
            options.cipher.clone(),
            options.realtime.webhook_max_pending,
        );
        spawn_http("webhook receiver", listener, router, cancel.clone())
    });
    let metrics_task = metrics_listener.map(|listener| {
        spawn_http(
            "metrics",
            listener,
            metrics.router(store.clone()),
            cancel.clone(),
        )
    });
    let service = service::Service {
        store: store.clone(),
        cipher: options.cipher.clone(),
        min_interval: options.min_interval,
        upstream: std::sync::Arc::new(options.upstream.clone()),
        log_poll_interval: options.log_poll_interval,
        notifications,
        shutdown: cancel.clone(),
    };
    if let Some(listener) = console_listener {
        tokio::spawn(console::serve(
            listener,
            service.clone(),
            options.tokens.clone(),
            cancel.clone(),
        ));
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SyncServiceServer<service::Service>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let sync = tonic::service::interceptor::InterceptedService::new(
        SyncServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        options.tokens.clone().interceptor(),
    );
    let addr = listener.local_addr().ok();
    tracing::info!(address = ?addr, "server listening");
    // An answer is a few small writes (headers, message, trailers): without TCP_NODELAY, Nagle's
    // algorithm holds the last one until the caller's delayed ACK (40 ms on Linux), and every
    // call takes that long. Tonic sets it only on the sockets it accepts itself.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "tcp_nodelay not set");
            }
        })
    });
    let grace = options.shutdown_grace;
    let stop = cancel.clone();
    let drain = async move {
        shutdown.await;
        tracing::info!("server shutting down");
        health_reporter
            .set_not_serving::<SyncServiceServer<service::Service>>()
            .await;
        // Ends open log streams, the listener and the maintenance task.
        stop.cancel();
    };
    let served = tonic::transport::Server::builder()
        .layer(metrics::MetricsLayer(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sync)
        .serve_with_incoming_shutdown(incoming, drain);
    let cancelled = cancel.clone();
    tokio::select! {
        outcome = served => outcome?,
        _ = async {
            cancelled.cancelled().await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_seconds = grace.as_secs(), "in-flight calls did not finish in time"),
    }
    cancel.cancel();
    if let Some(task) = metrics_task
        && let Ok(Err(error)) = task.await
    {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
    if let Some(task) = webhook_task
        && let Ok(outcome) = task.await
    {
        outcome?;
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Server reflection over learnsync's and health's descriptors, in both versions: grpcurl and
/// the Python reflection client speak v1alpha, newer tools v1 only.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(learnsync_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The largest request message the server decodes: a connection with a JWT private key is a few
/// kilobytes, and nothing legitimate comes near this.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Serves an HTTP router (the webhook receiver, the metrics) on `listener` until `stop`.
fn spawn_http(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tracing::info!(address = ?listener.local_addr().ok(), endpoint = name, "http endpoint listening");
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    })
}

/// Housekeeping any server may do, since every step is idempotent: forget old idempotency keys
/// and webhook messages handled longer ago than their retention.
async fn maintenance(store: Store, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let conn = match store.conn().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "housekeeping skipped: no database connection");
                continue;
            }
        };
        match learnsync_store::idempotency::purge_expired(&conn).await {
            Ok(purged) if purged > 0 => tracing::info!(purged, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "idempotency key purge failed"),
        }
        let retention = learnsync_store::realtime::WEBHOOK_RETENTION;
        match learnsync_store::realtime::purge_handled_webhooks(&conn, retention).await {
            Ok(purged) if purged > 0 => tracing::info!(purged, "handled webhook messages purged"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "webhook message purge failed"),
        }
    }
}

//! learnsync's control plane: the `learnsync.v1.SyncService` gRPC API over the job state in
//! Postgres, with `grpc.health.v1` and server reflection (v1 and v1alpha). The server holds no
//! state of its own that must be unique: any number of servers may run against one database.
//!
//! Layout:
//! - [`Options`] and [`serve`]: build and run a server on a listener until a shutdown future
//!   completes (tests run it in-process on port 0).
//! - [`auth`]: bearer tokens, operator and tenant scopes.
//! - `service`: the RPC handlers; `convert`: validation and wire conversions; `error`: every
//!   `Status` the server sends; `followers`: StreamLogs' per-token limit and the one shared log
//!   poll per followed connection; `admission`: unreadable requests answered `INVALID_ARGUMENT`.
//! - [`metrics`]: Prometheus metrics (gRPC calls, runs and jobs by state) on `/metrics`.
//! - [`realtime`]: the scheduler and the webhook dispatcher loops; `webhooks`: the HTTP receiver
//!   of Docebo webhooks.
//! - `console`: the read-only web console (HTML over the same handlers), on a port of its own.
//! - [`tls`]: the certificate and key all but the metrics listener serve TLS with, and the
//!   client certificates gRPC may require (mTLS).
//! - `main.rs`: the `learnsync-server` binary.

mod admission;
pub mod auth;
mod console;
mod convert;
mod error;
mod followers;
mod mapping;
pub mod metrics;
pub mod realtime;
mod service;
pub mod tls;
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
pub use tls::{Tls, TlsError};

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bearer tokens the server accepts.
    pub tokens: Tokens,
    /// Encrypts connection credentials at rest.
    pub cipher: Cipher,
    /// The shortest realtime interval Configure accepts (protects the Docebo call budget).
    pub min_interval: Duration,
    /// How often a followed connection's log is polled when no NOTIFY arrives (one poll per
    /// connection, shared by its followers).
    pub log_poll_interval: Duration,
    /// Most StreamLogs calls one token may hold open; more are `RESOURCE_EXHAUSTED`.
    pub max_log_streams: usize,
    /// How long in-flight calls may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The realtime loops (schedule, webhooks).
    pub realtime: RealtimeOptions,
    /// What connections' Docebo and Salesforce URLs may reach (strict by default; the binary
    /// reads `LEARNSYNC_UPSTREAM_ALLOW`): CreateConnection and UpdateConnection refuse others.
    pub upstream: learnsync_upstream::Policy,
    /// TLS for gRPC, the webhook receiver and the console (and client certificates for gRPC,
    /// when it requires them); plain TCP when unset.
    pub tls: Option<Tls>,
}

/// The listeners a server serves on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Docebo webhooks (HTTP, over TLS when the options have it), when received.
    pub webhooks: Option<TcpListener>,
    /// Prometheus `/metrics`, when exported.
    pub metrics: Option<TcpListener>,
    /// The read-only web console (HTTP, over TLS when the options have it), when served.
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
            max_log_streams: DEFAULT_MAX_LOG_STREAMS,
            shutdown_grace: Duration::from_secs(10),
            realtime: RealtimeOptions::default(),
            upstream: learnsync_upstream::Policy::strict(),
            tls: None,
        }
    }
}

/// The most StreamLogs calls one token holds open by default: a console, a CLI or two and a
/// dashboard, with room to spare.
pub const DEFAULT_MAX_LOG_STREAMS: usize = 32;

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
    /// The HTTP client for the orgs' describes could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
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

/// Serves gRPC, and webhooks, metrics and the console when their listeners are given, until
/// `shutdown`; over TLS when `options.tls` is set (all but the metrics).
pub async fn serve_on(
    store: Store,
    options: Options,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = metrics::Metrics::new()?;
    let cancel = CancellationToken::new();
    let notifications = spawn_background(&store, &options, &cancel);
    let service = service::Service {
        store: store.clone(),
        cipher: options.cipher.clone(),
        min_interval: options.min_interval,
        upstream: std::sync::Arc::new(options.upstream.clone()),
        log_streams: followers::LogStreams::new(
            store.clone(),
            options.log_poll_interval,
            notifications,
            cancel.clone(),
            options.max_log_streams,
        ),
        org_http: mapping::http(&options.upstream)?,
    };
    let mut listeners = listeners;
    let http = HttpTasks::spawn(
        &mut listeners,
        &store,
        &options,
        &metrics,
        &service,
        &cancel,
    );
    let grace = options.shutdown_grace;
    let served = serve_grpc(
        listeners.grpc,
        service,
        &options,
        metrics,
        &cancel,
        shutdown,
    );
    let cancelled = cancel.clone();
    tokio::select! {
        outcome = served => outcome?,
        _ = async {
            cancelled.cancelled().await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_seconds = grace.as_secs(), "in-flight calls did not finish in time"),
    }
    cancel.cancel();
    http.finish().await?;
    tracing::info!("server stopped");
    Ok(())
}

/// Starts what runs beside the API until `cancel`: the LISTEN connection (whose fan-out it
/// returns), the realtime loops and housekeeping (on every server: each step is safe to repeat).
fn spawn_background(
    store: &Store,
    options: &Options,
    cancel: &CancellationToken,
) -> tokio::sync::broadcast::Sender<learnsync_store::listen::Notification> {
    let notifications = learnsync_store::listen::spawn(
        store.direct_url().to_string(),
        &[
            learnsync_store::CHANNEL_LOGS,
            learnsync_store::CHANNEL_RUNS,
            learnsync_store::realtime::CHANNEL_WEBHOOKS,
        ],
        cancel.child_token(),
    );
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
    tokio::spawn(maintenance(
        store.clone(),
        options.realtime.run_retention,
        cancel.child_token(),
    ));
    notifications
}

/// Purges the runs ended longer ago than `retention`, a batch at a time (a bounded number of
/// batches an hour, so that a backlog after a long outage drains without holding the database).
async fn purge_runs(conn: &learnsync_store::Conn, retention: Duration) {
    const MOST_BATCHES: usize = 100;
    let (mut runs, mut logs) = (0, 0);
    for _ in 0..MOST_BATCHES {
        match learnsync_store::runs::purge_ended(
            conn,
            retention,
            learnsync_store::runs::PURGE_BATCH,
        )
        .await
        {
            Ok((purged, events)) => {
                runs += purged;
                logs += events;
                if purged < learnsync_store::runs::PURGE_BATCH as u64 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "run purge failed");
                break;
            }
        }
    }
    if runs > 0 {
        tracing::info!(
            runs,
            log_events = logs,
            "ended runs purged past their retention"
        );
    }
}

/// Serves the gRPC services on `listener` (over TLS when configured) until `shutdown`, then
/// reports not serving, cancels `cancel` (ending open log streams) and drains.
async fn serve_grpc(
    listener: TcpListener,
    service: service::Service,
    options: &Options,
    metrics: metrics::Metrics,
    cancel: &CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SyncServiceServer<service::Service>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let sync = tonic::service::interceptor::InterceptedService::new(
        admission::RequestErrors::new(
            SyncServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        ),
        options.tokens.clone().interceptor(),
    );
    tracing::info!(
        address = ?listener.local_addr().ok(),
        tls = options.tls.is_some(),
        client_certificates = options.tls.as_ref().is_some_and(Tls::requires_client_certificates),
        "server listening"
    );
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
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.grpc())?;
    }
    builder
        .layer(metrics::MetricsLayer(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sync)
        .serve_with_incoming_shutdown(nodelay_incoming(listener), drain)
        .await?;
    Ok(())
}

/// The sockets `listener` accepts, with TCP_NODELAY. An answer is a few small writes (headers,
/// message, trailers): without it, Nagle's algorithm holds the last one until the caller's
/// delayed ACK (40 ms on Linux), and every call takes that long. Tonic sets it only on the
/// sockets it accepts itself; with TLS, tonic's handshake runs over these sockets.
fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "tcp_nodelay not set");
            }
        })
    })
}

/// The HTTP endpoints' tasks.
struct HttpTasks {
    webhooks: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    metrics: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    console: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl HttpTasks {
    /// Serves the webhook receiver and the console (over TLS when configured) and the metrics
    /// (plain HTTP) on the listeners given (taking them), until `cancel`.
    fn spawn(
        listeners: &mut Listeners,
        store: &Store,
        options: &Options,
        metrics: &metrics::Metrics,
        service: &service::Service,
        cancel: &CancellationToken,
    ) -> HttpTasks {
        let tls = options.tls.as_ref();
        let webhooks = listeners.webhooks.take().map(|listener| {
            let router = webhooks::router(
                store.clone(),
                options.cipher.clone(),
                options.realtime.webhook_max_pending,
            );
            spawn_http("webhook receiver", listener, router, tls, cancel.clone())
        });
        let metrics = listeners.metrics.take().map(|listener| {
            let router = metrics.router(store.clone());
            spawn_http("metrics", listener, router, None, cancel.clone())
        });
        let console = listeners.console.take().map(|listener| {
            let router = console::router(service.clone(), options.tokens.clone());
            spawn_http("console", listener, router, tls, cancel.clone())
        });
        HttpTasks {
            webhooks,
            metrics,
            console,
        }
    }

    /// Waits for the endpoints to stop (after `cancel`): the webhook receiver's failure is the
    /// server's, the others' are logged.
    async fn finish(self) -> Result<(), Error> {
        for (name, task) in [
            ("metrics endpoint", self.metrics),
            ("console", self.console),
        ] {
            if let Some(task) = task
                && let Ok(Err(error)) = task.await
            {
                tracing::warn!(%error, endpoint = name, "http endpoint stopped");
            }
        }
        if let Some(task) = self.webhooks
            && let Ok(outcome) = task.await
        {
            outcome?;
        }
        Ok(())
    }
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

/// Serves an HTTP router (the webhook receiver, the metrics, the console) on `listener`, over
/// TLS when `tls` is given, until `stop`.
fn spawn_http(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    tls: Option<&Tls>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tracing::info!(address = ?listener.local_addr().ok(), endpoint = name, tls = tls.is_some(), "http endpoint listening");
    let stopped = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    match tls {
        None => tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        }),
        Some(tls) => {
            let listener = tls::TlsListener::spawn(listener, tls, stop);
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
    }
}

/// Housekeeping any server may do, since every step is idempotent: forget old idempotency keys,
/// webhook messages handled longer ago than their retention, and runs ended longer ago than
/// `run_retention` (with their jobs and log).
async fn maintenance(store: Store, run_retention: Duration, cancel: CancellationToken) {
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
        purge_runs(&conn, run_retention).await;
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

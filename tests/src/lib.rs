//! The in-process harness shared by the end-to-end tests and the demo: a fresh database, the real
//! gRPC server on a loopback port, and clients holding operator or tenant tokens.
//!
//! Layout:
//! - [`TestServer`]: a migrated database of its own and a server on `127.0.0.1:0`, stopped through
//!   its shutdown channel (never by sleeping).
//! - [`tokens`]: the bearer tokens the harness configures.
//! - [`sample_connection`]: a valid connection request.
//! - [`env`]: the store-level world the worker's tests use (simulators, a connection, in-process
//!   workers, runs started through the store).
//! - [`signals`]: the signals that end the demo and the benchmark cleanly.
//! - [`otlp`]: a test OTLP collector recording the spans the server and the workers export.

use std::time::Duration;

use learnsync_client::{Client, pb};
use learnsync_server::{Options, Principal, Tokens};
use learnsync_store::{Store, secrets::Cipher};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod env;
pub mod otlp;
pub mod signals;

/// The bearer tokens the harness configures.
pub mod tokens {
    /// Sees every connection.
    pub const OPERATOR: &str = "operator-token-for-tests-0001";
    /// Tenant `acme`.
    pub const ACME: &str = "acme-tenant-token-for-tests-0001";
    /// Tenant `globex`.
    pub const GLOBEX: &str = "globex-tenant-token-for-tests-0001";
}

/// What the simulators need of the upstream policy: plain http to `127.0.0.1` (where they
/// listen). The harness, the demo and the bench pass it to in-process servers and workers, and
/// as [`SIM_UPSTREAM_ALLOW`] to worker processes.
pub fn sim_policy() -> learnsync_upstream::Policy {
    SIM_UPSTREAM_ALLOW
        .parse()
        .unwrap_or_else(|error| panic!("the simulators' policy: {error}"))
}

/// The workers' HTTP client under [`sim_policy`], for tests of the thin clients.
pub fn sim_http() -> learnsync_upstream::Http {
    learnsync_upstream::Http::new(sim_policy(), Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("the simulators' http client: {error}"))
}

/// [`sim_policy`] as `LEARNSYNC_UPSTREAM_ALLOW` writes it.
pub const SIM_UPSTREAM_ALLOW: &str = "http,127.0.0.1";

/// Sets up tracing once, at the level of `RUST_LOG` (warnings by default), into the test output.
/// Nothing is exported, whatever the environment says (`tests/tests/otlp.rs` installs its own).
pub fn init_tracing() {
    let none = learnsync_telemetry::init_with(
        learnsync_telemetry::Output::Test,
        "warn",
        "learnsync-e2e",
        None,
    );
    drop(none);
}

/// A server running in-process on its own database.
pub struct TestServer {
    /// `http://127.0.0.1:<port>` (`https://` when the options have TLS).
    pub endpoint: String,
    /// `http://127.0.0.1:<port>` of the webhook receiver (`https://` with TLS).
    pub webhook_base: String,
    /// `http://127.0.0.1:<port>` of the metrics endpoint.
    pub metrics_base: String,
    /// `http://127.0.0.1:<port>` of the read-only web console (`https://` with TLS).
    pub console_base: String,
    /// The database's URL.
    pub database_url: String,
    /// A store on the same database, for arranging state the API cannot (e.g. finishing jobs).
    pub store: Store,
    /// The credentials key the server uses.
    pub cipher: Cipher,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), learnsync_server::Error>>>,
}

/// The harness's tokens.
pub fn test_tokens() -> Tokens {
    let mut tokens = Tokens::default();
    tokens.add(tokens::OPERATOR, Principal::Operator);
    tokens.add(tokens::ACME, Principal::Tenant("acme".into()));
    tokens.add(tokens::GLOBEX, Principal::Tenant("globex".into()));
    tokens
}

impl TestServer {
    /// Starts a server on a fresh database.
    pub async fn start() -> anyhow::Result<TestServer> {
        init_tracing();
        let database_url = learnsync_store::testing::fresh_database().await?;
        TestServer::start_on(&database_url, Cipher::random()).await
    }

    /// Starts a server on an existing database (several servers may share one).
    pub async fn start_on(database_url: &str, cipher: Cipher) -> anyhow::Result<TestServer> {
        TestServer::start_with(database_url, cipher, |_| {}).await
    }

    /// Starts a server on an existing database with adjusted options. The harness's defaults: a
    /// 1 s minimum interval, a 500 ms log poll, a 200 ms schedule tick, a 1 s watermark overlap,
    /// and the upstream policy the simulators need ([`sim_policy`]).
    pub async fn start_with(
        database_url: &str,
        cipher: Cipher,
        adjust: impl FnOnce(&mut Options),
    ) -> anyhow::Result<TestServer> {
        let store = Store::connect(&learnsync_store::Options {
            database_url: database_url.to_string(),
            max_connections: 8,
        })?;
        store.migrate().await?;
        let mut options = Options::new(test_tokens(), cipher.clone());
        options.min_interval = Duration::from_secs(1);
        options.log_poll_interval = Duration::from_millis(500);
        options.realtime.schedule_tick = Duration::from_millis(200);
        options.realtime.overlap = Duration::from_secs(1);
        options.realtime.webhook_poll = Duration::from_millis(500);
        options.upstream = sim_policy();
        adjust(&mut options);
        // With TLS, every listener but the metrics' speaks https.
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("{scheme}://{}", listener.local_addr()?);
        let webhooks = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let webhook_base = format!("{scheme}://{}", webhooks.local_addr()?);
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics_base = format!("http://{}", metrics.local_addr()?);
        let console = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let console_base = format!("{scheme}://{}", console.local_addr()?);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let listeners = learnsync_server::Listeners {
            grpc: listener,
            webhooks: Some(webhooks),
            metrics: Some(metrics),
            console: Some(console),
        };
        let task = tokio::spawn(learnsync_server::serve_on(
            store.clone(),
            options,
            listeners,
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        Ok(TestServer {
            endpoint,
            webhook_base,
            metrics_base,
            console_base,
            database_url: database_url.to_string(),
            store,
            cipher,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// A client holding `token`.
    pub async fn client(&self, token: &str) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.endpoint, token).await?)
    }

    /// A client holding the operator token.
    pub async fn operator(&self) -> anyhow::Result<Client> {
        self.client(tokens::OPERATOR).await
    }

    /// Shuts the server down and waits for it to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A valid connection to create, with client-credentials grants on both sides.
pub fn sample_connection(
    display_name: &str,
    docebo_url: &str,
    salesforce_url: &str,
) -> pb::Connection {
    pb::Connection {
        display_name: display_name.to_string(),
        docebo: Some(pb::DoceboCredentials {
            base_url: docebo_url.to_string(),
            client_id: "docebo-client".to_string(),
            client_secret: "docebo-secret-value".to_string(),
            grant: Some(pb::docebo_credentials::Grant::ClientCredentials(
                pb::DoceboClientCredentialsGrant {},
            )),
        }),
        salesforce: Some(pb::SalesforceCredentials {
            login_url: salesforce_url.to_string(),
            client_id: "salesforce-client".to_string(),
            grant: Some(pb::salesforce_credentials::Grant::ClientCredentials(
                pb::SalesforceClientCredentialsGrant {
                    client_secret: "salesforce-secret-value".to_string(),
                },
            )),
        }),
        ..Default::default()
    }
}

/// A connection to a pair of running simulators, with their credentials and a Docebo budget large
/// enough for tests, demos and benchmarks (the simulators' rate limit is the one that matters).
pub fn sim_connection(
    display_name: &str,
    docebo: &learnsync_sim::DoceboSim,
    salesforce: &learnsync_sim::SalesforceSim,
) -> pb::Connection {
    let mut connection = sample_connection(display_name, docebo.base_url(), salesforce.base_url());
    if let Some(credentials) = connection.docebo.as_mut() {
        credentials.client_id = docebo.config().client_id.clone();
        credentials.client_secret = docebo.config().client_secret.clone();
    }
    if let Some(credentials) = connection.salesforce.as_mut() {
        credentials.client_id = salesforce.config().client_id.clone();
        credentials.grant = Some(pb::salesforce_credentials::Grant::ClientCredentials(
            pb::SalesforceClientCredentialsGrant {
                client_secret: salesforce.config().client_secret.clone(),
            },
        ));
    }
    connection.docebo_calls_per_hour = 100_000;
    connection
}

/// Creates a sample connection with `client` and returns its id.
pub async fn create_sample(client: &mut Client, display_name: &str) -> anyhow::Result<String> {
    let connection = client
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(sample_connection(
                display_name,
                "https://acme.docebosaas.com",
                "https://login.salesforce.com",
            )),
            request_id: String::new(),
        })
        .await?;
    Ok(connection.id)
}

/// An enabled manual configuration of an area.
pub fn manual(area: pb::Area) -> pb::AreaConfig {
    pb::AreaConfig {
        area: area as i32,
        enabled: true,
        mode: pb::Mode::Manual as i32,
        ..Default::default()
    }
}

/// Reading `google.rpc` details back from a status, for assertions.
pub mod details {
    use tonic::Status;
    use tonic_types::StatusExt as _;

    /// The fields named by the status's `BadRequest`.
    pub fn fields(status: &Status) -> Vec<String> {
        status
            .get_details_bad_request()
            .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    }

    /// The types named by the status's `PreconditionFailure`.
    pub fn preconditions(status: &Status) -> Vec<String> {
        status
            .get_details_precondition_failure()
            .map(|failure| failure.violations.into_iter().map(|v| v.r#type).collect())
            .unwrap_or_default()
    }

    /// The `ErrorInfo` reason and domain.
    pub fn reason(status: &Status) -> Option<(String, String)> {
        status
            .get_details_error_info()
            .map(|info| (info.reason, info.domain))
    }
}

/// The whole system in-process: a server, workers, and both simulators, with a connection whose
/// credentials point at the simulators.
pub struct TestSystem {
    /// The server (and its database).
    pub server: TestServer,
    /// The Docebo simulator.
    pub docebo: learnsync_sim::DoceboSim,
    /// The Salesforce simulator.
    pub salesforce: learnsync_sim::SalesforceSim,
    /// The connection created on them.
    pub connection_id: String,
    cancel: tokio_util::sync::CancellationToken,
    workers: Vec<JoinHandle<Result<(), learnsync_worker::Error>>>,
}

impl TestSystem {
    /// Starts a server (with `adjust`ed options), `workers` workers, and simulators holding the
    /// generated platform, and creates a connection to them (with a Docebo budget large enough
    /// for tests).
    pub async fn start(
        params: &learnsync_sim::GenerateParams,
        workers: usize,
        adjust: impl FnOnce(&mut Options),
    ) -> anyhow::Result<TestSystem> {
        init_tracing();
        let database_url = learnsync_store::testing::fresh_database().await?;
        let server = TestServer::start_with(&database_url, Cipher::random(), adjust).await?;
        let docebo = learnsync_sim::DoceboSim::start(learnsync_sim::DoceboConfig {
            rate_limit_per_hour: None,
            webhook_retry_base: Duration::from_millis(200),
            ..learnsync_sim::DoceboConfig::default()
        })
        .await?;
        docebo.generate(params);
        let salesforce =
            learnsync_sim::SalesforceSim::start(learnsync_sim::SalesforceConfig::default()).await?;
        let connection = sim_connection("system", &docebo, &salesforce);
        let mut client = server.operator().await?;
        let created = client
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(connection),
                request_id: String::new(),
            })
            .await?;
        let mut system = TestSystem {
            server,
            docebo,
            salesforce,
            connection_id: created.id,
            cancel: tokio_util::sync::CancellationToken::new(),
            workers: Vec::new(),
        };
        for _ in 0..workers {
            system.add_worker()?;
        }
        Ok(system)
    }

    /// Starts one more worker, with short leases and polls.
    pub fn add_worker(&mut self) -> anyhow::Result<()> {
        let settings = learnsync_worker::Settings {
            lease: Duration::from_secs(3),
            heartbeat: Duration::from_millis(500),
            poll_interval: Duration::from_millis(300),
            retry_base: Duration::from_millis(200),
            // The connections' budget is 100,000 calls an hour, at once: the simulator's default
            // limiter lets the hour's allowance through at once.
            docebo_burst: 100_000,
            upstream: sim_policy(),
            ..learnsync_worker::Settings::default()
        };
        let worker = learnsync_worker::Worker::new(
            settings,
            self.server.store.clone(),
            self.server.cipher.clone(),
        )?;
        self.workers
            .push(tokio::spawn(worker.run(self.cancel.clone())));
        Ok(())
    }

    /// A client holding the operator token.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.server.operator().await
    }

    /// Configures an area and synchronizes it for the first time; returns the finished run.
    pub async fn first_sync(&self, config: pb::AreaConfig) -> anyhow::Result<pb::Run> {
        let mut client = self.client().await?;
        let area = pb::Area::try_from(config.area)?;
        client.configure(&self.connection_id, config).await?;
        let run = client.start(&self.connection_id, area, None).await?;
        self.wait_for_run(&run.id, Duration::from_secs(60)).await
    }

    /// Waits until a run has ended.
    pub async fn wait_for_run(&self, run_id: &str, timeout: Duration) -> anyhow::Result<pb::Run> {
        let client = self.client().await?;
        let connection_id = self.connection_id.clone();
        eventually(timeout, &format!("run {run_id} to end"), || {
            let mut client = client.clone();
            let connection_id = connection_id.clone();
            async move {
                let run = client.get_run(&connection_id, run_id).await?;
                let active = [
                    pb::RunState::Queued,
                    pb::RunState::Running,
                    pb::RunState::Stopping,
                ]
                .iter()
                .any(|state| *state as i32 == run.state);
                Ok((!active).then_some(run))
            }
        })
        .await
    }

    /// Stops the workers (the server stops when dropped).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for worker in self.workers.drain(..) {
            worker.await??;
        }
        Ok(())
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The in-process harness shared by the end-to-end tests and the demo: a fresh database, the real
//! gRPC server on a loopback port, and clients holding operator or tenant tokens.
//!
//! Layout:
//! - [`TestServer`]: a migrated database of its own and a server on `127.0.0.1:0`, stopped through
//!   its shutdown channel (never by sleeping).
//! - [`tokens`]: the bearer tokens the harness configures.
//! - [`sample_connection`]: a valid connection request.

use std::time::Duration;

use learnsync_client::{Client, pb};
use learnsync_server::{Options, Principal, Tokens};
use learnsync_store::{Store, secrets::Cipher};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bearer tokens the harness configures.
pub mod tokens {
    /// Sees every connection.
    pub const OPERATOR: &str = "operator-token-for-tests-0001";
    /// Tenant `acme`.
    pub const ACME: &str = "acme-tenant-token-for-tests-0001";
    /// Tenant `globex`.
    pub const GLOBEX: &str = "globex-tenant-token-for-tests-0001";
}

/// Sets up tracing once, at the level of `RUST_LOG` (warnings by default), into the test output.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A server running in-process on its own database.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
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
        let store = Store::connect(&learnsync_store::Options {
            database_url: database_url.to_string(),
            max_connections: 8,
        })?;
        store.migrate().await?;
        let mut options = Options::new(test_tokens(), cipher.clone());
        options.min_interval = Duration::from_secs(1);
        options.log_poll_interval = Duration::from_millis(500);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(learnsync_server::serve(
            store.clone(),
            options,
            listener,
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        Ok(TestServer {
            endpoint,
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

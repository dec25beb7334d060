//! A typed Rust client for learnsync's gRPC API (`learnsync.v1.SyncService`), and the `learnsync`
//! CLI built on it.
//!
//! Layout:
//! - [`Client`]: connects with a bearer token (over TLS to an `https://` endpoint, with
//!   [`Tls`]'s CA and client certificate when given); every mutating call gets a `request_id` (generated
//!   when the caller gives none) and is retried with the same id when the server is unavailable,
//!   so a retry never does the work twice.
//! - [`pb`]: the generated messages, re-exported.
//! - [`text`]: renderings for people (status table, runs, log lines); [`watch`]: live progress bars.
//! - `main.rs` and `cli/`: the `learnsync` binary.

pub mod text;
pub mod watch;

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// A `Mapping` message and its JSON document (the form of mapping files), both ways.
pub use learnsync_proto::mapping as pb_mapping;
pub use learnsync_proto::v1 as pb;
use pb::sync_service_client::SyncServiceClient;

/// What can go wrong when connecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint URL is not valid.
    #[error("invalid endpoint {endpoint}: {source}")]
    Endpoint {
        /// The URL given.
        endpoint: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// The token cannot be sent as metadata.
    #[error("the token contains characters that cannot be sent in a header")]
    Token,
    /// TLS settings were given for an endpoint that is not `https://`.
    #[error("{endpoint}: a CA file or client certificate needs an https:// endpoint")]
    PlainEndpoint {
        /// The URL given.
        endpoint: String,
    },
    /// The server could not be reached.
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        /// The URL given.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// How to speak TLS to an `https://` endpoint. The default trusts the machine's CA certificates
/// and presents no client certificate.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM CA certificates to trust instead of the machine's (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM client certificate chain and its PEM key, for a server that requires one (mTLS).
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_identity.is_some())
            .finish()
    }
}

impl Tls {
    /// Whether anything differs from the default.
    fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.client_identity.is_none()
    }

    /// tonic's configuration: the given CA, else the machine's roots; the client certificate.
    fn config(&self) -> ClientTlsConfig {
        let config = match &self.ca_pem {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        match &self.client_identity {
            Some((certificate, key)) => config.identity(Identity::from_pem(certificate, key)),
            None => config,
        }
    }
}

/// The generated client with authentication.
pub type RawClient = SyncServiceClient<InterceptedService<Channel, BearerAuth>>;

/// A client of one learnsync server.
#[derive(Clone)]
pub struct Client {
    raw: RawClient,
    /// How many times a mutating call is tried when the server is unavailable.
    attempts: u32,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`, or `https://...` trusting the
    /// machine's CA certificates) with a bearer token.
    pub async fn connect(endpoint: &str, token: &str) -> Result<Client, Error> {
        Client::connect_with(endpoint, token, &Tls::default()).await
    }

    /// Connects to `endpoint` with a bearer token, with `tls`'s CA and client certificate for an
    /// `https://` endpoint.
    pub async fn connect_with(endpoint: &str, token: &str, tls: &Tls) -> Result<Client, Error> {
        let invalid = |source| Error::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut builder = Endpoint::from_shared(endpoint.to_string()).map_err(invalid)?;
        if builder.uri().scheme_str() == Some("https") {
            builder = builder.tls_config(tls.config()).map_err(invalid)?;
        } else if !tls.is_default() {
            return Err(Error::PlainEndpoint {
                endpoint: endpoint.to_string(),
            });
        }
        let channel = builder
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| Error::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Client::with_channel(channel, token)
    }

    /// A client over an existing channel.
    pub fn with_channel(channel: Channel, token: &str) -> Result<Client, Error> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Token)?;
        Ok(Client {
            raw: SyncServiceClient::with_interceptor(channel, BearerAuth { header }),
            attempts: 3,
        })
    }

    /// The generated client, for calls this type does not wrap.
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.raw
    }

    /// Calls a mutating method with a request id, retrying with the same id while the server is
    /// unavailable.
    async fn mutate<Req, Resp, F>(&mut self, request: Req, call: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: AsyncFn(&mut RawClient, Req) -> Result<tonic::Response<Resp>, Status>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match call(&mut self.raw, request.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if attempt < self.attempts => match retry_after(&status, delay) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        delay *= 2;
                        attempt += 1;
                    }
                    None => return Err(status),
                },
                Err(status) => return Err(status),
            }
        }
    }

    /// Creates a connection.
    pub async fn create_connection(
        &mut self,
        request: pb::CreateConnectionRequest,
    ) -> Result<pb::Connection, Status> {
        let request = with_id(request, |r| &mut r.request_id);
        self.mutate(request, async |raw, req| raw.create_connection(req).await)
            .await
    }

    /// Reads a connection.
    pub async fn get_connection(&mut self, connection_id: &str) -> Result<pb::Connection, Status> {
        let request = pb::GetConnectionRequest {
            connection_id: connection_id.to_string(),
        };
        Ok(self.raw.get_connection(request).await?.into_inner())
    }

    /// Lists a page of connections.
    pub async fn list_connections(
        &mut self,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListConnectionsResponse, Status> {
        let request = pb::ListConnectionsRequest {
            page_size,
            page_token: page_token.to_string(),
        };
        Ok(self.raw.list_connections(request).await?.into_inner())
    }

    /// Changes a connection.
    pub async fn update_connection(
        &mut self,
        request: pb::UpdateConnectionRequest,
    ) -> Result<pb::Connection, Status> {
        let request = with_id(request, |r| &mut r.request_id);
        self.mutate(request, async |raw, req| raw.update_connection(req).await)
            .await
    }

    /// Deletes a connection.
    pub async fn delete_connection(
        &mut self,
        connection_id: &str,
    ) -> Result<pb::DeleteConnectionResponse, Status> {
        let request = with_id(
            pb::DeleteConnectionRequest {
                connection_id: connection_id.to_string(),
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.delete_connection(req).await)
            .await
    }

    /// Configures an area.
    pub async fn configure(
        &mut self,
        connection_id: &str,
        config: pb::AreaConfig,
    ) -> Result<pb::AreaConfig, Status> {
        let request = with_id(
            pb::ConfigureRequest {
                connection_id: connection_id.to_string(),
                config: Some(config),
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.configure(req).await)
            .await
    }

    /// Starts an area's first synchronization.
    pub async fn start(
        &mut self,
        connection_id: &str,
        area: pb::Area,
        timeframe: Option<pb::Timeframe>,
    ) -> Result<pb::Run, Status> {
        let request = with_id(
            pb::StartRequest {
                connection_id: connection_id.to_string(),
                area: area as i32,
                timeframe,
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.start(req).await)
            .await
    }

    /// Stops an area's active run.
    pub async fn stop(&mut self, connection_id: &str, area: pb::Area) -> Result<pb::Run, Status> {
        let request = with_id(
            pb::StopRequest {
                connection_id: connection_id.to_string(),
                area: area as i32,
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.stop(req).await)
            .await
    }

    /// Runs an area again from scratch.
    pub async fn resynchronize(
        &mut self,
        connection_id: &str,
        area: pb::Area,
        timeframe: Option<pb::Timeframe>,
        rewrite_unchanged: bool,
    ) -> Result<pb::Run, Status> {
        let options = Resync {
            rewrite_unchanged,
            ..Resync::default()
        };
        self.resynchronize_with(connection_id, area, timeframe, options)
            .await
    }

    /// Runs an area again from scratch, with options: a check that writes nothing, unenrollments
    /// confirmed above the connection's guard.
    pub async fn resynchronize_with(
        &mut self,
        connection_id: &str,
        area: pb::Area,
        timeframe: Option<pb::Timeframe>,
        options: Resync,
    ) -> Result<pb::Run, Status> {
        let request = with_id(
            pb::ResynchronizeRequest {
                connection_id: connection_id.to_string(),
                area: area as i32,
                timeframe,
                rewrite_unchanged: options.rewrite_unchanged,
                check_only: options.check_only,
                confirm_unenrollments: options.confirm_unenrollments,
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.resynchronize(req).await)
            .await
    }

    /// Reads the status of a connection's areas (all when `areas` is empty).
    pub async fn get_status(
        &mut self,
        connection_id: &str,
        areas: &[pb::Area],
    ) -> Result<pb::GetStatusResponse, Status> {
        let request = pb::GetStatusRequest {
            connection_id: connection_id.to_string(),
            areas: areas.iter().map(|a| *a as i32).collect(),
        };
        Ok(self.raw.get_status(request).await?.into_inner())
    }

    /// Reads a run.
    pub async fn get_run(&mut self, connection_id: &str, run_id: &str) -> Result<pb::Run, Status> {
        let request = pb::GetRunRequest {
            connection_id: connection_id.to_string(),
            run_id: run_id.to_string(),
        };
        Ok(self.raw.get_run(request).await?.into_inner())
    }

    /// Lists a page of runs.
    pub async fn list_runs(
        &mut self,
        request: pb::ListRunsRequest,
    ) -> Result<pb::ListRunsResponse, Status> {
        Ok(self.raw.list_runs(request).await?.into_inner())
    }

    /// Reads the secret path of a connection's webhook URL.
    pub async fn get_webhook_endpoint(
        &mut self,
        connection_id: &str,
    ) -> Result<pb::WebhookEndpoint, Status> {
        let request = pb::GetWebhookEndpointRequest {
            connection_id: connection_id.to_string(),
        };
        Ok(self.raw.get_webhook_endpoint(request).await?.into_inner())
    }

    /// Replaces a connection's webhook secret.
    pub async fn rotate_webhook_secret(
        &mut self,
        connection_id: &str,
    ) -> Result<pb::RotateWebhookSecretResponse, Status> {
        let request = with_id(
            pb::RotateWebhookSecretRequest {
                connection_id: connection_id.to_string(),
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| {
            raw.rotate_webhook_secret(req).await
        })
        .await
    }

    /// Reads a connection's current mapping.
    pub async fn get_mapping(&mut self, connection_id: &str) -> Result<pb::Mapping, Status> {
        let request = pb::GetMappingRequest {
            connection_id: connection_id.to_string(),
        };
        Ok(self.raw.get_mapping(request).await?.into_inner())
    }

    /// Checks a mapping against the connection's org and, unless `check_only`, saves it as the
    /// connection's next version.
    pub async fn set_mapping(
        &mut self,
        connection_id: &str,
        mapping: pb::Mapping,
        check_only: bool,
    ) -> Result<pb::Mapping, Status> {
        let request = with_id(
            pb::SetMappingRequest {
                connection_id: connection_id.to_string(),
                mapping: Some(mapping),
                check_only,
                request_id: String::new(),
            },
            |r| &mut r.request_id,
        );
        self.mutate(request, async |raw, req| raw.set_mapping(req).await)
            .await
    }

    /// Opens a log stream.
    pub async fn stream_logs(
        &mut self,
        request: pb::StreamLogsRequest,
    ) -> Result<tonic::Streaming<pb::LogEvent>, Status> {
        Ok(self.raw.stream_logs(request).await?.into_inner())
    }
}

/// Gives a request a fresh request id unless it has one, so that retries of it are recognised.
fn with_id<R>(mut request: R, field: impl FnOnce(&mut R) -> &mut String) -> R {
    let id = field(&mut request);
    if id.is_empty() {
        *id = uuid::Uuid::new_v4().to_string();
    }
    request
}

/// A one-line description of a gRPC error, with its `google.rpc` details (field violations,
/// precondition failures), for people.
pub fn describe(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            text.push_str(&format!(
                "\n  field {}: {}",
                violation.field, violation.description
            ));
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for violation in &failure.violations {
            text.push_str(&format!(
                "\n  precondition {} on {}: {}",
                violation.r#type, violation.subject, violation.description
            ));
        }
    }
    text
}

/// What a Resynchronize asks for beyond its timeframe (see `ResynchronizeRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resync {
    /// Write every record, even those Salesforce holds unchanged.
    pub rewrite_unchanged: bool,
    /// Only report what a synchronization would do.
    pub check_only: bool,
    /// Unenroll even above the connection's guard.
    pub confirm_unenrollments: bool,
}

/// How long to wait before sending a mutating call again, or `None` when its answer is final: the
/// server was unavailable (wait `backoff`), or it shed the call because its database pool was
/// starved (`RESOURCE_EXHAUSTED` with reason `SERVER_BUSY`: wait what its `RetryInfo` says, at
/// least `backoff`). The same request id makes a resent call safe.
fn retry_after(status: &Status, backoff: Duration) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    match status.code() {
        Code::Unavailable => Some(backoff),
        Code::ResourceExhausted => {
            let details = status.get_error_details();
            let busy = details
                .error_info()
                .is_some_and(|info| info.reason == "SERVER_BUSY");
            let hint = details.retry_info().and_then(|info| info.retry_delay);
            busy.then(|| hint.map_or(backoff, |hint| hint.max(backoff)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt as _};

    fn exhausted(reason: &str, hint: Option<Duration>) -> Status {
        let mut details = ErrorDetails::with_retry_info(hint);
        details.set_error_info(reason, "learnsync.dev", std::collections::HashMap::new());
        Status::with_error_details(Code::ResourceExhausted, "busy", details)
    }

    #[test]
    fn a_shed_call_waits_its_retry_hint_and_other_answers_are_final() {
        let backoff = Duration::from_millis(200);
        let shed = exhausted("SERVER_BUSY", Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&shed, backoff), Some(Duration::from_secs(1)));
        let shed_without_hint = exhausted("SERVER_BUSY", None);
        assert_eq!(retry_after(&shed_without_hint, backoff), Some(backoff));
        let quota = exhausted("TOO_MANY_LOG_STREAMS", Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&quota, backoff), None);
        assert_eq!(
            retry_after(&Status::unavailable("down"), backoff),
            Some(backoff)
        );
        assert_eq!(retry_after(&Status::invalid_argument("x"), backoff), None);
    }
}

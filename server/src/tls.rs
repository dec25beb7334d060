//! TLS on the server's listeners: one certificate and key (PEM) for gRPC, the webhook receiver
//! and the console, and optionally a CA whose client certificates gRPC callers must present
//! (mTLS). gRPC's handshakes are tonic's (`ServerTlsConfig`, over the sockets the server accepts
//! itself); the HTTP listeners' are [`TlsListener`]'s. The metrics endpoint stays plain HTTP
//! (scraped from inside the cluster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client may take to finish a TLS handshake before its socket is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate, key or CA was refused.
#[derive(Debug, thiserror::Error)]
#[error("tls {what}: {reason}")]
pub struct TlsError {
    /// Which input: `certificate`, `key`, `client ca`.
    what: &'static str,
    /// What is wrong with it.
    reason: String,
}

impl TlsError {
    fn new(what: &'static str, reason: impl ToString) -> TlsError {
        TlsError {
            what,
            reason: reason.to_string(),
        }
    }
}

/// The server's TLS: its certificate chain and key, and the CA of the client certificates gRPC
/// requires, if any. Checked when built, so a bad file stops the server at start-up.
#[derive(Clone)]
pub struct Tls {
    /// The certificate chain and key, for tonic.
    identity: Identity,
    /// The CA gRPC callers' certificates must chain to (mTLS), when required.
    client_ca: Option<Certificate>,
    /// The HTTP listeners' configuration (no client certificates: Docebo and browsers have
    /// none), built from the same certificate and key.
    http: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("client_certificates_required", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS with a PEM certificate chain (the server's first) and its PEM private key.
    pub fn from_pem(certificate_pem: &[u8], key_pem: &[u8]) -> Result<Tls, TlsError> {
        let chain = CertificateDer::pem_slice_iter(certificate_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::new("certificate", error))?;
        if chain.is_empty() {
            return Err(TlsError::new("certificate", "no PEM certificate in it"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::new("key", error))?;
        let mut http =
            rustls::ServerConfig::builder_with_provider(learnsync_store::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| TlsError::new("certificate", error))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|error| TlsError::new("key", error))?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            identity: Identity::from_pem(certificate_pem, key_pem),
            client_ca: None,
            http: Arc::new(http),
        })
    }

    /// Reads the certificate chain and key from PEM files.
    pub fn read(certificate: &std::path::Path, key: &std::path::Path) -> Result<Tls, TlsError> {
        let read = |what, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|error| TlsError::new(what, format!("{}: {error}", path.display())))
        };
        Tls::from_pem(&read("certificate", certificate)?, &read("key", key)?)
    }

    /// Requires gRPC callers to present a certificate signed by a CA in `ca_pem` (mTLS): a
    /// caller without one fails the handshake. Health and reflection included: every gRPC call.
    pub fn require_client_certificates(mut self, ca_pem: &[u8]) -> Result<Tls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            let certificate = certificate.map_err(|error| TlsError::new("client ca", error))?;
            roots
                .add(certificate)
                .map_err(|error| TlsError::new("client ca", error))?;
        }
        if roots.is_empty() {
            return Err(TlsError::new("client ca", "no PEM certificate in it"));
        }
        self.client_ca = Some(Certificate::from_pem(ca_pem));
        Ok(self)
    }

    /// Whether gRPC callers must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's configuration for the gRPC listener.
    pub(crate) fn grpc(&self) -> ServerTlsConfig {
        // tonic builds its rustls configuration with the process's default crypto provider: make
        // it the one learnsync uses, unless the process chose one already.
        let _ = rustls::crypto::CryptoProvider::install_default(
            rustls::crypto::aws_lc_rs::default_provider(),
        );
        let config = ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => config.client_ca_root(ca.clone()),
            None => config,
        }
    }
}

/// An HTTP listener that hands axum only connections whose TLS handshake finished. Handshakes
/// run in tasks of their own (under [`HANDSHAKE_TIMEOUT`]), so a client that stalls in one
/// delays nobody else's.
pub(crate) struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: Option<SocketAddr>,
}

impl TlsListener {
    /// Accepts on `listener` until `stop`.
    pub(crate) fn spawn(listener: TcpListener, tls: &Tls, stop: CancellationToken) -> TlsListener {
        let local = listener.local_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.http.clone());
        let (sender, handshaken) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %peer, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        TlsListener { handshaken, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended: the server is stopping, and graceful shutdown ends the
            // serving loop that waits here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local
            .ok_or_else(|| std::io::Error::other("the listener had no local address"))
    }
}

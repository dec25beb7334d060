//! TLS to Postgres as libpq's `sslmode` and `sslrootcert` say, for managed databases. A database
//! URL (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem`, or the key-value form) is
//! read into a tokio-postgres [`Config`] and one rustls connector, which the pool, the LISTEN
//! connection, the migrations and the test databases all use ([`Target`], [`connect`]).
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable`, `allow` | never | |
//! | `prefer` (unset) | when the server offers it | not checked (libpq's default too) |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert`, and names the host |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the machine's roots; the
//! verifying modes need it (libpq's implicit `~/.postgresql/root.crt` is not read).

use std::str::FromStr as _;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::tls::MakeTlsConnect;
pub use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// A direct connection's driver (poll it, or spawn it, while the client is used).
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// How a connection protects itself, from `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (`disable`, `allow`).
    Disable,
    /// TLS when the server offers it, unverified (`prefer`, the default).
    Prefer,
    /// TLS always, unverified unless a root certificate is given (`require`).
    Require,
    /// TLS always, the chain checked against `sslrootcert` (`verify-ca`).
    VerifyCa,
    /// TLS always, the chain and the host name checked (`verify-full`).
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "invalid database url: sslmode {other:?} is not one of disable, allow, \
                     prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Where a database is and how to reach it: the connection settings without the TLS ones, and
/// the connector those asked for.
#[derive(Clone)]
pub struct Target {
    /// Host, port, user, database and the rest, with tokio-postgres' `ssl_mode` set from
    /// `sslmode`.
    pub config: tokio_postgres::Config,
    /// The TLS connector (unused when `sslmode` is `disable`).
    pub tls: MakeRustlsConnect,
    /// The mode the URL asked for.
    pub mode: SslMode,
}

impl Target {
    /// Reads a libpq-style URL or key-value string, its `sslmode` and `sslrootcert` included
    /// (the root certificates are read now, so a missing file fails at start-up).
    pub fn parse(database_url: &str) -> Result<Target> {
        let (rest, settings) = take_tls_settings(database_url);
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|error| Error::Config(format!("invalid database url: {error}")))?;
        let mode = match settings.sslmode.as_deref() {
            Some(value) => SslMode::parse(value)?,
            None => SslMode::Prefer,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            _ => WireSslMode::Require,
        });
        let tls = connector(mode, settings.sslrootcert.as_deref())?;
        Ok(Target { config, tls, mode })
    }

    /// Opens one connection outside any pool (LISTEN, migrations, administration).
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, Connection)> {
        Ok(self.config.connect(self.tls.clone()).await?)
    }
}

/// Opens one connection to `database_url` outside any pool, with the TLS it asks for.
pub async fn connect(database_url: &str) -> Result<(tokio_postgres::Client, Connection)> {
    Target::parse(database_url)?.connect().await
}

/// Whether `client`'s session is encrypted (PostgreSQL's own view, `pg_stat_ssl`): what an
/// operator or a test checks a URL's `sslmode` by.
pub async fn session_encrypted(client: &impl tokio_postgres::GenericClient) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The TLS settings libpq reads and tokio-postgres does not (it knows no `verify-*` mode and
/// refuses `sslrootcert`).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl TlsSettings {
    /// Keeps `value` when `key` is one of ours; says whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }
}

/// Splits the TLS settings off a URL (`postgres://...?a=b&sslmode=...`) or a key-value string
/// (`host=... sslmode=...`), returning the rest for tokio-postgres.
fn take_tls_settings(database_url: &str) -> (String, TlsSettings) {
    let mut settings = TlsSettings::default();
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let Some((base, query)) = database_url.split_once('?') else {
            return (database_url.to_string(), settings);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !settings.take(&percent_decode(key), percent_decode(value))
            })
            .collect();
        let rest = match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return (rest, settings);
    }
    let mut rest = String::new();
    for (key, value, text) in key_values(database_url) {
        if !settings.take(key, value) {
            rest.push_str(text);
            rest.push(' ');
        }
    }
    (rest.trim_end().to_string(), settings)
}

/// The `key=value` pairs of a libpq key-value string, each with its text as written (values may
/// be single-quoted with `\'` and `\\` escapes; spaces around `=` are allowed).
fn key_values(text: &str) -> Vec<(&str, String, &str)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start();
        rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                    '\'' => {
                        end = index + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        let consumed = start.len() - rest.len();
        pairs.push((key, value, &start[..consumed]));
        rest = rest.trim_start();
    }
    pairs
}

/// Decodes `%XX` escapes (and nothing else: `+` stays, as in libpq).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The one crypto provider learnsync's TLS uses (the one reqwest and tonic use too).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls connector for `mode`, trusting the CAs in `rootcert`.
fn connector(mode: SslMode, rootcert: Option<&str>) -> Result<MakeRustlsConnect> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Config(format!("tls: {error}")))?;
    let roots = rootcert.map(root_store).transpose()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(Error::Config(format!(
                "invalid database url: sslmode={} needs sslrootcert (a PEM file of CA \
                 certificates, or system)",
                if mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )));
        }
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(Unverified(provider))
        }
        (SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            Arc::new(AnyName(webpki(roots, provider)?))
        }
        (SslMode::VerifyFull, Some(roots)) => webpki(roots, provider)?,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn webpki(
    roots: rustls::RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| Error::Config(format!("sslrootcert: {error}")))
}

/// The CA certificates in the PEM file at `path`, or the machine's (`system`).
fn root_store(path: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates: Vec<CertificateDer<'static>> = if path == "system" {
        rustls_native_certs::load_native_certs().certs
    } else {
        CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect())
            .map_err(|error| Error::Config(format!("sslrootcert {path}: {error}")))?
    };
    let (added, _ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(Error::Config(format!(
            "sslrootcert {path}: no CA certificate in it"
        )));
    }
    Ok(roots)
}

/// Accepts any certificate (`prefer`, and `require` without a root, as libpq): the connection
/// is encrypted against eavesdroppers, not authenticated. The handshake's signatures are still
/// checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name (`verify-ca`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(url: &str) -> (String, TlsSettings) {
        take_tls_settings(url)
    }

    #[test]
    fn a_urls_tls_settings_are_taken_and_the_rest_kept() {
        let (rest, settings) = split(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(settings.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(settings.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, settings) = split("postgres://db/app?sslmode=require");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(settings.sslmode.as_deref(), Some("require"));
        let (rest, settings) = split("postgresql://db/app");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(settings, TlsSettings::default());
    }

    #[test]
    fn a_key_value_strings_tls_settings_are_taken_and_quoted_values_kept_whole() {
        let (rest, settings) = split(
            "host=db password='a b\\'c' sslmode = verify-ca sslrootcert='/etc/my ca.pem' dbname=app",
        );
        assert_eq!(rest, "host=db password='a b\\'c' dbname=app");
        assert_eq!(settings.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(settings.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
    }

    #[test]
    fn modes_map_to_the_wire_and_verifying_modes_need_a_root() {
        let target = Target::parse("postgres://db/app").unwrap();
        assert_eq!(target.mode, SslMode::Prefer);
        assert_eq!(target.config.get_ssl_mode(), WireSslMode::Prefer);
        let target = Target::parse("postgres://db/app?sslmode=disable").unwrap();
        assert_eq!(target.config.get_ssl_mode(), WireSslMode::Disable);
        let target = Target::parse("host=db sslmode=require").unwrap();
        assert_eq!(target.config.get_ssl_mode(), WireSslMode::Require);
        for mode in ["verify-ca", "verify-full"] {
            let error = Target::parse(&format!("postgres://db/app?sslmode={mode}"))
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("needs sslrootcert"), "{error}");
        }
        let error = Target::parse("postgres://db/app?sslmode=sometimes")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("sslmode \"sometimes\""), "{error}");
        let error = Target::parse("postgres://db/app?sslmode=require&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("sslrootcert /nonexistent.pem"), "{error}");
    }
}

//! Proves TLS everywhere learnsync listens or connects, with certificates made at test time: the
//! Rust client calls the gRPC API over TLS, mTLS refuses a client without a certificate and admits
//! one with, a webhook arrives over https, and Postgres connections honour `sslmode`
//! (verify-full, verify-ca, require, disable) against a private cluster with `ssl=on`, refusing a
//! certificate from a CA they do not trust.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_client::{Client, Tls as ClientTls};
use learnsync_e2e::{TestServer, create_sample, tokens};
use learnsync_server::Tls;
use learnsync_store::Store;
use learnsync_store::embedded::PrivatePostgres;
use learnsync_store::secrets::Cipher;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use uuid::Uuid;

/// A certificate authority made for one test.
struct Authority {
    /// Its certificate, PEM.
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Issued {
    certificate: String,
    key: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Authority {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (host names or addresses) for `purpose`.
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        params
            .distinguished_name
            .push(DnType::CommonName, "learnsync test");
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap().pem();
        Issued {
            certificate,
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Issued {
        self.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Issued {
        self.issue(&["learnsync-cli"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

async fn tls_server(tls: Tls) -> TestServer {
    learnsync_e2e::init_tracing();
    let database_url = learnsync_store::testing::fresh_database().await.unwrap();
    TestServer::start_with(&database_url, Cipher::random(), move |options| {
        options.tls = Some(tls);
    })
    .await
    .unwrap()
}

/// Connects with `tls` and lists the connections: their count, or why it failed.
async fn list(endpoint: &str, token: &str, tls: &ClientTls) -> Result<usize, String> {
    let mut client = Client::connect_with(endpoint, token, tls)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let page = client
        .list_connections(100, "")
        .await
        .map_err(|status| format!("call: {:?}: {}", status.code(), with_causes(&status)))?;
    Ok(page.connections.len())
}

/// An error and every error under it.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn trusting(authority: &Authority) -> ClientTls {
    ClientTls {
        ca_pem: Some(authority.pem.clone().into_bytes()),
        client_identity: None,
    }
}

fn presenting(trusted: &Authority, issued: &Issued) -> ClientTls {
    ClientTls {
        client_identity: Some((
            issued.certificate.clone().into_bytes(),
            issued.key.clone().into_bytes(),
        )),
        ..trusting(trusted)
    }
}

#[tokio::test]
async fn the_rust_client_calls_the_api_over_tls_and_trusts_only_its_ca() {
    let authority = Authority::new("learnsync test ca");
    let issued = authority.server();
    let tls = Tls::from_pem(issued.certificate.as_bytes(), issued.key.as_bytes()).unwrap();
    let server = tls_server(tls).await;
    assert!(
        server.endpoint.starts_with("https://"),
        "{}",
        server.endpoint
    );

    let mut client =
        Client::connect_with(&server.endpoint, tokens::OPERATOR, &trusting(&authority))
            .await
            .unwrap();
    let id = create_sample(&mut client, "over tls").await.unwrap();
    let read = client.get_connection(&id).await.unwrap();
    assert_eq!(read.display_name, "over tls");

    // A client that trusts another CA refuses the server's certificate.
    let stranger = Authority::new("another ca");
    let refused = list(&server.endpoint, tokens::OPERATOR, &trusting(&stranger)).await;
    assert!(
        refused.is_err(),
        "a server certificate from an unknown ca was accepted"
    );
    // Without a CA file an https endpoint is checked against the machine's CAs: not this one.
    let machine_roots = Client::connect(&server.endpoint, tokens::OPERATOR).await;
    let error = with_causes(&machine_roots.err().unwrap());
    assert!(error.contains("UnknownIssuer"), "{error}");
    // Plain HTTP/2 to the TLS port gets no answer.
    let plain = server.endpoint.replace("https://", "http://");
    let refused = list(&plain, tokens::OPERATOR, &ClientTls::default()).await;
    assert!(
        refused.is_err(),
        "plain http/2 was answered on the tls port"
    );
    // TLS settings with a plain endpoint are a mistake, said as such.
    let mixed = Client::connect_with(&plain, tokens::OPERATOR, &trusting(&authority)).await;
    let error = mixed.err().unwrap().to_string();
    assert!(error.contains("needs an https:// endpoint"), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate_and_admits_one_with() {
    let authority = Authority::new("learnsync test ca");
    let clients = Authority::new("learnsync client ca");
    let issued = authority.server();
    let tls = Tls::from_pem(issued.certificate.as_bytes(), issued.key.as_bytes())
        .unwrap()
        .require_client_certificates(clients.pem.as_bytes())
        .unwrap();
    assert!(tls.requires_client_certificates());
    let server = tls_server(tls).await;

    let without = list(&server.endpoint, tokens::OPERATOR, &trusting(&authority)).await;
    assert!(
        without.is_err(),
        "a client without a certificate was admitted"
    );
    // A certificate from a CA the server does not name is no better.
    let forged = authority.client();
    let wrong_ca = list(
        &server.endpoint,
        tokens::OPERATOR,
        &presenting(&authority, &forged),
    )
    .await;
    assert!(
        wrong_ca.is_err(),
        "a client certificate from another ca was admitted"
    );

    let admitted = presenting(&authority, &clients.client());
    assert_eq!(
        list(&server.endpoint, tokens::OPERATOR, &admitted).await,
        Ok(0)
    );
    // The certificate admits the caller to the transport; the token still decides the rest.
    let unauthenticated = list(&server.endpoint, "not-a-token-of-this-server", &admitted).await;
    let error = unauthenticated.err().unwrap();
    assert!(error.starts_with("call: Unauthenticated"), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_webhook_is_delivered_over_https_and_the_console_answers_on_it_too() {
    let authority = Authority::new("learnsync test ca");
    let issued = authority.server();
    let tls = Tls::from_pem(issued.certificate.as_bytes(), issued.key.as_bytes()).unwrap();
    let server = tls_server(tls).await;
    assert!(server.webhook_base.starts_with("https://"));
    let mut client =
        Client::connect_with(&server.endpoint, tokens::OPERATOR, &trusting(&authority))
            .await
            .unwrap();
    let id = create_sample(&mut client, "webhooks over https")
        .await
        .unwrap();
    let endpoint = client.get_webhook_endpoint(&id).await.unwrap();
    let url = format!("{}{}", server.webhook_base, endpoint.path);

    let ca = reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let body = serde_json::json!({
        "message_id": "over-https-1", "webhook_id": 1, "original_domain": "acme.docebosaas.com",
        "event": "course.enrollment.updated", "fired_by_batch_action": false,
        "payload": {"fired_at": "2024-03-20 09:01:02", "user_id": 12, "course_id": 34, "status": "in_progress"}
    });
    let answer = https.post(&url).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let conn = server.store.conn().await.unwrap();
    let (recorded, _) =
        learnsync_store::realtime::message_counts(&conn, Uuid::parse_str(&id).unwrap())
            .await
            .unwrap();
    assert_eq!(recorded, 1, "the webhook sent over https was recorded");

    // Plain HTTP to the receiver's port is not served, and records nothing.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let refused = plain
        .post(url.replace("https://", "http://"))
        .json(&body)
        .send()
        .await;
    assert!(
        refused.is_err() || !refused.unwrap().status().is_success(),
        "plain http was served on the https port"
    );
    // The console serves its sign-in page on the same certificate.
    let sign_in = https
        .get(format!("{}/sign-in", server.console_base))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), 200);
    server.stop().await.unwrap();
}

/// A private cluster with `ssl=on` serving a certificate for 127.0.0.1 only (so `localhost`
/// does not match it), and the CA that signed it in a file.
struct TlsCluster {
    cluster: PrivatePostgres,
    ca_file: tempfile::NamedTempFile,
}

impl TlsCluster {
    async fn start(authority: &Authority) -> TlsCluster {
        let issued = authority.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let cluster = tokio::task::spawn_blocking(move || {
            PrivatePostgres::start_with_tls(&issued.certificate, &issued.key)
        })
        .await
        .unwrap()
        .unwrap();
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), &authority.pem).unwrap();
        TlsCluster { cluster, ca_file }
    }

    /// The cluster's URL with `query` appended; `host` replaces 127.0.0.1.
    fn url(&self, host: &str, query: &str) -> String {
        let url = self.cluster.url().replace("127.0.0.1", host);
        format!(
            "{url}?{}",
            query.replace("{ca}", &self.ca_file.path().display().to_string())
        )
    }
}

/// Opens a store on `url` and says whether its pooled session is encrypted, or why it failed.
async fn pooled_session_encrypted(url: &str) -> Result<bool, String> {
    let store = Store::connect(&learnsync_store::Options {
        database_url: url.to_string(),
        max_connections: 2,
    })
    .map_err(|error| error.to_string())?;
    let conn = store.conn().await.map_err(|error| error.to_string())?;
    learnsync_store::tls::session_encrypted(&**conn)
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn postgres_connections_honour_sslmode_and_refuse_a_ca_they_do_not_trust() {
    learnsync_e2e::init_tracing();
    let authority = Authority::new("postgres test ca");
    let cluster = TlsCluster::start(&authority).await;
    let verify_full = cluster.url("127.0.0.1", "sslmode=verify-full&sslrootcert={ca}");

    // The whole server on verify-full: migrations and LISTEN on direct connections, the pool.
    let server = TestServer::start_on(&verify_full, Cipher::random())
        .await
        .unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "over postgres tls")
        .await
        .unwrap();
    assert_eq!(client.get_connection(&id).await.unwrap().id, id);
    let conn = server.store.conn().await.unwrap();
    assert!(
        learnsync_store::tls::session_encrypted(&**conn)
            .await
            .unwrap()
    );
    drop(conn);
    let (direct, connection) = learnsync_store::tls::connect(&verify_full).await.unwrap();
    let driver = tokio::spawn(connection);
    assert!(
        learnsync_store::tls::session_encrypted(&direct)
            .await
            .unwrap()
    );
    drop(direct);
    let _ = driver.await;
    server.stop().await.unwrap();

    // A CA that did not sign the server's certificate: refused, for the pool and direct sessions.
    let stranger = Authority::new("another ca");
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_ca.path(), &stranger.pem).unwrap();
    let wrong_ca = cluster.url(
        "127.0.0.1",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other_ca.path().display()
        ),
    );
    let refused = pooled_session_encrypted(&wrong_ca).await;
    let error = refused.expect_err("a certificate from an untrusted ca was accepted");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(learnsync_store::tls::connect(&wrong_ca).await.is_err());
    assert!(learnsync_store::migrate(&wrong_ca).await.is_err());

    // verify-full checks the host name, verify-ca only the chain.
    let by_name =
        |mode: &str| cluster.url("localhost", &format!("sslmode={mode}&sslrootcert={{ca}}"));
    let mismatch = pooled_session_encrypted(&by_name("verify-full")).await;
    let error = mismatch.expect_err("a certificate for another name was accepted");
    assert!(
        error.contains("not valid for name \"localhost\""),
        "{error}"
    );
    assert_eq!(
        pooled_session_encrypted(&by_name("verify-ca")).await,
        Ok(true)
    );

    // require encrypts without checking; disable does not encrypt; prefer (unset) encrypts when offered.
    assert_eq!(
        pooled_session_encrypted(&cluster.url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        pooled_session_encrypted(&cluster.url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        pooled_session_encrypted(&cluster.cluster.url()).await,
        Ok(true)
    );
}

#[test]
fn a_bad_certificate_key_or_client_ca_is_refused_saying_which() {
    let authority = Authority::new("learnsync test ca");
    let issued = authority.server();
    let other = authority.server();
    let error = Tls::from_pem(b"not a certificate", issued.key.as_bytes()).unwrap_err();
    assert!(error.to_string().starts_with("tls certificate:"), "{error}");
    let error = Tls::from_pem(issued.certificate.as_bytes(), b"not a key").unwrap_err();
    assert!(error.to_string().starts_with("tls key:"), "{error}");
    // A key that is not the certificate's.
    let error = Tls::from_pem(issued.certificate.as_bytes(), other.key.as_bytes()).unwrap_err();
    assert!(error.to_string().starts_with("tls key:"), "{error}");
    let tls = Tls::from_pem(issued.certificate.as_bytes(), issued.key.as_bytes()).unwrap();
    let error = tls.require_client_certificates(b"no ca here").unwrap_err();
    assert!(error.to_string().starts_with("tls client ca:"), "{error}");
}

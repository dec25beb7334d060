//! Proves tenants' URLs reach only what the operator allows, over real gRPC and real HTTP: the
//! server refuses connections to private, link-local and loopback targets by default (naming the
//! field, saving nothing); a worker refuses a Salesforce `instance_url` the policy forbids and
//! sends nothing there; a redirect is an error, not followed; an endless body fails the job with
//! a size error; and an upstream's huge, odd error body becomes a bounded, sanitized job error.
//! The odd endpoints are tiny axum servers inside the tests.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use learnsync_client::pb;
use learnsync_e2e::env::{Env, EnvOptions, sync_area, test_settings};
use learnsync_e2e::{TestServer, sample_connection};
use learnsync_sim::GenerateParams;
use learnsync_store::model::{Area, JobState, Run, RunState};
use learnsync_store::secrets::Cipher;
use learnsync_upstream::Policy;
use tonic_types::StatusExt as _;

/// Serves `router` on `ip`, port 0; returns its address.
async fn serve(ip: [u8; 4], router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// An endpoint that counts every request it receives, whatever it is.
async fn counting(ip: [u8; 4]) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(any(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "{}"
        }
    }));
    (serve(ip, router).await, hits)
}

fn small() -> GenerateParams {
    GenerateParams {
        seed: 7,
        users: Some(20),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

/// Runs the users area with one worker until it ends; returns the run.
async fn run_users(env: &Env) -> Run {
    let worker = env.spawn_worker(test_settings("upstream"));
    let run = sync_area(env, Area::Users).await;
    worker.stop().await;
    run
}

/// The failed job's error (asserting the run failed).
fn job_error(run: &Run) -> String {
    assert_eq!(run.state, RunState::Failed, "{run:#?}");
    let job = &run.jobs[0];
    assert_eq!(job.state, JobState::Failed, "{run:#?}");
    job.error_message.clone().unwrap()
}

/// The field violations of an INVALID_ARGUMENT, as `(field, description)`.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|violation| (violation.field, violation.description))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_forbidden_targets_by_default_and_saves_nothing() {
    learnsync_e2e::init_tracing();
    let database_url = learnsync_store::testing::fresh_database().await.unwrap();
    let server = TestServer::start_with(&database_url, Cipher::random(), |options| {
        options.upstream = Policy::strict();
    })
    .await
    .unwrap();
    let mut client = server.operator().await.unwrap();
    let public_docebo = "https://acme.docebosaas.com";
    let public_salesforce = "https://login.salesforce.com";
    for (docebo, salesforce, field, reason) in [
        (
            "http://10.0.0.5",
            public_salesforce,
            "connection.docebo.base_url",
            "must use https (plain http is not allowed by this service)",
        ),
        (
            "https://10.0.0.5",
            public_salesforce,
            "connection.docebo.base_url",
            "10.0.0.5 is a private address, which this service does not allow",
        ),
        (
            public_docebo,
            "https://169.254.169.254",
            "connection.salesforce.login_url",
            "169.254.169.254 is a link-local address, which this service does not allow",
        ),
        (
            "https://localhost",
            public_salesforce,
            "connection.docebo.base_url",
            "localhost names this machine, which this service does not allow",
        ),
    ] {
        let status = client
            .create_connection(pb::CreateConnectionRequest {
                connection: Some(sample_connection("refused", docebo, salesforce)),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            violations(&status),
            vec![(field.to_string(), reason.to_string())],
            "{docebo} {salesforce}"
        );
    }
    let listed = client.list_connections(100, "").await.unwrap();
    assert!(listed.connections.is_empty(), "{listed:?}");

    // An update to a forbidden target is refused, and the stored URL stays.
    let created = client
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(sample_connection(
                "allowed",
                public_docebo,
                public_salesforce,
            )),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut replacement = sample_connection("allowed", "https://[fd00::5]", public_salesforce);
    replacement.id = created.id.clone();
    let status = client
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(replacement),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["docebo".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&status),
        vec![(
            "connection.docebo.base_url".to_string(),
            "fd00::5 is a unique-local address, which this service does not allow".to_string()
        )]
    );
    let id: uuid::Uuid = created.id.parse().unwrap();
    let conn = server.store.conn().await.unwrap();
    let (sealed, _) = learnsync_store::connections::sealed_credentials(&conn, id)
        .await
        .unwrap();
    let opened = server.cipher.open(id, &sealed).unwrap();
    assert_eq!(opened.docebo.base_url, public_docebo);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_instance_url_fails_the_job_and_nothing_is_sent_there() {
    // Loopback, but not the 127.0.0.1 the tests' policy admits.
    let (forbidden, hits) = counting([127, 0, 0, 2]).await;
    let instance_url = format!("http://{forbidden}");
    let token = Router::new().route(
        "/services/oauth2/token",
        post(move || {
            let instance_url = instance_url.clone();
            async move {
                axum::Json(serde_json::json!({
                    "access_token": "token",
                    "instance_url": instance_url,
                }))
            }
        }),
    );
    let login = serve([127, 0, 0, 1], token).await;
    let env = Env::with(
        small(),
        EnvOptions {
            salesforce_url: Some(format!("http://{login}")),
            ..EnvOptions::default()
        },
    )
    .await;
    let error = job_error(&run_users(&env).await);
    let refusal = format!(
        "salesforce instance_url refused: {} is a loopback address, which this service does not \
         allow",
        forbidden.ip()
    );
    assert!(error.ends_with(&refusal), "{error}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request reached the forbidden instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_an_error_and_is_not_followed() {
    let (target, hits) = counting([127, 0, 0, 1]).await;
    let location = format!("http://{target}/oauth2/token");
    let redirecting = Router::new().fallback(any(move || {
        let location = location.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
    }));
    let docebo = serve([127, 0, 0, 1], redirecting).await;
    let env = Env::with(
        small(),
        EnvOptions {
            docebo_url: Some(format!("http://{docebo}")),
            ..EnvOptions::default()
        },
    )
    .await;
    let error = job_error(&run_users(&env).await);
    assert_eq!(error, "docebo answered 307: redirects are not followed");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_fails_the_job_with_a_size_error() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let endless = Router::new()
        .route(
            "/oauth2/token",
            post(|| async { axum::Json(serde_json::json!({"access_token": "token"})) }),
        )
        .fallback(any(move || {
            let counter = counter.clone();
            async move {
                // A page that never ends: 64 KiB chunks, forever (until the reader hangs up).
                let chunk = axum::body::Bytes::from(vec![b' '; 64 << 10]);
                let stream = futures::stream::repeat_with(move || {
                    counter.fetch_add(chunk.len(), Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap()
                    .into_response()
            }
        }));
    let docebo = serve([127, 0, 0, 1], endless).await;
    let env = Env::with(
        small(),
        EnvOptions {
            docebo_url: Some(format!("http://{docebo}")),
            ..EnvOptions::default()
        },
    )
    .await;
    let error = job_error(&run_users(&env).await);
    assert_eq!(error, "docebo answer larger than 16 MiB: not read");
    // The reader hung up at the cap: what was produced is the cap plus what the sockets buffer,
    // not an endless stream.
    let produced = served.load(Ordering::Relaxed);
    assert!(produced >= 16 << 20, "{produced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_odd_error_body_becomes_a_bounded_sanitized_job_error() {
    let message = format!(
        "boom\r\n\u{1b}[31mred\u{7} {} trailing secret-looking tail",
        "A".repeat(40_000)
    );
    let body =
        serde_json::json!([{ "errorCode": "SERVER\nERROR", "message": message }]).to_string();
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let own = base.clone();
    let failing = Router::new()
        .route(
            "/services/oauth2/token",
            post(move || {
                let own = own.clone();
                async move {
                    axum::Json(serde_json::json!({
                        "access_token": "token",
                        "instance_url": own.get().cloned().unwrap_or_default(),
                    }))
                }
            }),
        )
        .fallback(any(move || {
            let body = body.clone();
            async move { (StatusCode::INTERNAL_SERVER_ERROR, body) }
        }));
    let salesforce = serve([127, 0, 0, 1], failing).await;
    base.set(format!("http://{salesforce}")).unwrap();
    let env = Env::with(
        small(),
        EnvOptions {
            salesforce_url: Some(format!("http://{salesforce}")),
            ..EnvOptions::default()
        },
    )
    .await;
    let run = run_users(&env).await;
    let error = job_error(&run);
    assert!(
        error.contains("salesforce answered 500 (SERVER ERROR): boom [31mred AAAA"),
        "{error}"
    );
    assert!(error.len() < 600, "{} characters: {error}", error.len());
    assert!(!error.chars().any(char::is_control), "{error:?}");
    assert!(!error.contains("trailing"), "{error}");
    // The log a tenant reads holds nothing longer or rawer either.
    for event in env.run_log(run.id).await {
        let text = format!(
            "{} {}",
            event.message,
            serde_json::Value::Object(event.fields)
        );
        assert!(text.len() < 1500, "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains("\\u001b"),
            "{text}"
        );
        assert!(!text.contains("trailing"), "{text}");
    }
}

//! Proves the thin HTTP clients report each exchange as the retry policy needs it, against the
//! simulators and with no database: tokens, list pages, an expired token (401), throttling with
//! and without Retry-After, 5xx and refused credentials, Salesforce collection upserts with
//! per-record failures, request limits, and a whole Bulk API 2.0 upsert.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use learnsync_sim::{
    DoceboConfig, DoceboSim, FailNext, Faults, GenerateParams, SalesforceConfig, SalesforceSim,
};
use learnsync_store::secrets::{
    DoceboCredentials, DoceboGrant, SalesforceCredentials, SalesforceGrant,
};
use learnsync_worker::error::{Failure, Upstream};
use learnsync_worker::http::Answer;
use learnsync_worker::http::docebo::{DoceboApi, PageRef};
use learnsync_worker::http::salesforce::{BulkState, SalesforceApi, Session};
use learnsync_worker::mapping::Fields;
use learnsync_worker::retry::Signal;
use serde_json::{Map, json};

fn first_page(size: u32) -> PageRef {
    PageRef {
        page: 1,
        cursor: None,
        page_size: size,
        cursor_mode: false,
    }
}

fn docebo_api(sim: &DoceboSim, secret: Option<&str>) -> DoceboApi {
    DoceboApi::new(
        learnsync_e2e::sim_http(),
        DoceboCredentials {
            base_url: sim.base_url().to_string(),
            client_id: sim.config().client_id.clone(),
            client_secret: secret
                .map_or_else(|| sim.config().client_secret.clone(), str::to_string),
            grant: DoceboGrant::ClientCredentials,
        },
    )
}

fn salesforce_api(sim: &SalesforceSim, secret: Option<&str>) -> SalesforceApi {
    SalesforceApi::new(
        learnsync_e2e::sim_http(),
        SalesforceCredentials {
            login_url: sim.base_url().to_string(),
            client_id: sim.config().client_id.clone(),
            grant: SalesforceGrant::ClientCredentials {
                client_secret: secret
                    .map_or_else(|| sim.config().client_secret.clone(), str::to_string),
            },
        },
    )
}

fn ok<T: std::fmt::Debug>(answer: Answer<T>) -> T {
    match answer {
        Answer::Ok(value) => value,
        other => panic!("expected a result, got {other:?}"),
    }
}

fn signal<T: std::fmt::Debug>(answer: Answer<T>) -> (Signal, Failure) {
    match answer.into_result() {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn docebo_tokens_pages_expiry_and_refusals() {
    let sim = DoceboSim::start(DoceboConfig::default()).await.unwrap();
    sim.generate(&GenerateParams {
        seed: 3,
        users: Some(25),
        bad_records: Some(false),
        ..GenerateParams::default()
    });
    let api = docebo_api(&sim, None);
    let token = ok(api.token().await);

    let page = ok(api
        .list(&token, "/manage/v1/user", &[], &first_page(10))
        .await);
    assert_eq!(page.items.len(), 10);
    assert!(page.has_more);
    assert_eq!(page.total_count, Some(25));

    // An expired token is a session to renew, and a fresh token reads again.
    sim.expire_tokens();
    let (expired, failure) = signal(
        api.list(&token, "/manage/v1/user", &[], &first_page(10))
            .await,
    );
    assert_eq!(expired, Signal::SessionExpired);
    assert!(
        matches!(
            failure,
            Failure::Answered {
                upstream: Upstream::Docebo,
                status: 401,
                ..
            }
        ),
        "{failure:?}"
    );
    let token = ok(api.token().await);
    assert!(
        api.list(&token, "/manage/v1/user", &[], &first_page(10))
            .await
            .is_ok()
    );

    // 429 and 503 are throttling (the simulator names no wait), 500 transient.
    for (status, expected) in [
        (429, Signal::Throttled(None)),
        (503, Signal::Throttled(None)),
        (500, Signal::Transient),
    ] {
        sim.set_faults(Faults {
            fail_next: Some(FailNext { status, count: 1 }),
            ..Faults::default()
        });
        let (got, failure) = signal(
            api.list(&token, "/manage/v1/user", &[], &first_page(10))
                .await,
        );
        assert_eq!(got, expected, "{status}");
        let message = failure.to_string();
        assert!(message.contains(&status.to_string()), "{message}");
    }
    sim.clear_faults();

    // A missing listing is permanent, never an empty list: whether it means gone is for the
    // walk to prove (it re-checks the parent).
    let missing = "/manage/v1/no_such_list";
    let (refused, failure) = signal(api.list(&token, missing, &[], &first_page(10)).await);
    assert_eq!(refused, Signal::Permanent);
    assert!(failure.to_string().starts_with("docebo answered 404 for "));

    // Refused credentials are permanent and say so.
    let (refused, failure) = signal(docebo_api(&sim, Some("wrong")).token().await);
    assert_eq!(refused, Signal::Permanent);
    assert!(
        failure
            .to_string()
            .starts_with("docebo authentication failed"),
        "{failure}"
    );
}

/// A stand-in platform that answers every list call 429 with a Retry-After (the simulator sends
/// none, as Docebo documents it may not).
async fn retry_after_server(status: u16) -> String {
    let router = axum::Router::new().route(
        "/manage/v1/user",
        axum::routing::get(move || async move {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("retry-after", "7")],
                r#"{"message":"slow down"}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

#[tokio::test]
async fn docebo_throttling_reports_the_wait_asked() {
    for status in [429, 503] {
        let api = DoceboApi::new(
            learnsync_e2e::sim_http(),
            DoceboCredentials {
                base_url: retry_after_server(status).await,
                client_id: "id".into(),
                client_secret: "secret".into(),
                grant: DoceboGrant::ClientCredentials,
            },
        );
        let (got, failure) = signal(
            api.list("token", "/manage/v1/user", &[], &first_page(10))
                .await,
        );
        assert_eq!(got, Signal::Throttled(Some(Duration::from_secs(7))));
        assert_eq!(
            failure.to_string(),
            format!("docebo keeps answering {status}")
        );
    }
}

#[tokio::test]
async fn unreachable_upstreams_are_transient_and_name_no_url() {
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let api = DoceboApi::new(
        learnsync_e2e::sim_http(),
        DoceboCredentials {
            base_url: format!("http://{closed}"),
            client_id: "id".into(),
            client_secret: "secret".into(),
            grant: DoceboGrant::ClientCredentials,
        },
    );
    let cursor = PageRef {
        page: 1,
        cursor: Some("secret-cursor".into()),
        page_size: 10,
        cursor_mode: false,
    };
    let (got, failure) = signal(api.list("token", "/manage/v1/user", &[], &cursor).await);
    assert_eq!(got, Signal::Transient);
    let message = failure.to_string();
    assert!(message.starts_with("docebo request failed"), "{message}");
    assert!(
        !message.contains("secret-cursor") && !message.contains("http://"),
        "{message}"
    );
}

fn user(id: &str, name: &str) -> Fields {
    let mut map = Map::new();
    map.insert("Docebo_User_Id__c".into(), json!(id));
    map.insert("Name".into(), json!(name));
    Fields::from_map(&map)
}

async fn salesforce() -> (SalesforceSim, SalesforceApi, Session) {
    let sim = SalesforceSim::start(SalesforceConfig::default())
        .await
        .unwrap();
    let api = salesforce_api(&sim, None);
    let session = ok(api.token().await);
    (sim, api, session)
}

#[tokio::test]
async fn salesforce_collections_report_each_record() {
    let (sim, api, session) = salesforce().await;
    assert!(
        ok(api.describe(&session, "Docebo_User__c").await)
            .get("fields")
            .is_some()
    );
    let (good, too_long) = (user("1", "Ada"), user("2", &"x".repeat(100)));
    let results = ok(api
        .upsert_collection(
            &session,
            "Docebo_User__c",
            "Docebo_User_Id__c",
            &[&good, &too_long],
        )
        .await);
    assert_eq!(results.len(), 2);
    assert!(results[0].success && results[0].id.is_some());
    assert!(!results[1].success);
    assert_eq!(results[1].failure().code, "STRING_TOO_LONG");
    assert_eq!(sim.record_count("Docebo_User__c"), 1);

    let page = ok(api
        .query(
            &session,
            &learnsync_worker::http::salesforce::query_path(
                "Docebo_User__c",
                "Docebo_User_Id__c",
                &["1".to_string(), "2".to_string()],
            ),
            "Docebo_User_Id__c",
        )
        .await);
    assert_eq!(page.pairs.len(), 1);
    assert_eq!(page.pairs[0].0, "1");
    let id = page.pairs[0].1.clone();
    let deleted = ok(api
        .delete_collection(&session, std::slice::from_ref(&id))
        .await);
    assert!(deleted[0].success);
    // Deleting it again still counts as deleted.
    assert!(ok(api.delete_collection(&session, &[id]).await)[0].success);

    // An object the org lacks cannot be described: permanent.
    let (refused, failure) = signal(api.describe(&session, "Nope__c").await);
    assert_eq!(refused, Signal::Permanent);
    assert!(
        failure.to_string().starts_with("salesforce answered 404"),
        "{failure}"
    );
}

#[tokio::test]
async fn salesforce_sessions_limits_and_failures_are_classified() {
    let (sim, api, session) = salesforce().await;
    let records = [&user("1", "Ada")];
    let upsert =
        || api.upsert_collection(&session, "Docebo_User__c", "Docebo_User_Id__c", &records);

    sim.revoke_sessions();
    let (expired, failure) = signal(upsert().await);
    assert_eq!(expired, Signal::SessionExpired);
    assert!(
        failure.to_string().contains("INVALID_SESSION_ID"),
        "{failure}"
    );
    let session = ok(api.token().await);
    let upsert =
        || api.upsert_collection(&session, "Docebo_User__c", "Docebo_User_Id__c", &records);
    assert!(upsert().await.is_ok());

    sim.set_faults(Faults {
        request_limit_exceeded_calls: 1,
        ..Faults::default()
    });
    let (limited, failure) = signal(upsert().await);
    assert_eq!(limited, Signal::Throttled(None));
    assert_eq!(
        failure.to_string(),
        "salesforce request limit: TotalRequests Limit exceeded."
    );

    for (status, expected) in [(500, Signal::Transient), (503, Signal::Transient)] {
        sim.set_faults(Faults {
            fail_next: Some(FailNext { status, count: 1 }),
            ..Faults::default()
        });
        let (got, failure) = signal(upsert().await);
        assert_eq!(got, expected);
        assert!(
            failure
                .to_string()
                .starts_with(&format!("salesforce answered {status} (")),
            "{failure}"
        );
    }
    sim.clear_faults();
    assert!(upsert().await.is_ok());

    let (refused, failure) = signal(salesforce_api(&sim, Some("wrong")).token().await);
    assert_eq!(refused, Signal::Permanent);
    assert!(
        failure
            .to_string()
            .starts_with("salesforce authentication failed (400 Bad Request"),
        "{failure}"
    );
}

#[tokio::test]
async fn a_bulk_upsert_runs_to_its_results() {
    let (sim, api, session) = salesforce().await;
    let records: Vec<Fields> = (1..=30)
        .map(|n| {
            let name = if n == 7 {
                "y".repeat(100)
            } else {
                format!("user {n}")
            };
            user(&n.to_string(), &name)
        })
        .collect();
    let refs: Vec<&Fields> = records.iter().collect();
    let csv = learnsync_worker::http::salesforce::to_csv(&refs, "Docebo_User_Id__c").unwrap();
    let job = ok(api
        .create_ingest_job(&session, "Docebo_User__c", "Docebo_User_Id__c")
        .await);
    ok(api.upload_csv(&session, &job, &csv).await);
    ok(api.close_job(&session, &job).await);
    let started = std::time::Instant::now();
    loop {
        match ok(api.job_state(&session, &job).await) {
            BulkState::Complete => break,
            BulkState::Ended(message) => panic!("bulk job ended: {message}"),
            BulkState::InProgress => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "bulk job never ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let successful = ok(api
        .job_results(&session, &job, true, "Docebo_User_Id__c")
        .await);
    let failed = ok(api
        .job_results(&session, &job, false, "Docebo_User_Id__c")
        .await);
    assert_eq!(successful.len(), 29);
    assert!(successful.iter().all(|(_, id)| !id.is_empty()));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "7");
    assert_eq!(
        learnsync_worker::http::salesforce::bulk_failure(&failed[0].1)
            .failure()
            .code,
        "STRING_TOO_LONG"
    );
    assert_eq!(sim.record_count("Docebo_User__c"), 29);
}

// Proves Salesforce OAuth (client credentials, JWT bearer with its failures), sessions (revocation, idle timeout), the limits header, the daily allowance and transient faults.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{DATA, client, sf_call, sf_token};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use learnsync_sim::{FailNext, Faults, SalesforceConfig, SalesforceSim};
use reqwest::Method;
use serde_json::{Value, json};

use learnsync_sim::salesforce::test_keys::{
    OTHER_PRIVATE_KEY_PEM as OTHER_PRIVATE_KEY, PRIVATE_KEY_PEM as PRIVATE_KEY,
    PUBLIC_KEY_PEM as PUBLIC_KEY,
};

async fn sim() -> SalesforceSim {
    SalesforceSim::start(SalesforceConfig {
        jwt_public_key_pem: Some(PUBLIC_KEY.to_string()),
        ..SalesforceConfig::default()
    })
    .await
    .unwrap()
}

fn assertion(private_key: &str, iss: &str, sub: &str, aud: &str, exp: i64) -> String {
    let claims = json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp});
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(private_key.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn jwt_grant(sim: &SalesforceSim, assertion: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn client_credentials_grant() {
    let sim = sim().await;
    let http = client();
    let response = http
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sim.config().client_id.as_str()),
            ("client_secret", sim.config().client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"].as_str().unwrap().starts_with("00D"));
    assert!(body["access_token"].as_str().unwrap().contains('!'));
    assert_eq!(body["instance_url"], sim.base_url());
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["issued_at"].as_str().unwrap().parse::<i64>().is_ok());
    assert!(body["signature"].is_string());
    assert!(body["id"].as_str().unwrap().contains("/id/00D"));
    assert!(body.get("expires_in").is_none());
    assert!(body.get("refresh_token").is_none());

    let bad = http
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sim.config().client_id.as_str()),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].is_string());

    let unsupported = http
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status(), 400);
    assert_eq!(
        unsupported.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn jwt_bearer_grant_and_its_failures() {
    let sim = sim().await;
    let config = sim.config().clone();
    let now = chrono::Utc::now().timestamp();
    let aud = "https://login.salesforce.com";

    let good = assertion(
        PRIVATE_KEY,
        &config.client_id,
        &config.username,
        aud,
        now + 120,
    );
    let (status, body) = jwt_grant(&sim, &good).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(body["instance_url"], sim.base_url());
    let (status, _, _) = sf_call(
        &client(),
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let wrong_key = assertion(
        OTHER_PRIVATE_KEY,
        &config.client_id,
        &config.username,
        aud,
        now + 120,
    );
    let (status, body) = jwt_grant(&sim, &wrong_key).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].is_string());

    let expired = assertion(
        PRIVATE_KEY,
        &config.client_id,
        &config.username,
        aud,
        now - 600,
    );
    let (status, body) = jwt_grant(&sim, &expired).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");

    let wrong_aud = assertion(
        PRIVATE_KEY,
        &config.client_id,
        &config.username,
        "https://evil.example",
        now + 120,
    );
    let (status, body) = jwt_grant(&sim, &wrong_aud).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "audience is invalid");

    let wrong_user = assertion(
        PRIVATE_KEY,
        &config.client_id,
        "someone@else.example",
        aud,
        now + 120,
    );
    let (status, body) = jwt_grant(&sim, &wrong_user).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"],
        "user hasn't approved this consumer"
    );

    let wrong_iss = assertion(PRIVATE_KEY, "other-app", &config.username, aud, now + 120);
    let (status, body) = jwt_grant(&sim, &wrong_iss).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_client_id");

    let (status, body) = jwt_grant(&sim, "not.a.jwt").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn sessions_revocation_and_idle_timeout() {
    let sim = SalesforceSim::start(SalesforceConfig {
        session_idle_timeout: Duration::from_secs(600),
        ..SalesforceConfig::default()
    })
    .await
    .unwrap();
    let http = client();
    let token = sf_token(&http, &sim).await;
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (status, _, body) = sf_call(
        &http,
        &sim,
        "00Dbogus!token",
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}])
    );

    // Idle past the timeout.
    sim.set_clock_offset(601);
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    // Revocation over the control API.
    let token = sf_token(&http, &sim).await;
    let response = http
        .post(format!("{}/__sim/sessions/revoke", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    // Session expiry after N calls (fault).
    let token = sf_token(&http, &sim).await;
    sim.set_faults(Faults {
        expire_tokens_after_calls: Some(1),
        ..Faults::default()
    });
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn limits_header_allowance_and_limits_endpoint() {
    let sim = SalesforceSim::start(SalesforceConfig {
        daily_api_limit: 3,
        ..SalesforceConfig::default()
    })
    .await
    .unwrap();
    let http = client();
    let token = sf_token(&http, &sim).await;
    for n in 1..=3 {
        let (status, headers, body) = sf_call(
            &http,
            &sim,
            &token,
            Method::GET,
            &format!("{DATA}/limits"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            headers["sforce-limit-info"],
            format!("api-usage={n}/3").as_str()
        );
        assert_eq!(body["DailyApiRequests"]["Max"], 3);
        assert_eq!(body["DailyApiRequests"]["Remaining"], 3 - n);
        assert!(body["DailyBulkApiBatches"]["Max"].is_number());
    }
    let (status, headers, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(headers["sforce-limit-info"], "api-usage=3/3");
    assert_eq!(
        body,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED", "fields": []}])
    );

    // A bigger allowance through the control API.
    http.post(format!("{}/__sim/limits", sim.base_url()))
        .json(&json!({"used": 0, "max": 1000}))
        .send()
        .await
        .unwrap();
    let (status, headers, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["sforce-limit-info"], "api-usage=1/1000");

    // A REQUEST_LIMIT_EXCEEDED window of N calls.
    sim.set_faults(Faults {
        request_limit_exceeded_calls: 2,
        ..Faults::default()
    });
    for _ in 0..2 {
        let (status, _, body) = sf_call(
            &http,
            &sim,
            &token,
            Method::GET,
            &format!("{DATA}/limits"),
            None,
        )
        .await;
        assert_eq!(status, 403);
        assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
    }
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // And a window in time.
    sim.set_faults(Faults {
        request_limit_exceeded_secs: 60,
        ..Faults::default()
    });
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    sim.set_clock_offset(61);
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn transient_faults_and_counters() {
    let sim = sim().await;
    let http = client();
    let token = sf_token(&http, &sim).await;
    sim.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 503,
            count: 1,
        }),
        ..Faults::default()
    });
    let (status, headers, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("sforce-limit-info"));
    assert_eq!(body[0]["errorCode"], "SERVER_UNAVAILABLE");
    sim.set_faults(Faults {
        fail_next: Some(FailNext {
            status: 500,
            count: 1,
        }),
        ..Faults::default()
    });
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 500);
    assert!(body[0]["errorCode"].is_string());
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/limits"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let counters = sim.counters();
    assert_eq!(counters["GET /services/data/v62.0/limits"], 3);
    assert_eq!(counters["POST /services/oauth2/token"], 1);
}

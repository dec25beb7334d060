// Proves that a fleet serves each Docebo platform and Salesforce org under its own prefix over real HTTP, each with its own data, tokens and counters, as a simulator started alone does.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{DATA, client, docebo_get, docebo_token, sf_call, sf_token};
use learnsync_sim::{DoceboConfig, Fleet, GenerateParams, SalesforceConfig};
use reqwest::Method;
use serde_json::{Value, json};

async fn fleet(platforms: usize) -> Fleet {
    Fleet::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        platforms,
        &DoceboConfig {
            rate_limit_per_hour: None,
            ..DoceboConfig::default()
        },
        &SalesforceConfig::default(),
    )
    .await
    .unwrap()
}

fn users(seed: u64, users: usize) -> GenerateParams {
    GenerateParams {
        seed,
        users: Some(users),
        courses: Some(2),
        learning_plans: Some(1),
        course_enrollments: Some(5),
        learning_plan_enrollments: Some(1),
        session_enrollments: Some(1),
        ..GenerateParams::default()
    }
}

#[tokio::test]
async fn each_platform_answers_under_its_prefix_with_its_own_data() {
    let fleet = fleet(3).await;
    let http = client();
    let first = fleet.docebo(0).unwrap();
    let last = fleet.docebo(2).unwrap();
    first.generate(&users(1, 7));
    last.generate(&users(2, 11));
    assert_eq!(last.base_url(), format!("http://{}/docebo/2", fleet.addr()));

    let token = docebo_token(&http, last).await;
    let (status, body) = docebo_get(&http, last, &token, "/manage/v1/user?page_size=200").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["total_count"], 11);
    // A token is its platform's alone.
    let (status, _) = docebo_get(&http, first, &token, "/manage/v1/user").await;
    assert_eq!(status, 401);

    assert_eq!(last.counters().get("GET /manage/v1/user"), Some(&1));
    assert_eq!(first.counters().get("GET /manage/v1/user"), Some(&1));
    assert!(fleet.docebo(1).unwrap().counters().is_empty());

    // Control routes too, under the prefix.
    let summary: Value = http
        .get(format!("{}/__sim/summary", first.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["counts"]["users"], 7);

    for path in [
        "/docebo/3/manage/v1/user",
        "/elsewhere/0/x",
        "/docebo/x/oauth2/token",
    ] {
        let response = http
            .get(format!("http://{}{path}", fleet.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn each_org_names_its_prefix_as_instance_and_keeps_its_records() {
    let fleet = fleet(2).await;
    let http = client();
    let org = fleet.salesforce(1).unwrap();
    let response: Value = http
        .post(format!("{}/services/oauth2/token", org.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", org.config().client_id.as_str()),
            ("client_secret", org.config().client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        response["instance_url"],
        format!("http://{}/salesforce/1", fleet.addr())
    );

    let token = sf_token(&http, org).await;
    let (status, _, body) = sf_call(
        &http,
        org,
        &token,
        Method::PATCH,
        &format!("{DATA}/composite/sobjects/Docebo_User__c/Docebo_User_Id__c"),
        Some(json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Docebo_User__c"}, "Docebo_User_Id__c": "5", "Name": "User 5",
             "Email__c": "u5@acme.example"}
        ]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["success"], true, "{body}");
    assert_eq!(org.records("Docebo_User__c").unwrap().len(), 1);
    assert!(
        fleet
            .salesforce(0)
            .unwrap()
            .records("Docebo_User__c")
            .unwrap()
            .is_empty()
    );
    // The other org does not know the session.
    let (status, _, _) = sf_call(
        &http,
        fleet.salesforce(0).unwrap(),
        &token,
        Method::GET,
        &format!("{DATA}/sobjects"),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

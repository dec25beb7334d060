//! Helpers shared by the contract tests.
#![allow(dead_code, clippy::unwrap_used)]

use learnsync_sim::{DoceboSim, SalesforceSim};
use serde_json::Value;

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Gets a Docebo access token with the client-credentials grant.
pub async fn docebo_token(http: &reqwest::Client, sim: &DoceboSim) -> String {
    let config = sim.config();
    let response = http
        .post(format!("{}/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
            ("scope", "api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// GETs a Docebo path and returns status and JSON body.
pub async fn docebo_get(
    http: &reqwest::Client,
    sim: &DoceboSim,
    token: &str,
    path_and_query: &str,
) -> (u16, Value) {
    let response = http
        .get(format!("{}{}", sim.base_url(), path_and_query))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Gets a Salesforce access token with the client-credentials grant.
pub async fn sf_token(http: &reqwest::Client, sim: &SalesforceSim) -> String {
    let config = sim.config();
    let response = http
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// Sends a Salesforce REST call and returns status, headers and JSON body (Null when not JSON).
pub async fn sf_call(
    http: &reqwest::Client,
    sim: &SalesforceSim,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http
        .request(method, format!("{}{}", sim.base_url(), path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

pub const DATA: &str = "/services/data/v62.0";

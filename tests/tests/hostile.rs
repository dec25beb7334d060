//! Proves that hostile requests cannot grow the server without limit: a flood of calls to method
//! names the server does not serve (made before any authentication) adds one metrics label, not
//! one per name.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::TestServer;

/// The `method` labels of `learnsync_grpc_requests_total` in a scrape, with their counts summed.
fn method_labels(scrape: &str) -> std::collections::BTreeMap<String, u64> {
    let mut labels = std::collections::BTreeMap::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("learnsync_grpc_requests_total{") else {
            continue;
        };
        let Some(start) = rest.find("method=\"") else {
            continue;
        };
        let method = &rest[start + 8..];
        let method = &method[..method.find('"').unwrap()];
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap_or(0);
        *labels.entry(method.to_string()).or_insert(0) += count;
    }
    labels
}

#[tokio::test]
async fn a_flood_of_unknown_method_names_adds_one_metrics_label() {
    let server = TestServer::start().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let flood = 2_000;
    for i in 0..flood {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!(
            "/learnsync.v1.SyncService/NoSuchMethod{i:05}"
        ))
        .unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let answer = grpc.unary(tonic::Request::new(()), path, codec).await;
        let status = answer.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unimplemented | tonic::Code::Unauthenticated
            ),
            "{status:?}"
        );
    }
    let scrape = reqwest::get(format!("{}/metrics", server.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = method_labels(&scrape);
    assert_eq!(
        labels
            .get(learnsync_server::metrics::UNKNOWN_METHOD)
            .copied(),
        Some(flood),
        "{labels:?}"
    );
    assert!(
        labels
            .keys()
            .all(|method| method == "unknown" || method.starts_with("/")),
        "{labels:?}"
    );
    assert!(
        !labels.keys().any(|method| method.contains("NoSuchMethod")),
        "{labels:?}"
    );
}

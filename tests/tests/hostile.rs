//! Proves that small hostile requests cannot make large work or grow the server: a flood of calls
//! to method names it does not serve (made before any authentication) adds one metrics label, not
//! one per name; oversized repeated fields and messages are refused before anything reads them.
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

#[tokio::test]
async fn oversized_repeated_fields_and_messages_are_refused_before_any_work() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let connection = client
        .create_connection(learnsync_client::pb::CreateConnectionRequest {
            connection: Some(learnsync_e2e::sample_connection(
                "acme",
                "https://acme.docebosaas.com",
                "https://acme.my.salesforce.com",
            )),
            request_id: String::new(),
        })
        .await
        .unwrap();

    // A hundred thousand invalid area values: one violation for the field, not one per value.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: connection.id.clone(),
        areas: vec![99; 100_000],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(learnsync_e2e::details::fields(&status), vec!["areas"]);
    assert!(status.message().contains("at most 16"), "{status:?}");

    // Sixteen invalid values are validated, each named.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: "not-a-uuid".into(),
        areas: vec![99; 16],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    let fields = learnsync_e2e::details::fields(&status);
    assert_eq!(fields.len(), 17, "{fields:?}");
    assert_eq!(fields[0], "connection_id");
    assert_eq!(fields[16], "areas[15]");

    // A message over the server's limit is refused by the transport, not decoded.
    let request = learnsync_client::pb::GetStatusRequest {
        connection_id: connection.id.clone(),
        areas: vec![1; learnsync_server::MAX_REQUEST_BYTES + 1],
    };
    let status = client.raw().get_status(request).await.unwrap_err();
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{status:?}"
    );
    assert_ne!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The server still answers.
    let status = client.get_status(&connection.id, &[]).await.unwrap();
    assert_eq!(status.connection_id, connection.id);
}

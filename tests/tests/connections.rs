//! Proves connection management over real gRPC and Postgres: create, get, list with page tokens,
//! update, delete; validation errors naming their fields; credentials write-only and encrypted at
//! rest; tenant isolation; idempotent retries.
#![allow(clippy::unwrap_used)]

use learnsync_client::pb;
use learnsync_e2e::{TestServer, create_sample, details, sample_connection, tokens};
use tonic::Code;

#[tokio::test]
async fn creates_reads_lists_updates_and_deletes_connections() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(
            create_sample(&mut client, &format!("platform {index}"))
                .await
                .unwrap(),
        );
    }
    let got = client.get_connection(&ids[2]).await.unwrap();
    assert_eq!(got.display_name, "platform 2");
    assert_eq!(got.tenant, "default");
    assert!(
        got.docebo.is_none() && got.salesforce.is_none(),
        "credentials are write-only"
    );
    let info = got.credentials_info.unwrap();
    assert_eq!(
        (info.docebo_grant.as_str(), info.salesforce_grant.as_str()),
        ("client_credentials", "client_credentials")
    );
    assert_eq!(got.docebo_calls_per_hour, 1000);

    // Pages of two, oldest first, until the token runs out.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client.list_connections(2, &token).await.unwrap();
        pages += 1;
        listed.extend(page.connections.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ids);
    assert_eq!(pages, 3);

    let updated = client
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                id: ids[0].clone(),
                display_name: "renamed".into(),
                docebo_calls_per_hour: 500,
                unenrollment_policy: pb::UnenrollmentPolicy::Delete as i32,
                unenrollment_guard: Some(pb::UnenrollmentGuard {
                    max_percent: 25,
                    min_records: 10,
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "display_name".into(),
                    "docebo_calls_per_hour".into(),
                    "unenrollment_policy".into(),
                    "unenrollment_guard".into(),
                ],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(updated.display_name, "renamed");
    assert_eq!(updated.docebo_calls_per_hour, 500);
    assert_eq!(
        updated.unenrollment_policy,
        pb::UnenrollmentPolicy::Delete as i32
    );
    assert_eq!(
        updated.unenrollment_guard,
        Some(pb::UnenrollmentGuard {
            max_percent: 25,
            min_records: 10
        })
    );
    // A new connection gets the default guard: 10%, 100 records.
    let fresh = client.get_connection(&ids[2]).await.unwrap();
    assert_eq!(
        fresh.unenrollment_guard,
        Some(pb::UnenrollmentGuard {
            max_percent: 10,
            min_records: 100
        })
    );

    client.delete_connection(&ids[1]).await.unwrap();
    let error = client.get_connection(&ids[1]).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(details::reason(&error).unwrap().0, "NOT_FOUND");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn credentials_are_encrypted_at_rest_and_replaced_whole_sides_at_a_time() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let id = create_sample(&mut client, "secret keeper").await.unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let conn = server.store.conn().await.unwrap();
    let (sealed, _) = learnsync_store::connections::sealed_credentials(&conn, uuid)
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&sealed);
    assert!(!raw.contains("docebo-secret-value") && !raw.contains("salesforce-secret-value"));
    let opened = server.cipher.open(uuid, &sealed).unwrap();
    assert_eq!(opened.docebo.client_secret, "docebo-secret-value");

    // Replacing the Salesforce side keeps the Docebo side.
    let mut replacement = sample_connection(
        "x",
        "https://other.docebosaas.com",
        "https://test.salesforce.com",
    );
    replacement.id = id.clone();
    if let Some(pb::salesforce_credentials::Grant::ClientCredentials(grant)) = replacement
        .salesforce
        .as_mut()
        .and_then(|s| s.grant.as_mut())
    {
        grant.client_secret = "new-salesforce-secret".into();
    }
    client
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(replacement),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["salesforce".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let (sealed, _) = learnsync_store::connections::sealed_credentials(&conn, uuid)
        .await
        .unwrap();
    let opened = server.cipher.open(uuid, &sealed).unwrap();
    assert_eq!(opened.docebo.base_url, "https://acme.docebosaas.com");
    assert_eq!(opened.salesforce.login_url, "https://test.salesforce.com");
    match opened.salesforce.grant {
        learnsync_store::secrets::SalesforceGrant::ClientCredentials { client_secret } => {
            assert_eq!(client_secret, "new-salesforce-secret")
        }
        other => panic!("unexpected grant {}", other.name()),
    }
}

#[tokio::test]
async fn invalid_connections_are_refused_with_every_field_named_and_nothing_created() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let mut bad = sample_connection("  ", "ftp://nope", "not a url");
    bad.docebo_calls_per_hour = -5;
    if let Some(docebo) = bad.docebo.as_mut() {
        docebo.client_secret.clear();
        docebo.grant = None;
    }
    bad.salesforce = Some(pb::SalesforceCredentials {
        login_url: "https://login.salesforce.com".into(),
        client_id: "app".into(),
        grant: Some(pb::salesforce_credentials::Grant::JwtBearer(
            pb::SalesforceJwtBearerGrant {
                username: "integration@acme.example".into(),
                private_key_pem:
                    "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----".into(),
                audience: String::new(),
            },
        )),
    });
    let error = client
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(bad),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let mut fields = details::fields(&error);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "connection.display_name",
            "connection.docebo.base_url",
            "connection.docebo.client_secret",
            "connection.docebo.grant",
            "connection.docebo_calls_per_hour",
            "connection.salesforce.jwt_bearer.private_key_pem",
        ]
    );
    assert_eq!(
        details::reason(&error).unwrap(),
        ("INVALID_ARGUMENT".into(), "learnsync.dev".into())
    );
    assert!(
        client
            .list_connections(10, "")
            .await
            .unwrap()
            .connections
            .is_empty()
    );

    let error = client
        .create_connection(pb::CreateConnectionRequest {
            connection: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(details::fields(&error), vec!["connection"]);

    let id = create_sample(&mut client, "ok").await.unwrap();
    let error = client
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                id: id.clone(),
                tenant: "other".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tenant".into(), "colour".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(details::fields(&error), vec!["update_mask", "update_mask"]);
    // A guard that is no percentage, or a negative floor, names its fields and changes nothing.
    let error = client
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                id: id.clone(),
                unenrollment_guard: Some(pb::UnenrollmentGuard {
                    max_percent: 150,
                    min_records: -1,
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["unenrollment_guard".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        details::fields(&error),
        vec![
            "connection.unenrollment_guard.max_percent",
            "connection.unenrollment_guard.min_records"
        ]
    );
    let unchanged = client.get_connection(&id).await.unwrap();
    assert_eq!(unchanged.unenrollment_guard.unwrap().max_percent, 10);
    let error = client.get_connection("not-a-uuid").await.unwrap_err();
    assert_eq!(details::fields(&error), vec!["connection_id"]);
    let error = client.list_connections(5, "garbage!").await.unwrap_err();
    assert_eq!(details::fields(&error), vec!["page_token"]);
}

#[tokio::test]
async fn tenants_see_only_their_own_connections_and_learn_nothing_of_others() {
    let server = TestServer::start().await.unwrap();
    let mut acme = server.client(tokens::ACME).await.unwrap();
    let mut globex = server.client(tokens::GLOBEX).await.unwrap();
    let mut operator = server.operator().await.unwrap();
    let acme_id = create_sample(&mut acme, "acme lms").await.unwrap();
    let globex_id = create_sample(&mut globex, "globex lms").await.unwrap();
    assert_eq!(acme.get_connection(&acme_id).await.unwrap().tenant, "acme");

    // Another tenant's connection and a connection that does not exist look the same.
    let theirs = globex.get_connection(&acme_id).await.unwrap_err();
    let missing_id = uuid::Uuid::new_v4().to_string();
    let missing = globex.get_connection(&missing_id).await.unwrap_err();
    assert_eq!(theirs.code(), Code::PermissionDenied);
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert_eq!(
        theirs.message().replace(&acme_id, "ID"),
        missing.message().replace(&missing_id, "ID")
    );
    for error in [
        globex
            .configure(&acme_id, learnsync_e2e::manual(pb::Area::Users))
            .await
            .unwrap_err(),
        globex
            .start(&acme_id, pb::Area::Users, None)
            .await
            .unwrap_err(),
        globex.get_status(&acme_id, &[]).await.unwrap_err(),
        globex.delete_connection(&acme_id).await.unwrap_err(),
    ] {
        assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    }
    let listed: Vec<String> = globex
        .list_connections(100, "")
        .await
        .unwrap()
        .connections
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec![globex_id.clone()]);
    // A tenant cannot create for another tenant; the operator sees everything.
    let mut foreign = sample_connection(
        "x",
        "https://a.docebosaas.com",
        "https://login.salesforce.com",
    );
    foreign.tenant = "acme".into();
    let error = globex
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(foreign),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(
        operator
            .list_connections(100, "")
            .await
            .unwrap()
            .connections
            .len(),
        2
    );
    assert_eq!(
        operator
            .get_connection(&missing_id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The acme connection is still there: the refused delete changed nothing.
    assert_eq!(acme.get_connection(&acme_id).await.unwrap().id, acme_id);
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let server = TestServer::start().await.unwrap();
    let mut anonymous = server
        .client("not-a-configured-token-at-all")
        .await
        .unwrap();
    let error = anonymous.list_connections(10, "").await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = pb::sync_service_client::SyncServiceClient::new(channel);
    let error = raw
        .list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_retried_create_returns_the_first_answer_and_creates_once() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.operator().await.unwrap();
    let request = pb::CreateConnectionRequest {
        connection: Some(sample_connection(
            "once",
            "https://acme.docebosaas.com",
            "https://login.salesforce.com",
        )),
        request_id: "create-once-1".into(),
    };
    let first = client.create_connection(request.clone()).await.unwrap();
    let second = client.create_connection(request.clone()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        client
            .list_connections(10, "")
            .await
            .unwrap()
            .connections
            .len(),
        1
    );
    // The same id for a different request is refused and names the field.
    let mut different = request;
    if let Some(connection) = different.connection.as_mut() {
        connection.display_name = "twice".into();
    }
    let error = client.create_connection(different).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(details::fields(&error), vec!["request_id"]);
    // Another caller's identical id is its own.
    let mut acme = server.client(tokens::ACME).await.unwrap();
    let theirs = acme
        .create_connection(pb::CreateConnectionRequest {
            connection: Some(sample_connection(
                "once",
                "https://acme.docebosaas.com",
                "https://login.salesforce.com",
            )),
            request_id: "create-once-1".into(),
        })
        .await
        .unwrap();
    assert_ne!(theirs.id, first.id);
}

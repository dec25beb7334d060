//! The Docebo webhook receiver: plain HTTP on a port of its own (webhooks usually come from the
//! internet, the gRPC API usually does not). Docebo signs nothing, so each connection has a secret
//! URL (`/webhooks/docebo/<connection id>/<secret>`), compared in constant time. A message is
//! recorded durably and acknowledged at once (Docebo gives up after about 5 s and retries); the
//! dispatcher turns recorded messages into runs afterwards. A wrong URL is refused and recorded
//! nowhere. A connection holds at most `max_pending` messages waiting to be handled: past it the
//! receiver answers 429 with `Retry-After` and records nothing (Docebo retries), so no connection's
//! backlog grows without bound.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use learnsync_store::Store;
use learnsync_store::realtime::{self, Recorded};
use learnsync_store::secrets::Cipher;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// The largest webhook body accepted (25 grouped events are a few kilobytes).
const MAX_BODY: usize = 1024 * 1024;

/// When a connection over its quota is told to retry: about what the dispatcher needs to hand a
/// backlog to a run once the active one ends.
const RETRY_AFTER_SECONDS: &str = "60";

#[derive(Clone)]
struct WebhookState {
    store: Store,
    cipher: Cipher,
    max_pending: i64,
}

/// The receiver's routes; a connection may hold `max_pending` messages waiting to be handled.
pub fn router(store: Store, cipher: Cipher, max_pending: i64) -> Router {
    Router::new()
        .route("/webhooks/docebo/{connection_id}/{secret}", post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(WebhookState {
            store,
            cipher,
            max_pending,
        })
}

/// The path of a connection's webhook URL.
pub fn path(cipher: &Cipher, connection_id: Uuid, generation: i32) -> String {
    format!(
        "/webhooks/docebo/{connection_id}/{}",
        cipher.webhook_secret(connection_id, generation)
    )
}

async fn receive(
    State(state): State<WebhookState>,
    Path((connection_id, secret)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(connection_id) = Uuid::parse_str(&connection_id) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut conn = match state.store.conn().await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::error!(%error, "webhook not recorded: database unavailable");
            return unavailable();
        }
    };
    let generation = match realtime::webhook_generation(&conn, connection_id).await {
        Ok(generation) => generation,
        Err(error) => {
            tracing::error!(%error, "webhook not recorded");
            return unavailable();
        }
    };
    // An unknown connection and a wrong secret look the same from outside.
    let expected = state
        .cipher
        .webhook_secret(connection_id, generation.unwrap_or(0));
    let matches: bool = expected.as_bytes().ct_eq(secret.as_bytes()).into();
    if generation.is_none() || !matches {
        tracing::warn!(%connection_id, "webhook refused: unknown connection or wrong secret");
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not json").into_response();
    };
    let (Some(message_id), Some(event)) = (
        parsed.get("message_id").and_then(json_text),
        parsed.get("event").and_then(|e| e.as_str()),
    ) else {
        return (StatusCode::BAD_REQUEST, "message_id and event are required").into_response();
    };
    let recorded = async {
        let tx = conn.transaction().await?;
        let recorded = realtime::record_webhook_within_quota(
            &tx,
            connection_id,
            &message_id,
            event,
            &parsed,
            state.max_pending,
        )
        .await?;
        tx.commit().await?;
        Ok::<_, learnsync_store::Error>(recorded)
    };
    match recorded.await {
        Ok(Recorded::OverQuota) => {
            tracing::warn!(%connection_id, event, max_pending = state.max_pending, "webhook refused: too many messages pending");
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                "too many messages pending for this connection",
            )
                .into_response()
        }
        Ok(recorded) => {
            let new = recorded == Recorded::New;
            tracing::info!(%connection_id, event, new, "webhook recorded");
            (StatusCode::OK, "ok").into_response()
        }
        Err(error) => {
            tracing::error!(%error, %connection_id, "webhook not recorded");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response()
}

fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

//! The Docebo webhook receiver: plain HTTP on a port of its own (webhooks usually come from the
//! internet, the gRPC API usually does not). Docebo signs nothing, so each connection has a secret
//! URL (`/webhooks/docebo/<connection id>/<secret>`), compared in constant time. A message is
//! recorded durably and acknowledged at once (Docebo gives up after about 5 s and retries); the
//! dispatcher turns recorded messages into runs afterwards. A wrong URL is refused and recorded
//! nowhere.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use learnsync_store::Store;
use learnsync_store::realtime;
use learnsync_store::secrets::Cipher;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// The largest webhook body accepted (25 grouped events are a few kilobytes).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
struct WebhookState {
    store: Store,
    cipher: Cipher,
}

/// The receiver's routes.
pub fn router(store: Store, cipher: Cipher) -> Router {
    Router::new()
        .route("/webhooks/docebo/{connection_id}/{secret}", post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(WebhookState { store, cipher })
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
) -> (StatusCode, &'static str) {
    let Ok(connection_id) = Uuid::parse_str(&connection_id) else {
        return (StatusCode::NOT_FOUND, "not found");
    };
    let conn = match state.store.conn().await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::error!(%error, "webhook not recorded: database unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    let generation = match realtime::webhook_generation(&conn, connection_id).await {
        Ok(generation) => generation,
        Err(error) => {
            tracing::error!(%error, "webhook not recorded");
            return (StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    // An unknown connection and a wrong secret look the same from outside.
    let expected = state
        .cipher
        .webhook_secret(connection_id, generation.unwrap_or(0));
    let matches: bool = expected.as_bytes().ct_eq(secret.as_bytes()).into();
    if generation.is_none() || !matches {
        tracing::warn!(%connection_id, "webhook refused: unknown connection or wrong secret");
        return (StatusCode::NOT_FOUND, "not found");
    }
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not json");
    };
    let (Some(message_id), Some(event)) = (
        parsed.get("message_id").and_then(json_text),
        parsed.get("event").and_then(|e| e.as_str()),
    ) else {
        return (StatusCode::BAD_REQUEST, "message_id and event are required");
    };
    match realtime::record_webhook(&conn, connection_id, &message_id, event, &parsed).await {
        Ok(new) => {
            tracing::info!(%connection_id, event, new, "webhook recorded");
            (StatusCode::OK, "ok")
        }
        Err(error) => {
            tracing::error!(%error, %connection_id, "webhook not recorded");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

//! Idempotency keys: the answer to a mutating request, remembered by caller and request id, so a
//! retry returns the first answer and does nothing twice. The key is claimed in the same
//! transaction as the change it guards: either both commit or neither does, and a concurrent
//! retry waits on the key's row until the first attempt ends.

use deadpool_postgres::GenericClient;

use crate::codes::ErrorCode;
use crate::{Error, Result};

/// How long answers are remembered.
pub const RETENTION_HOURS: i32 = 24;

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The request id is new: do the work, then [`complete`].
    New,
    /// The same request was answered before: return this encoded answer.
    Replay(Vec<u8>),
}

/// Claims a request id for a request whose canonical bytes hash to `request_hash`. Fails with
/// [`Error::Precondition`] `REQUEST_ID_REUSED` when the id was used for a different request.
pub async fn claim(
    client: &impl GenericClient,
    principal: &str,
    method: &str,
    request_id: &str,
    request_hash: &[u8],
) -> Result<Claim> {
    let inserted = client
        .query_opt(
            "INSERT INTO idempotency_keys (principal, method, request_id, request_hash) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (principal, method, request_id) DO NOTHING RETURNING 1",
            &[&principal, &method, &request_id, &request_hash],
        )
        .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let row = client
        .query_one(
            "SELECT request_hash, response FROM idempotency_keys WHERE principal = $1 AND method = $2 AND request_id = $3",
            &[&principal, &method, &request_id],
        )
        .await?;
    let stored_hash: Vec<u8> = row.try_get(0)?;
    let response: Option<Vec<u8>> = row.try_get(1)?;
    if stored_hash != request_hash {
        return Err(Error::precondition(
            ErrorCode::RequestIdReused,
            format!("request_id/{request_id}"),
            "this request_id was already used for a different request",
        ));
    }
    match response {
        Some(response) => Ok(Claim::Replay(response)),
        None => Err(Error::Corrupt(format!(
            "idempotency key {request_id} has no answer"
        ))),
    }
}

/// Stores the answer of a claimed request id.
pub async fn complete(
    client: &impl GenericClient,
    principal: &str,
    method: &str,
    request_id: &str,
    response: &[u8],
) -> Result<()> {
    client
        .execute(
            "UPDATE idempotency_keys SET response = $4 WHERE principal = $1 AND method = $2 AND request_id = $3",
            &[&principal, &method, &request_id, &response],
        )
        .await?;
    Ok(())
}

/// Forgets answers older than the retention period. Returns how many were forgotten.
pub async fn purge_expired(client: &impl GenericClient) -> Result<u64> {
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE create_time < now() - make_interval(hours => $1)",
            &[&RETENTION_HOURS],
        )
        .await?)
}

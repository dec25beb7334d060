//! Each connection's Docebo token, shared by every worker (`docebo_tokens`): Docebo counts token
//! requests against the platform's calls, so one worker asks and the others read what it stored.
//! The store keeps what the worker hands it: the token sealed ([`crate::secrets::Cipher::seal_token`])
//! and a keyed fingerprint of the credentials it was asked for with, never a secret in clear.
//!
//! A worker that finds no usable token takes the connection's token lock ([`lock_token`], held
//! until its transaction ends), reads the row again (another worker may have just stored one),
//! and only then asks Docebo and stores the answer ([`store_token`]) in place of the version it
//! read: a compare-and-swap, so a token is never replaced by a worker that did not see it.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::Result;

/// The advisory lock class under which a connection's token is asked for (the second key is the
/// connection's hash): the workers that need a token take turns, and all but the first find it
/// stored.
const TOKEN_LOCK_CLASS: i32 = 0x746f_6b31;

/// A connection's token as Postgres holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    /// The sealed token.
    pub sealed: Vec<u8>,
    /// The keyed fingerprint of the Docebo credentials it was asked for with.
    pub fingerprint: Vec<u8>,
    /// Which token this is: each new one is one more.
    pub version: i64,
    /// How long it is still to be used, by Postgres' clock (zero: expired).
    pub fresh_for: Duration,
}

/// A token to store.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// The sealed token.
    pub sealed: Vec<u8>,
    /// The keyed fingerprint of the Docebo credentials it was asked for with.
    pub fingerprint: Vec<u8>,
    /// How long it may be used from now.
    pub lifetime: Duration,
}

/// Reads a connection's token, expired or not (its version is what [`store_token`] replaces).
pub async fn current_token(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<Option<StoredToken>> {
    let row = client
        .query_opt(
            "SELECT token, fingerprint, version, \
                    greatest(extract(epoch FROM expires_at - now()), 0)::float8 AS fresh_for \
             FROM docebo_tokens WHERE connection_id = $1",
            &[&connection_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(StoredToken {
        sealed: row.try_get("token")?,
        fingerprint: row.try_get("fingerprint")?,
        version: row.try_get("version")?,
        fresh_for: Duration::try_from_secs_f64(row.try_get("fresh_for")?).unwrap_or_default(),
    }))
}

/// Takes the connection's token lock until the transaction ends: whoever holds it is the one
/// worker that may ask Docebo for the connection's token.
pub async fn lock_token(tx: &Transaction<'_>, connection_id: Uuid) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
        &[&TOKEN_LOCK_CLASS, &connection_id.to_string()],
    )
    .await?;
    Ok(())
}

/// Stores a new token for a connection in place of version `replaces` (`None`: the connection had
/// none). Returns what was stored, or `None` when the row no longer holds that version (another
/// worker stored a token meanwhile: use that one).
pub async fn store_token(
    client: &impl GenericClient,
    connection_id: Uuid,
    token: &NewToken,
    replaces: Option<i64>,
) -> Result<Option<StoredToken>> {
    let row = client
        .query_opt(
            "INSERT INTO docebo_tokens AS t (connection_id, fingerprint, token, expires_at, version) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), 1) \
             ON CONFLICT (connection_id) DO UPDATE \
                 SET fingerprint = excluded.fingerprint, token = excluded.token, \
                     expires_at = excluded.expires_at, version = t.version + 1, update_time = now() \
                 WHERE t.version = $5 \
             RETURNING version",
            &[
                &connection_id,
                &token.fingerprint,
                &token.sealed,
                &token.lifetime.as_secs_f64(),
                &replaces,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(StoredToken {
        sealed: token.sealed.clone(),
        fingerprint: token.fingerprint.clone(),
        version: row.try_get("version")?,
        fresh_for: token.lifetime,
    }))
}

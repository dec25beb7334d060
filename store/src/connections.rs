//! Connections: one Docebo platform paired with one Salesforce org.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::codes::{ErrorCode, Resource};
use crate::model::{Connection, RunState, UnenrollmentGuard, UnenrollmentPolicy};
use crate::{Error, Result};

const COLUMNS: &str = "id, tenant, display_name, docebo_grant, salesforce_grant, credentials_time, \
    docebo_platform, docebo_calls_per_hour, unenrollment_policy, unenroll_max_percent, \
    unenroll_min_records, create_time, update_time";

/// Sealed credentials with what may be said about them.
#[derive(Clone, Debug)]
pub struct SealedCredentials {
    /// The ciphertext (see [`crate::secrets::Cipher::seal`]).
    pub sealed: Vec<u8>,
    /// The key's fingerprint.
    pub key_id: String,
    /// The Docebo grant's name.
    pub docebo_grant: String,
    /// The Salesforce flow's name.
    pub salesforce_grant: String,
    /// The Docebo platform key.
    pub docebo_platform: String,
}

/// A connection to create.
#[derive(Clone, Debug)]
pub struct NewConnection {
    /// The new id.
    pub id: Uuid,
    /// The owning tenant.
    pub tenant: String,
    /// The display name.
    pub display_name: String,
    /// The credentials.
    pub credentials: SealedCredentials,
    /// The call budget.
    pub docebo_calls_per_hour: i32,
    /// The unenrollment policy.
    pub unenrollment_policy: UnenrollmentPolicy,
    /// The unenrollment guard.
    pub unenrollment_guard: UnenrollmentGuard,
}

/// The fields of a connection to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ConnectionUpdate {
    /// A new display name.
    pub display_name: Option<String>,
    /// New credentials.
    pub credentials: Option<SealedCredentials>,
    /// A new call budget.
    pub docebo_calls_per_hour: Option<i32>,
    /// A new unenrollment policy.
    pub unenrollment_policy: Option<UnenrollmentPolicy>,
    /// A new unenrollment guard.
    pub unenrollment_guard: Option<UnenrollmentGuard>,
}

fn from_row(row: &Row) -> Result<Connection> {
    Ok(Connection {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        display_name: row.try_get("display_name")?,
        docebo_grant: row.try_get("docebo_grant")?,
        salesforce_grant: row.try_get("salesforce_grant")?,
        credentials_time: row.try_get("credentials_time")?,
        docebo_platform: row.try_get("docebo_platform")?,
        docebo_calls_per_hour: row.try_get("docebo_calls_per_hour")?,
        unenrollment_policy: UnenrollmentPolicy::parse(row.try_get("unenrollment_policy")?)?,
        unenrollment_guard: UnenrollmentGuard {
            max_percent: row.try_get("unenroll_max_percent")?,
            min_records: row.try_get("unenroll_min_records")?,
        },
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Creates a connection.
pub async fn insert(client: &impl GenericClient, new: &NewConnection) -> Result<Connection> {
    let sql = format!(
        "INSERT INTO connections (id, tenant, display_name, credentials, credentials_key_id, docebo_grant, \
         salesforce_grant, docebo_platform, docebo_calls_per_hour, unenrollment_policy, \
         unenroll_max_percent, unenroll_min_records) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &new.id,
                &new.tenant,
                &new.display_name,
                &new.credentials.sealed,
                &new.credentials.key_id,
                &new.credentials.docebo_grant,
                &new.credentials.salesforce_grant,
                &new.credentials.docebo_platform,
                &new.docebo_calls_per_hour,
                &new.unenrollment_policy.as_str(),
                &new.unenrollment_guard.max_percent,
                &new.unenrollment_guard.min_records,
            ],
        )
        .await?;
    from_row(&row)
}

/// Reads a connection.
pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Connection> {
    // Every call on a connection reads it first (authorization): prepared once per pooled
    // connection.
    let sql = format!("SELECT {COLUMNS} FROM connections WHERE id = $1");
    let statement = client.prepare_cached(&sql).await?;
    match client.query_opt(&statement, &[&id]).await? {
        Some(row) => from_row(&row),
        None => Err(Error::not_found(Resource::Connection, id)),
    }
}

/// Reads a connection's sealed credentials and the fingerprint of the key that sealed them.
pub async fn sealed_credentials(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<(Vec<u8>, String)> {
    let row = client
        .query_opt(
            "SELECT credentials, credentials_key_id FROM connections WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::not_found(Resource::Connection, id))?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Reads a connection's sealed credentials and locks its row until the transaction ends: an
/// UpdateConnection that replaces one side of the credentials reseals what it read, so two of
/// them must take turns, or the second would write back the side the first replaced.
pub async fn lock_credentials(tx: &Transaction<'_>, id: Uuid) -> Result<(Vec<u8>, String)> {
    let row = tx
        .query_opt(
            "SELECT credentials, credentials_key_id FROM connections WHERE id = $1 FOR NO KEY UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::not_found(Resource::Connection, id))?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Lists connections oldest first, after a cursor (the last one of the previous page), of one
/// tenant or of all.
pub async fn list(
    client: &impl GenericClient,
    tenant: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Connection>> {
    let (after_time, after_id) = match after {
        Some((time, id)) => (Some(time), Some(id)),
        None => (None, None),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM connections \
         WHERE ($1::text IS NULL OR tenant = $1) \
           AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3::uuid)) \
         ORDER BY create_time, id LIMIT $4"
    );
    let rows = client
        .query(&sql, &[&tenant, &after_time, &after_id, &limit])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Changes a connection.
pub async fn update(
    client: &impl GenericClient,
    id: Uuid,
    update: &ConnectionUpdate,
) -> Result<Connection> {
    let credentials = update.credentials.as_ref();
    let sql = format!(
        "UPDATE connections SET \
           display_name = coalesce($2, display_name), \
           credentials = coalesce($3, credentials), \
           credentials_key_id = coalesce($4, credentials_key_id), \
           docebo_grant = coalesce($5, docebo_grant), \
           salesforce_grant = coalesce($6, salesforce_grant), \
           docebo_platform = coalesce($7, docebo_platform), \
           credentials_time = CASE WHEN $3::bytea IS NULL THEN credentials_time ELSE now() END, \
           docebo_calls_per_hour = coalesce($8, docebo_calls_per_hour), \
           unenrollment_policy = coalesce($9, unenrollment_policy), \
           unenroll_max_percent = coalesce($10, unenroll_max_percent), \
           unenroll_min_records = coalesce($11, unenroll_min_records), \
           update_time = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = client
        .query_opt(
            &sql,
            &[
                &id,
                &update.display_name,
                &credentials.map(|c| c.sealed.clone()),
                &credentials.map(|c| c.key_id.clone()),
                &credentials.map(|c| c.docebo_grant.clone()),
                &credentials.map(|c| c.salesforce_grant.clone()),
                &credentials.map(|c| c.docebo_platform.clone()),
                &update.docebo_calls_per_hour,
                &update.unenrollment_policy.map(|p| p.as_str()),
                &update.unenrollment_guard.map(|g| g.max_percent),
                &update.unenrollment_guard.map(|g| g.min_records),
            ],
        )
        .await?
        .ok_or_else(|| Error::not_found(Resource::Connection, id))?;
    from_row(&row)
}

/// Deletes a connection with everything it owns. Refused while one of its runs is active: the
/// check and the delete are one statement, so a run started concurrently either blocks it or is
/// deleted with it before any worker sees it.
pub async fn delete(client: &impl GenericClient, id: Uuid) -> Result<()> {
    let active: Vec<&str> = RunState::ACTIVE
        .iter()
        .map(|state| state.as_str())
        .collect();
    let row = client
        .query_one(
            "WITH target AS (SELECT id FROM connections WHERE id = $1 FOR UPDATE), \
                  active AS (SELECT area FROM runs WHERE connection_id = $1 AND state = ANY($2) LIMIT 1), \
                  deleted AS (DELETE FROM connections WHERE id IN (SELECT id FROM target) \
                              AND NOT EXISTS (SELECT 1 FROM active) RETURNING id) \
             SELECT (SELECT count(*) FROM target), (SELECT area FROM active), (SELECT count(*) FROM deleted)",
            &[&id, &active],
        )
        .await?;
    let found: i64 = row.try_get(0)?;
    let active_area: Option<String> = row.try_get(1)?;
    if found == 0 {
        return Err(Error::not_found(Resource::Connection, id));
    }
    if let Some(area) = active_area {
        return Err(Error::precondition(
            ErrorCode::RunActive,
            format!("connections/{id}/areas/{area}"),
            format!("the {area} area has an active run: stop it before deleting the connection"),
        ));
    }
    Ok(())
}

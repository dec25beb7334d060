//! Each connection's Salesforce mapping, versioned (`connection_mappings`): the newest version is
//! the current one; a connection without one uses the default mapping (version 0).

use crate::{GenericClient, Result};
use uuid::Uuid;

/// The version of the default mapping, which no row holds.
pub const DEFAULT_VERSION: i32 = 0;

/// One stored mapping version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMapping {
    /// Its version (1 and up).
    pub version: i32,
    /// The mapping in the form of the worker's `mapping.json`.
    pub document: serde_json::Value,
    /// When it was set.
    pub create_time: chrono::DateTime<chrono::Utc>,
}

/// The connection's current mapping, or `None` when it uses the default one.
pub async fn current(
    client: &impl GenericClient,
    connection_id: Uuid,
) -> Result<Option<StoredMapping>> {
    let row = client
        .query_opt(
            "SELECT version, document, create_time FROM connection_mappings \
             WHERE connection_id = $1 ORDER BY version DESC LIMIT 1",
            &[&connection_id],
        )
        .await?;
    row.map(|row| {
        Ok(StoredMapping {
            version: row.try_get(0)?,
            document: row.try_get(1)?,
            create_time: row.try_get(2)?,
        })
    })
    .transpose()
}

/// Adds a version of the connection's mapping after the current one and returns it. The
/// connection's row is locked first, so two concurrent calls take successive numbers (call it in
/// a transaction).
pub async fn add(
    client: &impl GenericClient,
    connection_id: Uuid,
    document: &serde_json::Value,
) -> Result<StoredMapping> {
    client
        .execute(
            "SELECT 1 FROM connections WHERE id = $1 FOR UPDATE",
            &[&connection_id],
        )
        .await?;
    let row = client
        .query_one(
            "INSERT INTO connection_mappings (connection_id, version, document) \
             SELECT $1, coalesce(max(version), 0) + 1, $2 FROM connection_mappings \
             WHERE connection_id = $1 \
             RETURNING version, document, create_time",
            &[&connection_id, document],
        )
        .await?;
    Ok(StoredMapping {
        version: row.try_get(0)?,
        document: row.try_get(1)?,
        create_time: row.try_get(2)?,
    })
}

/// Whether the ledger's records of `object` listed by the job's kind are known to be as mapping
/// `version` maps them (`mapping_applied`), so that [`ledger_stale`] need not scan them.
pub async fn version_applied(
    client: &impl GenericClient,
    job: &crate::worker::ClaimedJob,
    object: &str,
    version: i32,
) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM mapping_applied WHERE connection_id = $1 \
                 AND object = $2 AND scope = $3 AND version = $4)",
            &[&job.connection_id, &object, &job.kind.as_str(), &version],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Whether the ledger holds records of `object` listed by the job's kind that another mapping
/// version than `version` wrote (records from before versions were kept count as the default
/// mapping's): the job then reads its whole listing, so that every record whose mapped values
/// changed is written again. A scan of the object's ledger rows: ask [`version_applied`] first.
pub async fn ledger_stale(
    client: &impl GenericClient,
    job: &crate::worker::ClaimedJob,
    object: &str,
    version: i32,
) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM ledger WHERE connection_id = $1 AND object = $2 \
                 AND scope = $3 AND coalesce(mapping_version, 0) <> $4)",
            &[&job.connection_id, &object, &job.kind.as_str(), &version],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Records that the ledger's records of `object` listed by the fenced job's kind are as mapping
/// `version` maps them (a job found none another version wrote).
pub async fn record_applied(
    fenced: &crate::worker::Fenced<'_>,
    object: &str,
    version: i32,
) -> Result<()> {
    let job = fenced.job;
    fenced
        .tx
        .execute(
            "INSERT INTO mapping_applied (connection_id, object, scope, version) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (connection_id, object, scope) DO UPDATE SET version = excluded.version",
            &[&job.connection_id, &object, &job.kind.as_str(), &version],
        )
        .await?;
    Ok(())
}

/// Marks the ledger's records of `object` listed by the fenced job's kind as mapping `version`'s,
/// after a listing read in full under it (those whose values changed were written again, the
/// others map to the same values), and records the version applied: later jobs under it skip
/// [`ledger_stale`]'s scan.
pub async fn ledger_mark_version(
    fenced: &crate::worker::Fenced<'_>,
    object: &str,
    version: i32,
) -> Result<u64> {
    let job = fenced.job;
    let scope = job.kind.as_str();
    let marked = fenced
        .tx
        .execute(
            "UPDATE ledger SET mapping_version = $4 WHERE connection_id = $1 AND object = $2 \
                 AND scope = $3 AND coalesce(mapping_version, 0) <> $4",
            &[&job.connection_id, &object, &scope, &version],
        )
        .await?;
    record_applied(fenced, object, version).await?;
    Ok(marked)
}

/// The mapping version that last wrote each of some records of one object (`None`: written
/// before versions were recorded).
pub async fn ledger_versions(
    client: &impl GenericClient,
    connection_id: Uuid,
    object: &str,
) -> Result<Vec<(String, Option<i32>)>> {
    let rows = client
        .query(
            "SELECT record_key, mapping_version FROM ledger \
             WHERE connection_id = $1 AND object = $2 ORDER BY record_key",
            &[&connection_id, &object],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

//! Listings a run's jobs share (`run_listings`): a Docebo listing several jobs of a run start
//! from (the course list) is read once per run, by the first job that needs it, and published in
//! Postgres for the others, whatever worker process holds them. The reading belongs to one
//! attempt of one job; when that attempt no longer runs (a crash, a retry, a takeover) before it
//! published, the next job that asks takes the reading over, so nobody waits on a dead reader.

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::{ClaimedJob, Fenced};
use crate::Result;

/// A published reading of a shared listing.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedListing {
    /// The items, in listing order.
    pub items: Vec<Value>,
    /// Which reading this is (its reader's job and attempt): a job resumed with a position in an
    /// earlier reading (one a crash of Postgres emptied) knows its position means nothing here.
    pub reading: String,
    /// Why the reading is not proven complete (`None`: proven).
    pub incomplete: Option<String>,
}

/// What a job finds when it asks for one of its run's shared listings.
#[derive(Clone, Debug, PartialEq)]
pub enum SharedListing {
    /// Read and published.
    Ready(PublishedListing),
    /// This attempt is to read it and publish it ([`publish_listing`]).
    Read,
    /// A running attempt of another job is reading it: ask again later.
    Wait,
}

/// Takes the reading of `listing` for the job's run unless another job's running attempt holds
/// it or it is published; says which. One statement takes it (a conflicting row is taken over only
/// when unpublished and its reader's attempt no longer runs), one reads the row.
pub async fn shared_listing(
    client: &impl GenericClient,
    job: &ClaimedJob,
    listing: &str,
) -> Result<SharedListing> {
    client
        .execute(
            "INSERT INTO run_listings AS l (run_id, listing, connection_id, reader_job, reader_attempt) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (run_id, listing) DO UPDATE \
                 SET reader_job = excluded.reader_job, reader_attempt = excluded.reader_attempt, \
                     read_from = now() \
                 WHERE l.items IS NULL AND NOT EXISTS ( \
                     SELECT 1 FROM jobs j WHERE j.id = l.reader_job \
                       AND j.attempt = l.reader_attempt AND j.state = 'running')",
            &[
                &job.run_id,
                &listing,
                &job.connection_id,
                &job.id,
                &job.attempt,
            ],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT items, incomplete, reader_job, reader_attempt FROM run_listings \
             WHERE run_id = $1 AND listing = $2",
            &[&job.run_id, &listing],
        )
        .await?;
    let items: Option<Value> = row.try_get("items")?;
    let reader: uuid::Uuid = row.try_get("reader_job")?;
    let attempt: i32 = row.try_get("reader_attempt")?;
    Ok(match items {
        Some(Value::Array(items)) => SharedListing::Ready(PublishedListing {
            items,
            reading: format!("{reader}/{attempt}"),
            incomplete: row.try_get("incomplete")?,
        }),
        Some(_) => SharedListing::Read,
        None if reader == job.id && attempt == job.attempt => SharedListing::Read,
        None => SharedListing::Wait,
    })
}

/// Publishes the fenced job's reading of `listing` (it must hold it: [`SharedListing::Read`]),
/// and deletes the connection's shared listings of runs that ended. Returns the published
/// reading, or `None` when another attempt took the reading over.
pub async fn publish_listing(
    fenced: &Fenced<'_>,
    listing: &str,
    items: Vec<Value>,
    incomplete: Option<String>,
) -> Result<Option<PublishedListing>> {
    let job = fenced.job;
    let published = fenced
        .tx
        .execute(
            "UPDATE run_listings SET items = $5, incomplete = $6 \
             WHERE run_id = $1 AND listing = $2 AND reader_job = $3 AND reader_attempt = $4",
            &[
                &job.run_id,
                &listing,
                &job.id,
                &job.attempt,
                &tokio_postgres::types::Json(&items),
                &incomplete,
            ],
        )
        .await?;
    fenced
        .tx
        .execute(
            "DELETE FROM run_listings l USING runs r \
             WHERE l.connection_id = $1 AND r.id = l.run_id \
               AND r.state NOT IN ('queued', 'running', 'stopping')",
            &[&job.connection_id],
        )
        .await?;
    Ok((published == 1).then(|| PublishedListing {
        items,
        reading: format!("{}/{}", job.id, job.attempt),
        incomplete,
    }))
}

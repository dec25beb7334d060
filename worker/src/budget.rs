//! A job's view of its Docebo platform's call budget: tokens are leased from the shared bucket in
//! Postgres a few at a time (one statement per lease, not per call), and a job that must wait says
//! so in its status message.

use std::time::Duration;

use learnsync_store::worker as store_worker;
use tokio::sync::Mutex;

use crate::context::{JobCtx, SyncResult};

/// The status a job shows while it waits for the budget.
pub use learnsync_store::worker::WAITING_FOR_BUDGET;
use learnsync_store::worker::WAITING_FOR_DOCEBO;

/// Calls leased from the shared bucket that this job has not spent yet.
pub struct Budget {
    platform: String,
    calls_per_hour: i32,
    lease_size: i32,
    leased: Mutex<i32>,
}

impl Budget {
    /// A budget over a platform's shared bucket.
    pub fn new(platform: String, calls_per_hour: i32) -> Budget {
        // Leasing about a hundredth of the hourly budget keeps Postgres traffic low without letting
        // one job hoard what others could spend.
        let lease_size = (calls_per_hour / 100).clamp(1, 20);
        Budget {
            platform,
            calls_per_hour,
            lease_size,
            leased: Mutex::new(0),
        }
    }

    /// Takes one call, waiting (interruptibly, saying so in the job's status) while the budget is
    /// spent or the platform paused.
    pub async fn take(&self, ctx: &JobCtx) -> SyncResult<()> {
        let mut leased = self.leased.lock().await;
        let mut waiting = false;
        loop {
            ctx.check()?;
            if *leased > 0 {
                *leased -= 1;
                if waiting {
                    ctx.status("running").await?;
                }
                return Ok(());
            }
            let grant = {
                let conn = ctx.store.conn().await?;
                store_worker::take_budget(
                    &conn,
                    &self.platform,
                    self.calls_per_hour,
                    self.lease_size,
                )
                .await?
            };
            if grant.granted > 0 {
                *leased = grant.granted;
                continue;
            }
            if !waiting {
                waiting = true;
                let message = if grant.paused {
                    WAITING_FOR_DOCEBO
                } else {
                    WAITING_FOR_BUDGET
                };
                ctx.status(message).await?;
            }
            ctx.sleep(
                grant
                    .wait
                    .clamp(Duration::from_millis(20), Duration::from_secs(30)),
            )
            .await?;
        }
    }

    /// Gives the calls leased but not spent back to the shared bucket (the job is ending).
    pub async fn release(&self, ctx: &JobCtx) {
        let mut leased = self.leased.lock().await;
        if *leased == 0 {
            return;
        }
        let calls = std::mem::take(&mut *leased);
        let returned = async {
            let conn = ctx.store.conn().await?;
            store_worker::return_budget(&conn, &self.platform, calls).await
        };
        if let Err(error) = returned.await {
            tracing::warn!(%error, calls, "could not return unspent docebo calls");
        }
    }

    /// Pauses the platform for everyone (Docebo said 429 or 503), and drops this job's leased
    /// calls: nobody calls before the pause ends.
    pub async fn pause(&self, ctx: &JobCtx, pause: Duration) -> SyncResult<()> {
        *self.leased.lock().await = 0;
        let conn = ctx.store.conn().await?;
        store_worker::pause_docebo(&conn, &self.platform, pause).await?;
        Ok(())
    }
}

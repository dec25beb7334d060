//! A job's view of its Docebo platform's call budget: a token bucket in Postgres per tenant and
//! platform ([`BudgetKey`]: one tenant never spends another's), shared by every job on every
//! worker, refilling at the connection's `docebo_calls_per_hour` and holding at most
//! a burst (`Settings::docebo_burst`), as Docebo's own leaky-bucket limiter lets through. Calls are
//! leased from it one at a time under a Docebo-sized burst, a few at a time (one statement per
//! lease, not per call) when the bucket is large; a job that must wait says so in its status message.

use std::time::{Duration, Instant};

use learnsync_store::worker::{self as store_worker, Allowance, BudgetKey};
use tokio::sync::Mutex;

use crate::context::{JobCtx, SyncResult};

/// The status a job shows while it waits for the budget.
pub use learnsync_store::worker::WAITING_FOR_BUDGET;
use learnsync_store::worker::WAITING_FOR_DOCEBO;

/// How long leased calls stay spendable. A lease spent long after it was taken would go out on
/// top of calls granted since, a burst Docebo refuses; calls held longer go back to the bucket.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// Calls leased from the shared bucket that this job has not spent yet.
pub struct Budget {
    key: BudgetKey,
    allowance: Allowance,
    lease_size: i32,
    leased: Mutex<Lease>,
}

/// Calls leased and when.
struct Lease {
    calls: i32,
    taken: Instant,
}

impl Budget {
    /// A budget over a tenant's shared bucket for a platform: `calls_per_hour`, at most `burst`
    /// at once.
    pub fn new(key: BudgetKey, calls_per_hour: i32, burst: u32) -> Budget {
        let allowance = Allowance {
            calls_per_hour,
            burst: i32::try_from(burst).unwrap_or(i32::MAX),
        };
        Budget {
            key,
            allowance,
            lease_size: lease_size(allowance),
            leased: Mutex::new(Lease {
                calls: 0,
                taken: Instant::now(),
            }),
        }
    }

    /// Takes one call, waiting (interruptibly, saying so in the job's status) while the budget is
    /// spent or the platform paused.
    pub async fn take(&self, ctx: &JobCtx) -> SyncResult<()> {
        let mut leased = self.leased.lock().await;
        let mut waiting = false;
        loop {
            ctx.check()?;
            if leased.calls > 0 && leased.taken.elapsed() > LEASE_LIFETIME {
                let calls = std::mem::take(&mut leased.calls);
                self.give_back(ctx, calls).await;
            }
            if leased.calls > 0 {
                leased.calls -= 1;
                if waiting {
                    ctx.status("running").await?;
                }
                return Ok(());
            }
            let grant = {
                let conn = ctx.store.conn().await?;
                store_worker::take_budget(&conn, &self.key, self.allowance, self.lease_size).await?
            };
            if grant.granted > 0 {
                *leased = Lease {
                    calls: grant.granted,
                    taken: Instant::now(),
                };
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
        let calls = std::mem::take(&mut self.leased.lock().await.calls);
        self.give_back(ctx, calls).await;
    }

    async fn give_back(&self, ctx: &JobCtx, calls: i32) {
        if calls == 0 {
            return;
        }
        let returned = async {
            let conn = ctx.store.conn().await?;
            store_worker::return_budget(&conn, &self.key, self.allowance, calls).await
        };
        if let Err(error) = returned.await {
            tracing::warn!(%error, calls, "could not return unspent docebo calls");
        }
    }

    /// Pauses the platform for every job of the tenant (Docebo said 429 or 503), and drops this
    /// job's leased calls: nobody calls before the pause ends.
    pub async fn pause(&self, ctx: &JobCtx, pause: Duration) -> SyncResult<()> {
        self.leased.lock().await.calls = 0;
        let conn = ctx.store.conn().await?;
        store_worker::pause_docebo(&conn, &self.key, pause).await?;
        Ok(())
    }
}

/// Calls leased at once. A call leased and spent later goes out on top of calls granted since,
/// which a limiter running at its edge (a paced sync) refuses: with a Docebo-sized burst every call
/// is a grant of its own (at Docebo's rates a statement per call costs Postgres nothing). Only a
/// bucket of hundreds of calls or more leases about a second of the rate, at most 20, to keep
/// Postgres traffic low when calls are plentiful.
fn lease_size(allowance: Allowance) -> i32 {
    (allowance.calls_per_hour / 3600)
        .min(allowance.capacity() / 100)
        .clamp(1, 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_one_call_with_a_docebo_sized_burst_and_a_few_when_calls_are_plentiful() {
        let lease = |calls_per_hour, burst| {
            lease_size(Allowance {
                calls_per_hour,
                burst,
            })
        };
        assert_eq!(lease(1000, 20), 1);
        assert_eq!(lease(3600, 5), 1);
        assert_eq!(lease(36_000, 20), 1);
        assert_eq!(lease(36_000, 1000), 10);
        assert_eq!(lease(100_000, 100_000), 20);
        assert_eq!(lease(100_000, 2), 1);
    }
}

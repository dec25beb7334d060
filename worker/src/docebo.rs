//! The Docebo client of a job: the thin client ([`crate::http::docebo`]) under the retry policy,
//! with the job-level side around it: the platform's shared call budget before every call (token
//! requests included), 429
//! and 503 pausing the platform for every job on every worker (and said once in the job's log), a
//! token kept across calls and renewed once on 401, every wait interruptible. A worker's jobs
//! of one connection share its token ([`Tokens`]): a run's jobs, and the next runs within the
//! token's life, ask Docebo for one token, not one each (Docebo counts token requests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use learnsync_store::ErrorCode;
use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::DoceboCredentials;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::budget::Budget;
use crate::context::{JobCtx, SyncResult};
use crate::http::docebo::DoceboApi;
pub use crate::http::docebo::{Page, PageRef};
use crate::retry::{Decision, Policy, Tally};

/// How long a token is reused: Docebo's tokens last an hour (`expires_in: 3600`); a token older
/// than this is asked for again rather than risk a 401 (a renewal costs a call either way).
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// Past this many connections, a new slot first drops the slots no job holds.
const TOKEN_SLOTS: usize = 1024;

/// The Docebo tokens of a worker's jobs, one slot per connection, shared by every job of that
/// connection the worker runs (cheap to clone). A slot's token serves only the very credentials
/// it was asked for with: after an UpdateConnection the next job asks again.
#[derive(Clone, Default)]
pub struct Tokens(Arc<std::sync::Mutex<HashMap<Uuid, Slot>>>);

type Slot = Arc<Mutex<Option<Held>>>;

/// A token, the credentials it was asked for with, and when.
struct Held {
    credentials: DoceboCredentials,
    token: String,
    at: Instant,
}

impl Tokens {
    /// The slot of a connection's token.
    fn slot(&self, connection_id: Uuid) -> Slot {
        let mut slots = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slots.len() >= TOKEN_SLOTS && !slots.contains_key(&connection_id) {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(connection_id).or_default().clone()
    }
}

/// A Docebo client for one job.
pub struct Docebo {
    api: DoceboApi,
    token: Slot,
    budget: Budget,
}

impl Docebo {
    /// A client for a connection's platform, sharing the connection's token with the worker's
    /// other jobs through `tokens`.
    pub fn new(
        http: learnsync_upstream::Http,
        connection_id: Uuid,
        credentials: DoceboCredentials,
        budget: Budget,
        tokens: &Tokens,
    ) -> Docebo {
        Docebo {
            api: DoceboApi::new(http, credentials),
            token: tokens.slot(connection_id),
            budget,
        }
    }

    /// The token: the shared one when it was asked for with these credentials less than
    /// [`TOKEN_REUSE`] ago and is not the one being renewed (`refused`: a 401 answered it; a
    /// job that finds another job renewed it meanwhile takes the new one), else a new one.
    async fn token(&self, ctx: &JobCtx, refused: Option<&str>) -> SyncResult<String> {
        let mut held = self.token.lock().await;
        if let Some(current) = held.as_ref()
            && current.credentials == *self.api.credentials()
            && current.at.elapsed() < TOKEN_REUSE
            && refused != Some(current.token.as_str())
        {
            return Ok(current.token.clone());
        }
        let policy = Policy::docebo(&ctx.settings).for_token();
        // A token request is a call Docebo counts: it spends the budget like a page.
        let fresh = ctx
            .obtain(&policy, || async {
                self.budget.take(ctx).await?;
                Ok(self.api.token().await)
            })
            .await?;
        *held = Some(Held {
            credentials: self.api.credentials().clone(),
            token: fresh.clone(),
            at: Instant::now(),
        });
        Ok(fresh)
    }

    /// Returns the calls this client leased but did not spend to the platform's bucket.
    pub async fn release_budget(&self, ctx: &JobCtx) {
        self.budget.release(ctx).await;
    }

    /// Reads one page of a list endpoint (`path` under the base URL) with the given filters. Waits
    /// for the platform's call budget first; pauses the platform on 429/503 and waits it out;
    /// re-authenticates once on 401. A 404 is a permanent error here; the walk decides whether
    /// it means gone ([`crate::sync`]'s listing re-checks the parent).
    pub async fn list(
        &self,
        ctx: &JobCtx,
        path: &str,
        filters: &[(String, String)],
        at: &PageRef,
    ) -> SyncResult<Page> {
        let policy = Policy::docebo(&ctx.settings);
        let mut tally = Tally::default();
        loop {
            // The token first: a token request spends its own call, and none is held meanwhile.
            let token = self.token(ctx, None).await?;
            self.budget.take(ctx).await?;
            let answer = ctx
                .interruptible(async { Ok(self.api.list(&token, path, filters, at).await) })
                .await?;
            let (signal, failure) = match answer.into_result() {
                Ok(page) => return Ok(page),
                Err(refused) => refused,
            };
            match policy.decide(signal, &mut tally) {
                Decision::Renew => {
                    // The token expired or was revoked: authenticate again, once.
                    self.token(ctx, Some(&token)).await?;
                }
                Decision::Backoff(wait) => {
                    tracing::warn!(path, %failure, "docebo call failed, retrying");
                    ctx.sleep(wait).await?;
                }
                Decision::Pause(pause) => {
                    let status = match &failure {
                        crate::error::Failure::Throttled { status, .. } => *status,
                        _ => 429,
                    };
                    tracing::warn!(
                        status,
                        pause_ms = pause.as_millis() as u64,
                        "docebo overloaded, pausing the platform"
                    );
                    // One warning per overloaded call, not per answer: a long 429 spell must not
                    // flood the log.
                    if tally.throttles() == 1 {
                        ctx.log(vec![
                            NewLogEvent::new(
                                LogLevel::Warn,
                                format!("docebo answered {status}: pausing calls to the platform"),
                            )
                            .code(if status == 429 {
                                ErrorCode::DoceboRateLimited
                            } else {
                                ErrorCode::DoceboOverloaded
                            })
                            .field("pause_ms", pause.as_millis() as i64),
                        ])
                        .await?;
                    }
                    self.budget.pause(ctx, pause).await?;
                }
                Decision::GiveUp(class) => return Err(class.fail(failure)),
            }
        }
    }
}

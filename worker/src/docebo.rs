//! The Docebo client of a job: the thin client ([`crate::http::docebo`]) under the retry policy,
//! with the job-level side around it: the platform's shared call budget before every call (token
//! requests included), 429
//! and 503 pausing the platform for every job on every worker (and said once in the job's log), a
//! token kept across calls and renewed once on 401, every wait interruptible.

use learnsync_store::ErrorCode;
use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::DoceboCredentials;
use tokio::sync::Mutex;

use crate::budget::Budget;
use crate::context::{JobCtx, SyncResult};
use crate::http::docebo::DoceboApi;
pub use crate::http::docebo::{Page, PageRef};
use crate::retry::{Decision, Policy, Tally};

/// A Docebo client for one job.
pub struct Docebo {
    api: DoceboApi,
    token: Mutex<Option<String>>,
    budget: Budget,
}

impl Docebo {
    /// A client for a connection's platform.
    pub fn new(
        http: learnsync_upstream::Http,
        credentials: DoceboCredentials,
        budget: Budget,
    ) -> Docebo {
        Docebo {
            api: DoceboApi::new(http, credentials),
            token: Mutex::new(None),
            budget,
        }
    }

    /// The token, asked for when there is none (or `renew`).
    async fn token(&self, ctx: &JobCtx, renew: bool) -> SyncResult<String> {
        let mut token = self.token.lock().await;
        if renew {
            *token = None;
        }
        if let Some(current) = token.as_ref() {
            return Ok(current.clone());
        }
        let policy = Policy::docebo(&ctx.settings).for_token();
        // A token request is a call Docebo counts: it spends the budget like a page.
        let fresh = ctx
            .obtain(&policy, || async {
                self.budget.take(ctx).await?;
                Ok(self.api.token().await)
            })
            .await?;
        *token = Some(fresh.clone());
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
            let token = self.token(ctx, false).await?;
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
                    self.token(ctx, true).await?;
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

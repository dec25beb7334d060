//! The Docebo client of a job: the thin client ([`crate::http::docebo`]) under the retry policy,
//! with the job-level side around it: the platform's shared call budget before every call (token
//! requests included), 429
//! and 503 pausing the platform for every job on every worker (and said once in the job's log), a
//! token kept across calls and renewed once on 401, every wait interruptible. Every job of a
//! connection, on every worker, shares its token ([`Tokens`]: in memory within a worker, sealed in
//! Postgres between workers): a run's jobs, and the next runs within the token's life, ask Docebo
//! for one token, not one each or one per worker (Docebo counts token requests), and the jobs a
//! 401 answers renew it once between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use learnsync_store::model::{LogLevel, NewLogEvent};
use learnsync_store::secrets::{Cipher, DoceboCredentials};
use learnsync_store::worker::{self as store_worker, NewToken, StoredToken};
use learnsync_store::{Error as StoreError, ErrorCode};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::budget::Budget;
use crate::context::{JobCtx, SyncResult};
use crate::http::docebo::DoceboApi;
pub use crate::http::docebo::{Page, PageRef};
use crate::retry::{Decision, Policy, Tally};

/// How long a token is reused: Docebo's tokens last an hour (`expires_in: 3600`); a token older
/// than this is asked for again rather than risk a 401 (a renewal costs a call either way). The
/// shared token's expiry is kept by Postgres' clock, so the workers' clocks need not agree.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// Past this many connections, a new slot first drops the slots no job holds.
const TOKEN_SLOTS: usize = 1024;

/// The Docebo tokens of a worker's jobs, one slot per connection, shared by every job of that
/// connection the worker runs, and through Postgres with every other worker (cheap to clone). A
/// token serves only the very credentials it was asked for with: after an UpdateConnection the
/// next job asks again (in Postgres, the credentials' keyed fingerprint no longer matches).
#[derive(Clone)]
pub struct Tokens {
    slots: Arc<std::sync::Mutex<HashMap<Uuid, Slot>>>,
    /// Seals the tokens stored in Postgres and fingerprints the credentials (the credentials' key).
    cipher: Cipher,
}

type Slot = Arc<Mutex<Option<Held>>>;

/// A token, the credentials it was asked for with, and until when it is used.
struct Held {
    credentials: DoceboCredentials,
    token: String,
    until: Instant,
}

impl Held {
    /// Whether the token serves `credentials` now and is not `refused` (the one a 401 answered).
    fn serves(&self, credentials: &DoceboCredentials, refused: Option<&str>) -> bool {
        self.credentials == *credentials
            && Instant::now() < self.until
            && refused != Some(self.token.as_str())
    }
}

impl Tokens {
    /// The tokens of a worker that opens credentials with `cipher`.
    pub fn new(cipher: Cipher) -> Tokens {
        Tokens {
            slots: Arc::default(),
            cipher,
        }
    }

    /// The slot of a connection's token.
    fn slot(&self, connection_id: Uuid) -> Slot {
        let mut slots = self
            .slots
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
    connection_id: Uuid,
    cipher: Cipher,
    token: Slot,
    budget: Budget,
}

impl Docebo {
    /// A client for a connection's platform, sharing the connection's token with the worker's
    /// other jobs, and the other workers, through `tokens`.
    pub fn new(
        http: learnsync_upstream::Http,
        connection_id: Uuid,
        credentials: DoceboCredentials,
        budget: Budget,
        tokens: &Tokens,
    ) -> Docebo {
        Docebo {
            api: DoceboApi::new(http, credentials),
            connection_id,
            cipher: tokens.cipher.clone(),
            token: tokens.slot(connection_id),
            budget,
        }
    }

    /// The token: the worker's own when it serves ([`Held::serves`]: these credentials, fresh,
    /// not `refused`, the one a 401 answered; a job that finds another job renewed it meanwhile
    /// takes the new one), else the one Postgres holds on the same terms (another worker's),
    /// else a new one ([`Docebo::renew`]).
    async fn token(&self, ctx: &JobCtx, refused: Option<&str>) -> SyncResult<String> {
        let mut held = self.token.lock().await;
        if let Some(current) = held.as_ref()
            && current.serves(self.api.credentials(), refused)
        {
            return Ok(current.token.clone());
        }
        let fingerprint = self
            .cipher
            .docebo_fingerprint(self.connection_id, self.api.credentials());
        let stored = {
            let conn = ctx.store.conn().await?;
            store_worker::current_token(&conn, self.connection_id).await?
        };
        let fresh = match stored.and_then(|stored| self.usable(&stored, &fingerprint, refused)) {
            Some(shared) => shared,
            None => self.renew(ctx, fingerprint, refused).await?,
        };
        let token = fresh.token.clone();
        *held = Some(fresh);
        Ok(token)
    }

    /// The stored token, when it was asked for with these credentials (`fingerprint`), has not
    /// expired and is not `refused`. One that does not open (another key) is asked for again.
    fn usable(
        &self,
        stored: &StoredToken,
        fingerprint: &[u8],
        refused: Option<&str>,
    ) -> Option<Held> {
        if stored.fingerprint != fingerprint || stored.fresh_for.is_zero() {
            return None;
        }
        let token = match self.cipher.open_token(self.connection_id, &stored.sealed) {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(connection = %self.connection_id, %error, "shared docebo token does not open, asking for a new one");
                return None;
            }
        };
        (refused != Some(token.as_str())).then(|| Held {
            credentials: self.api.credentials().clone(),
            token,
            until: Instant::now() + stored.fresh_for,
        })
    }

    /// Asks Docebo for a token and shares it, unless another worker did first: under the
    /// connection's token lock (held only around the request) the stored token is read again and
    /// taken when usable; else a new one replaces the version read (a compare-and-swap), so the
    /// workers a 401 answers together renew it once.
    async fn renew(
        &self,
        ctx: &JobCtx,
        fingerprint: Vec<u8>,
        refused: Option<&str>,
    ) -> SyncResult<Held> {
        let mut conn = ctx.store.conn().await?;
        let tx = conn.transaction().await.map_err(StoreError::from)?;
        ctx.interruptible(async { Ok(store_worker::lock_token(&tx, self.connection_id).await?) })
            .await?;
        let stored = store_worker::current_token(&tx, self.connection_id).await?;
        if let Some(shared) = stored
            .as_ref()
            .and_then(|stored| self.usable(stored, &fingerprint, refused))
        {
            tx.commit().await.map_err(StoreError::from)?;
            return Ok(shared);
        }
        let token = self.ask(ctx).await?;
        let new = NewToken {
            sealed: self.cipher.seal_token(self.connection_id, &token)?,
            fingerprint,
            lifetime: TOKEN_REUSE,
        };
        let replaces = stored.map(|stored| stored.version);
        let shared = store_worker::store_token(&tx, self.connection_id, &new, replaces).await?;
        tx.commit().await.map_err(StoreError::from)?;
        match shared {
            Some(shared) => {
                tracing::info!(connection = %self.connection_id, version = shared.version, "docebo token renewed and shared")
            }
            None => {
                tracing::warn!(connection = %self.connection_id, "docebo token stored by another worker meanwhile, keeping this one here")
            }
        }
        Ok(Held {
            credentials: self.api.credentials().clone(),
            token,
            until: Instant::now() + TOKEN_REUSE,
        })
    }

    /// Asks Docebo for a token. A token request is a call Docebo counts: it spends the budget
    /// like a page.
    async fn ask(&self, ctx: &JobCtx) -> SyncResult<String> {
        let policy = Policy::docebo(&ctx.settings).for_token();
        ctx.obtain(&policy, || async {
            self.budget.take(ctx).await?;
            Ok(self.api.token().await)
        })
        .await
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

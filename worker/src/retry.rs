//! The one retry policy of the worker's HTTP calls, Docebo's and Salesforce's alike: what to do
//! with each answer a thin client reports (send again after a backoff, pause the upstream, renew
//! the session, or give up with a class), how long to wait, and how often. Pure: the job-level
//! clients apply its decisions (sleeping, pausing in Postgres, logging).
//!
//! | answer            | decision                                                             |
//! |-------------------|----------------------------------------------------------------------|
//! | ok                | the call's result                                                    |
//! | session expired   | renew the session and send again, once; then give up, permanent      |
//! | throttled         | pause the upstream (`Retry-After`, else `throttle_base` doubling, capped at `throttle_cap`) and send again, `throttles` times; then give up, transient |
//! | transient         | back off (`backoff_base` doubling, jittered, capped at `backoff_cap`) and send again, until `attempts` answers failed; then give up, transient |
//! | unreadable        | give up, transient (the job retries later; the same call would read the same) |
//! | permanent         | give up, permanent                                                   |
//!
//! Token requests use the same policy with no throttling waits: a throttled token endpoint gives
//! up at once. Above the calls, a job that failed transiently is retried later from its checkpoint
//! ([`job_retry_delay`]).

use std::time::Duration;

use crate::config::Settings;
use crate::error::{Failure, SyncError};

/// Attempts of a Docebo call that fails with a 5xx (other than 503) or a network error.
const DOCEBO_ATTEMPTS: u32 = 4;
/// Consecutive 429/503 answers after which a Docebo call gives up (the job retries later).
const DOCEBO_THROTTLES: u32 = 30;
/// Longest pause of a Docebo platform, whatever Retry-After says.
const DOCEBO_THROTTLE_CAP: Duration = Duration::from_secs(600);
/// Attempts of a Salesforce call answered 5xx or failing on the network.
const SALESFORCE_ATTEMPTS: u32 = 5;
/// Request-limit pauses a Salesforce call waits out before the job gives up for now.
const SALESFORCE_THROTTLES: u32 = 50;
/// Longest backoff between two attempts of a call.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What an answer says, as the policy reads it (a thin client's [`crate::http::Answer`] without
/// its payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The upstream asks to slow down, naming a wait or not.
    Throttled(Option<Duration>),
    /// Something that may pass at once: a 5xx, a network error.
    Transient,
    /// The session or token expired.
    SessionExpired,
    /// The answer arrived and cannot be read.
    Unreadable,
    /// Something sending again will not fix.
    Permanent,
}

/// How a call that gives up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The job retries later.
    Transient,
    /// The job fails.
    Permanent,
}

impl Class {
    /// The job error of a call that gave up with this class on `failure`.
    pub fn fail(self, failure: Failure) -> SyncError {
        match self {
            Class::Transient => SyncError::Transient(failure),
            Class::Permanent => SyncError::Permanent(failure),
        }
    }
}

/// What to do after an answer that is not the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Authenticate again, then send again.
    Renew,
    /// Wait this long, then send again.
    Backoff(Duration),
    /// Pause the upstream for everyone for this long, then send again.
    Pause(Duration),
    /// Stop: the call failed with this class.
    GiveUp(Class),
}

/// The retry policy of one upstream's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Transient answers after which a call gives up (the attempt that got the last one included).
    pub attempts: u32,
    /// First backoff after a transient answer; it doubles with each one, up to `backoff_cap`.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
    /// Whether backoffs are jittered (±12.5%), so calls that failed together do not retry together.
    pub jitter: bool,
    /// Throttling answers a call waits out before it gives up.
    pub throttles: u32,
    /// Pause after a throttling answer that names no wait; it doubles while they go on.
    pub throttle_base: Duration,
    /// Longest pause, whatever the upstream asks.
    pub throttle_cap: Duration,
}

impl Policy {
    /// Docebo's calls: 429/503 pause the platform (Retry-After honoured, else `docebo_pause`
    /// doubling, at most 10 minutes).
    pub fn docebo(settings: &Settings) -> Policy {
        Policy {
            attempts: DOCEBO_ATTEMPTS,
            backoff_base: settings.call_retry_base,
            backoff_cap: BACKOFF_CAP,
            jitter: true,
            throttles: DOCEBO_THROTTLES,
            throttle_base: settings.docebo_pause,
            throttle_cap: DOCEBO_THROTTLE_CAP,
        }
    }

    /// Salesforce's calls: REQUEST_LIMIT_EXCEEDED pauses the connection's writes for
    /// `salesforce_limit_pause` each time (Salesforce names no wait).
    pub fn salesforce(settings: &Settings) -> Policy {
        Policy {
            attempts: SALESFORCE_ATTEMPTS,
            backoff_base: settings.call_retry_base,
            backoff_cap: BACKOFF_CAP,
            jitter: true,
            throttles: SALESFORCE_THROTTLES,
            throttle_base: settings.salesforce_limit_pause,
            throttle_cap: settings.salesforce_limit_pause,
        }
    }

    /// The same policy for a token request: a throttled token endpoint gives up at once (there is
    /// no budget to pause for it).
    pub fn for_token(self) -> Policy {
        Policy {
            throttles: 0,
            ..self
        }
    }

    /// The backoff after the `failures`-th transient answer (from 1): `backoff_base` doubling,
    /// jittered, at most `backoff_cap`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(6)));
        let jittered = if self.jitter {
            base.mul_f64(rand::random::<f64>() * 0.25 + 0.875)
        } else {
            base
        };
        jittered.min(self.backoff_cap)
    }

    /// The pause after the `throttles`-th throttling answer (from 1): what the upstream asked, or
    /// `throttle_base` doubling, at most `throttle_cap`.
    pub fn throttle_wait(&self, throttles: u32, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or_else(|| {
                self.throttle_base
                    .saturating_mul(2u32.saturating_pow(throttles.saturating_sub(1).min(6)))
            })
            .min(self.throttle_cap)
    }

    /// Decides what to do after an answer that is not the result, counting it in `tally`.
    pub fn decide(&self, signal: Signal, tally: &mut Tally) -> Decision {
        match signal {
            Signal::Throttled(asked) => {
                tally.throttles += 1;
                if tally.throttles > self.throttles {
                    Decision::GiveUp(Class::Transient)
                } else {
                    Decision::Pause(self.throttle_wait(tally.throttles, asked))
                }
            }
            Signal::Transient => {
                tally.failures += 1;
                if tally.failures >= self.attempts {
                    Decision::GiveUp(Class::Transient)
                } else {
                    Decision::Backoff(self.backoff(tally.failures))
                }
            }
            Signal::SessionExpired if !tally.renewed => {
                tally.renewed = true;
                Decision::Renew
            }
            Signal::SessionExpired | Signal::Permanent => Decision::GiveUp(Class::Permanent),
            Signal::Unreadable => Decision::GiveUp(Class::Transient),
        }
    }
}

/// The delay before a job's next attempt after `spent` retries (the job-level layer, above the
/// calls'): `base` doubling, at most `max`, jittered ±10%.
pub fn job_retry_delay(base: Duration, max: Duration, spent: i32) -> Duration {
    let exponent = spent.clamp(0, 16) as u32;
    let delay = base.saturating_mul(2u32.saturating_pow(exponent)).min(max);
    delay.mul_f64(rand::random::<f64>() * 0.2 + 0.9)
}

/// What one call has met so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    failures: u32,
    throttles: u32,
    renewed: bool,
}

impl Tally {
    /// Transient answers so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Throttling answers so far.
    pub fn throttles(&self) -> u32 {
        self.throttles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            jitter: false,
            throttles: 3,
            throttle_base: Duration::from_secs(5),
            throttle_cap: Duration::from_secs(600),
        }
    }

    #[test]
    fn transient_answers_back_off_doubling_then_give_up() {
        let policy = policy();
        let mut tally = Tally::default();
        let waits: Vec<Decision> = (0..4)
            .map(|_| policy.decide(Signal::Transient, &mut tally))
            .collect();
        assert_eq!(
            waits,
            vec![
                Decision::Backoff(Duration::from_millis(100)),
                Decision::Backoff(Duration::from_millis(200)),
                Decision::Backoff(Duration::from_millis(400)),
                Decision::GiveUp(Class::Transient),
            ]
        );
        assert_eq!(policy.backoff(9), Duration::from_secs(1), "capped");
    }

    #[test]
    fn jitter_stays_within_an_eighth() {
        let policy = Policy {
            jitter: true,
            ..policy()
        };
        for _ in 0..100 {
            let wait = policy.backoff(2);
            assert!(
                wait >= Duration::from_millis(175) && wait <= Duration::from_millis(225),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn throttling_pauses_as_asked_or_doubling_capped_then_gives_up() {
        let policy = policy();
        let mut tally = Tally::default();
        assert_eq!(
            policy.decide(Signal::Throttled(None), &mut tally),
            Decision::Pause(Duration::from_secs(5))
        );
        assert_eq!(
            policy.decide(Signal::Throttled(Some(Duration::from_secs(7))), &mut tally),
            Decision::Pause(Duration::from_secs(7))
        );
        assert_eq!(
            policy.decide(
                Signal::Throttled(Some(Duration::from_secs(3600))),
                &mut tally
            ),
            Decision::Pause(Duration::from_secs(600)),
            "Retry-After is capped"
        );
        assert_eq!(tally.throttles(), 3);
        assert_eq!(
            policy.decide(Signal::Throttled(None), &mut tally),
            Decision::GiveUp(Class::Transient)
        );
        assert_eq!(policy.throttle_wait(3, None), Duration::from_secs(20));
        // Throttling does not spend the attempts of transient failures.
        assert_eq!(tally.failures(), 0);
    }

    #[test]
    fn job_retries_double_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(2), Duration::from_secs(300));
        let first = job_retry_delay(base, max, 0);
        assert!(first >= Duration::from_millis(1800) && first <= Duration::from_millis(2200));
        let third = job_retry_delay(base, max, 2);
        assert!(third >= Duration::from_millis(7200) && third <= Duration::from_millis(8800));
        let late = job_retry_delay(base, max, 40);
        assert!(late >= Duration::from_secs(270) && late <= Duration::from_secs(330));
    }

    #[test]
    fn a_session_is_renewed_once() {
        let policy = policy();
        let mut tally = Tally::default();
        assert_eq!(
            policy.decide(Signal::SessionExpired, &mut tally),
            Decision::Renew
        );
        assert_eq!(
            policy.decide(Signal::SessionExpired, &mut tally),
            Decision::GiveUp(Class::Permanent)
        );
    }

    #[test]
    fn permanent_and_unreadable_answers_give_up_at_once() {
        let policy = policy();
        let mut tally = Tally::default();
        assert_eq!(
            policy.decide(Signal::Permanent, &mut tally),
            Decision::GiveUp(Class::Permanent)
        );
        assert_eq!(
            policy.decide(Signal::Unreadable, &mut tally),
            Decision::GiveUp(Class::Transient)
        );
    }

    #[test]
    fn token_requests_do_not_wait_out_throttling() {
        let policy = policy().for_token();
        let mut tally = Tally::default();
        assert_eq!(
            policy.decide(Signal::Throttled(None), &mut tally),
            Decision::GiveUp(Class::Transient)
        );
        assert_eq!(
            policy.decide(Signal::Transient, &mut tally),
            Decision::Backoff(Duration::from_millis(100))
        );
    }

    #[test]
    fn salesforce_pauses_for_the_configured_limit_pause_every_time() {
        let settings = Settings {
            salesforce_limit_pause: Duration::from_secs(300),
            ..Settings::default()
        };
        let policy = Policy::salesforce(&settings);
        let mut tally = Tally::default();
        for _ in 0..5 {
            assert_eq!(
                policy.decide(Signal::Throttled(None), &mut tally),
                Decision::Pause(Duration::from_secs(300))
            );
        }
    }
}

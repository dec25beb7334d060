//! learnsync's sync workers: processes apart from the gRPC server that claim sync jobs from
//! Postgres and synchronize Docebo into Salesforce, one way, over HTTP.
//!
//! A worker claims jobs with one guarded statement, holds each under a lease its heartbeat task
//! keeps alive, and fences every write about a job by the attempt it holds, so a worker that lost
//! its lease changes nothing. A job reads Docebo page by page (sharing the platform's call budget
//! with every other job), maps each item to a Salesforce record, skips records the ledger says are
//! unchanged, upserts the rest, and commits what Salesforce confirmed together with the checkpoint
//! after it: a job taken over goes on from there.
//!
//! Layout:
//! - [`config`]: [`Settings`] (library) and the binary's `clap` [`config::Options`].
//! - [`runner`]: [`Worker`]: the claim loop, leases and heartbeats, stop, retries, shutdown.
//! - [`context`]: what a running job carries; token requests under the retry policy.
//! - [`error`]: the job error type: its class ([`error::SyncError`]) and what failed
//!   ([`error::Failure`]).
//! - [`sync`]: one job's work: walk the listing (all of it, the changes since a watermark, or the
//!   records webhooks named), write, checkpoint, deferred parents, unenrollments.
//! - [`http`]: the thin HTTP clients of Docebo and Salesforce: one exchange each, answered as an
//!   [`http::Answer`] (no job, no store), testable against the simulators alone.
//! - [`retry`]: the one retry policy both upstreams' calls follow (backoff, throttling waits,
//!   session renewal, when to give up).
//! - [`docebo`]: a job's Docebo client (the thin client under the policy, the shared budget,
//!   429/503 pauses).
//! - [`budget`]: the shared Docebo call budget, leased a few calls at a time.
//! - [`salesforce`]: a job's Salesforce client (the thin client under the policy, request-limit
//!   pauses of the connection, bulk jobs polled to their end).
//! - [`mapping`]: the data model as data (`mapping.json`): item → record, validation, hashing.
//!
//! Invariants: the worker never runs migrations (the server does); only `learnsync-store` speaks
//! SQL; no secret (token, credential) is ever logged.

pub mod budget;
pub mod config;
pub mod context;
pub mod docebo;
pub mod error;
pub mod http;
pub mod mapping;
pub mod metrics;
pub mod retry;
pub mod runner;
pub mod salesforce;
pub mod sync;

pub use config::Settings;
pub use runner::{Error, Worker};

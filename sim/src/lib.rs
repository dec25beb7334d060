//! HTTP simulators of the Docebo LMS and of Salesforce, for tests, demos and benchmarks.
//!
//! Both run in-process on any address (port 0 in tests) and keep their data in memory. Each has a
//! control API under `/__sim/` (JSON) and the same operations on its Rust handle.
//!
//! Layout:
//! - `common`: the sim clock, call counters, fault injection, the server runner.
//! - `docebo`: [`DoceboSim`]: OAuth2, the list endpoints, rate limiting (a leaky bucket, optionally with
//!   a small burst), webhooks, data-set generation, and changes made while a client reads
//!   ([`PageHook`]).
//! - `fleet`: [`Fleet`]: many Docebo platforms and Salesforce orgs behind one server, under path
//!   prefixes (`/docebo/{n}`, `/salesforce/{n}`), for the fleet benchmark.
//! - `salesforce`: [`SalesforceSim`]: OAuth2 (client credentials, JWT bearer), the org schema, sObject
//!   Collections, SOQL, Bulk API 2.0 ingest and query jobs, limits.
//! - `main.rs`: the `learnsync-sim` binary serving both; `bin/sim-bench.rs`: their benchmark.
//! - `schema/default.json`: the default org schema (learnsync's data model), compiled in.
//!
//! Use from a test:
//!
//! ```no_run
//! # async fn example() -> Result<(), learnsync_sim::Error> {
//! use learnsync_sim::{DoceboConfig, DoceboSim, GenerateParams, SalesforceConfig, SalesforceSim};
//! let docebo = DoceboSim::start(DoceboConfig::default()).await?;
//! let summary = docebo.generate(&GenerateParams { seed: 42, ..GenerateParams::default() });
//! let salesforce = SalesforceSim::start(SalesforceConfig::default()).await?;
//! // ... point the code under test at docebo.base_url() and salesforce.base_url() ...
//! let users = salesforce.records("Docebo_User__c")?;
//! assert_eq!(users.len() + summary.bad_counts["users"], summary.counts["users"]);
//! # Ok(()) }
//! ```
//!
//! Invariants: nothing is persisted; the simulators never call out except Docebo webhooks to the
//! registered URLs; every answer of the APIs uses the vendor's error shapes, and control routes live
//! under `/__sim/` only.

#![warn(missing_docs)]

pub mod common;
pub mod docebo;
pub mod fleet;
pub mod salesforce;

pub use common::{FailNext, FailShare, Faults, ListFault, SimClock};
pub use docebo::{
    BadRecord, DatasetSummary, DoceboConfig, DoceboSim, EntityKind, GenerateParams, PageAction,
    PageHook, RateLimit, WebhookEvent, WebhookStats,
};
pub use fleet::Fleet;
pub use salesforce::{SalesforceConfig, SalesforceSim};

/// Errors of the simulators' Rust API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot bind the simulator socket: {0}")]
    Bind(#[source] std::io::Error),
    /// A control call named something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A control call was malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A control call would create something that already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An org schema could not be loaded.
    #[error("bad schema: {0}")]
    Schema(String),
    /// A configured key could not be used.
    #[error("bad key: {0}")]
    Key(String),
}

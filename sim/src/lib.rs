//! HTTP simulators of the Docebo LMS and of Salesforce, for tests, demos and benchmarks.
//!
//! Both run in-process on any address (port 0 in tests) and keep their data in memory. Each has a
//! control API under `/__sim/` (JSON) and the same operations on its Rust handle.
//!
//! Layout:
//! - `common`: the sim clock, call counters, fault injection, the server runner.
//! - `docebo`: [`DoceboSim`]: OAuth2, the list endpoints, rate limiting, webhooks, data-set generation.
//! - `salesforce`: [`SalesforceSim`]: OAuth2 (client credentials, JWT bearer), the org schema, sObject
//!   Collections, SOQL, Bulk API 2.0 ingest, limits.
//! - `main.rs`: the `learnsync-sim` binary serving both.

#![warn(missing_docs)]

pub mod common;
pub mod docebo;
pub mod salesforce;

pub use common::{FailNext, FailShare, Faults, SimClock};
pub use docebo::{
    BadRecord, DatasetSummary, DoceboConfig, DoceboSim, EntityKind, GenerateParams, WebhookEvent,
    WebhookStats,
};
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

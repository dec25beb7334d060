//! learnsync's upstream policy: tenants name the Docebo and Salesforce URLs the shared workers
//! call, so what those URLs may reach is the operator's decision, enforced in one place.
//!
//! - [`Policy`] (`policy`): https only and public addresses only by default, with the
//!   operator's exceptions from `LEARNSYNC_UPSTREAM_ALLOW` ([`ENV`]); the server checks a
//!   connection's URLs with [`Policy::check_url`] before it saves them.
//! - [`Http`] (`client`): the one HTTP client the workers call upstreams with: every request's
//!   URL is checked first, every name is checked on the addresses it resolves to at connect time
//!   (a resolver that refuses forbidden addresses, so DNS rebinding cannot get past it), and
//!   redirects are never followed.
//! - `body`: every upstream body is read under a size cap ([`cap`]), and what an upstream says
//!   in an error is [`sanitize`]d before a tenant reads it.

mod body;
mod client;
mod policy;

pub use body::{
    BodyError, MESSAGE_CHARS, Prefix, cap, read_capped, read_prefix, sanitize, size_text,
};
pub use client::{Http, refusal_of};
pub use policy::{Class, ENV, ParseError, Policy, Refusal, classify};

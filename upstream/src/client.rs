//! The guarded HTTP client: the policy checked on every request's URL and, at connect time, on
//! every address a name resolves to; redirects off; no proxy (a proxy would resolve names where
//! the policy cannot see them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::policy::{Policy, Refusal};

/// The HTTP client every upstream request goes through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

/// Resolves names with the system's resolver, then refuses the answer if any address is one the
/// policy does not allow (the connection is never opened).
struct Guard {
    policy: Arc<Policy>,
    inner: Option<Arc<dyn Resolve>>,
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> = match inner {
                Some(inner) => inner.resolve(name).await?.collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            for address in &addresses {
                if let Err(refusal) = policy.check_ip(&host, address.ip()) {
                    tracing::warn!(host = %host, ip = %address.ip(), "upstream address refused by the policy");
                    return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

impl Http {
    /// A client under `policy`, each request ending after `timeout` (connecting after at most
    /// 10 s).
    pub fn new(policy: Policy, timeout: Duration) -> Result<Http, reqwest::Error> {
        Http::build(policy, timeout, None)
    }

    /// The same, resolving names with `resolver` before the policy checks them (tests stand in
    /// for DNS with it).
    pub fn with_resolver(
        policy: Policy,
        timeout: Duration,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Http, reqwest::Error> {
        Http::build(policy, timeout, Some(resolver))
    }

    fn build(
        policy: Policy,
        timeout: Duration,
        inner: Option<Arc<dyn Resolve>>,
    ) -> Result<Http, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Guard {
                policy: policy.clone(),
                inner,
            }))
            .build()?;
        Ok(Http { client, policy })
    }

    /// The policy requests follow.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A request to `url`, if the policy allows what the URL says (what its host resolves to is
    /// checked when the request connects: [`refusal_of`] finds that refusal in the error).
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, Refusal> {
        let url = self.policy.check_url(url)?;
        Ok(self.client.request(method, url))
    }
}

/// The policy's refusal behind a failed request, if that is why it failed.
pub fn refusal_of(error: &reqwest::Error) -> Option<Refusal> {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        source = error.source();
    }
    None
}

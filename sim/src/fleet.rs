//! Many Docebo platforms and Salesforce orgs behind one server: the fleet benchmark's thousands of
//! connections, each with its own platform and org, without a socket and a server per simulator.
//!
//! Platform `n` answers under `/docebo/{n}` and org `n` under `/salesforce/{n}` (its tokens'
//! `instance_url` says so): a request's prefix is stripped and the rest is answered by that
//! simulator's own router, exactly as a [`DoceboSim`] or [`SalesforceSim`] started alone would
//! answer it, control routes included (`/docebo/3/__sim/counters`). Each platform and org is a
//! handle of the usual type, whose methods (generate, update, counters, ...) act on it alone.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use crate::common::RunningServer;
use crate::{DoceboConfig, DoceboSim, Error, SalesforceConfig, SalesforceSim};

/// The routers a fleet's server dispatches to, by prefix and index.
struct Routes {
    docebo: Vec<Router>,
    salesforce: Vec<Router>,
}

/// A running fleet of simulators: `platforms` Docebo platforms and as many Salesforce orgs, one
/// server. Dropping it stops the server.
pub struct Fleet {
    server: RunningServer,
    docebo: Vec<DoceboSim>,
    salesforce: Vec<SalesforceSim>,
}

impl Fleet {
    /// Starts a server on `bind` serving `platforms` Docebo platforms (each with `docebo`'s
    /// settings) and as many Salesforce orgs (each with `salesforce`'s).
    pub async fn start(
        bind: SocketAddr,
        platforms: usize,
        docebo: &DoceboConfig,
        salesforce: &SalesforceConfig,
    ) -> Result<Fleet, Error> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let mut routes = Routes {
            docebo: Vec::with_capacity(platforms),
            salesforce: Vec::with_capacity(platforms),
        };
        let mut docebo_sims = Vec::with_capacity(platforms);
        let mut salesforce_sims = Vec::with_capacity(platforms);
        for index in 0..platforms {
            let (sim, router) = DoceboSim::hosted(
                docebo.clone(),
                addr,
                format!("http://{addr}/docebo/{index}"),
            );
            docebo_sims.push(sim);
            routes.docebo.push(router);
            let (sim, router) = SalesforceSim::hosted(
                salesforce.clone(),
                addr,
                format!("http://{addr}/salesforce/{index}"),
            )?;
            salesforce_sims.push(sim);
            routes.salesforce.push(router);
        }
        let router = Router::new()
            .fallback(dispatch)
            .with_state(Arc::new(routes));
        let server = RunningServer::serve(listener, router)?;
        tracing::info!(%addr, platforms, "simulator fleet listening");
        Ok(Fleet {
            server,
            docebo: docebo_sims,
            salesforce: salesforce_sims,
        })
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Returns how many platforms (and orgs) the fleet serves.
    pub fn len(&self) -> usize {
        self.docebo.len()
    }

    /// Returns true for a fleet of no platform.
    pub fn is_empty(&self) -> bool {
        self.docebo.is_empty()
    }

    /// Returns Docebo platform `index`.
    pub fn docebo(&self, index: usize) -> Option<&DoceboSim> {
        self.docebo.get(index)
    }

    /// Returns Salesforce org `index`.
    pub fn salesforce(&self, index: usize) -> Option<&SalesforceSim> {
        self.salesforce.get(index)
    }

    /// Returns every platform, in index order.
    pub fn platforms(&self) -> &[DoceboSim] {
        &self.docebo
    }

    /// Returns every org, in index order.
    pub fn orgs(&self) -> &[SalesforceSim] {
        &self.salesforce
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.server.stop().await;
    }
}

/// Splits `/docebo/12/rest` into the simulator family, its index and `/rest`.
fn split_prefix(path: &str) -> Option<(&str, usize, &str)> {
    let rest = path.strip_prefix('/')?;
    let (family, rest) = rest.split_once('/')?;
    let (index, rest) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    Some((family, index.parse().ok()?, rest))
}

/// Answers a request with the router of the simulator its prefix names, the prefix stripped.
async fn dispatch(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    let uri = request.uri();
    let Some((family, index, rest)) = split_prefix(uri.path()) else {
        return not_found();
    };
    let router = match family {
        "docebo" => routes.docebo.get(index),
        "salesforce" => routes.salesforce.get(index),
        _ => None,
    };
    let Some(router) = router else {
        return not_found();
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let Ok(inner_uri) = path_and_query.parse::<Uri>() else {
        return not_found();
    };
    // A fresh request: the inner router matches its own routes and sets its own extensions; only
    // the peer's address is carried over.
    let (parts, body) = request.into_parts();
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = inner_uri;
    *inner.version_mut() = parts.version;
    *inner.headers_mut() = parts.headers;
    if let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        inner.extensions_mut().insert(*peer);
    }
    match router.clone().oneshot(inner).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Body::from("no such simulator")).into_response()
}

#[cfg(test)]
mod tests {
    use super::split_prefix;

    #[test]
    fn prefixes_split_into_family_index_and_rest() {
        assert_eq!(
            split_prefix("/docebo/12/manage/v1/user"),
            Some(("docebo", 12, "/manage/v1/user"))
        );
        assert_eq!(split_prefix("/salesforce/0"), Some(("salesforce", 0, "/")));
        assert_eq!(split_prefix("/docebo/x/manage"), None);
        assert_eq!(split_prefix("/docebo"), None);
    }
}

//! What the server answers about a request it could not read, before any handler runs.
//!
//! tonic answers a request body that is not a valid message of the method's request type with
//! `INTERNAL` (gRPC's status table says so for "error parsing request proto"). For learnsync an
//! `INTERNAL` means a fault of the server, something to alert on; a caller's malformed body is
//! the caller's: [`RequestErrors`] answers it `INVALID_ARGUMENT` on the field `request`, with
//! learnsync's usual details. Only tonic's own answers about reading the request are rewritten
//! (a handler's statuses always carry details); a compressed-flag violation stays `INTERNAL`, as
//! the gRPC compression spec requires.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// What tonic says when a request's bytes do not make one message of the method's type.
const UNREADABLE: [&str; 3] = [
    "failed to decode Protobuf message",
    "Missing request message",
    "Unexpected EOF decoding stream",
];

/// Wraps a gRPC service: its answers about unreadable requests become `INVALID_ARGUMENT`.
#[derive(Clone)]
pub(crate) struct RequestErrors<S> {
    inner: S,
}

impl<S> RequestErrors<S> {
    pub(crate) fn new(inner: S) -> RequestErrors<S> {
        RequestErrors { inner }
    }
}

impl<S: NamedService> NamedService for RequestErrors<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for RequestErrors<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move { Ok(rewrite(future.await?)) })
    }
}

/// The answer, or `INVALID_ARGUMENT` in place of tonic's `INTERNAL` about an unreadable request
/// (sent as headers alone: nothing else was sent).
fn rewrite(response: http::Response<Body>) -> http::Response<Body> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let unreadable = status.code() == Code::Internal
        && status.details().is_empty()
        && UNREADABLE
            .iter()
            .any(|prefix| status.message().starts_with(prefix));
    if !unreadable {
        return response;
    }
    tracing::debug!(reason = status.message(), "unreadable request refused");
    crate::error::invalid_field(
        "request",
        format!(
            "not a valid message of the method's request type ({})",
            status.message()
        ),
    )
    .into_http()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tonics_unreadable_request_answers_become_invalid_argument_and_others_stay() {
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        let rewritten = Status::from_header_map(rewrite(decode.into_http()).headers()).unwrap();
        assert_eq!(rewritten.code(), Code::InvalidArgument);
        assert!(rewritten.message().contains("request: not a valid message"));
        assert!(rewritten.message().contains("invalid wire type"));

        let compressed = Status::internal("protocol error: received message with compressed-flag");
        let kept = Status::from_header_map(rewrite(compressed.into_http()).headers()).unwrap();
        assert_eq!(kept.code(), Code::Internal);

        let ours = crate::error::StoreError(learnsync_store::Error::Corrupt("x".into()));
        let ours = Status::from(ours);
        let kept = Status::from_header_map(rewrite(ours.into_http()).headers()).unwrap();
        assert_eq!(kept.code(), Code::Internal);
        assert_eq!(kept.message(), "internal error");
    }
}

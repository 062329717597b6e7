//! The gRPC port's bound on a request's metadata (issue #14).
//!
//! HTTP/2 itself refuses a header block over its `SETTINGS_MAX_HEADER_LIST_SIZE` with a bare
//! `431` and a reset stream: a gRPC client sees an `UNKNOWN` or `INTERNAL` error with no
//! `grpc-status`, and cannot tell its own oversized metadata from a broken server. So h2's limit
//! is set well above ferry's ([`h2_header_list_limit`]), and [`HeaderLimitLayer`], the outermost
//! layer of the port, measures every request's header list as RFC 9113 §6.5.2 counts it (name +
//! value + 32 per field, pseudo-headers included) and refuses one over `[grpc]
//! max_header_list_bytes` with `RESOURCE_EXHAUSTED`, `ferry-error-code: 1001` and the size it
//! saw, before authentication or decoding. The refusal is one stream's answer: the connection and
//! every other call on it carry on.
//!
//! Invariants (written as absences): no call whose metadata is over the limit reaches the access
//! layer or a service; no such call costs its connection.

use ferry_model::{ApiError, ErrorCode};
use tonic::codegen::http;

use crate::decode::status_with;

/// Default of `[grpc] max_header_list_bytes`: twice what a browser or gRPC client sends with a
/// long bearer token and tracing headers, the limit gRPC's C core applies by default (8 KiB) ×2.
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` ferry announces for a metadata limit of `max`: four
/// times it (at least 64 KiB), so anything between the two is refused in gRPC's shape by
/// [`HeaderLimitLayer`]; only a block beyond this gets h2's bare 431.
pub fn h2_header_list_limit(max: u32) -> u32 {
    max.saturating_mul(4).max(64 * 1024)
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113 §6.5.2: each field's name
/// and value octets plus 32), including the pseudo-headers `:method`, `:scheme`, `:authority` and
/// `:path`.
pub fn header_list_size<B>(request: &http::Request<B>) -> usize {
    const OVERHEAD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (":authority", uri.authority().map_or(0, |a| a.as_str().len())),
        (":path", uri.path_and_query().map_or(0, |p| p.as_str().len())),
    ];
    let pseudo: usize = pseudo.iter().map(|(name, len)| name.len() + len + OVERHEAD).sum();
    let fields: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + OVERHEAD).sum();
    pseudo + fields
}

/// See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct HeaderLimitLayer {
    max_bytes: usize,
}

impl HeaderLimitLayer {
    pub fn new(max_bytes: u32) -> Self {
        HeaderLimitLayer { max_bytes: max_bytes as usize }
    }
}

impl<S> tower::Layer<S> for HeaderLimitLayer {
    type Service = HeaderLimitService<S>;

    fn layer(&self, inner: S) -> HeaderLimitService<S> {
        HeaderLimitService { inner, max_bytes: self.max_bytes }
    }
}

/// See [`HeaderLimitLayer`].
#[derive(Clone, Debug)]
pub struct HeaderLimitService<S> {
    inner: S,
    max_bytes: usize,
}

impl<S, B> tower::Service<http::Request<B>> for HeaderLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let size = header_list_size(&request);
        if size > self.max_bytes {
            let e = ApiError::new(
                ErrorCode::TooLong,
                "metadata",
                format!(
                    "the call's metadata is {size} bytes (HTTP/2 header list size): expected at most {} \
                     ([grpc] max_header_list_bytes)",
                    self.max_bytes
                ),
            );
            ferry_coordinator::telemetry::note_rejected(&e);
            return Either::Right(std::future::ready(Ok(status_with(tonic::Code::ResourceExhausted, &e).into_http())));
        }
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_counts_every_field_with_its_overhead() {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:1/ferry.v1.Messages/Send")
            .header("authorization", "Bearer abc")
            .body(())
            .unwrap();
        let pseudo = (7 + 4 + 32) + (7 + 4 + 32) + (10 + 11 + 32) + (5 + 23 + 32);
        assert_eq!(header_list_size(&request), pseudo + (13 + 10 + 32));
    }

    #[test]
    fn h2_announces_more_than_ferry_takes() {
        assert_eq!(h2_header_list_limit(DEFAULT_MAX_HEADER_LIST_BYTES), 64 * 1024);
        assert_eq!(h2_header_list_limit(100_000), 400_000);
        assert_eq!(h2_header_list_limit(u32::MAX), u32::MAX);
    }
}

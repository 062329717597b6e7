//! Bounds on what decoding a request may cost, applied before tonic decodes it (issue #14).
//!
//! [`DecodeLimitLayer`] sits behind the access layer (so only authenticated callers get this far)
//! in front of `ferry.v1.Messages`. For `Send` and `SendBatch` it reads the request body itself:
//! - at most [`max_request_bytes`] on the wire (`Send` 1 MiB, the JSON API's body limit;
//!   `SendBatch` 4 MiB), else RESOURCE_EXHAUSTED (1001) before the rest is read;
//! - every byte is charged, as it arrives, to the node's and the connection's in-flight budget
//!   (`[grpc] max_inflight_request_bytes`, `max_inflight_request_bytes_per_connection`), and once
//!   the bytes are complete [`ferry_proto::wire::scan`] checks them (malformed protobuf, bad
//!   UTF-8, list bounds, batch size: INVALID_ARGUMENT 1009) and its estimate of the decoded
//!   request is charged too; a request over either budget is RESOURCE_EXHAUSTED (1016), and a
//!   flood of big requests is refused with memory flat instead of being decoded;
//! - the charge is held until the call has answered, then released.
//!
//! Only then does tonic decode the (already buffered) bytes. The other RPCs' requests are small
//! by construction and go through as they are (tonic's own 4 MiB limit applies).
//!
//! Invariants (written as absences): no `Send`/`SendBatch` is decoded before its bytes passed
//! the scan, and none while the node's or its connection's budget is spent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_model::{ApiError, ErrorCode};
use http_body_util::BodyExt;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;

use crate::status_from;

/// Longest `Send` request on the wire: the JSON API's default body limit.
pub const MAX_SEND_BYTES: usize = 1024 * 1024;
/// Longest `SendBatch` request on the wire (tonic's default decode limit, kept).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The checked methods: their request type and longest request on the wire.
pub fn max_request_bytes(path: &str) -> Option<(&'static str, usize)> {
    match path {
        "/ferry.v1.Messages/Send" => Some(("ferry.v1.SendRequest", MAX_SEND_BYTES)),
        "/ferry.v1.Messages/SendBatch" => Some(("ferry.v1.SendBatchRequest", MAX_BATCH_BYTES)),
        _ => None,
    }
}

/// The in-flight budget of the node and of each connection (by its remote address; connections
/// without one, the TLS port's, count only against the node's).
#[derive(Debug)]
pub struct InflightBudget {
    node_limit: usize,
    connection_limit: usize,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    node: usize,
    connections: HashMap<SocketAddr, usize>,
}

impl InflightBudget {
    pub fn new(node_limit: usize, connection_limit: usize) -> Arc<Self> {
        Arc::new(InflightBudget { node_limit, connection_limit, state: Mutex::new(BudgetState::default()) })
    }

    /// Bytes charged now, in all.
    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).node
    }
}

/// What one request holds of the budget; released on drop.
struct Charge {
    budget: Arc<InflightBudget>,
    connection: Option<SocketAddr>,
    bytes: usize,
}

impl Charge {
    fn add(&mut self, n: usize) -> Result<(), ApiError> {
        let b = &self.budget;
        let mut state = b.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.node + n > b.node_limit {
            return Err(overloaded(format_args!(
                "the node holds {} bytes of requests being decoded; {n} more would pass \
                 `[grpc] max_inflight_request_bytes` ({}): retry later",
                state.node, b.node_limit
            )));
        }
        if let Some(c) = self.connection {
            let held = state.connections.get(&c).copied().unwrap_or(0);
            if held + n > b.connection_limit {
                return Err(overloaded(format_args!(
                    "this connection holds {held} bytes of requests being decoded; {n} more would pass \
                     `[grpc] max_inflight_request_bytes_per_connection` ({}): retry later or on another connection",
                    b.connection_limit
                )));
            }
            *state.connections.entry(c).or_insert(0) += n;
        }
        state.node += n;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.budget.state.lock().unwrap_or_else(|e| e.into_inner());
        state.node -= self.bytes;
        if let Some(c) = self.connection
            && let Some(held) = state.connections.get_mut(&c)
        {
            *held -= self.bytes;
            if *held == 0 {
                state.connections.remove(&c);
            }
        }
    }
}

fn overloaded(details: std::fmt::Arguments<'_>) -> ApiError {
    ApiError::new(ErrorCode::SystemOverloaded, "", details.to_string())
}

/// A status for `e` with gRPC code `code` (the error table's code otherwise).
pub(crate) fn status_with(code: tonic::Code, e: &ApiError) -> Status {
    let s = status_from(e);
    Status::with_details_and_metadata(code, s.message().to_owned(), s.details().to_vec().into(), s.metadata().clone())
}

/// See the module docs.
#[derive(Clone)]
pub struct DecodeLimitLayer {
    budget: Arc<InflightBudget>,
    read_timeout: Duration,
}

impl DecodeLimitLayer {
    /// `read_timeout`: how long a checked call may take to deliver its whole body
    /// (`[grpc] read_timeout_secs`).
    pub fn new(budget: Arc<InflightBudget>, read_timeout: Duration) -> Self {
        DecodeLimitLayer { budget, read_timeout }
    }
}

impl<S> tower::Layer<S> for DecodeLimitLayer {
    type Service = DecodeLimitService<S>;

    fn layer(&self, inner: S) -> DecodeLimitService<S> {
        DecodeLimitService { inner, budget: self.budget.clone(), read_timeout: self.read_timeout }
    }
}

/// See [`DecodeLimitLayer`].
#[derive(Clone)]
pub struct DecodeLimitService<S> {
    inner: S,
    budget: Arc<InflightBudget>,
    read_timeout: Duration,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for DecodeLimitService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some((type_name, max_bytes)) = max_request_bytes(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        // The service polled ready is the one that takes the call; a clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let connection = request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        let mut charge = Charge { budget: self.budget.clone(), connection, bytes: 0 };
        let read_timeout = self.read_timeout;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let read = tokio::time::timeout(read_timeout, read_and_scan(body, type_name, max_bytes, &mut charge));
            let read = read.await.unwrap_or_else(|_| {
                let e = ApiError::new(
                    ErrorCode::InvalidParameter,
                    "",
                    format!(
                        "the request body was not complete within {} s ([grpc] read_timeout_secs): expected the whole \
                         request at once",
                        read_timeout.as_secs()
                    ),
                );
                ferry_coordinator::telemetry::note_rejected(&e);
                Err(status_with(tonic::Code::DeadlineExceeded, &e))
            });
            match read {
                Ok(bytes) => {
                    let request = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
                    let response = inner.call(request).await;
                    drop(charge);
                    response
                }
                Err(status) => {
                    drop(charge);
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Reads the whole body within `max_bytes` (plus gRPC's 5-byte frame header), charging it as it
/// arrives, and scans every complete uncompressed message in it. A body tonic would refuse anyway
/// (compressed, ill-framed) is handed on for tonic to say so.
async fn read_and_scan(
    mut body: Body,
    type_name: &str,
    max_bytes: usize,
    charge: &mut Charge,
) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > max_bytes + 5 {
            let e = ApiError::new(
                ErrorCode::TooLong,
                "",
                format!(
                    "the request is longer than {max_bytes} bytes: expected at most that for {} (split a batch, \
                     send a big file as media)",
                    type_name.trim_start_matches("ferry.v1.")
                ),
            );
            return Err(status_with(tonic::Code::ResourceExhausted, &e));
        }
        charge.add(data.len()).map_err(|e| status_from(&e))?;
        buf.extend_from_slice(&data);
    }
    let mut rest = &buf[..];
    while rest.len() >= 5 && rest[0] == 0 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(5..5 + len) else { break };
        let scanned = ferry_proto::wire::scan(type_name, message).map_err(|e| {
            ferry_coordinator::telemetry::note_rejected(&e);
            status_from(&e)
        })?;
        // The decoded request, and its conversion to the domain.
        charge.add(scanned.decoded_bytes.saturating_mul(2)).map_err(|e| status_from(&e))?;
        rest = &rest[5 + len..];
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_either_limit_and_frees_on_drop() {
        let budget = InflightBudget::new(100, 60);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let mut ca = Charge { budget: budget.clone(), connection: Some(a), bytes: 0 };
        ca.add(50).unwrap();
        let e = ca.add(20).unwrap_err();
        assert_eq!(e.code, ErrorCode::SystemOverloaded);
        assert!(e.details.contains("max_inflight_request_bytes_per_connection"), "{}", e.details);
        let mut cb = Charge { budget: budget.clone(), connection: Some(b), bytes: 0 };
        cb.add(50).unwrap();
        let e = cb.add(10).unwrap_err();
        assert!(e.details.contains("`[grpc] max_inflight_request_bytes` (100)"), "{}", e.details);
        drop(ca);
        assert_eq!(budget.in_flight(), 50);
        cb.add(10).unwrap();
        drop(cb);
        assert_eq!(budget.in_flight(), 0);
    }
}

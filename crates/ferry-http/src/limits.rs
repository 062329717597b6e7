//! Limits on every HTTP route and connection, so a slow or greedy client cannot hold a handler,
//! its memory, a connection slot or the drain forever.
//!
//! - Headers: a request whose headers have not fully arrived `[http] read_timeout_secs` after the
//!   connection was opened (or after the previous response, on keep-alive) is dropped (hyper's
//!   `header_read_timeout`, with a timer: [`serve_connections`]).
//! - Bodies: [`read_body_within_limits`], a middleware on every route, reads the whole body
//!   before the handler runs: more than `[http] max_body_bytes` is 413 (1001), a body not
//!   complete within `[http] read_timeout_secs` is 408 (1009), both in the route's error shape
//!   (Cloud on the Cloud route, On-Prem elsewhere). Handlers then get the buffered body.
//!
//! - Connections: at most `[http] max_connections` open at once on the listener, and at most
//!   `[http] max_connections_per_address` from one source IP address ([`ConnectionCaps`]); a
//!   connection over either cap is closed as soon as it is accepted. The gRPC port has the same
//!   caps (`[grpc]`).
//! - Idle connections: hyper starts the header timer whenever it waits for a request's head, also
//!   between requests of a keep-alive connection, so `read_timeout_secs` is the idle timeout too.
//!
//! - Unknown paths (404, 1006) and methods (405, 1009) answer in the path's error shape
//!   ([`no_such_route`], [`method_not_allowed`]); a `Content-Encoding` other than `identity` is
//!   415 (1009: the body would otherwise be read as plain bytes).
//!
//! Invariants (written as absences): no handler runs before its whole body arrived, and none sees
//! a body longer than `max_body_bytes`; no connection waits for its headers longer than the read
//! timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use ferry_model::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::HttpState;
use crate::messages::{Failure, is_cloud_path};

/// Why a body was refused.
fn too_large(got: String, limit: usize) -> Failure {
    Failure {
        error: ApiError::new(
            ErrorCode::TooLong,
            "",
            format!("request body is {got}: expected at most {limit} bytes (`[http] max_body_bytes`)"),
        ),
        status: Some(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// Reads the whole body, refusing (413) more than `limit` bytes, before or while reading, and
/// (408) a body that has not arrived within `timeout`.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Failure> {
    // A compressed body would be read as if it were plain bytes: refused instead.
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(Failure {
            error: ApiError::new(
                ErrorCode::InvalidParameter,
                "Content-Encoding",
                format!(
                    "content encoding `{}` is not supported: expected an uncompressed body (no `Content-Encoding`)",
                    encoding.to_str().unwrap_or("(not ascii)")
                ),
            ),
            status: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        });
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(too_large(format!("{n} bytes"), limit));
    }
    let Ok(read) = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await else {
        return Err(Failure {
            error: ApiError::new(
                ErrorCode::InvalidParameter,
                "",
                format!(
                    "the request body did not arrive within {} s (`[http] read_timeout_secs`)",
                    timeout.as_secs_f64()
                ),
            ),
            status: Some(StatusCode::REQUEST_TIMEOUT),
        });
    };
    read.map_err(|e| {
        let is_limit = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large("longer than that".into(), limit)
        } else {
            ApiError::new(ErrorCode::InvalidParameter, "", format!("cannot read the request body: {e}")).into()
        }
    })
}

/// Answer to a path no route serves: 404 (1006) in the error shape the path would have (Cloud
/// for `/{version}/{id}/messages`-like paths, On-Prem elsewhere).
pub async fn no_such_route(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let error =
        ApiError::new(ErrorCode::NotFound, "", format!("no route `{path}`: see README's HTTP API for the routes"));
    crate::messages::failure_response(is_cloud_path(path), Failure { error, status: Some(StatusCode::NOT_FOUND) })
}

/// Answer to a method a path does not serve: 405 (1009) in the path's error shape.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let error = ApiError::new(
        ErrorCode::InvalidParameter,
        "",
        format!("method `{method}` is not allowed on `{path}`: see README's HTTP API for the methods"),
    );
    crate::messages::failure_response(
        is_cloud_path(path),
        Failure { error, status: Some(StatusCode::METHOD_NOT_ALLOWED) },
    )
}

/// Middleware on every route (see the module docs). A refusal on a messages route is counted in
/// `ferry_messages_rejected_total` like the route's own refusals.
pub async fn read_body_within_limits(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match read_body(body, &parts.headers, state.max_body_bytes, state.read_timeout).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(failure) => {
            let path = parts.uri.path();
            let cloud = is_cloud_path(path);
            if cloud || path == "/v1/messages" {
                ferry_coordinator::telemetry::note_rejected(&failure.error);
            }
            crate::messages::failure_response(cloud, failure)
        }
    }
}

/// Serves `router` on the connections `listener` accepts, HTTP/1.1 with a header read timeout,
/// until `shutdown` resolves; then stops accepting, asks every open connection to finish its
/// request and close, and returns once they have.
///
/// Cancel-safety: not cancel-safe (dropping it drops the accept loop; connections already
/// accepted keep running in their own tasks).
pub async fn serve_connections<L>(
    mut listener: L,
    router: Router,
    read_timeout: Duration,
    caps: Arc<ConnectionCaps>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // Reap finished connection tasks as we go, so the set does not grow with the history.
        while connections.try_join_next().is_some() {}
        let Some(slot) = caps.admit(peer.ip()) else {
            // Over a cap: closed at once (the client sees the connection close before any answer).
            drop(io);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(read_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                }
                () = async { let _ = closing.wait_for(|c| *c).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Caps on the open connections of one listener: in all, and from one source IP address. Shared
/// by every accept of the listener; [`ConnectionCaps::admit`] hands out a slot that the
/// connection holds until it closes.
#[derive(Debug)]
pub struct ConnectionCaps {
    max: usize,
    max_per_address: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place under the caps.
#[derive(Debug)]
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    address: IpAddr,
}

impl ConnectionCaps {
    pub fn new(max: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(ConnectionCaps { max, max_per_address, open: Mutex::new(OpenConnections::default()) })
    }

    /// A slot for a new connection from `address`, or `None` when the listener already has `max`
    /// connections open or `address` has `max_per_address`.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from = open.by_address.get(&address).copied().unwrap_or(0);
        if open.total >= self.max || from >= self.max_per_address {
            metrics::counter!("ferry_connections_refused_total").increment(1);
            tracing::debug!(%address, total = open.total, from, "connection over the caps: closed");
            return None;
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        Some(ConnectionSlot { caps: self.clone(), address })
    }

    /// Connections open now (for tests and metrics).
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod caps_tests {
    use super::*;

    #[test]
    fn caps_count_in_all_and_per_address_and_free_on_drop() {
        let caps = ConnectionCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "a third from one address");
        let _b1 = caps.admit(b).unwrap();
        assert!(caps.admit(b).is_none(), "a fourth in all");
        drop(a1);
        assert_eq!(caps.open(), 2);
        assert!(caps.admit(a).is_some());
    }
}

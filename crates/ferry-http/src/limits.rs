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
//! Invariants (written as absences): no handler runs before its whole body arrived, and none sees
//! a body longer than `max_body_bytes`; no connection waits for its headers longer than the read
//! timeout.

use std::future::Future;
use std::sync::Arc;
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // Reap finished connection tasks as we go, so the set does not grow with the history.
        while connections.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
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

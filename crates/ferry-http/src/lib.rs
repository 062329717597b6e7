//! ferry's HTTP surface, served by the same process and tokio runtime as the gRPC API.
//!
//! - [`messages`]: the JSON API: On-Prem `POST /v1/messages` and Cloud
//!   `POST /{version}/{phone_number_id}/messages`. It only maps shapes: parsing to the domain
//!   (`ferry_model::message::parse_json`) and validation are the ones gRPC uses.
//! - [`users`]: `POST /v1/users/login`, `/v1/users/logout`, user management, settings; the
//!   auth middleware in front of every route.
//! - [`ops`]: `GET /v1/health`, `/healthz`, `/readyz`, `/metrics`.
//!
//! Invariants: this crate never touches storage directly (it awaits the coordinator, and
//! `ferry-auth` for users and tokens), and it answers a send only with what the coordinator
//! returned after the durable write. No route runs without the auth middleware.

pub mod messages;
pub mod ops;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use ferry_coordinator::Coordinator;
use tokio::net::TcpListener;

/// The process's lifecycle as the HTTP and gRPC surfaces report it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// Called once, at the first SIGTERM/SIGINT: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Everything the HTTP handlers need, shared by all requests.
pub struct HttpState {
    pub coordinator: Arc<Coordinator>,
    pub lifecycle: Arc<Lifecycle>,
    /// Delivery stats and the metrics recorder for the ops endpoints.
    pub ops: ops::Ops,
    /// Users and tokens (the same as gRPC's); [`users::require_auth`] checks every request.
    pub auth: Arc<ferry_auth::Auth>,
    /// The effective config, secrets masked, for `GET /v1/settings` (admin only).
    pub settings: serde_json::Value,
}

/// The whole HTTP API, behind the auth middleware ([`users::required_access`] says which routes
/// are open).
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .merge(messages::routes())
        .merge(users::routes())
        .merge(ops::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), users::require_auth))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

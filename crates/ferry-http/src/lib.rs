//! ferry's HTTP surface, served by the same process and tokio runtime as the gRPC API.
//!
//! - [`messages`]: the JSON API: On-Prem `POST /v1/messages` and Cloud
//!   `POST /{version}/{phone_number_id}/messages`. It only maps shapes: parsing to the domain
//!   (`ferry_model::message::parse_json`) and validation are the ones gRPC uses.
//! - [`users`]: `POST /v1/users/login`, `/v1/users/logout`, user management, settings; the
//!   auth middleware in front of every route.
//! - [`ops`]: `GET /v1/health`, `/healthz`, `/readyz`, `/metrics`.
//! - [`cloud_numbers`]: `POST /v1/cloud/numbers/{phone_number_id}/unblock` (admin)
//! - [`cloud_webhook`]: `GET|POST /webhooks/cloud`, Meta's webhooks for the Cloud upstream
//!   (signed, not bearer-authenticated).
//!
//! Every route is one [`Route`] of [`routes`], which builds the router: the access table
//! (`ferry_auth::access`) is checked against that same list, so a route cannot be added without
//! the test seeing it.
//!
//! Invariants: this crate never touches storage directly (it awaits the coordinator, and
//! `ferry-auth` for users and tokens), and it answers a send only with what the coordinator
//! returned after the durable write. No route runs without the auth middleware, and none the
//! access table does not name runs for a caller below `admin`.

pub mod cloud_numbers;
pub mod cloud_webhook;
pub mod limits;
pub mod messages;
pub mod ops;
pub mod tls;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use ferry_coordinator::Coordinator;
use serde::{Deserialize, Serialize};
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
    /// Longest request body any route reads (`[http] max_body_bytes`); longer is 413.
    pub max_body_bytes: usize,
    /// How long a request's headers, and then its body, may take to arrive
    /// (`[http] read_timeout_secs`); a late body is 408, late headers close the connection.
    pub read_timeout: std::time::Duration,
    /// Meta's webhooks (`/webhooks/cloud`), with the Cloud upstream only.
    pub cloud: Option<cloud_webhook::CloudWebhook>,
}

/// The `[http]` section of `ferry.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest request body accepted on any route, in bytes; longer bodies are refused with 413
    /// in the route's error shape. Default [`DEFAULT_MAX_BODY_BYTES`] (1 MiB).
    pub max_body_bytes: usize,
    /// Seconds a request's headers may take to arrive (else the connection is closed), and then
    /// its body (else 408). Default [`DEFAULT_READ_TIMEOUT_SECS`]. Also the idle timeout of a
    /// keep-alive connection (hyper's header timer runs while it waits for the next request).
    pub read_timeout_secs: u64,
    /// Most connections open at once on the HTTP listener; more are closed when accepted.
    pub max_connections: usize,
    /// Most connections open at once from one source IP address.
    pub max_connections_per_address: usize,
}

/// Default of `[http] max_connections` (and `[grpc] max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of `[http] max_connections_per_address` (and `[grpc]`'s): above what a load generator
/// on one host opens (it keeps a few hundred).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 2_000;

/// Default of `[http] read_timeout_secs`.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 30;

/// 1 MiB: far above the largest valid message (a 4096-character text, or an interactive list with
/// ten rows, is a few KiB), small enough that a flood of big bodies cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            read_timeout_secs: DEFAULT_READ_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!(
                "http.max_body_bytes = {}: expected at least 1024 bytes (a message request needs a few hundred)",
                self.max_body_bytes
            ));
        }
        if !(1..=3600).contains(&self.read_timeout_secs) {
            return Err(format!("http.read_timeout_secs = {}: expected 1 to 3600", self.read_timeout_secs));
        }
        check_connection_caps("http", self.max_connections, self.max_connections_per_address)
    }

    /// The listener's [`limits::ConnectionCaps`].
    pub fn connection_caps(&self) -> Arc<limits::ConnectionCaps> {
        limits::ConnectionCaps::new(self.max_connections, self.max_connections_per_address)
    }
}

/// Checks `max_connections` and `max_connections_per_address` of section `section`.
pub fn check_connection_caps(section: &str, max: usize, per_address: usize) -> Result<(), String> {
    if !(1..=1_000_000).contains(&max) {
        return Err(format!("{section}.max_connections = {max}: expected 1 to 1000000"));
    }
    if !(1..=max).contains(&per_address) {
        return Err(format!(
            "{section}.max_connections_per_address = {per_address}: expected 1 to max_connections ({max})"
        ));
    }
    Ok(())
}

/// One HTTP route: a method, the router's path pattern and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Arc<HttpState>>,
}

impl Route {
    /// `handler` serves `method` on `path` (the method is also what the access table is asked
    /// about, so the two cannot differ).
    pub fn new<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, Arc<HttpState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum can route");
        Route { method, path, handler: axum::routing::on(filter, handler) }
    }
}

/// Every route of the HTTP API. [`router`] is built from exactly this list.
pub fn routes() -> Vec<Route> {
    let mut all = messages::routes();
    all.extend(users::routes());
    all.extend(ops::routes());
    all.extend(cloud_webhook::routes());
    all.extend(cloud_numbers::routes());
    all
}

/// The whole HTTP API ([`routes`]), behind the auth middleware (`ferry_auth::access` says what
/// each route needs; anything it does not name is admin-only).
pub fn router(state: Arc<HttpState>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
        // Unknown paths and methods answer in the route's JSON error shape, not an empty body.
        .fallback(limits::no_such_route)
        .method_not_allowed_fallback(limits::method_not_allowed)
        // Outermost first: the token is checked before the body is read.
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::read_body_within_limits))
        .layer(axum::middleware::from_fn_with_state(state.clone(), users::require_auth))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and lets
/// in-flight requests finish. Headers must arrive within `read_timeout` ([`limits`]).
///
/// Cancel-safety: not cancel-safe (see [`limits::serve_connections`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_capped(listener, router, read_timeout, HttpConfig::default().connection_caps(), shutdown).await
}

/// [`serve`] with the connection caps `caps` (`[http] max_connections`, `max_connections_per_address`).
///
/// Cancel-safety: not cancel-safe (see [`limits::serve_connections`]).
pub async fn serve_capped(
    listener: TcpListener,
    router: Router,
    read_timeout: std::time::Duration,
    caps: Arc<limits::ConnectionCaps>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    limits::serve_connections(listener, router, read_timeout, caps, shutdown).await
}

/// [`serve_capped`] over TLS (`[tls]`): the same router behind rustls.
///
/// Cancel-safety: not cancel-safe (see [`limits::serve_connections`]).
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    read_timeout: std::time::Duration,
    caps: Arc<limits::ConnectionCaps>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    limits::serve_connections(tls::TlsListener::new(listener, config)?, router, read_timeout, caps, shutdown).await
}

#[cfg(test)]
mod tests {
    use ferry_auth::Role;
    use ferry_auth::access::{ACCESS_TABLE, Access, Endpoint, is_named, required_access};

    use super::*;

    /// Deny by default, checked: every route the router serves is named by the access table (a
    /// route added without a row would be admin-only, and this test says so).
    #[test]
    fn the_access_table_names_every_route() {
        let routes = routes();
        assert!(routes.len() >= 13, "the router has {} routes", routes.len());
        for r in &routes {
            assert!(
                is_named(Endpoint::Http(r.method.as_str(), r.path)),
                "{} {} is served but not named in ferry_auth::access::ACCESS_TABLE",
                r.method,
                r.path
            );
        }
        // And the table names no HTTP route that is not served (a stale row).
        for (e, _) in ACCESS_TABLE {
            if let Endpoint::Http(method, path) = e {
                assert!(
                    routes.iter().any(|r| r.method.as_str() == *method && r.path == *path),
                    "{method} {path} is in the access table but not served"
                );
            }
        }
    }

    /// README's Operations table and its "Open without a token" line say what the access table
    /// does about the ops endpoints.
    #[test]
    fn readme_says_which_endpoints_need_a_token() {
        let readme = include_str!("../../../README.md");
        let mut rows = 0;
        for r in ops::routes() {
            let cell = format!("| `{} {}` |", r.method, r.path);
            let line = readme
                .lines()
                .find(|l| l.starts_with(&cell))
                .unwrap_or_else(|| panic!("README's Operations table has no row {cell}"));
            let token = line[cell.len()..].split('|').next().unwrap().trim();
            let want = match required_access(Endpoint::Http(r.method.as_str(), r.path)) {
                Access::Open => "none",
                Access::Token(Role::User) => "user",
                Access::Token(Role::Admin) => "admin",
            };
            assert_eq!(token, want, "README says {cell} needs token `{token}`; the access table says `{want}`");
            rows += 1;
        }
        assert_eq!(rows, 4);
        let open_line = readme
            .lines()
            .find(|l| l.starts_with("- Open without a token"))
            .expect("README's Users and tokens lists what is open");
        for r in ops::routes() {
            let named = open_line.contains(&format!("`{}`", r.path));
            let open = required_access(Endpoint::Http(r.method.as_str(), r.path)) == Access::Open;
            assert_eq!(named, open, "README's open list and the access table disagree on {}", r.path);
        }
    }
}

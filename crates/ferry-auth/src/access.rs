//! The one access table of ferry's APIs: which HTTP route and which gRPC method needs what.
//!
//! Both surfaces look every request up here before it reaches a handler: `ferry-http`'s auth
//! middleware by the matched route (method + the router's path pattern, e.g.
//! `GET /v1/users/{username}`), `ferry-ingest`'s access layer by the gRPC path
//! (`/ferry.v1.Messages/Send`). **Deny by default**: an endpoint the table does not name needs
//! role `admin`, so a route or RPC added without a row here is closed to users and to callers
//! without a token. Tests enumerate the HTTP router's routes (`ferry_http::ROUTES`, which also
//! builds the router) and the gRPC service descriptors and fail on any endpoint not named here.
//!
//! Tenancy (a user's `senders`) is not in this table: it is checked by the handlers once they
//! know the sender of a message (see the crate docs).

use crate::Role;

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: probes, `/metrics`, gRPC health and reflection, and login (which checks HTTP
    /// Basic itself).
    Open,
    /// A valid bearer token whose role allows this one.
    Token(Role),
}

/// An endpoint as the table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// An HTTP route: the method (`HEAD` is looked up as `GET`) and the router's path pattern.
    Http(&'a str, &'a str),
    /// A gRPC method by its request path, `/package.Service/Method`.
    Grpc(&'a str),
}

const USER: Access = Access::Token(Role::User);
const ADMIN: Access = Access::Token(Role::Admin);

/// Every endpoint ferry serves and what it needs. Admin rows are listed too, so the table reads
/// as the whole API; an endpoint missing here is admin-only all the same.
pub const ACCESS_TABLE: &[(Endpoint<'static>, Access)] = &[
    // HTTP: probes and Prometheus scrape without a token.
    (Endpoint::Http("GET", "/healthz"), Access::Open),
    (Endpoint::Http("GET", "/readyz"), Access::Open),
    (Endpoint::Http("GET", "/metrics"), Access::Open),
    // The reference's health endpoint is an API call like the others (it needs a token there too).
    (Endpoint::Http("GET", "/v1/health"), USER),
    (Endpoint::Http("POST", "/v1/users/login"), Access::Open),
    (Endpoint::Http("POST", "/v1/users/logout"), USER),
    (Endpoint::Http("POST", "/v1/messages"), USER),
    (Endpoint::Http("POST", "/{version}/{phone_number_id}/messages"), USER),
    (Endpoint::Http("POST", "/v1/users"), ADMIN),
    (Endpoint::Http("GET", "/v1/users/{username}"), ADMIN),
    (Endpoint::Http("PATCH", "/v1/users/{username}"), ADMIN),
    (Endpoint::Http("DELETE", "/v1/users/{username}"), ADMIN),
    (Endpoint::Http("GET", "/v1/settings"), ADMIN),
    (Endpoint::Http("POST", "/v1/cloud/numbers/{phone_number_id}/unblock"), ADMIN),
    // Meta's webhooks: no bearer token; the handler checks X-Hub-Signature-256 (401 otherwise)
    // and the handshake's verify token (403 otherwise).
    (Endpoint::Http("GET", "/webhooks/cloud"), Access::Open),
    (Endpoint::Http("POST", "/webhooks/cloud"), Access::Open),
    // gRPC: ferry.v1.Messages.
    (Endpoint::Grpc("/ferry.v1.Messages/Send"), USER),
    (Endpoint::Grpc("/ferry.v1.Messages/SendBatch"), USER),
    (Endpoint::Grpc("/ferry.v1.Messages/GetMessage"), USER),
    (Endpoint::Grpc("/ferry.v1.Messages/WatchStatuses"), USER),
    (Endpoint::Grpc("/ferry.v1.Messages/ResolveHeld"), ADMIN),
    // gRPC health and reflection, for probes and tools.
    (Endpoint::Grpc("/grpc.health.v1.Health/Check"), Access::Open),
    (Endpoint::Grpc("/grpc.health.v1.Health/Watch"), Access::Open),
    (Endpoint::Grpc("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Open),
];

/// What `endpoint` needs: its row of [`ACCESS_TABLE`], else role `admin`.
pub fn required_access(endpoint: Endpoint<'_>) -> Access {
    let endpoint = match endpoint {
        Endpoint::Http("HEAD", path) => Endpoint::Http("GET", path),
        other => other,
    };
    ACCESS_TABLE.iter().find(|(e, _)| *e == endpoint).map_or(ADMIN, |(_, access)| *access)
}

/// Whether [`ACCESS_TABLE`] names `endpoint` (tests: every served endpoint must be named).
pub fn is_named(endpoint: Endpoint<'_>) -> bool {
    ACCESS_TABLE.iter().any(|(e, _)| *e == endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_endpoints_are_admin_only_and_head_is_get() {
        assert_eq!(required_access(Endpoint::Http("GET", "/healthz")), Access::Open);
        assert_eq!(required_access(Endpoint::Http("HEAD", "/healthz")), Access::Open);
        assert_eq!(required_access(Endpoint::Http("POST", "/v1/messages")), USER);
        assert_eq!(required_access(Endpoint::Http("GET", "/v1/messages")), ADMIN);
        assert_eq!(required_access(Endpoint::Http("GET", "/nope")), ADMIN);
        assert_eq!(required_access(Endpoint::Grpc("/ferry.v1.Messages/Send")), USER);
        assert_eq!(required_access(Endpoint::Grpc("/ferry.v1.Messages/Bogus")), ADMIN);
        assert_eq!(required_access(Endpoint::Grpc("/grpc.health.v1.Health/Check")), Access::Open);
    }

    #[test]
    fn no_endpoint_is_named_twice() {
        for (i, (e, _)) in ACCESS_TABLE.iter().enumerate() {
            assert!(!ACCESS_TABLE[i + 1..].iter().any(|(other, _)| other == e), "{e:?} twice");
        }
    }
}

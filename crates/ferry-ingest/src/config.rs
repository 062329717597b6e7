//! The `[grpc]` section of `ferry.toml`: limits of the gRPC port, so one client connection cannot
//! take every worker, an unbounded number of streams, the node's memory or its sockets.

use serde::{Deserialize, Serialize};

/// `[grpc]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Most HTTP/2 streams (calls, including open `WatchStatuses` streams) one connection may
    /// have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); a client waits for a free one.
    pub max_concurrent_streams: u32,
    /// Most requests of one connection being handled at once; more wait for a free slot.
    pub max_concurrent_requests_per_connection: usize,
    /// Most bytes of `Send`/`SendBatch` requests the node holds at once, counted as they arrive
    /// and then as the estimated size of the decoded request ([`crate::decode`]); a request that
    /// would pass it is refused with RESOURCE_EXHAUSTED (1016).
    pub max_inflight_request_bytes: usize,
    /// The same, per client connection.
    pub max_inflight_request_bytes_per_connection: usize,
    /// Most connections open at once on the gRPC listener; more are closed when accepted.
    pub max_connections: usize,
    /// Most connections open at once from one source IP address.
    pub max_connections_per_address: usize,
    /// Seconds between HTTP/2 PINGs the server sends on a connection; a connection that does not
    /// answer one within `keepalive_timeout_secs` is closed (a peer that vanished without a FIN
    /// does not hold its connection and streams forever).
    pub keepalive_interval_secs: u64,
    /// Seconds to wait for a PING's answer.
    pub keepalive_timeout_secs: u64,
    /// Seconds a new connection has to send its HTTP/2 preface (else it is closed: a socket that
    /// never speaks does not hold a place under the connection caps), and a `Send`/`SendBatch`
    /// has to deliver its whole request body once its call started (else DEADLINE_EXCEEDED,
    /// 1009). The `[http]` port's `read_timeout_secs` does the same for HTTP/1.
    pub read_timeout_secs: u64,
    /// Most bytes of metadata (the HTTP/2 header list, RFC 9113 §6.5.2: name + value + 32 per
    /// field) one call may carry; over it the call is RESOURCE_EXHAUSTED (1001) and the
    /// connection carries on ([`crate::headers`]).
    pub max_header_list_bytes: u32,
}

/// Default of both per-connection stream limits: far above what one well-behaved client needs
/// (the load generator keeps up to a few hundred calls in flight per connection).
pub const DEFAULT_GRPC_CONNECTION_LIMIT: u32 = 1024;
/// Default of `max_inflight_request_bytes`: 256 MiB.
pub const DEFAULT_MAX_INFLIGHT_REQUEST_BYTES: usize = 256 * 1024 * 1024;
/// Default of `max_inflight_request_bytes_per_connection`: 128 MiB, above the largest valid
/// `SendBatch` (4 MiB on the wire, ~70 MiB estimated decoded).
pub const DEFAULT_MAX_INFLIGHT_REQUEST_BYTES_PER_CONNECTION: usize = 128 * 1024 * 1024;

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_concurrent_streams: DEFAULT_GRPC_CONNECTION_LIMIT,
            max_concurrent_requests_per_connection: DEFAULT_GRPC_CONNECTION_LIMIT as usize,
            max_inflight_request_bytes: DEFAULT_MAX_INFLIGHT_REQUEST_BYTES,
            max_inflight_request_bytes_per_connection: DEFAULT_MAX_INFLIGHT_REQUEST_BYTES_PER_CONNECTION,
            max_connections: ferry_http::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: ferry_http::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
            read_timeout_secs: ferry_http::DEFAULT_READ_TIMEOUT_SECS,
            max_header_list_bytes: crate::headers::DEFAULT_MAX_HEADER_LIST_BYTES,
        }
    }
}

impl GrpcConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.max_concurrent_streams) {
            return Err(format!("grpc.max_concurrent_streams = {}: expected 1 to 65536", self.max_concurrent_streams));
        }
        if !(1..=65_536).contains(&self.max_concurrent_requests_per_connection) {
            return Err(format!(
                "grpc.max_concurrent_requests_per_connection = {}: expected 1 to 65536",
                self.max_concurrent_requests_per_connection
            ));
        }
        if self.max_inflight_request_bytes_per_connection < 1024 * 1024 {
            return Err(format!(
                "grpc.max_inflight_request_bytes_per_connection = {}: expected at least 1048576 (1 MiB)",
                self.max_inflight_request_bytes_per_connection
            ));
        }
        if self.max_inflight_request_bytes < self.max_inflight_request_bytes_per_connection {
            return Err(format!(
                "grpc.max_inflight_request_bytes = {}: expected at least max_inflight_request_bytes_per_connection ({})",
                self.max_inflight_request_bytes, self.max_inflight_request_bytes_per_connection
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_list_bytes) {
            return Err(format!(
                "grpc.max_header_list_bytes = {}: expected 1024 to 1048576",
                self.max_header_list_bytes
            ));
        }
        ferry_http::check_connection_caps("grpc", self.max_connections, self.max_connections_per_address)?;
        for (key, v) in [
            ("keepalive_interval_secs", self.keepalive_interval_secs),
            ("keepalive_timeout_secs", self.keepalive_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(format!("grpc.{key} = {v}: expected 1 to 3600"));
            }
        }
        Ok(())
    }
}

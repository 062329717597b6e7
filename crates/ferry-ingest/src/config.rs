//! The `[grpc]` section of `ferry.toml`: per-connection limits of the gRPC port, so one client
//! connection cannot take every worker or an unbounded number of streams.

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
}

/// Default of both limits: far above what one well-behaved client needs (the load generator
/// keeps up to a few hundred calls in flight per connection).
pub const DEFAULT_GRPC_CONNECTION_LIMIT: u32 = 1024;

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_concurrent_streams: DEFAULT_GRPC_CONNECTION_LIMIT,
            max_concurrent_requests_per_connection: DEFAULT_GRPC_CONNECTION_LIMIT as usize,
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
        Ok(())
    }
}

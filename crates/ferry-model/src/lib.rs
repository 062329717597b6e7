//! ferry's domain: what a message is, what makes it valid, and how failures are named.
//!
//! This crate is the leaf of the workspace: wire crates (`ferry-proto`, later the JSON API) convert
//! *into* these types, and everything inward (coordinator, shards) carries only these types.
//!
//! - [`message`]: one type per message kind in MISSION.md, shaped (with serde) like the reference's
//!   JSON so the JSON API and storage share one encoding.
//! - [`message_limits`]: bounds on a request's shape (list lengths, values, depth, duplicate keys),
//!   checked on the wire bytes before the model is built.
//! - [`validate`]: every rule of MISSION.md and reference/, producing a [`validate::ValidatedMessage`].
//! - [`phone`]: recipient normalization to a [`ids::WaId`].
//! - [`ids`]: `MessageId`, `WaId`, `ShardId` newtypes.
//! - [`status`]: message statuses and the never-backwards rule.
//! - [`clock`]: wall-clock time behind a trait, so tests can move it (TTL).
//! - [`error`]: the one table of error codes (reference code, Cloud code, HTTP, gRPC).

pub mod clock;
pub mod error;
pub mod ids;
pub mod message;
pub mod message_limits;
pub mod phone;
pub mod routing;
pub mod status;
pub mod validate;

pub use error::{ApiError, ErrorCode, GrpcCode};
pub use ids::{MAX_SHARDS, MessageId, MessageKey, ShardId, WaId};
pub use status::MessageStatus;

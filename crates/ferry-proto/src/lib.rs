//! ferry's wire contract.
//!
//! Generated tonic/prost code for `proto/ferry/v1/*.proto` ([`v1`]) and the chat protocol
//! `proto/ferry/chat/v1/chat.proto` ([`chat::v1`]), and the conversions from wire
//! types to `ferry-model` domain types ([`convert`]). Conversions are structural only (which oneof,
//! which enum value); every semantic rule lives in `ferry_model::validate`, shared with the JSON API.
//! Nothing inward of the ingest layer sees a generated type.

pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The chat protocol ferry speaks to the chat server (`proto/ferry/chat/v1/chat.proto`), also
/// served by `ferry chatsim`.
pub mod chat {
    pub mod v1 {
        tonic::include_proto!("ferry.chat.v1");
    }
}

pub mod convert;
pub mod wire;

/// Encoded `FileDescriptorSet` of ferry's protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");

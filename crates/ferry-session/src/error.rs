//! The one error type of ferry-session, shared by setup, encryption, decryption, snapshots and the
//! proto conversions. Callers map it to wire codes (the chat server: every receive-side error is
//! `SESSION_UNKNOWN`, telling the sender to set up a new session).

/// What went wrong in a session operation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The bundle's signed pre-key is not signed by its identity signing key.
    #[error("bad pre-key bundle: the signed pre-key signature does not verify with the identity signing key")]
    BadSignature,
    /// The receiving side cannot set up this session (an unknown signed pre-key id, or a one-time
    /// pre-key already used by an earlier session): the sender must fetch a new bundle.
    #[error("unknown session: {0}; expected a session set up from a fresh pre-key bundle")]
    SessionUnknown(String),
    /// The message did not decrypt or authenticate (tampered, wrong key, replayed counter, or a
    /// header that does not belong to this session).
    #[error("message did not decrypt or authenticate (tampered, replayed, or not of this session)")]
    Decrypt,
    /// Every reserved counter has been used: call `reserve` (and persist its snapshot) first.
    #[error("no reserved counter left: reserve more counters (and persist the snapshot) before encrypting")]
    ReservationExhausted,
    /// The message's counter is further ahead of the receiving chain than the receiver will skip.
    #[error(
        "message counter {counter} is too far ahead: next expected {next_expected}, at most {max_skip} keys skipped"
    )]
    TooFarAhead { counter: u64, next_expected: u64, max_skip: u64 },
    /// A key or signature field had the wrong length.
    #[error("{field} has {actual} bytes; expected {expected}")]
    WrongLength { field: &'static str, expected: usize, actual: usize },
    /// A public key was rejected (a key agreement with it is not contributory, e.g. a low-order point).
    #[error("invalid public key: {0}")]
    InvalidKey(&'static str),
    /// A snapshot or another encoded value is damaged.
    #[error("corrupt session data: {0}")]
    Corrupt(String),
}

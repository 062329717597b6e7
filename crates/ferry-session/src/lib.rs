//! ferry's end-to-end encryption sessions: an X3DH-style key agreement to set a session up and a
//! per-message symmetric ratchet (an HMAC-SHA256 KDF chain) to encrypt each message with its own key.
//!
//! **Signal-style, not WhatsApp wire-compatible.** The construction follows the shape of the Signal
//! protocol's X3DH and symmetric-key ratchet, but the key formats, the KDF labels, the associated
//! data and the snapshot format are ferry's own; nothing here interoperates with WhatsApp or libsignal.
//! It is also deliberately simpler: there is no Diffie-Hellman ratchet (the recipient never answers
//! on the session), so forward secrecy comes from the KDF chain only and there is no post-compromise
//! security.
//!
//! Where it sits: the delivery loop (one per shard) holds a [`SendingSession`] per recipient and
//! encrypts each attempt of each message with [`SendingSession::encrypt`]; the chat server (and
//! `ferry chatsim`, the reference one) holds [`RecipientKeys`] and a [`ReceivingSession`] per session
//! and decrypts every envelope (setting a session up with
//! [`ReceivingSession::accept_first_message`], which consumes the one-time pre-key only once the first
//! message authenticates). This crate does no I/O: persisting snapshots, fetching bundles and
//! moving bytes are the callers' job.
//!
//! Invariants:
//! - **No counter is ever used twice by a sender, also across crashes.** A sender may only encrypt
//!   with counters it has *reserved*; [`SendingSession::reserve`] returns a snapshot holding the chain
//!   key at the end of the reservation, which the caller persists before using the new counters. A
//!   session restored from a snapshot starts at the snapshot point, past every counter the crashed
//!   process may have used. Since every message key is used once, no (key, nonce) pair repeats.
//! - **A receiver accepts each counter at most once** (no replay) and never lets a message that does
//!   not authenticate change its state (a forgery cannot advance the chain or burn a skipped key).
//! - **The associated data binds message id, sender, recipient and every header field**, so a
//!   ciphertext cannot be moved to another message id, recipient or position.
//! - Only well-kept primitives are used (x25519-dalek, ed25519-dalek, hkdf/hmac/sha2,
//!   XChaCha20-Poly1305); nothing is hand-rolled.
//!
//! The derivations, exactly:
//! - X3DH: `DH1 = DH(IKs, SPKr)`, `DH2 = DH(EK, IKr)`, `DH3 = DH(EK, SPKr)`, `DH4 = DH(EK, OPKr)`
//!   (when the bundle had a one-time pre-key); `chain_key_0 = HKDF-SHA256(salt = 32 zero bytes,
//!   ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4], info = label || IKs || EK || IKr || SPKr ||
//!   spk_id || opk_id)`. Every DH output must be contributory (no low-order keys).
//! - Ratchet: `message_key_i = HMAC-SHA256(chain_key_i, 0x01)`, `chain_key_{i+1} =
//!   HMAC-SHA256(chain_key_i, 0x02)`.
//! - AEAD: XChaCha20-Poly1305 with `message_key_i`, a fresh random 24-byte nonce carried in the
//!   header, and [`associated_data`].

mod error;
mod kdf;
mod keys;
mod receiving;
mod sending;
mod wire;

pub use error::SessionError;
pub use keys::{IdentityKeyPair, PreKeyBundle, RecipientKeys};
pub use receiving::{MAX_SKIP, MAX_SKIPPED_KEYS, ReceivingSession};
pub use sending::{SNAPSHOT_LEN, SendingSession};

/// Everything the recipient needs to find (or set up) the session and derive one message's key.
/// Sent in clear next to the ciphertext, and authenticated through [`associated_data`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's X25519 identity public key.
    pub sender_identity_key: [u8; 32],
    /// The session's ephemeral X25519 public key; identifies the session.
    pub ephemeral_key: [u8; 32],
    /// Id of the recipient's signed pre-key used in the agreement.
    pub signed_prekey_id: u32,
    /// Id of the recipient's one-time pre-key used in the agreement; 0 = none.
    pub one_time_prekey_id: u32,
    /// Position of this message's key in the sending chain.
    pub counter: u64,
    /// XChaCha20-Poly1305 nonce (random per message).
    pub nonce: [u8; 24],
}

/// Domain label that starts every associated-data string (versioned, so a future format cannot be
/// confused with this one).
const ASSOCIATED_DATA_LABEL: &[u8] = b"ferry-session/v1/associated-data";

/// The AEAD associated data of one message: binds message id, sender, recipient and every header
/// field. Unambiguous: each string is prefixed with its length (u32, big endian) and every header
/// field has a fixed width.
pub fn associated_data(message_id: &str, sender: &str, recipient: &str, header: &Header) -> Vec<u8> {
    let mut ad = Vec::with_capacity(
        ASSOCIATED_DATA_LABEL.len() + 12 + message_id.len() + sender.len() + recipient.len() + 32 + 32 + 4 + 4 + 8 + 24,
    );
    ad.extend_from_slice(ASSOCIATED_DATA_LABEL);
    for part in [message_id, sender, recipient] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        ad.extend_from_slice(&len.to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad.extend_from_slice(&header.sender_identity_key);
    ad.extend_from_slice(&header.ephemeral_key);
    ad.extend_from_slice(&header.signed_prekey_id.to_be_bytes());
    ad.extend_from_slice(&header.one_time_prekey_id.to_be_bytes());
    ad.extend_from_slice(&header.counter.to_be_bytes());
    ad.extend_from_slice(&header.nonce);
    ad
}

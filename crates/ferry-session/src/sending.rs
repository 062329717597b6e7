//! The sending side of a session: set up from a recipient's [`PreKeyBundle`] (X3DH), then one
//! message key per counter from the symmetric ratchet. Counters are *reserved* in blocks whose
//! snapshot the caller persists before use, so a crash can never make the sender reuse a counter.
//!
//! Snapshot format (version 1, [`SNAPSHOT_LEN`] bytes, integers little endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `FSS1` |
//! | 4..36 | sender identity public key |
//! | 36..68 | ephemeral public key (the session id) |
//! | 68..72 | signed pre-key id |
//! | 72..76 | one-time pre-key id (0 = none) |
//! | 76..84 | `reserved_until`: the counter a restored session starts at |
//! | 84..116 | chain key at index `reserved_until` (secret) |
//! | 116..124 | first 8 bytes of SHA-256 of bytes 0..116 (detects corruption) |

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::kdf::{self, AgreementTranscript, SecretBytes};
use crate::{Header, IdentityKeyPair, PreKeyBundle, SessionError, associated_data};

/// Length of a [`SendingSession::reserve`] snapshot.
pub const SNAPSHOT_LEN: usize = 124;
const SNAPSHOT_MAGIC: &[u8; 4] = b"FSS1";

/// One sender → recipient session. Cloning copies the chain state (two clones encrypting would reuse
/// counters: clone only to hand the session to another owner).
#[derive(Clone)]
pub struct SendingSession {
    sender_identity_key: [u8; 32],
    ephemeral_key: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: u32,
    /// The next counter `encrypt` uses.
    counter: u64,
    /// Chain key at index `counter`.
    chain_key: SecretBytes,
    /// Counters `[counter, reserved_until)` may be used.
    reserved_until: u64,
    /// Chain key at index `reserved_until` (what the last snapshot holds).
    chain_key_at_reserved_until: SecretBytes,
}

impl std::fmt::Debug for SendingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendingSession")
            .field("session_id", &self.ephemeral_key)
            .field("counter", &self.counter)
            .field("reserved_until", &self.reserved_until)
            .finish_non_exhaustive()
    }
}

impl SendingSession {
    /// Verifies the bundle's signed pre-key signature and runs the X3DH agreement with a fresh
    /// ephemeral key. The new session is at counter 0 with no reserved counters.
    pub fn initiate(identity: &IdentityKeyPair, bundle: &PreKeyBundle) -> Result<SendingSession, SessionError> {
        bundle.verify_signature()?;
        let ephemeral = StaticSecret::from(rand::random::<[u8; 32]>());
        let ephemeral_key = PublicKey::from(&ephemeral).to_bytes();
        let mut dh_outputs = vec![
            kdf::diffie_hellman(identity.secret(), &bundle.signed_prekey, "signed pre-key")?,
            kdf::diffie_hellman(&ephemeral, &bundle.identity_key, "recipient identity key")?,
            kdf::diffie_hellman(&ephemeral, &bundle.signed_prekey, "signed pre-key")?,
        ];
        if let Some((_, one_time_prekey)) = &bundle.one_time_prekey {
            dh_outputs.push(kdf::diffie_hellman(&ephemeral, one_time_prekey, "one-time pre-key")?);
        }
        let one_time_prekey_id = bundle.one_time_prekey.map_or(0, |(id, _)| id);
        let transcript = AgreementTranscript {
            sender_identity_key: identity.public_key(),
            ephemeral_key,
            recipient_identity_key: bundle.identity_key,
            signed_prekey: bundle.signed_prekey,
            signed_prekey_id: bundle.signed_prekey_id,
            one_time_prekey_id,
        };
        let chain_key = kdf::x3dh_chain_key(&dh_outputs, &transcript);
        Ok(SendingSession {
            sender_identity_key: identity.public_key(),
            ephemeral_key,
            signed_prekey_id: bundle.signed_prekey_id,
            one_time_prekey_id,
            counter: 0,
            chain_key_at_reserved_until: chain_key.clone(),
            chain_key,
            reserved_until: 0,
        })
    }

    /// Extends the reservation by `n` counters and returns the snapshot to persist durably BEFORE
    /// encrypting with any newly reserved counter. The snapshot holds the chain key at the new
    /// `reserved_until` (it is a secret: store it like one). Costs `n` HMAC-SHA256 computations (the
    /// chain is walked ahead), so reserve in blocks of hundreds to a few thousand.
    pub fn reserve(&mut self, n: u64) -> Vec<u8> {
        self.chain_key_at_reserved_until = kdf::advance_chain(&self.chain_key_at_reserved_until, n);
        self.reserved_until += n;
        self.snapshot()
    }

    /// The snapshot of the current reservation (what the last `reserve` returned).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_LEN);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.sender_identity_key);
        out.extend_from_slice(&self.ephemeral_key);
        out.extend_from_slice(&self.signed_prekey_id.to_le_bytes());
        out.extend_from_slice(&self.one_time_prekey_id.to_le_bytes());
        out.extend_from_slice(&self.reserved_until.to_le_bytes());
        out.extend_from_slice(self.chain_key_at_reserved_until.as_ref());
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum[..8]);
        out
    }

    /// The session a snapshot describes, at counter = `reserved_until` = the snapshot point (so it
    /// needs a reservation before its first message).
    pub fn restore(snapshot: &[u8]) -> Result<SendingSession, SessionError> {
        if snapshot.len() != SNAPSHOT_LEN {
            return Err(SessionError::Corrupt(format!(
                "session snapshot has {} bytes; expected {SNAPSHOT_LEN}",
                snapshot.len()
            )));
        }
        if &snapshot[0..4] != SNAPSHOT_MAGIC {
            return Err(SessionError::Corrupt("session snapshot does not start with magic FSS1".to_owned()));
        }
        let checksum = Sha256::digest(&snapshot[..116]);
        if checksum[..8] != snapshot[116..124] {
            return Err(SessionError::Corrupt("session snapshot checksum does not match its contents".to_owned()));
        }
        let array32 = |range: std::ops::Range<usize>| -> [u8; 32] { snapshot[range].try_into().expect("32 bytes") };
        let reserved_until = u64::from_le_bytes(snapshot[76..84].try_into().expect("8 bytes"));
        let chain_key = Zeroizing::new(array32(84..116));
        Ok(SendingSession {
            sender_identity_key: array32(4..36),
            ephemeral_key: array32(36..68),
            signed_prekey_id: u32::from_le_bytes(snapshot[68..72].try_into().expect("4 bytes")),
            one_time_prekey_id: u32::from_le_bytes(snapshot[72..76].try_into().expect("4 bytes")),
            counter: reserved_until,
            chain_key_at_reserved_until: chain_key.clone(),
            chain_key,
            reserved_until,
        })
    }

    /// True when every reserved counter has been used (`encrypt` would fail).
    pub fn needs_reservation(&self) -> bool {
        self.counter == self.reserved_until
    }

    /// Counters still reserved (`reserved_until - counter`).
    pub fn reserved_remaining(&self) -> u64 {
        self.reserved_until - self.counter
    }

    /// Encrypts one message with the next message key, a fresh random nonce and
    /// [`associated_data`]. `Err(ReservationExhausted)` when no reserved counter is left.
    pub fn encrypt(
        &mut self,
        message_id: &str,
        sender: &str,
        recipient: &str,
        plaintext: &[u8],
    ) -> Result<(Header, Vec<u8>), SessionError> {
        if self.needs_reservation() {
            return Err(SessionError::ReservationExhausted);
        }
        let (message_key, next_chain_key) = kdf::ratchet_step(&self.chain_key);
        let header = Header {
            sender_identity_key: self.sender_identity_key,
            ephemeral_key: self.ephemeral_key,
            signed_prekey_id: self.signed_prekey_id,
            one_time_prekey_id: self.one_time_prekey_id,
            counter: self.counter,
            nonce: rand::random::<[u8; 24]>(),
        };
        self.chain_key = next_chain_key;
        self.counter += 1;
        let ad = associated_data(message_id, sender, recipient, &header);
        let ciphertext = kdf::seal(&message_key, &header.nonce, &ad, plaintext);
        Ok((header, ciphertext))
    }

    /// The next counter `encrypt` will use.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The end (exclusive) of the reserved counters.
    pub fn reserved_until(&self) -> u64 {
        self.reserved_until
    }

    /// The session's id: its ephemeral public key.
    pub fn session_id(&self) -> [u8; 32] {
        self.ephemeral_key
    }
}

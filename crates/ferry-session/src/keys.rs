//! Long-term key material: the sender's [`IdentityKeyPair`], the public [`PreKeyBundle`] a recipient
//! publishes, and [`RecipientKeys`], the chat server's deterministic copy of one recipient's private
//! keys (derived from a seed, so a restarted chat server keeps every recipient's keys).

use std::collections::HashSet;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::kdf::derive_secret;
use crate::{SessionError, kdf};

/// The sender's (a ferry node's) long-term X25519 identity key pair.
pub struct IdentityKeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl IdentityKeyPair {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random::<[u8; 32]>())
    }

    /// The identity with this secret key (as returned by [`IdentityKeyPair::to_bytes`]).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The secret key, to persist (treat as a secret).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public key (sent in every header as `sender_identity_key`).
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl std::fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public", &self.public.to_bytes()).finish_non_exhaustive()
    }
}

/// A recipient's public keys, enough to set up one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// X25519 identity public key (used in the key agreement).
    pub identity_key: [u8; 32],
    /// Ed25519 public key that signs the signed pre-key.
    pub identity_signing_key: [u8; 32],
    pub signed_prekey_id: u32,
    /// X25519 public key.
    pub signed_prekey: [u8; 32],
    /// Ed25519 signature of the 32 bytes of `signed_prekey` by `identity_signing_key`.
    pub signed_prekey_signature: [u8; 64],
    /// `(id, X25519 public key)`; ids start at 1. `None` when the recipient has run out.
    pub one_time_prekey: Option<(u32, [u8; 32])>,
}

impl PreKeyBundle {
    /// Checks that `signed_prekey` is signed by `identity_signing_key`.
    pub fn verify_signature(&self) -> Result<(), SessionError> {
        let verifying_key =
            VerifyingKey::from_bytes(&self.identity_signing_key).map_err(|_| SessionError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signed_prekey_signature);
        verifying_key.verify(&self.signed_prekey, &signature).map_err(|_| SessionError::BadSignature)
    }
}

const RECIPIENT_KEYS_SALT: &[u8] = b"ferry-session/v1/recipient-keys";
const PURPOSE_IDENTITY: &str = "identity-x25519";
const PURPOSE_SIGNING: &str = "identity-ed25519";
const PURPOSE_SIGNED_PREKEY: &str = "signed-prekey";
const PURPOSE_ONE_TIME_PREKEY: &str = "one-time-prekey";

/// The id of the (only) signed pre-key a [`RecipientKeys`] has.
pub const SIGNED_PREKEY_ID: u32 = 1;

/// The chat server's copy of one recipient's private keys.
///
/// Every secret is derived from `(seed, recipient, purpose, id)` with HKDF-SHA256, so the same seed
/// gives the same keys after a restart; one-time pre-key `i` (1-based) is derivable on demand. Each
/// one-time pre-key id is handed out by [`RecipientKeys::next_bundle`] at most once and accepted by
/// one session at most once per value (a restarted server forgets which ids were used: sessions set
/// up before the restart are accepted again from their headers, which is what lets them survive it).
pub struct RecipientKeys {
    seed: [u8; 32],
    recipient: String,
    identity: StaticSecret,
    identity_public: [u8; 32],
    signing_public: [u8; 32],
    signed_prekey: StaticSecret,
    signed_prekey_public: [u8; 32],
    signed_prekey_signature: [u8; 64],
    next_one_time_prekey_id: u32,
    used_one_time_prekey_ids: HashSet<u32>,
}

impl Drop for RecipientKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl std::fmt::Debug for RecipientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKeys")
            .field("recipient", &self.recipient)
            .field("next_one_time_prekey_id", &self.next_one_time_prekey_id)
            .finish_non_exhaustive()
    }
}

impl RecipientKeys {
    /// The keys of `recipient` under `seed` (deterministic).
    pub fn derive(seed: &[u8; 32], recipient: &str) -> RecipientKeys {
        let identity = StaticSecret::from(*derive_for(seed, recipient, PURPOSE_IDENTITY, 0));
        let signing = SigningKey::from_bytes(&derive_for(seed, recipient, PURPOSE_SIGNING, 0));
        let signed_prekey = StaticSecret::from(*derive_for(seed, recipient, PURPOSE_SIGNED_PREKEY, SIGNED_PREKEY_ID));
        let signed_prekey_public = PublicKey::from(&signed_prekey).to_bytes();
        let signed_prekey_signature = signing.sign(&signed_prekey_public).to_bytes();
        RecipientKeys {
            seed: *seed,
            recipient: recipient.to_owned(),
            identity_public: PublicKey::from(&identity).to_bytes(),
            identity,
            signing_public: signing.verifying_key().to_bytes(),
            signed_prekey,
            signed_prekey_public,
            signed_prekey_signature,
            next_one_time_prekey_id: 1,
            used_one_time_prekey_ids: HashSet::new(),
        }
    }

    /// The recipient these keys belong to.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// The public bundle with the next never-handed-out one-time pre-key.
    pub fn next_bundle(&mut self) -> PreKeyBundle {
        // Skip ids a session has already consumed (possible after a restart: a header named them).
        // `next_one_time_prekey_id == 0` means every id has been handed out.
        let mut candidate = self.next_one_time_prekey_id;
        while candidate != 0 && self.used_one_time_prekey_ids.contains(&candidate) {
            candidate = candidate.checked_add(1).unwrap_or(0);
        }
        let one_time_prekey = (candidate != 0).then(|| {
            self.next_one_time_prekey_id = candidate.checked_add(1).unwrap_or(0);
            (candidate, PublicKey::from(&self.one_time_prekey_secret(candidate)).to_bytes())
        });
        PreKeyBundle {
            identity_key: self.identity_public,
            identity_signing_key: self.signing_public,
            signed_prekey_id: SIGNED_PREKEY_ID,
            signed_prekey: self.signed_prekey_public,
            signed_prekey_signature: self.signed_prekey_signature,
            one_time_prekey,
        }
    }

    pub(crate) fn identity(&self) -> &StaticSecret {
        &self.identity
    }

    pub(crate) fn identity_public(&self) -> [u8; 32] {
        self.identity_public
    }

    /// The signed pre-key `(secret, public)` with this id, or `None` for an unknown id.
    pub(crate) fn signed_prekey(&self, id: u32) -> Option<(&StaticSecret, [u8; 32])> {
        (id == SIGNED_PREKEY_ID).then_some((&self.signed_prekey, self.signed_prekey_public))
    }

    /// The secret of one-time pre-key `id` if no session has used it yet; `SessionUnknown` if an
    /// earlier session used it (or the id is 0).
    pub(crate) fn unused_one_time_prekey(&self, id: u32) -> Result<StaticSecret, SessionError> {
        if id == 0 {
            return Err(SessionError::SessionUnknown("one-time pre-key id 0 names no key".to_owned()));
        }
        if self.used_one_time_prekey_ids.contains(&id) {
            return Err(SessionError::SessionUnknown(format!(
                "one-time pre-key {id} of {} was already used by an earlier session",
                self.recipient
            )));
        }
        Ok(self.one_time_prekey_secret(id))
    }

    /// Marks one-time pre-key `id` used (checked unused by [`Self::unused_one_time_prekey`] first).
    pub(crate) fn consume_one_time_prekey(&mut self, id: u32) -> Result<(), SessionError> {
        self.unused_one_time_prekey(id)?;
        self.used_one_time_prekey_ids.insert(id);
        Ok(())
    }

    fn one_time_prekey_secret(&self, id: u32) -> StaticSecret {
        StaticSecret::from(*derive_for(&self.seed, &self.recipient, PURPOSE_ONE_TIME_PREKEY, id))
    }
}

/// `HKDF-SHA256(salt, ikm = seed, info = len(recipient) || recipient || len(purpose) || purpose || id)`.
fn derive_for(seed: &[u8; 32], recipient: &str, purpose: &str, id: u32) -> kdf::SecretBytes {
    let mut info = Vec::with_capacity(recipient.len() + purpose.len() + 12);
    for part in [recipient, purpose] {
        info.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        info.extend_from_slice(part.as_bytes());
    }
    info.extend_from_slice(&id.to_be_bytes());
    derive_secret(RECIPIENT_KEYS_SALT, seed, &info)
}

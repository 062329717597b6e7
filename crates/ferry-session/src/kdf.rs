//! The key derivations of ferry-session: the X3DH output key (HKDF-SHA256), the symmetric ratchet
//! step (HMAC-SHA256), and the AEAD (XChaCha20-Poly1305) wrappers. Every other module goes through
//! these; no module touches a primitive directly.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::SessionError;

/// A 32-byte secret (chain key, message key, root secret) wiped from memory when dropped.
pub(crate) type SecretBytes = Zeroizing<[u8; 32]>;

const X3DH_INFO_LABEL: &[u8] = b"ferry-session/v1/x3dh-chain-key";

/// The public half of one key agreement: what the HKDF info binds.
pub(crate) struct AgreementTranscript {
    pub sender_identity_key: [u8; 32],
    pub ephemeral_key: [u8; 32],
    pub recipient_identity_key: [u8; 32],
    pub signed_prekey: [u8; 32],
    pub signed_prekey_id: u32,
    pub one_time_prekey_id: u32,
}

/// Rejects a non-contributory DH output (a low-order public key forces a known shared secret).
pub(crate) fn contributory(shared: SharedSecret, which: &'static str) -> Result<SharedSecret, SessionError> {
    if shared.was_contributory() { Ok(shared) } else { Err(SessionError::InvalidKey(which)) }
}

/// X25519 between one of our secrets and a peer's public key, rejecting low-order keys.
pub(crate) fn diffie_hellman(
    secret: &StaticSecret,
    public: &[u8; 32],
    which: &'static str,
) -> Result<SharedSecret, SessionError> {
    contributory(secret.diffie_hellman(&PublicKey::from(*public)), which)
}

/// `chain_key_0` from the DH outputs (in X3DH order) and the transcript.
pub(crate) fn x3dh_chain_key(dh_outputs: &[SharedSecret], transcript: &AgreementTranscript) -> SecretBytes {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dh_outputs.len() + 1)));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in dh_outputs {
        ikm.extend_from_slice(dh.as_bytes());
    }
    let mut info = Vec::with_capacity(X3DH_INFO_LABEL.len() + 4 * 32 + 8);
    info.extend_from_slice(X3DH_INFO_LABEL);
    info.extend_from_slice(&transcript.sender_identity_key);
    info.extend_from_slice(&transcript.ephemeral_key);
    info.extend_from_slice(&transcript.recipient_identity_key);
    info.extend_from_slice(&transcript.signed_prekey);
    info.extend_from_slice(&transcript.signed_prekey_id.to_be_bytes());
    info.extend_from_slice(&transcript.one_time_prekey_id.to_be_bytes());
    let hkdf = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut chain_key = Zeroizing::new([0u8; 32]);
    hkdf.expand(&info, chain_key.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
    chain_key
}

/// A secret derived deterministically from a seed (HKDF-SHA256, the seed as ikm, `info` names it).
pub(crate) fn derive_secret(salt: &[u8], seed: &[u8; 32], info: &[u8]) -> SecretBytes {
    let hkdf = Hkdf::<Sha256>::new(Some(salt), seed);
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf.expand(info, out.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn hmac_sha256(key: &[u8; 32], input: u8) -> SecretBytes {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&[input]);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// One step of the symmetric ratchet: `(message_key_i, chain_key_{i+1})` from `chain_key_i`.
pub(crate) fn ratchet_step(chain_key: &[u8; 32]) -> (SecretBytes, SecretBytes) {
    (hmac_sha256(chain_key, 0x01), hmac_sha256(chain_key, 0x02))
}

/// `chain_key_{i+steps}` from `chain_key_i` (message keys skipped).
pub(crate) fn advance_chain(chain_key: &[u8; 32], steps: u64) -> SecretBytes {
    let mut current = Zeroizing::new(*chain_key);
    for _ in 0..steps {
        current = hmac_sha256(&current, 0x02);
    }
    current
}

pub(crate) fn seal(message_key: &[u8; 32], nonce: &[u8; 24], associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*message_key).into());
    cipher
        .encrypt(&(*nonce).into(), Payload { msg: plaintext, aad: associated_data })
        .expect("XChaCha20-Poly1305 encryption only fails for plaintexts beyond 256 GiB")
}

pub(crate) fn open(
    message_key: &[u8; 32],
    nonce: &[u8; 24],
    associated_data: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let cipher = XChaCha20Poly1305::new(&(*message_key).into());
    cipher
        .decrypt(&(*nonce).into(), Payload { msg: ciphertext, aad: associated_data })
        .map_err(|_| SessionError::Decrypt)
}

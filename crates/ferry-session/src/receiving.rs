//! The receiving side of a session (the chat server's): set up from the first header seen for a
//! session and the recipient's private keys, then decrypts messages in any order within bounds.
//!
//! Rules: a counter decrypts at most once (no replay); the chain skips forward at most [`MAX_SKIP`]
//! keys for one message; at most [`MAX_SKIPPED_KEYS`] skipped keys are kept for late arrivals (the
//! newest ones); a message that does not authenticate changes nothing.

use std::collections::BTreeMap;

use crate::kdf::{self, AgreementTranscript, SecretBytes};
use crate::{Header, RecipientKeys, SessionError, associated_data};

/// How many message keys one message may skip forward (>= 4 × the sender's reservation block).
pub const MAX_SKIP: u64 = 8192;
/// How many skipped message keys are kept for out-of-order arrival.
pub const MAX_SKIPPED_KEYS: usize = 64;

/// The receiving half of one session.
pub struct ReceivingSession {
    sender_identity_key: [u8; 32],
    ephemeral_key: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: u32,
    /// The lowest counter not yet reached by the chain.
    next_counter: u64,
    /// Chain key at index `next_counter`.
    chain_key: SecretBytes,
    /// Message keys of skipped counters below `next_counter`, newest [`MAX_SKIPPED_KEYS`].
    skipped: BTreeMap<u64, SecretBytes>,
}

impl std::fmt::Debug for ReceivingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivingSession")
            .field("session_id", &self.ephemeral_key)
            .field("next_counter", &self.next_counter)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl ReceivingSession {
    /// Sets up the receiving side from the first header seen for a session. Consumes the one-time
    /// pre-key the header names: a one-time pre-key used by an earlier session, or an unknown signed
    /// pre-key id, is `SessionUnknown`.
    pub fn accept(keys: &mut RecipientKeys, header: &Header) -> Result<ReceivingSession, SessionError> {
        let session = Self::set_up(keys, header)?;
        if header.one_time_prekey_id != 0 {
            keys.consume_one_time_prekey(header.one_time_prekey_id)?;
        }
        Ok(session)
    }

    /// Sets up the receiving side from a session's first message and decrypts it; the one-time
    /// pre-key is consumed only if the message authenticates, so a forged or damaged first message
    /// cannot burn the key a genuine one needs. What a server should use; errors as [`Self::accept`]
    /// and [`Self::decrypt`].
    pub fn accept_first_message(
        keys: &mut RecipientKeys,
        message_id: &str,
        sender: &str,
        recipient: &str,
        header: &Header,
        ciphertext: &[u8],
    ) -> Result<(ReceivingSession, Vec<u8>), SessionError> {
        let mut session = Self::set_up(keys, header)?;
        let plaintext = session.decrypt(message_id, sender, recipient, header, ciphertext)?;
        if header.one_time_prekey_id != 0 {
            keys.consume_one_time_prekey(header.one_time_prekey_id)?;
        }
        Ok((session, plaintext))
    }

    /// The X3DH agreement from the recipient's side; checks but does not consume the one-time pre-key.
    fn set_up(keys: &RecipientKeys, header: &Header) -> Result<ReceivingSession, SessionError> {
        let (signed_prekey, signed_prekey_public) = keys.signed_prekey(header.signed_prekey_id).ok_or_else(|| {
            SessionError::SessionUnknown(format!(
                "signed pre-key {} of {} is unknown",
                header.signed_prekey_id,
                keys.recipient()
            ))
        })?;
        let mut dh_outputs = vec![
            kdf::diffie_hellman(signed_prekey, &header.sender_identity_key, "sender identity key")?,
            kdf::diffie_hellman(keys.identity(), &header.ephemeral_key, "ephemeral key")?,
            kdf::diffie_hellman(signed_prekey, &header.ephemeral_key, "ephemeral key")?,
        ];
        if header.one_time_prekey_id != 0 {
            let one_time_prekey = keys.unused_one_time_prekey(header.one_time_prekey_id)?;
            dh_outputs.push(kdf::diffie_hellman(&one_time_prekey, &header.ephemeral_key, "ephemeral key")?);
        }
        let transcript = AgreementTranscript {
            sender_identity_key: header.sender_identity_key,
            ephemeral_key: header.ephemeral_key,
            recipient_identity_key: keys.identity_public(),
            signed_prekey: signed_prekey_public,
            signed_prekey_id: header.signed_prekey_id,
            one_time_prekey_id: header.one_time_prekey_id,
        };
        let chain_key = kdf::x3dh_chain_key(&dh_outputs, &transcript);
        Ok(ReceivingSession {
            sender_identity_key: header.sender_identity_key,
            ephemeral_key: header.ephemeral_key,
            signed_prekey_id: header.signed_prekey_id,
            one_time_prekey_id: header.one_time_prekey_id,
            next_counter: 0,
            chain_key,
            skipped: BTreeMap::new(),
        })
    }

    /// The session's id: the sender's ephemeral public key.
    pub fn session_id(&self) -> [u8; 32] {
        self.ephemeral_key
    }

    /// The lowest counter the chain has not reached yet.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Decrypts and authenticates one message. A counter already used (or too old to have a kept
    /// skipped key) is `Decrypt`; one more than [`MAX_SKIP`] keys ahead is `TooFarAhead`. On any
    /// error the session is unchanged.
    pub fn decrypt(
        &mut self,
        message_id: &str,
        sender: &str,
        recipient: &str,
        header: &Header,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        if header.sender_identity_key != self.sender_identity_key
            || header.ephemeral_key != self.ephemeral_key
            || header.signed_prekey_id != self.signed_prekey_id
            || header.one_time_prekey_id != self.one_time_prekey_id
        {
            return Err(SessionError::Decrypt);
        }
        let ad = associated_data(message_id, sender, recipient, header);
        if header.counter < self.next_counter {
            let message_key = self.skipped.get(&header.counter).ok_or(SessionError::Decrypt)?;
            let plaintext = kdf::open(message_key, &header.nonce, &ad, ciphertext)?;
            self.skipped.remove(&header.counter);
            return Ok(plaintext);
        }
        let skip = header.counter - self.next_counter;
        if skip > MAX_SKIP {
            return Err(SessionError::TooFarAhead {
                counter: header.counter,
                next_expected: self.next_counter,
                max_skip: MAX_SKIP,
            });
        }
        // Walk the chain on the side; commit only once the message authenticates.
        let keep_from = header.counter.saturating_sub(MAX_SKIPPED_KEYS as u64);
        let mut newly_skipped = Vec::new();
        let mut chain_key = self.chain_key.clone();
        let mut index = self.next_counter;
        if keep_from > index {
            chain_key = kdf::advance_chain(&chain_key, keep_from - index);
            index = keep_from;
        }
        while index < header.counter {
            let (message_key, next_chain_key) = kdf::ratchet_step(&chain_key);
            newly_skipped.push((index, message_key));
            chain_key = next_chain_key;
            index += 1;
        }
        let (message_key, next_chain_key) = kdf::ratchet_step(&chain_key);
        let plaintext = kdf::open(&message_key, &header.nonce, &ad, ciphertext)?;
        self.chain_key = next_chain_key;
        self.next_counter = header.counter + 1;
        self.skipped.extend(newly_skipped);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_first();
        }
        Ok(plaintext)
    }
}

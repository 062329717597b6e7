//! Conversions between ferry-session's types and the chat protocol's generated types
//! (`ferry_proto::chat::v1::{SessionHeader, PreKeyBundle}`). Wire → session checks every key length
//! and fails with [`SessionError::WrongLength`] naming the field; session → wire cannot fail.

use ferry_proto::chat::v1 as proto;

use crate::{Header, PreKeyBundle, SessionError};

fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], SessionError> {
    bytes.try_into().map_err(|_| SessionError::WrongLength { field, expected: N, actual: bytes.len() })
}

impl From<&Header> for proto::SessionHeader {
    fn from(header: &Header) -> Self {
        proto::SessionHeader {
            sender_identity_key: header.sender_identity_key.to_vec(),
            ephemeral_key: header.ephemeral_key.to_vec(),
            signed_prekey_id: header.signed_prekey_id,
            one_time_prekey_id: header.one_time_prekey_id,
            counter: header.counter,
            nonce: header.nonce.to_vec(),
        }
    }
}

impl From<Header> for proto::SessionHeader {
    fn from(header: Header) -> Self {
        proto::SessionHeader::from(&header)
    }
}

impl TryFrom<&proto::SessionHeader> for Header {
    type Error = SessionError;

    fn try_from(header: &proto::SessionHeader) -> Result<Self, SessionError> {
        Ok(Header {
            sender_identity_key: fixed("header.sender_identity_key", &header.sender_identity_key)?,
            ephemeral_key: fixed("header.ephemeral_key", &header.ephemeral_key)?,
            signed_prekey_id: header.signed_prekey_id,
            one_time_prekey_id: header.one_time_prekey_id,
            counter: header.counter,
            nonce: fixed("header.nonce", &header.nonce)?,
        })
    }
}

impl TryFrom<proto::SessionHeader> for Header {
    type Error = SessionError;

    fn try_from(header: proto::SessionHeader) -> Result<Self, SessionError> {
        Header::try_from(&header)
    }
}

impl PreKeyBundle {
    /// The wire form of this bundle, for `recipient`.
    pub fn to_proto(&self, recipient: &str) -> proto::PreKeyBundle {
        let (one_time_prekey_id, one_time_prekey) =
            self.one_time_prekey.map_or((0, Vec::new()), |(id, key)| (id, key.to_vec()));
        proto::PreKeyBundle {
            recipient: recipient.to_owned(),
            identity_key: self.identity_key.to_vec(),
            identity_signing_key: self.identity_signing_key.to_vec(),
            signed_prekey_id: self.signed_prekey_id,
            signed_prekey: self.signed_prekey.to_vec(),
            signed_prekey_signature: self.signed_prekey_signature.to_vec(),
            one_time_prekey_id,
            one_time_prekey,
        }
    }
}

impl TryFrom<&proto::PreKeyBundle> for PreKeyBundle {
    type Error = SessionError;

    /// Checks lengths only; the signature is checked by `SendingSession::initiate`.
    fn try_from(bundle: &proto::PreKeyBundle) -> Result<Self, SessionError> {
        let one_time_prekey = match (bundle.one_time_prekey_id, bundle.one_time_prekey.is_empty()) {
            (0, true) => None,
            (0, false) => {
                return Err(SessionError::Corrupt(
                    "bundle has a one_time_prekey but one_time_prekey_id 0; expected an id >= 1".to_owned(),
                ));
            }
            (id, _) => Some((id, fixed("bundle.one_time_prekey", &bundle.one_time_prekey)?)),
        };
        Ok(PreKeyBundle {
            identity_key: fixed("bundle.identity_key", &bundle.identity_key)?,
            identity_signing_key: fixed("bundle.identity_signing_key", &bundle.identity_signing_key)?,
            signed_prekey_id: bundle.signed_prekey_id,
            signed_prekey: fixed("bundle.signed_prekey", &bundle.signed_prekey)?,
            signed_prekey_signature: fixed("bundle.signed_prekey_signature", &bundle.signed_prekey_signature)?,
            one_time_prekey,
        })
    }
}

impl TryFrom<proto::PreKeyBundle> for PreKeyBundle {
    type Error = SessionError;

    fn try_from(bundle: proto::PreKeyBundle) -> Result<Self, SessionError> {
        PreKeyBundle::try_from(&bundle)
    }
}

//! The webhook subscription handshake: when a callback URL is registered, Meta sends
//! `GET <url>?hub.mode=subscribe&hub.verify_token=<T>&hub.challenge=<C>`; the receiver answers 200
//! with `C` as the body when `T` is its verify token, else 403.

use serde::{Deserialize, Serialize};

/// The query of the handshake (deserialize it from the URL's query string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationQuery {
    #[serde(rename = "hub.mode", default)]
    pub mode: Option<String>,
    #[serde(rename = "hub.verify_token", default)]
    pub verify_token: Option<String>,
    #[serde(rename = "hub.challenge", default)]
    pub challenge: Option<String>,
}

/// `hub.mode` of the handshake.
pub const SUBSCRIBE: &str = "subscribe";

impl VerificationQuery {
    /// The challenge to answer with (200), or `None` (403): the mode must be `subscribe`, the token
    /// equal to `expected_token` (compared in constant time) and a challenge present.
    pub fn challenge_if_valid(&self, expected_token: &str) -> Option<&str> {
        let mode_ok = self.mode.as_deref() == Some(SUBSCRIBE);
        let token_ok =
            self.verify_token.as_deref().is_some_and(|t| constant_time_eq(t.as_bytes(), expected_token.as_bytes()));
        if mode_ok && token_ok { self.challenge.as_deref() } else { None }
    }
}

/// Equality of two byte strings whose time depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(mode: &str, token: &str, challenge: &str) -> VerificationQuery {
        VerificationQuery {
            mode: Some(mode.into()),
            verify_token: Some(token.into()),
            challenge: Some(challenge.into()),
        }
    }

    #[test]
    fn answers_the_challenge_only_to_subscribe_with_the_right_token() {
        assert_eq!(query("subscribe", "tok", "1158201444").challenge_if_valid("tok"), Some("1158201444"));
        assert_eq!(query("subscribe", "tok2", "c").challenge_if_valid("tok"), None);
        assert_eq!(query("subscribe", "to", "c").challenge_if_valid("tok"), None);
        assert_eq!(query("unsubscribe", "tok", "c").challenge_if_valid("tok"), None);
        assert_eq!(VerificationQuery::default().challenge_if_valid(""), None);
        let no_challenge = VerificationQuery { challenge: None, ..query("subscribe", "tok", "") };
        assert_eq!(no_challenge.challenge_if_valid("tok"), None);
    }

    #[test]
    fn reads_the_dotted_query_keys() {
        let q: VerificationQuery =
            serde_json::from_str(r#"{"hub.mode":"subscribe","hub.verify_token":"t","hub.challenge":"42"}"#).unwrap();
        assert_eq!(q, query("subscribe", "t", "42"));
    }
}

//! `X-Hub-Signature-256`: Meta signs every webhook POST with `sha256=<lowercase hex of
//! HMAC-SHA256(app secret, raw body)>`. The receiver must verify the raw bytes as received (not a
//! re-serialization) and compare in constant time; [`verify`] does both.

use hmac::{Hmac, KeyInit, Mac};

/// The header name (lowercase, as HTTP/2 and hyper write it).
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

const PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<sha2::Sha256>;

/// Why a signature was refused. Each is a 401 at the webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    Missing,
    /// The header is not `sha256=` followed by 64 hex digits.
    Malformed,
    /// Well-formed, but not the HMAC of this body with this secret.
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::Missing => "no x-hub-signature-256 header: expected `sha256=<hex hmac-sha256 of the body>`",
            SignatureError::Malformed => "x-hub-signature-256 is malformed: expected `sha256=` and 64 hex digits",
            SignatureError::Mismatch => "x-hub-signature-256 does not match the body: expected the hmac-sha256 of the raw body with the app secret",
        })
    }
}

impl std::error::Error for SignatureError {}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac
}

/// The header value for `body`: `sha256=<64 lowercase hex digits>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = mac(secret, body).finalize().into_bytes();
    let mut out = String::with_capacity(PREFIX.len() + 64);
    out.push_str(PREFIX);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Checks `header` (the `X-Hub-Signature-256` value, `None` when absent) against `body` in
/// constant time (the comparison does not stop at the first differing byte).
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex = header.strip_prefix(PREFIX).ok_or(SignatureError::Malformed)?.as_bytes();
    if hex.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut expected = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let (hi, lo) = (hex_digit(pair[0]), hex_digit(pair[1]));
        let (Some(hi), Some(lo)) = (hi, lo) else { return Err(SignatureError::Malformed) };
        expected[i] = hi << 4 | lo;
    }
    mac(secret, body).verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_is_hex_hmac_sha256_of_the_raw_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_its_own_signature_and_uppercase_hex() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = sign(b"app-secret", body);
        assert_eq!(verify(b"app-secret", body, Some(&header)), Ok(()));
        let upper = format!("sha256={}", header["sha256=".len()..].to_uppercase());
        assert_eq!(verify(b"app-secret", body, Some(&upper)), Ok(()));
    }

    #[test]
    fn verify_refuses_missing_malformed_and_mismatched_signatures() {
        let body = b"{}";
        let good = sign(b"s", body);
        assert_eq!(verify(b"s", body, None), Err(SignatureError::Missing));
        assert_eq!(verify(b"s", body, Some("")), Err(SignatureError::Malformed));
        assert_eq!(verify(b"s", body, Some(&good["sha256=".len()..])), Err(SignatureError::Malformed));
        assert_eq!(verify(b"s", body, Some(&good[..good.len() - 1])), Err(SignatureError::Malformed));
        let not_hex = format!("{}zz", &good[..good.len() - 2]);
        assert_eq!(verify(b"s", body, Some(&not_hex)), Err(SignatureError::Malformed));
        assert_eq!(verify(b"other secret", body, Some(&good)), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"s", b"{} ", Some(&good)), Err(SignatureError::Mismatch), "a changed body");
    }
}

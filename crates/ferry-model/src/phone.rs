//! Recipient normalization: from what the caller wrote to a [`WaId`].
//!
//! Rules (reference: cloud-sending-messages, "WhatsApp User Phone Number Formats"):
//! - `+`, hyphens, parentheses and spaces are allowed (ferry also allows dots) and are removed.
//! - Without a leading `+` the business number's country calling code is prepended, exactly as
//!   the reference does: `(631) 555-1234` from India (91) becomes `916315551234`, and
//!   `1 (631) 555-1234` becomes `9116315551234`.
//! - The result must be a plausible E.164 number: 8 to 15 digits, not starting with 0.

use crate::error::{ApiError, ErrorCode};
use crate::ids::WaId;

/// Shortest normalized number (country code included) ferry accepts.
pub const MIN_DIGITS: usize = 8;
/// Longest normalized number: E.164 allows at most 15 digits.
pub const MAX_DIGITS: usize = 15;

const FIELD: &str = "to";

/// Normalizes a recipient phone number to its wa_id (digits only, country code first).
///
/// Errors (all on field `to`): empty → 1008; any character other than digits, a leading `+`,
/// spaces, hyphens, parentheses and dots → 1009; fewer than 8 or more than 15 digits, or a
/// leading 0 after the country code is applied → 1009.
pub fn normalize(raw: &str, default_country_code: &str) -> Result<WaId, ApiError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ApiError::missing(FIELD));
    }
    let (international, rest) = match s.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut digits = String::with_capacity(MAX_DIGITS + 3);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '(' | ')' | '.' => {}
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    FIELD,
                    format!(
                        "phone number `{raw}` contains {other:?}: expected digits, optionally with a \
                         leading `+`, spaces, hyphens, parentheses and dots"
                    ),
                ));
            }
        }
    }
    if digits.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            FIELD,
            format!("phone number `{raw}` has no digits: expected a phone number"),
        ));
    }
    if !international {
        if let Err(e) = validate_country_code(default_country_code) {
            // A configuration error; config loading validates the code, so this is unexpected.
            return Err(ApiError::new(
                ErrorCode::Internal,
                "",
                format!("the configured default country code is not valid: {e}"),
            ));
        }
        digits.insert_str(0, default_country_code);
    }
    if digits.starts_with('0') {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            FIELD,
            format!(
                "phone number `{raw}` starts with 0 after the `+`: expected a country calling code \
                 (1 to 3 digits, not starting with 0) first"
            ),
        ));
    }
    let n = digits.len();
    if !(MIN_DIGITS..=MAX_DIGITS).contains(&n) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            FIELD,
            format!(
                "phone number `{raw}` has {n} digits including the country calling code: expected \
                 {MIN_DIGITS} to {MAX_DIGITS} digits (e.164)"
            ),
        ));
    }
    Ok(WaId::from_normalized(digits))
}

/// Checks a country calling code as configured (e.g. `1`, `91`, `852`): 1 to 3 digits, no
/// leading zero, no `+`.
pub fn validate_country_code(cc: &str) -> Result<(), String> {
    if cc.is_empty() || cc.len() > 3 || !cc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("country calling code `{cc}` is not valid: expected 1 to 3 digits without `+`"));
    }
    if cc.starts_with('0') {
        return Err(format!("country calling code `{cc}` starts with 0: expected 1 to 3 digits not starting with 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str, cc: &str) -> String {
        normalize(raw, cc).unwrap_or_else(|e| panic!("{raw}: {e}")).as_str().to_owned()
    }

    fn err(raw: &str) -> ApiError {
        normalize(raw, "91").expect_err(raw)
    }

    #[test]
    fn reference_examples() {
        // cloud-sending-messages: business in India (91).
        assert_eq!(ok("+16315551234", "91"), "16315551234");
        assert_eq!(ok("+1 (631) 555-1234", "91"), "16315551234");
        assert_eq!(ok("(631) 555-1234", "91"), "916315551234");
        assert_eq!(ok("1 (631) 555-1234", "91"), "9116315551234");
    }

    #[test]
    fn separators_and_surrounding_whitespace_are_removed() {
        assert_eq!(ok("  +44 20.7946.0958 ", "1"), "442079460958");
        assert_eq!(ok("631-555-1234", "1"), "16315551234");
    }

    #[test]
    fn empty_is_missing() {
        for raw in ["", "   "] {
            let e = err(raw);
            assert_eq!((e.code, e.field.as_str()), (ErrorCode::MissingParameter, "to"));
        }
    }

    #[test]
    fn other_characters_are_invalid() {
        for raw in ["+1 631 555 12a4", "1+6315551234", "++16315551234", "+1/631/5551234", "+()-"] {
            let e = err(raw);
            assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "to"), "{raw}");
            assert!(e.details.contains("expected"), "{}", e.details);
        }
    }

    #[test]
    fn length_must_be_plausible_e164() {
        let e = err("+1234567");
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "to"));
        assert!(e.details.contains("expected 8 to 15 digits"), "{}", e.details);
        assert_eq!(ok("+12345678", "91"), "12345678");
        assert_eq!(ok("+123456789012345", "91"), "123456789012345");
        assert_eq!(err("+1234567890123456").code, ErrorCode::InvalidParameter);
        // 14 digits + the prepended "91" = 16.
        assert_eq!(err("12345678901234").code, ErrorCode::InvalidParameter);
        assert_eq!(err("+0123456789").code, ErrorCode::InvalidParameter);
    }

    #[test]
    fn country_codes() {
        for cc in ["1", "91", "852"] {
            assert_eq!(validate_country_code(cc), Ok(()));
        }
        for cc in ["", "0", "01", "1234", "+91", "9a"] {
            assert!(validate_country_code(cc).is_err(), "{cc}");
        }
        assert_eq!(normalize("6315551234", "+1").unwrap_err().code, ErrorCode::Internal);
        // An international number does not need the default code.
        assert_eq!(ok("+16315551234", ""), "16315551234");
    }
}

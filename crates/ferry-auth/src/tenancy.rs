//! Tenancy: the business numbers (`senders`) a user may send as and read.

use std::sync::Arc;

use ferry_model::{ApiError, ErrorCode, WaId, phone};

use crate::{Auth, Principal, Role};

/// Most business numbers in one user's `senders`.
pub const MAX_SENDERS: usize = 1024;

/// How the node names its senders: what [`Auth::check_sender`] and the `senders` of users are
/// normalized with (the coordinator's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRules {
    /// `country_code`: prepended to numbers written without `+`.
    pub country_code: String,
    /// `default_sender`, normalized: the sender of a send that names none.
    pub default_sender: WaId,
}

/// The stored `senders` of a user as a principal carries them (admins: unrestricted).
pub(crate) fn principal_senders(role: Role, stored: &[String]) -> Option<Arc<[WaId]>> {
    (role != Role::Admin && !stored.is_empty())
        .then(|| stored.iter().map(|s| WaId::from_normalized(s.clone())).collect())
}

/// `senders` as given to create/update: each normalized like a send's sender; duplicates
/// dropped, order kept. Empty is refused: `None` (JSON `null` or absent) lifts the restriction.
pub(crate) fn normalize_senders(raw: &[String], rules: &SenderRules) -> Result<Vec<WaId>, ApiError> {
    if raw.is_empty() || raw.len() > MAX_SENDERS {
        return Err(ApiError::invalid(
            "senders",
            format_args!("1 to {MAX_SENDERS} business phone numbers, got {} (null lifts the restriction)", raw.len()),
        ));
    }
    let mut out: Vec<WaId> = Vec::with_capacity(raw.len());
    for (i, number) in raw.iter().enumerate() {
        let wa_id = phone::normalize(number, &rules.country_code).map_err(|e| {
            ApiError::new(
                e.code,
                format!("senders[{i}]"),
                format!("senders[{i}]: not a business phone number: {}", e.details),
            )
        })?;
        if !out.contains(&wa_id) {
            out.push(wa_id);
        }
    }
    Ok(out)
}

/// A `senders` list as messages show it: `+15550100000, +15550100001`.
pub(crate) fn list_senders(senders: &[WaId]) -> String {
    senders.iter().map(|s| format!("+{s}")).collect::<Vec<_>>().join(", ")
}

impl Auth {
    /// Refuses (1005, PERMISSION_DENIED / 403, field `sender`) a send as `sender` by a caller whose
    /// `senders` do not include it. `sender` is the request's raw value; `None` or empty is the
    /// node's `default_sender`, so that is what is checked. An invalid number is refused as the
    /// coordinator would (field `sender`). Unrestricted callers pass without any work.
    pub fn check_sender(&self, caller: &Principal, sender: Option<&str>) -> Result<(), ApiError> {
        let (Some(allowed), Some(e)) = (&caller.senders, &self.enabled) else { return Ok(()) };
        let (wa_id, named) = match sender.map(str::trim).filter(|s| !s.is_empty()) {
            None => (e.rules.default_sender.clone(), "the node's default_sender"),
            Some(raw) => {
                let wa_id = phone::normalize(raw, &e.rules.country_code).map_err(|err| ApiError {
                    field: "sender".into(),
                    details: format!("invalid sender: {}", err.details),
                    ..err
                })?;
                (wa_id, "sender")
            }
        };
        if allowed.contains(&wa_id) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::AccessDenied,
            "sender",
            format!(
                "user `{}` may not send as +{wa_id} ({named}): expected one of its senders: {}",
                caller.username,
                list_senders(allowed)
            ),
        ))
    }
}

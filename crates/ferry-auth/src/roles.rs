//! Roles and the principal a request runs as.

use std::sync::Arc;

use ferry_model::WaId;
use ferry_shard::ShardError;

/// A role; [`Role::Admin`] includes everything [`Role::User`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role `{other}`: expected `admin` or `user`")),
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    /// The business numbers this caller may send as and read; `None`: unrestricted (admins,
    /// users without a list, auth disabled).
    pub senders: Option<Arc<[WaId]>>,
}

impl Principal {
    /// Whether this caller may read a message sent as `sender` (a normalized wa_id, as stored).
    pub fn may_read(&self, sender: &str) -> bool {
        self.senders.as_ref().is_none_or(|list| list.iter().any(|s| s.as_str() == sender))
    }
}

pub(crate) fn parse_role(s: &str, what: &str) -> Result<Role, ShardError> {
    s.parse().map_err(|e| ShardError::Corrupt { shard: u16::MAX, what: format!("{what}: {e}") })
}

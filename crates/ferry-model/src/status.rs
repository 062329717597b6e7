//! What became of a message: [`MessageStatus`] and the rule that a status never goes backwards.
//!
//! `accepted` (durable in its shard) → `sent` (the chat server acknowledged it) → `delivered` →
//! `read`; or `accepted` → `failed` (TTL expired, recipient invalid). A message of a paced template
//! is `held_for_quality_assessment` from its acceptance until it is released (then delivered like
//! any accepted message) or dropped (`failed`, 132015). A later status may arrive
//! before an earlier one (a receipt racing the ack that precedes it); [`MessageStatus::advances`]
//! decides whether a change moves the message forward, so stores and callbacks never regress.

use std::fmt;

/// The status of one message, as `GetMessage`, callbacks and the status stream name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    Accepted,
    Sent,
    Delivered,
    Read,
    Failed,
    /// A paced template's message, held while the template's quality is assessed (not in the
    /// delivery queue). Released → delivered as usual; dropped → `failed` (132015).
    HeldForQualityAssessment,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 6] = [
        MessageStatus::Accepted,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::HeldForQualityAssessment,
    ];

    /// The name used on every API (`accepted`, `sent`, `delivered`, `read`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Accepted => "accepted",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::HeldForQualityAssessment => "held_for_quality_assessment",
        }
    }

    /// Stable numeric code used in storage. Part of the on-disk format: never renumber.
    pub fn code(self) -> u32 {
        match self {
            MessageStatus::Accepted => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Failed => 4,
            MessageStatus::HeldForQualityAssessment => 5,
        }
    }

    pub fn from_code(code: u32) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Whether moving from `self` to `next` is progress. `sent < delivered < read`; `failed` only
    /// replaces a message that was never sent (a sent message cannot fail any more); `held` only
    /// follows `accepted`, and ranks like it (a released message moves on to `sent`).
    pub fn advances(self, next: MessageStatus) -> bool {
        use MessageStatus::*;
        match (self, next) {
            (Failed, _) => false,
            (_, Failed) => matches!(self, Accepted | HeldForQualityAssessment),
            (_, Accepted) => false,
            (_, HeldForQualityAssessment) => self == Accepted,
            (HeldForQualityAssessment, _) => true,
            _ => next.code() > self.code(),
        }
    }

    /// True once the chat server has the message (`sent`, `delivered`, `read`).
    pub fn is_at_least_sent(self) -> bool {
        matches!(self, MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read)
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        assert!(Accepted.advances(Sent));
        assert!(Sent.advances(Delivered));
        assert!(Delivered.advances(Read));
        assert!(Sent.advances(Read));
        assert!(!Read.advances(Delivered));
        assert!(!Delivered.advances(Sent));
        assert!(!Sent.advances(Sent));
        assert!(Accepted.advances(Failed));
        assert!(!Sent.advances(Failed));
        assert!(!Failed.advances(Sent));
        assert!(!Read.advances(Accepted));
        assert!(Accepted.advances(HeldForQualityAssessment));
        assert!(HeldForQualityAssessment.advances(Sent));
        assert!(HeldForQualityAssessment.advances(Failed));
        assert!(!Sent.advances(HeldForQualityAssessment));
        assert!(!HeldForQualityAssessment.advances(Accepted));
    }

    #[test]
    fn codes_round_trip() {
        for s in MessageStatus::ALL {
            assert_eq!(MessageStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(MessageStatus::from_code(99), None);
    }
}

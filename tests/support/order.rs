//! The per-recipient order check of the history checks (issue #12): ferry sends a recipient's
//! messages one at a time in seq order (ARCHITECTURE.md, step 10), so the chat server's first
//! arrivals of each (sender, recipient) must carry increasing seqs of one shard and id space
//! (`ferry_model::MessageId::decode`). The arrivals come from chatsim's `ChatAdmin/History`.

use std::net::SocketAddr;

use ferry_model::MessageId;
use ferry_proto::chat::v1::chat_admin_client::ChatAdminClient;
use ferry_proto::chat::v1::{HistoryRequest, HistoryResponse, RecipientHistory};

/// Every place where a recipient's first arrivals break seq order, one line each (empty: the
/// order holds).
pub fn recipient_order_violations(recipients: &[RecipientHistory]) -> Vec<String> {
    let mut violations = Vec::new();
    for r in recipients {
        let mut previous: Option<(&str, ferry_model::MessageKey)> = None;
        for id in &r.message_ids {
            let Some(key) = MessageId::decode(id) else {
                violations.push(format!("{} → {}: {id} is not a ferry id", r.sender, r.recipient));
                continue;
            };
            if let Some((before, last)) = previous {
                if (key.shard, key.space) != (last.shard, last.space) {
                    violations.push(format!(
                        "{} → {}: {id} (shard {}, space {:x}) follows {before} (shard {}, space {:x})",
                        r.sender, r.recipient, key.shard.0, key.space, last.shard.0, last.space
                    ));
                } else if key.seq <= last.seq {
                    violations.push(format!(
                        "{} → {}: {id} (seq {}) arrived after {before} (seq {})",
                        r.sender, r.recipient, key.seq, last.seq
                    ));
                }
            }
            previous = Some((id, key));
        }
    }
    violations
}

/// The chat server's history with every recipient's first arrivals (over gRPC).
pub async fn chat_history(chatsim: SocketAddr) -> HistoryResponse {
    let mut c = ChatAdminClient::connect(format!("http://{chatsim}")).await.expect("connect to chatsim");
    c.history(HistoryRequest { recipients: true }).await.expect("chatsim history").into_inner()
}

/// Asserts that every recipient's first arrivals at `chatsim` are in increasing seq order and
/// that none was left out of the history; returns how many ids were checked.
pub async fn assert_recipient_order(chatsim: SocketAddr) -> usize {
    let history = chat_history(chatsim).await;
    assert!(
        !history.recipients_truncated && history.recipients.iter().all(|r| !r.truncated),
        "the chat server's history was truncated: the test is too big for its order check"
    );
    let violations = recipient_order_violations(&history.recipients);
    assert!(violations.is_empty(), "per-recipient order broken:\n{}", violations.join("\n"));
    history.recipients.iter().map(|r| r.message_ids.len()).sum()
}

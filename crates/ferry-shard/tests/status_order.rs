//! Statuses never go backwards, whatever the order in which a message's ack (`sent`, possibly
//! twice: a resend's) and receipts (`delivered`, `read`, possibly twice) reach a real shard, each
//! alone or several in one group commit: after every commit the stored status is the one before
//! or one it advances to, and the status events are in status order, each status at most once.
//! With the ack among them, the final status is the furthest one reported, and the events are
//! `sent` and every receipt that was progress, in order, whenever the ack came (a receipt that
//! overtook the ack is reported once the ack fills the record in).

use ferry_model::{MessageStatus, ShardId};
use ferry_shard::settle::status_base;
use ferry_shard::test_support::{message, resources};
use ferry_shard::{Settlement, Shard, ShardConfig};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Ack,
    Delivered,
    Read,
}

fn changes() -> impl Strategy<Value = (Vec<Change>, Vec<bool>)> {
    let one = prop_oneof![Just(Change::Ack), Just(Change::Delivered), Just(Change::Read)];
    (proptest::collection::vec(one, 1..7), proptest::collection::vec(any::<bool>(), 7))
}

fn status(code: u32) -> MessageStatus {
    MessageStatus::from_code(code).expect("a known status code")
}

fn check(changes: &[Change], together: &[bool]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let res = resources();
        let config = ShardConfig { callbacks: true, ..ShardConfig::default() };
        let shard = Shard::open(dir.path(), ShardId(0), 1, 9, &res, &config).unwrap();
        let seq = shard.append_durably(vec![message(1)]).unwrap().await.unwrap()[0].seq;
        let base = status_base(&shard.get_queued(seq).unwrap().unwrap());
        let settlement = |(i, c): (usize, &Change)| {
            let at_ms = 2_000 + i as i64;
            match c {
                Change::Ack => Settlement::Sent { seq, message: base.clone(), at_ms },
                Change::Delivered => Settlement::Receipt { seq, status: MessageStatus::Delivered, at_ms },
                Change::Read => Settlement::Receipt { seq, status: MessageStatus::Read, at_ms },
            }
        };
        // Groups: a change joins the previous one's group commit when `together[i]`.
        let mut groups: Vec<Vec<Settlement>> = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            let s = settlement((i, c));
            match groups.last_mut() {
                Some(g) if together[i] => g.push(s),
                _ => groups.push(vec![s]),
            }
        }
        let mut was = MessageStatus::Accepted;
        for group in groups {
            let pause = shard.pause_writer_for_test();
            let pending: Vec<_> = group.into_iter().map(|s| shard.settle_durably(vec![s], None).unwrap()).collect();
            drop(pause);
            for p in pending {
                p.await.unwrap();
            }
            let now = shard.get_status(seq).unwrap().map_or(MessageStatus::Accepted, |r| status(r.status));
            assert!(now == was || was.advances(now), "{changes:?} {together:?}: {was} went back to {now}");
            was = now;
        }
        let events: Vec<MessageStatus> = shard
            .scan_outbox(0, shard.committed_next_outbox_seq(), 100)
            .unwrap()
            .into_iter()
            .map(|(_, c)| status(c.status))
            .collect();
        assert!(events.windows(2).all(|w| w[0].advances(w[1])), "{changes:?} {together:?}: events {events:?}");
        if changes.contains(&Change::Ack) {
            // Sent; delivered if a delivered receipt came before any read (after a read it is not
            // progress); read if one came.
            let first_read = changes.iter().position(|c| *c == Change::Read);
            let delivered =
                changes.iter().position(|c| *c == Change::Delivered).is_some_and(|d| first_read.is_none_or(|r| d < r));
            let mut expected = vec![MessageStatus::Sent];
            expected.extend(delivered.then_some(MessageStatus::Delivered));
            expected.extend(first_read.map(|_| MessageStatus::Read));
            assert_eq!(was, *expected.last().unwrap(), "{changes:?} {together:?}: the final status");
            assert_eq!(events, expected, "{changes:?} {together:?}: the events");
        }
        shard.close();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn statuses_never_go_backwards_under_any_order_of_ack_and_receipts((changes, together) in changes()) {
        check(&changes, &together);
    }
}

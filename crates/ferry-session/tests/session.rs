//! Contract tests of ferry-session: a sender and a receiver set up through a bundle, then every way a
//! message must or must not decrypt (order, skips, replays, tampering, crashes, wire conversions).

use ferry_proto::chat::v1 as proto;
use ferry_session::{
    Header, IdentityKeyPair, MAX_SKIP, PreKeyBundle, ReceivingSession, RecipientKeys, SendingSession, SessionError,
    associated_data,
};
use proptest::prelude::*;

const SEED: [u8; 32] = [7; 32];
const SENDER: &str = "15550001111";
const RECIPIENT: &str = "16315551234";

struct Pair {
    sending: SendingSession,
    receiving: Option<ReceivingSession>,
    keys: RecipientKeys,
}

fn pair_with_reservation(reservation: u64) -> Pair {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let bundle = keys.next_bundle();
    let mut sending = SendingSession::initiate(&identity, &bundle).expect("initiate");
    sending.reserve(reservation);
    Pair { sending, receiving: None, keys }
}

impl Pair {
    fn encrypt(&mut self, id: &str, plaintext: &[u8]) -> (Header, Vec<u8>) {
        self.sending.encrypt(id, SENDER, RECIPIENT, plaintext).expect("encrypt")
    }

    fn decrypt(&mut self, id: &str, header: &Header, ciphertext: &[u8]) -> Result<Vec<u8>, SessionError> {
        if self.receiving.is_none() {
            self.receiving = Some(ReceivingSession::accept(&mut self.keys, header)?);
        }
        self.receiving.as_mut().unwrap().decrypt(id, SENDER, RECIPIENT, header, ciphertext)
    }

    fn must_decrypt(&mut self, id: &str, header: &Header, ciphertext: &[u8], expected: &[u8]) {
        assert_eq!(self.decrypt(id, header, ciphertext).expect("must decrypt"), expected);
    }
}

#[test]
fn round_trip() {
    let mut pair = pair_with_reservation(10);
    let (header, ciphertext) = pair.encrypt("wamid.1", b"hello");
    assert_eq!(header.counter, 0);
    assert_ne!(&ciphertext[..], b"hello");
    pair.must_decrypt("wamid.1", &header, &ciphertext, b"hello");
}

#[test]
fn many_messages_in_order() {
    let mut pair = pair_with_reservation(1000);
    for i in 0..1000u64 {
        let body = format!("message {i}");
        let id = format!("wamid.{i}");
        let (header, ciphertext) = pair.encrypt(&id, body.as_bytes());
        assert_eq!(header.counter, i);
        pair.must_decrypt(&id, &header, &ciphertext, body.as_bytes());
    }
    assert_eq!(pair.sending.counter(), 1000);
    assert!(pair.sending.needs_reservation());
}

#[test]
fn encrypt_without_reservation_fails() {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let mut sending = SendingSession::initiate(&identity, &keys.next_bundle()).unwrap();
    assert!(sending.needs_reservation());
    assert_eq!(sending.encrypt("wamid.1", SENDER, RECIPIENT, b"x").unwrap_err(), SessionError::ReservationExhausted);
    sending.reserve(1);
    sending.encrypt("wamid.1", SENDER, RECIPIENT, b"x").unwrap();
    assert_eq!(sending.encrypt("wamid.2", SENDER, RECIPIENT, b"x").unwrap_err(), SessionError::ReservationExhausted);
}

#[test]
fn skip_ahead_within_bound_and_late_arrivals_decrypt_once() {
    let mut pair = pair_with_reservation(MAX_SKIP + 10);
    let messages: Vec<_> = (0..MAX_SKIP + 1).map(|i| pair.encrypt(&format!("wamid.{i}"), b"x")).collect();
    // The last one skips exactly MAX_SKIP keys.
    let (last_header, last_ciphertext) = &messages[MAX_SKIP as usize];
    pair.must_decrypt(&format!("wamid.{MAX_SKIP}"), last_header, last_ciphertext, b"x");
    // A recent skipped one arrives late: decrypts once.
    let late = MAX_SKIP as usize - 3;
    let (header, ciphertext) = &messages[late];
    pair.must_decrypt(&format!("wamid.{late}"), header, ciphertext, b"x");
    assert_eq!(pair.decrypt(&format!("wamid.{late}"), header, ciphertext).unwrap_err(), SessionError::Decrypt);
    // One too old to have a kept key does not decrypt.
    let (header, ciphertext) = &messages[0];
    assert_eq!(pair.decrypt("wamid.0", header, ciphertext).unwrap_err(), SessionError::Decrypt);
}

#[test]
fn too_far_ahead_fails_and_changes_nothing() {
    let mut pair = pair_with_reservation(MAX_SKIP + 10);
    let (first_header, first_ciphertext) = pair.encrypt("wamid.0", b"first");
    pair.must_decrypt("wamid.0", &first_header, &first_ciphertext, b"first");
    let messages: Vec<_> = (1..MAX_SKIP + 3).map(|i| (i, pair.encrypt(&format!("wamid.{i}"), b"x"))).collect();
    let (i, (header, ciphertext)) = messages.last().unwrap();
    let err = pair.decrypt(&format!("wamid.{i}"), header, ciphertext).unwrap_err();
    assert!(matches!(err, SessionError::TooFarAhead { next_expected: 1, .. }), "{err:?}");
    // The session still decrypts the next message in order.
    let (i, (header, ciphertext)) = &messages[0];
    pair.must_decrypt(&format!("wamid.{i}"), header, ciphertext, b"x");
}

#[test]
fn replayed_counter_fails() {
    let mut pair = pair_with_reservation(10);
    let (header, ciphertext) = pair.encrypt("wamid.1", b"once");
    pair.must_decrypt("wamid.1", &header, &ciphertext, b"once");
    assert_eq!(pair.decrypt("wamid.1", &header, &ciphertext).unwrap_err(), SessionError::Decrypt);
}

#[test]
fn tampering_fails_and_does_not_burn_the_key() {
    let mut pair = pair_with_reservation(10);
    let (header, ciphertext) = pair.encrypt("wamid.1", b"payload");
    let mut tampered_ciphertext = ciphertext.clone();
    tampered_ciphertext[0] ^= 1;
    assert_eq!(pair.decrypt("wamid.1", &header, &tampered_ciphertext).unwrap_err(), SessionError::Decrypt);
    let mut tampered_tag = ciphertext.clone();
    *tampered_tag.last_mut().unwrap() ^= 0x80;
    assert_eq!(pair.decrypt("wamid.1", &header, &tampered_tag).unwrap_err(), SessionError::Decrypt);
    let mut tampered_nonce = header.clone();
    tampered_nonce.nonce[3] ^= 1;
    assert_eq!(pair.decrypt("wamid.1", &tampered_nonce, &ciphertext).unwrap_err(), SessionError::Decrypt);
    let mut tampered_counter = header.clone();
    tampered_counter.counter = 1;
    assert_eq!(pair.decrypt("wamid.1", &tampered_counter, &ciphertext).unwrap_err(), SessionError::Decrypt);
    assert_eq!(pair.decrypt("wamid.2", &header, &ciphertext).unwrap_err(), SessionError::Decrypt);
    let receiving = pair.receiving.as_mut().unwrap();
    assert_eq!(
        receiving.decrypt("wamid.1", SENDER, "16315550000", &header, &ciphertext).unwrap_err(),
        SessionError::Decrypt
    );
    assert_eq!(
        receiving.decrypt("wamid.1", "15550002222", RECIPIENT, &header, &ciphertext).unwrap_err(),
        SessionError::Decrypt
    );
    // None of the forgeries changed the session: the genuine message still decrypts.
    pair.must_decrypt("wamid.1", &header, &ciphertext, b"payload");
}

#[test]
fn header_of_another_session_fails() {
    let mut pair = pair_with_reservation(10);
    let (header, ciphertext) = pair.encrypt("wamid.1", b"x");
    pair.must_decrypt("wamid.1", &header, &ciphertext, b"x");
    let (mut header, ciphertext) = pair.encrypt("wamid.2", b"x");
    header.sender_identity_key = IdentityKeyPair::generate().public_key();
    assert_eq!(pair.decrypt("wamid.2", &header, &ciphertext).unwrap_err(), SessionError::Decrypt);
}

#[test]
fn bad_bundle_signature_fails() {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let mut bundle = keys.next_bundle();
    bundle.signed_prekey_signature[10] ^= 1;
    assert_eq!(SendingSession::initiate(&identity, &bundle).unwrap_err(), SessionError::BadSignature);
    let mut bundle = keys.next_bundle();
    bundle.signed_prekey = RecipientKeys::derive(&SEED, "16315559999").next_bundle().signed_prekey;
    assert_eq!(SendingSession::initiate(&identity, &bundle).unwrap_err(), SessionError::BadSignature);
}

#[test]
fn one_time_prekeys_are_handed_out_once_and_reuse_is_session_unknown() {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let first = keys.next_bundle();
    let second = keys.next_bundle();
    assert_eq!(first.one_time_prekey.unwrap().0, 1);
    assert_eq!(second.one_time_prekey.unwrap().0, 2);
    let mut session_a = SendingSession::initiate(&identity, &first).unwrap();
    let mut session_b = SendingSession::initiate(&identity, &first).unwrap();
    session_a.reserve(1);
    session_b.reserve(1);
    let (header_a, _) = session_a.encrypt("wamid.a", SENDER, RECIPIENT, b"a").unwrap();
    let (header_b, _) = session_b.encrypt("wamid.b", SENDER, RECIPIENT, b"b").unwrap();
    ReceivingSession::accept(&mut keys, &header_a).unwrap();
    assert!(matches!(ReceivingSession::accept(&mut keys, &header_b).unwrap_err(), SessionError::SessionUnknown(_)));
}

#[test]
fn recipient_keys_are_deterministic_per_seed_and_recipient() {
    let mut a = RecipientKeys::derive(&SEED, RECIPIENT);
    let mut b = RecipientKeys::derive(&SEED, RECIPIENT);
    assert_eq!(a.next_bundle(), b.next_bundle());
    let mut other_recipient = RecipientKeys::derive(&SEED, "16315550000");
    let mut other_seed = RecipientKeys::derive(&[8; 32], RECIPIENT);
    let bundle = a.next_bundle();
    assert_ne!(bundle.identity_key, other_recipient.next_bundle().identity_key);
    assert_ne!(bundle.identity_key, other_seed.next_bundle().identity_key);
}

#[test]
fn session_survives_a_chat_server_restart_via_deterministic_keys() {
    let mut pair = pair_with_reservation(10);
    let (header, ciphertext) = pair.encrypt("wamid.1", b"one");
    pair.must_decrypt("wamid.1", &header, &ciphertext, b"one");
    // The chat server restarts: same seed, no sessions.
    let mut restarted = RecipientKeys::derive(&SEED, RECIPIENT);
    let (header, ciphertext) = pair.encrypt("wamid.2", b"two");
    let mut receiving = ReceivingSession::accept(&mut restarted, &header).unwrap();
    assert_eq!(receiving.decrypt("wamid.2", SENDER, RECIPIENT, &header, &ciphertext).unwrap(), b"two");
}

#[test]
fn restore_after_reserve_never_reuses_a_counter_and_receiver_still_decrypts() {
    let mut pair = pair_with_reservation(0);
    let snapshot = pair.sending.reserve(100);
    let mut used_counters = std::collections::HashSet::new();
    for i in 0..37 {
        let (header, ciphertext) = pair.encrypt(&format!("wamid.{i}"), b"before crash");
        assert!(used_counters.insert(header.counter));
        pair.must_decrypt(&format!("wamid.{i}"), &header, &ciphertext, b"before crash");
    }
    // Crash: the process restarts from the last persisted snapshot.
    let mut restored = SendingSession::restore(&snapshot).unwrap();
    assert_eq!(restored.counter(), 100);
    assert!(restored.needs_reservation());
    assert_eq!(restored.session_id(), pair.sending.session_id());
    assert_eq!(restored.encrypt("wamid.x", SENDER, RECIPIENT, b"x").unwrap_err(), SessionError::ReservationExhausted);
    let second_snapshot = restored.reserve(100);
    for i in 0..100 {
        let id = format!("wamid.after.{i}");
        let (header, ciphertext) = restored.encrypt(&id, SENDER, RECIPIENT, b"after crash").unwrap();
        assert!(used_counters.insert(header.counter), "counter {} reused", header.counter);
        pair.must_decrypt(&id, &header, &ciphertext, b"after crash");
    }
    // A second crash in the second block restarts at 200.
    let restored_again = SendingSession::restore(&second_snapshot).unwrap();
    assert_eq!(restored_again.counter(), 200);
}

#[test]
fn reserve_in_steps_equals_reserve_at_once() {
    let identity = IdentityKeyPair::generate();
    let bundle = RecipientKeys::derive(&SEED, RECIPIENT).next_bundle();
    let mut stepwise = SendingSession::initiate(&identity, &bundle).unwrap();
    let mut at_once = stepwise.clone();
    stepwise.reserve(3);
    stepwise.reserve(5);
    assert_eq!(stepwise.reserve(2), at_once.reserve(10));
}

#[test]
fn corrupt_snapshots_are_rejected() {
    let mut pair = pair_with_reservation(0);
    let snapshot = pair.sending.reserve(10);
    assert!(matches!(SendingSession::restore(&snapshot[..50]), Err(SessionError::Corrupt(_))));
    for index in [0, 5, 80, 100, 120] {
        let mut damaged = snapshot.clone();
        damaged[index] ^= 1;
        assert!(matches!(SendingSession::restore(&damaged), Err(SessionError::Corrupt(_))), "byte {index}");
    }
}

#[test]
fn wire_round_trips_and_wrong_key_lengths_are_rejected() {
    let mut pair = pair_with_reservation(1);
    let (header, _) = pair.encrypt("wamid.1", b"x");
    let wire = proto::SessionHeader::from(&header);
    assert_eq!(Header::try_from(&wire).unwrap(), header);
    let mut short_key = wire.clone();
    short_key.ephemeral_key.pop();
    assert_eq!(
        Header::try_from(short_key).unwrap_err(),
        SessionError::WrongLength { field: "header.ephemeral_key", expected: 32, actual: 31 }
    );
    let mut long_nonce = wire.clone();
    long_nonce.nonce.push(0);
    assert!(matches!(Header::try_from(long_nonce), Err(SessionError::WrongLength { field: "header.nonce", .. })));
    let mut empty_identity = wire;
    empty_identity.sender_identity_key.clear();
    assert!(matches!(
        Header::try_from(empty_identity),
        Err(SessionError::WrongLength { field: "header.sender_identity_key", .. })
    ));

    let bundle = RecipientKeys::derive(&SEED, RECIPIENT).next_bundle();
    let wire = bundle.to_proto(RECIPIENT);
    assert_eq!(wire.recipient, RECIPIENT);
    assert_eq!(PreKeyBundle::try_from(&wire).unwrap(), bundle);
    let mut short_signature = wire.clone();
    short_signature.signed_prekey_signature.truncate(63);
    assert!(matches!(
        PreKeyBundle::try_from(short_signature),
        Err(SessionError::WrongLength { field: "bundle.signed_prekey_signature", expected: 64, actual: 63 })
    ));
    let mut bad_one_time = wire.clone();
    bad_one_time.one_time_prekey.push(1);
    assert!(matches!(
        PreKeyBundle::try_from(bad_one_time),
        Err(SessionError::WrongLength { field: "bundle.one_time_prekey", .. })
    ));
    let mut no_one_time = wire;
    no_one_time.one_time_prekey_id = 0;
    no_one_time.one_time_prekey.clear();
    assert_eq!(PreKeyBundle::try_from(no_one_time).unwrap().one_time_prekey, None);
}

#[test]
fn bundle_without_one_time_prekey_still_sets_up_a_session() {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let mut bundle = keys.next_bundle();
    bundle.one_time_prekey = None;
    let mut sending = SendingSession::initiate(&identity, &bundle).unwrap();
    sending.reserve(1);
    let (header, ciphertext) = sending.encrypt("wamid.1", SENDER, RECIPIENT, b"x").unwrap();
    assert_eq!(header.one_time_prekey_id, 0);
    let mut receiving = ReceivingSession::accept(&mut keys, &header).unwrap();
    assert_eq!(receiving.decrypt("wamid.1", SENDER, RECIPIENT, &header, &ciphertext).unwrap(), b"x");
}

#[test]
fn associated_data_is_unambiguous() {
    let header = Header {
        sender_identity_key: [1; 32],
        ephemeral_key: [2; 32],
        signed_prekey_id: 1,
        one_time_prekey_id: 2,
        counter: 3,
        nonce: [4; 24],
    };
    assert_ne!(associated_data("ab", "c", "d", &header), associated_data("a", "bc", "d", &header));
    assert_ne!(associated_data("a", "b", "cd", &header), associated_data("a", "bc", "d", &header));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any delivery order within the skipped-key window decrypts every message exactly once.
    #[test]
    fn any_order_within_window_decrypts_each_message_once(order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle()) {
        let mut pair = pair_with_reservation(40);
        let messages: Vec<_> = (0..40).map(|i| pair.encrypt(&format!("wamid.{i}"), format!("body {i}").as_bytes())).collect();
        for &i in &order {
            let (header, ciphertext) = &messages[i];
            prop_assert_eq!(pair.decrypt(&format!("wamid.{i}"), header, ciphertext).unwrap(), format!("body {i}").into_bytes());
        }
        for &i in &order {
            let (header, ciphertext) = &messages[i];
            prop_assert_eq!(pair.decrypt(&format!("wamid.{i}"), header, ciphertext).unwrap_err(), SessionError::Decrypt);
        }
    }

    /// Flipping any bit of the ciphertext makes it fail.
    #[test]
    fn any_bit_flip_fails(plaintext in proptest::collection::vec(any::<u8>(), 0..300), bit in any::<prop::sample::Index>()) {
        let mut pair = pair_with_reservation(1);
        let (header, mut ciphertext) = pair.encrypt("wamid.1", &plaintext);
        let bit = bit.index(ciphertext.len() * 8);
        ciphertext[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(pair.decrypt("wamid.1", &header, &ciphertext).unwrap_err(), SessionError::Decrypt);
    }
}

#[test]
fn forged_first_message_does_not_burn_the_one_time_prekey() {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&SEED, RECIPIENT);
    let mut sending = SendingSession::initiate(&identity, &keys.next_bundle()).unwrap();
    sending.reserve(2);
    let (header, ciphertext) = sending.encrypt("wamid.1", SENDER, RECIPIENT, b"first").unwrap();
    let mut forged = ciphertext.clone();
    forged[0] ^= 1;
    let error = ReceivingSession::accept_first_message(&mut keys, "wamid.1", SENDER, RECIPIENT, &header, &forged);
    assert_eq!(error.unwrap_err(), SessionError::Decrypt);
    let (mut receiving, plaintext) =
        ReceivingSession::accept_first_message(&mut keys, "wamid.1", SENDER, RECIPIENT, &header, &ciphertext).unwrap();
    assert_eq!(plaintext, b"first");
    let (header, ciphertext) = sending.encrypt("wamid.2", SENDER, RECIPIENT, b"second").unwrap();
    assert_eq!(receiving.decrypt("wamid.2", SENDER, RECIPIENT, &header, &ciphertext).unwrap(), b"second");
    // Now the one-time pre-key is used: another session naming it is unknown.
    let again = ReceivingSession::accept_first_message(&mut keys, "wamid.1", SENDER, RECIPIENT, &header, &ciphertext);
    assert!(matches!(again.unwrap_err(), SessionError::SessionUnknown(_)));
}

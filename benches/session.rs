//! Criterion benches of ferry-session: session setup (initiate + accept: X3DH on both sides and the
//! bundle signature check), encrypt of a 100-byte and a 1 KiB message, and decrypt of the same.
//! Run: `cargo bench -p ferry-session --bench session -- --warm-up-time 1 --measurement-time 3`.
//!
//! Last results (2-core shared machine, release): setup (initiate + accept, incl. bundle) 534 µs;
//! derive_recipient_keys 73 µs; encrypt 100 B 2.75 µs, 1 KiB 3.37 µs; decrypt 100 B 2.42 µs,
//! 1 KiB 3.04 µs.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_session::{IdentityKeyPair, ReceivingSession, RecipientKeys, SendingSession};

const SENDER: &str = "15550001111";
const RECIPIENT: &str = "16315551234";
const MESSAGE_ID: &str = "wamid.HBgLMTYzMTU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA";

fn setup(c: &mut Criterion) {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&[7; 32], RECIPIENT);
    c.bench_function("session/setup/initiate+accept", |b| {
        b.iter(|| {
            let bundle = keys.next_bundle();
            let mut sending = SendingSession::initiate(&identity, &bundle).unwrap();
            sending.reserve(1);
            let (header, _) = sending.encrypt(MESSAGE_ID, SENDER, RECIPIENT, b"").unwrap();
            black_box(ReceivingSession::accept(&mut keys, &header).unwrap())
        })
    });
    c.bench_function("session/setup/derive_recipient_keys", |b| {
        b.iter(|| black_box(RecipientKeys::derive(&[7; 32], black_box(RECIPIENT))))
    });
}

fn encrypt_and_decrypt(c: &mut Criterion) {
    let identity = IdentityKeyPair::generate();
    let mut keys = RecipientKeys::derive(&[7; 32], RECIPIENT);
    for size in [100usize, 1024] {
        let plaintext = vec![b'x'; size];
        let mut group = c.benchmark_group(format!("session/{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        let mut sending = SendingSession::initiate(&identity, &keys.next_bundle()).unwrap();
        group.bench_function("encrypt", |b| {
            b.iter(|| {
                if sending.needs_reservation() {
                    sending.reserve(1024);
                }
                black_box(sending.encrypt(MESSAGE_ID, SENDER, RECIPIENT, black_box(&plaintext)).unwrap())
            })
        });
        let mut sending = SendingSession::initiate(&identity, &keys.next_bundle()).unwrap();
        sending.reserve(1024);
        let (first_header, first_ciphertext) = sending.encrypt(MESSAGE_ID, SENDER, RECIPIENT, &plaintext).unwrap();
        let mut receiving = ReceivingSession::accept(&mut keys, &first_header).unwrap();
        receiving.decrypt(MESSAGE_ID, SENDER, RECIPIENT, &first_header, &first_ciphertext).unwrap();
        group.bench_function("decrypt", |b| {
            b.iter_batched(
                || {
                    if sending.needs_reservation() {
                        sending.reserve(1024);
                    }
                    sending.encrypt(MESSAGE_ID, SENDER, RECIPIENT, &plaintext).unwrap()
                },
                |(header, ciphertext)| {
                    black_box(receiving.decrypt(MESSAGE_ID, SENDER, RECIPIENT, &header, &ciphertext).unwrap())
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, setup, encrypt_and_decrypt);
criterion_main!(benches);

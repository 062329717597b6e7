//! Stable routing: which shard owns a recipient (and which shard owns an idempotency key).
//!
//! `shard = jump_consistent_hash(xxh3_64_with_seed(key_bytes, ROUTING_SEED), shard_count)`
//!
//! - xxh3-64 (XXH3, as specified by the xxHash project, with the fixed seed below) over the UTF-8
//!   bytes of the normalized wa_id;
//! - Jump Consistent Hash (Lamping & Veach, 2014) maps the 64-bit hash to `0..shard_count`, moving
//!   only ~1/N of the keys when a shard is added (the basis for future resharding).
//!
//! This function is part of the on-disk contract: a data dir is only readable by a ferry that
//! routes exactly like the one that wrote it. Never use `std::hash` or `ahash` here (their output
//! changes across versions, processes and CPUs). The fixed vectors in the tests pin it.

use crate::{ShardId, WaId};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the routing hash: ASCII "ferry-v1" as a big-endian u64. Never change it.
pub const ROUTING_SEED: u64 = 0x6665_7272_792d_7631;

/// Jump Consistent Hash: maps `key` to a bucket in `0..buckets` (`buckets >= 1`).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets >= 1, "at least one bucket");
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    b as u32
}

/// The routing hash of arbitrary bytes.
pub fn routing_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, ROUTING_SEED)
}

/// The shard that owns recipient `wa_id` among `shard_count` shards.
pub fn shard_for_recipient(wa_id: &WaId, shard_count: u16) -> ShardId {
    ShardId(jump_consistent_hash(routing_hash(wa_id.as_str().as_bytes()), shard_count as u32) as u16)
}

/// The shard that owns an idempotency key (its "key shard"): the hash of `sender ++ 0x00 ++ key`.
pub fn shard_for_idempotency_key(storage_key: &[u8], shard_count: u16) -> ShardId {
    ShardId(jump_consistent_hash(routing_hash(storage_key), shard_count as u32) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wa(s: &str) -> WaId {
        WaId::from_normalized(s.to_owned())
    }

    /// Vectors from an independent implementation (`scripts/routing_vectors.py`, Python).
    #[test]
    fn jump_hash_matches_reference_vectors() {
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(0, 32), 0);
        let cases: [(u64, u32, u32); 6] = [
            (1, 1, 0),
            (0xdead_10cc, 1, 0),
            (0xdead_10cc, 2, 1),
            (0xdead_10cc, 3, 1),
            (0xdead_10cc, 10, 5),
            (0xdead_10cc, 100, 94),
        ];
        for (key, buckets, want) in cases {
            assert_eq!(jump_consistent_hash(key, buckets), want, "key {key:#x} buckets {buckets}");
        }
    }

    /// xxh3-64 with seed 0 of the empty input is a published constant of XXH3.
    #[test]
    fn xxh3_is_the_specified_function() {
        assert_eq!(xxh3_64_with_seed(b"", 0), 0x2D06_8005_38D3_94C2);
    }

    /// Pins the full routing function with vectors computed by `scripts/routing_vectors.py`, an
    /// independent implementation (Python `xxhash` package). If this test fails, routing changed and every existing
    /// data dir would be misrouted: do not update the vectors, fix the code.
    #[test]
    fn routing_vectors_are_fixed() {
        let vectors: [(&str, u16, u16); 8] = include!("routing_vectors.in");
        for (wa_id, shards, want) in vectors {
            assert_eq!(shard_for_recipient(&wa(wa_id), shards).0, want, "{wa_id} over {shards} shards");
        }
    }

    #[test]
    fn every_shard_count_spreads_recipients_evenly() {
        let sample: Vec<WaId> =
            (0..64_000u64).map(|i| wa(&format!("1631555{:05}", i % 100_000 + i / 100_000))).collect();
        for shards in 1..=32u16 {
            let mut counts = vec![0usize; shards as usize];
            for w in &sample {
                let s = shard_for_recipient(w, shards);
                assert!(s.0 < shards);
                counts[s.index()] += 1;
            }
            let expected = sample.len() as f64 / shards as f64;
            for (i, c) in counts.iter().enumerate() {
                let dev = (*c as f64 - expected).abs() / expected;
                assert!(dev < 0.10, "{shards} shards: shard {i} got {c}, expected ~{expected:.0}");
            }
        }
    }

    #[test]
    fn growing_the_shard_count_moves_few_recipients() {
        let sample: Vec<WaId> = (0..20_000u64).map(|i| wa(&format!("4479{:08}", i * 7919))).collect();
        let moved = sample.iter().filter(|w| shard_for_recipient(w, 8) != shard_for_recipient(w, 9)).count();
        let share = moved as f64 / sample.len() as f64;
        assert!((0.08..0.14).contains(&share), "moved {share:.3}, expected about 1/9");
    }
}

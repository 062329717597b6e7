#!/usr/bin/env python3
"""Independent implementation of ferry's routing function, used to produce the fixed vectors in
crates/ferry-model/src/routing_vectors.in (and to check them: the Rust test pins the same
values). Needs `pip install xxhash`.

shard = jump_consistent_hash(xxh3_64(wa_id_utf8, seed=0x66657272792d7631), shard_count)
"""
import xxhash

SEED = 0x6665_7272_792D_7631
MASK = (1 << 64) - 1


def jump(key: int, buckets: int) -> int:
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_for(wa_id: str, shards: int) -> int:
    return jump(xxhash.xxh3_64_intdigest(wa_id.encode(), seed=SEED), shards)


if __name__ == "__main__":
    cases = [("16315551234", 8), ("16315551234", 32), ("916315551234", 8), ("447911123456", 1),
             ("447911123456", 16), ("5511987654321", 32), ("8613800138000", 8), ("12025550123", 3)]
    print("[" + ", ".join(f'("{w}", {n}, {shard_for(w, n)})' for w, n in cases) + "]")
    for key, buckets in [(1, 1), (0xDEAD10CC, 1), (0xDEAD10CC, 2), (0xDEAD10CC, 3), (0xDEAD10CC, 10), (0xDEAD10CC, 100)]:
        print(f"jump({key:#x}, {buckets}) = {jump(key, buckets)}")
    print(f"xxh3_64('', seed 0) = {xxhash.xxh3_64_intdigest(b''):#x}")

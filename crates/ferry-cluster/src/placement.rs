//! Which nodes host a shard's replicas (design §6).

/// The nodes hosting shard `shard`: with the cluster's node ids sorted ascending
/// (`peer_ids_sorted`), the nodes at positions `s, s+1, ..., s+rf-1` (mod N). The first is the
/// shard's preferred leader (and the member that bootstraps it). `replication_factor` is capped
/// at the number of nodes; no nodes, no replicas.
pub fn placement(shard: u16, peer_ids_sorted: &[u64], replication_factor: usize) -> Vec<u64> {
    let n = peer_ids_sorted.len();
    (0..replication_factor.min(n)).map(|i| peer_ids_sorted[(shard as usize + i) % n]).collect()
}

#[cfg(test)]
mod tests {
    use super::placement;

    #[test]
    fn shards_rotate_over_the_sorted_nodes() {
        let three = [1, 2, 3];
        assert_eq!(placement(0, &three, 3), vec![1, 2, 3]);
        assert_eq!(placement(1, &three, 3), vec![2, 3, 1]);
        assert_eq!(placement(2, &three, 3), vec![3, 1, 2]);
        assert_eq!(placement(3, &three, 3), vec![1, 2, 3], "wraps around");
        let five = [10, 20, 30, 40, 50];
        assert_eq!(placement(4, &five, 3), vec![50, 10, 20]);
        assert_eq!(placement(31, &five, 3), vec![20, 30, 40]);
        assert_eq!(placement(7, &five, 1), vec![30]);
        assert_eq!(placement(0, &[1, 2], 3), vec![1, 2], "replication factor capped at N");
        assert_eq!(placement(5, &[], 3), Vec::<u64>::new());
    }
}

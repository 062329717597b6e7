//! A replicated shard (`Shard::open_replicated`) through its public handle, three replicas over
//! an in-memory network: appends at the leader and at a follower (forwarded) are answered only
//! once committed, every replica holds the same messages under the same ids, only the leader's
//! gate is open, and after the leader goes away a new one answers with the next seqs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_model::ShardId;
use ferry_shard::raft::openraft::error::{
    Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use ferry_shard::raft::openraft::network::RPCOption;
use ferry_shard::raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use ferry_shard::raft::openraft::{self, Raft, RaftNetwork, RaftNetworkFactory, Vote};
use ferry_shard::raft::{ForwardError, ForwardFuture, Forwarder, PeerNode, ShardRaft};
use ferry_shard::test_support::{message, resources};
use ferry_shard::{Replication, Shard, ShardConfig, ShardError, SharedResources};

/// The replicas that are up, by node id (the network reaches only these).
type Nodes = Arc<Mutex<BTreeMap<u64, Arc<Shard>>>>;

fn raft_of(nodes: &Nodes, id: u64) -> Result<Raft<ShardRaft>, Unreachable> {
    let shard = nodes.lock().unwrap().get(&id).cloned();
    let shard = shard.ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {id} is down"))))?;
    Ok(shard.raft().expect("replicated").clone())
}

struct Net {
    nodes: Nodes,
}

impl RaftNetworkFactory<ShardRaft> for Net {
    type Network = Client;
    async fn new_client(&mut self, target: u64, _node: &PeerNode) -> Client {
        Client { nodes: self.nodes.clone(), target }
    }
}

struct Client {
    nodes: Nodes,
    target: u64,
}

impl RaftNetwork<ShardRaft> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let raft = raft_of(&self.nodes, self.target)?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let raft = raft_of(&self.nodes, self.target)?;
        raft.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: openraft::Snapshot<ShardRaft>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<ShardRaft, Fatal<u64>>> {
        let raft = raft_of(&self.nodes, self.target)?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Forwarding "over the wire": the leader's `serve_forwarded`, or unreachable when it is down.
struct Forward {
    nodes: Nodes,
    /// Forwarded batches, by sender (checked by the test).
    calls: Arc<Mutex<Vec<u64>>>,
    from: u64,
}

impl Forwarder for Forward {
    fn forward(&self, leader: u64, _shard: u16, request: Vec<u8>) -> ForwardFuture {
        self.calls.lock().unwrap().push(self.from);
        let target = self.nodes.lock().unwrap().get(&leader).cloned();
        match target {
            Some(shard) => shard.serve_forwarded(request),
            None => {
                Box::pin(async move { Err(ForwardError::Unreachable { node: leader, detail: "node is down".into() }) })
            }
        }
    }
}

struct Cluster {
    nodes: Nodes,
    calls: Arc<Mutex<Vec<u64>>>,
    _dirs: Vec<tempfile::TempDir>,
    _res: SharedResources,
}

const WAIT: Duration = Duration::from_secs(30);

async fn start() -> Cluster {
    let res = resources();
    let nodes: Nodes = Arc::default();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let config = Arc::new(
        openraft::Config {
            cluster_name: "ferry-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..openraft::Config::default()
        }
        .validate()
        .unwrap(),
    );
    let mut dirs = Vec::new();
    for id in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let replication = Replication {
            node_id: id,
            raft_config: config.clone(),
            network: Net { nodes: nodes.clone() },
            forwarder: Arc::new(Forward { nodes: nodes.clone(), calls: calls.clone(), from: id }),
            leader_wait: Duration::from_secs(5),
            max_in_flight: 4,
            id_space: 0xfe44,
            identity_key: [7; 32],
            snapshot_root: dir.path().join("snapshots"),
        };
        let shard =
            Shard::open_replicated(&dir.path().join("db"), ShardId(0), 1, &res, &ShardConfig::default(), replication)
                .await
                .unwrap();
        nodes.lock().unwrap().insert(id, Arc::new(shard));
        dirs.push(dir);
    }
    let members: BTreeMap<u64, PeerNode> = (1..=3).map(|id| (id, PeerNode { addr: format!("node-{id}") })).collect();
    raft_of(&nodes, 1).unwrap().initialize(members).await.unwrap();
    Cluster { nodes, calls, _dirs: dirs, _res: res }
}

impl Cluster {
    fn shard(&self, id: u64) -> Arc<Shard> {
        self.nodes.lock().unwrap().get(&id).cloned().expect("node is up")
    }

    /// Waits until one of the live replicas' gate is open and returns that node.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let up: Vec<(u64, Arc<Shard>)> = self.nodes.lock().unwrap().iter().map(|(i, s)| (*i, s.clone())).collect();
            let open: Vec<u64> = up.iter().filter(|(_, s)| *s.leading().borrow()).map(|(i, _)| *i).collect();
            if let [one] = open.as_slice() {
                return *one;
            }
            assert!(tokio::time::Instant::now() < deadline, "no single open leader gate; open: {open:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn append(shard: &Shard, ns: &[u32]) -> Result<Vec<(u64, String)>, ShardError> {
    let messages = ns.iter().map(|n| message(*n)).collect();
    let outcomes = shard.append_durably(messages)?.await?;
    Ok(outcomes.into_iter().map(|o| (o.seq, o.message_id.as_str().to_owned())).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_commit_on_every_replica_from_leader_and_follower_and_survive_the_leader() {
    let cluster = start().await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let at_leader = append(&cluster.shard(leader), &[1, 2]).await.expect("the leader commits");
    let at_follower = append(&cluster.shard(follower), &[3]).await.expect("a follower forwards to the leader");
    assert_eq!(at_leader.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(at_follower[0].0, 3, "the follower's message got the leader's next seq");
    assert_eq!(cluster.calls.lock().unwrap().as_slice(), &[follower], "one forwarded batch, from the follower");
    let answered: Vec<(u64, String)> = at_leader.iter().chain(&at_follower).cloned().collect();
    for (seq, id) in &answered {
        let key = ferry_model::MessageId::decode(id).expect("a ferry id");
        assert_eq!(key.space, 0xfe44, "the id carries the group's id space");
        assert_eq!(key.seq, *seq);
    }
    // Every replica applies the entries (followers a moment later) and holds the same messages.
    for id in 1..=3 {
        let shard = cluster.shard(id);
        let deadline = tokio::time::Instant::now() + WAIT;
        while shard.committed_next_seq() < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} applied up to {}",
                shard.committed_next_seq()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (seq, _) in &answered {
            assert!(shard.get_queued(*seq).unwrap().is_some(), "replica {id} holds message {seq}");
        }
        assert_eq!(*shard.leading().borrow(), id == leader, "only the leader's gate is open (node {id})");
    }

    // The leader goes away: the others elect a new leader, which continues the seqs.
    let gone = cluster.nodes.lock().unwrap().remove(&leader).unwrap();
    gone.raft().unwrap().shutdown().await.unwrap();
    gone.close();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let other = (1..=3).find(|id| *id != leader && *id != new_leader).unwrap();
    let after = append(&cluster.shard(other), &[4]).await.expect("the survivors commit");
    assert_eq!(after[0].0, 4, "the new leader continues the seqs");
    assert!(answered.iter().all(|(_, id)| *id != after[0].1), "no id is answered twice");
    for id in [new_leader, other] {
        let shard = cluster.shard(id);
        shard.close();
        shard.raft().unwrap().shutdown().await.unwrap();
    }
}

/// A message whose idempotency key lives in its own shard, appended again (a retry after an
/// unknown outcome, which in a cluster may come through another node whose coordinator did not
/// see the first answer): apply answers the first id instead of writing a second message, also
/// when both are in one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_placed_here_answers_its_first_id_when_appended_again() {
    replays_keyed_appends(|key, payload_hash| ferry_shard::IdempotencyPlacement::Here { key, payload_hash }).await;
}

/// The key's record lives on another shard: the message's shard still answers a retry (its
/// coordinator may never have learned the first outcome, so the key shard may have no record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_placed_elsewhere_answers_its_first_id_when_appended_again() {
    replays_keyed_appends(|key, payload_hash| ferry_shard::IdempotencyPlacement::Elsewhere {
        key_shard: 1,
        key,
        payload_hash,
    })
    .await;
}

async fn replays_keyed_appends(place: fn(Vec<u8>, Vec<u8>) -> ferry_shard::IdempotencyPlacement) {
    use ferry_shard::AppendAnswer;
    let res = resources();
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), ShardId(0), 2, 5, &res, &ShardConfig::default()).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let keyed = |n: u32, key: &str| {
        let mut m = message(n);
        // Keys answer for 24 h from acceptance (the test message's 1970 acceptance is long gone).
        m.record.accepted_at_ms = now_ms;
        m.record.expires_at_ms = now_ms + 3_600_000;
        m.idempotency = Some(place(key.as_bytes().to_vec(), vec![n as u8]));
        m
    };
    let first = shard.append_durably(vec![keyed(1, "k1")]).unwrap().await.unwrap();
    assert_eq!(first[0].answer, AppendAnswer::New);
    let again = shard.append_durably(vec![keyed(1, "k1"), keyed(2, "k2")]).unwrap().await.unwrap();
    assert_eq!(again[0].message_id, first[0].message_id, "the retry answers the first id");
    assert_eq!(again[0].seq, first[0].seq);
    assert_eq!(again[0].answer, AppendAnswer::Replay);
    assert_ne!(again[1].message_id, first[0].message_id);
    assert_eq!(again[1].answer, AppendAnswer::New);
    // The key reused for another message: refused, nothing written.
    let reused = shard.append_durably(vec![keyed(9, "k1")]).unwrap().await.unwrap();
    assert_eq!(reused[0].answer, AppendAnswer::KeyConflict, "the key answered another message");
    assert_eq!(reused[0].message_id, first[0].message_id);
    // Two sends of one key in the same entry: one message.
    let hold = shard.pause_writer_for_test();
    let a = shard.append_durably(vec![keyed(3, "k3")]).unwrap();
    let b = shard.append_durably(vec![keyed(3, "k3")]).unwrap();
    drop(hold);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a[0].message_id, b[0].message_id, "one id for the key within one entry");
    assert_eq!(b[0].answer, AppendAnswer::Replay);
    let queued: Vec<u64> = shard.scan_queue(0, 100).unwrap().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(queued, vec![first[0].seq, again[1].seq, a[0].seq], "one message per key in the queue");
    shard.close();
}

//! The cluster transport over real tonic servers on loopback (port 0) with real shard replicas
//! (log store + state machine on temp dirs): three nodes bootstrap one group, agree on the ids and
//! fail over; a learner added after the log was purged catches up from a streamed snapshot; a
//! wiped first member never initializes the group again; a wiped replica does not vote until it
//! caught up (openraft's FAQ data-loss case), then votes again; a wrong secret is refused and
//! forwarded batches map their outcomes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ferry_cluster::{
    BootstrapError, BootstrapOutcome, ClusterForwarder, ClusterServer, ForwardTarget, GroupNetwork, Peers,
    RaftTimeouts, Registry, RejoinMode, RejoinOutcome, bootstrap, detect_rejoin, node_status, serve,
};
use ferry_model::ShardId;
use ferry_shard::apply::{EntryOp, ShardEntry, ShardState};
use ferry_shard::raft::{
    CheckpointSnapshot, ForwardError, ForwardFuture, Forwarder, LogStore, OpReply, PeerNode, ShardRaft, StateMachine,
};
use ferry_shard::storage::{EventRetention, Store};
use ferry_shard::test_support::{message, resources};
use ferry_shard::{IdempotencyPlacement, NewMessage, Shard, ShardConfig, SharedResources};
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::{Raft, RaftNetwork, RaftNetworkFactory, Vote};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const GROUP: u16 = 0;
const WAIT: Duration = Duration::from_secs(60);

/// Creates (first time) or reopens the replica stores in `dir` (as `raft_storage.rs` does). A
/// database still held by a replica that is shutting down is retried until [`WAIT`].
async fn open_replica(dir: &Path, res: &SharedResources) -> (LogStore, StateMachine) {
    let db = dir.join("db");
    if !db.exists() {
        let shard = Shard::open(&db, ShardId(0), 1, 9, res, &ShardConfig::default()).unwrap();
        shard.close();
        drop(shard);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let store = loop {
        let events = EventRetention { retention_ms: i64::MAX, webhook_floor: Arc::new(AtomicU64::new(u64::MAX)) };
        match Store::open(&db, 0, res, i64::MAX, events) {
            Ok(store) => break Arc::new(store),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("reopening {}: {e}", db.display()),
        }
    };
    let log = LogStore::open(store.clone()).unwrap();
    let sm = StateMachine::open(store, ShardId(0), dir.join("snapshots")).unwrap();
    (log, sm)
}

/// Fast timing for tests (the shape of the design's defaults).
fn test_timeouts() -> RaftTimeouts {
    RaftTimeouts {
        heartbeat_ms: 100,
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1000,
        ..RaftTimeouts::default()
    }
}

/// One "node": its cluster server, its registry and its replica of group 0.
struct Node {
    id: u64,
    addr: String,
    peers: Arc<Peers>,
    registry: Arc<Registry>,
    server: Option<ClusterServer>,
    raft: Raft<ShardRaft>,
    /// `None` while the replica is down.
    store: Option<Arc<Store>>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts node `id`: a server on a fresh loopback port and a replica on a fresh dir.
    async fn start(id: u64, res: &SharedResources, timeouts: &RaftTimeouts) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peers = Peers::new(None).unwrap();
        let registry = Registry::new();
        let server = serve(listener, id, registry.clone(), None, None, timeouts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (raft, store) = open_raft(id, dir.path(), res, &peers, timeouts).await;
        registry.register(GROUP, raft.clone(), dir.path().join("snapshots"));
        Node { id, addr, peers, registry, server: Some(server), raft, store: Some(store), dir }
    }

    fn store(&self) -> &Store {
        self.store.as_deref().expect("the replica is up")
    }

    /// The replica shuts down and its group is unregistered (its calls are answered
    /// `UNAVAILABLE`); the server stays, so the node keeps its address.
    async fn down(&mut self) {
        self.registry.unregister(GROUP);
        self.raft.shutdown().await.unwrap();
        self.store = None;
    }

    /// The replica is reopened on `dir` (its disk, or a new empty one: a wipe) and registered.
    async fn up(&mut self, dir: Option<tempfile::TempDir>, res: &SharedResources, timeouts: &RaftTimeouts) {
        if let Some(dir) = dir {
            self.dir = dir;
        }
        let (raft, store) = open_raft(self.id, self.dir.path(), res, &self.peers, timeouts).await;
        self.registry.register(GROUP, raft.clone(), self.dir.path().join("snapshots"));
        self.raft = raft;
        self.store = Some(store);
    }

    /// Runs the rejoin check of its replica (as a node does for every group it hosts).
    fn detect_rejoin(&self, members: &BTreeMap<u64, PeerNode>) -> JoinHandle<Result<RejoinOutcome, BootstrapError>> {
        let (raft, peers, registry) = (self.raft.clone(), self.peers.clone(), self.registry.clone());
        tokio::spawn(detect_rejoin(GROUP, raft, members.clone(), self.id, peers, registry, tokio::time::sleep(WAIT)))
    }

    fn rejoin_mode(&self) -> RejoinMode {
        self.registry.get(GROUP).expect("registered").rejoin_state().mode
    }

    fn member(&self) -> PeerNode {
        PeerNode { addr: self.addr.clone() }
    }

    /// Stops the server and shuts the replica down (the node is gone).
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        if self.store.take().is_some() {
            self.raft.shutdown().await.unwrap();
        }
    }
}

async fn open_raft(
    id: u64,
    dir: &Path,
    res: &SharedResources,
    peers: &Arc<Peers>,
    timeouts: &RaftTimeouts,
) -> (Raft<ShardRaft>, Arc<Store>) {
    let (log, sm) = open_replica(dir, res).await;
    let store = sm.store();
    let config = timeouts.openraft_config("ferry-test").unwrap();
    let net = GroupNetwork::new(GROUP, id, peers.clone(), timeouts.clone());
    (Raft::new(id, config, net, log, sm).await.unwrap(), store)
}

async fn start_nodes(n: u64, res: &SharedResources, timeouts: &RaftTimeouts) -> (Vec<Node>, BTreeMap<u64, PeerNode>) {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Node::start(id, res, timeouts).await);
    }
    let members = nodes.iter().map(|n| (n.id, n.member())).collect();
    (nodes, members)
}

/// Runs the rejoin check and the bootstrap helper on every node at once; returns each node's
/// bootstrap outcome.
async fn bootstrap_all(nodes: &[Node], members: &BTreeMap<u64, PeerNode>) -> Vec<BootstrapOutcome> {
    for n in nodes {
        n.detect_rejoin(members);
    }
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| {
            let fut =
                bootstrap(GROUP, n.raft.clone(), members.clone(), n.id, n.peers.clone(), tokio::time::sleep(WAIT));
            tokio::spawn(fut)
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().expect("bootstrap"));
    }
    outcomes
}

/// Waits (up to [`WAIT`]) until `raft`'s metrics satisfy `f`; fails with the last metrics seen.
async fn wait_for(
    raft: &Raft<ShardRaft>,
    what: &str,
    f: impl Fn(&openraft::RaftMetrics<u64, PeerNode>) -> bool + Send,
) -> openraft::RaftMetrics<u64, PeerNode> {
    match raft.wait(Some(WAIT)).metrics(f, what).await {
        Ok(m) => m,
        Err(e) => panic!("{what}: {e}; last metrics: {:?}", raft.metrics().borrow().clone()),
    }
}

/// Waits for a leader seen from `raft` whose blank entry of its term is applied on it.
async fn leader_of(nodes: &[Node], from: usize, not: Option<u64>) -> usize {
    let m = wait_for(&nodes[from].raft, "a leader", |m| m.current_leader.is_some_and(|l| Some(l) != not)).await;
    let leader = nodes.iter().position(|n| Some(n.id) == m.current_leader).unwrap();
    wait_for(&nodes[leader].raft, "the leader's blank entry applied", |m| {
        m.state == openraft::ServerState::Leader && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
    })
    .await;
    leader
}

/// Message `n` with its idempotency record written in its own shard.
fn keyed(n: u32) -> (NewMessage, Vec<u8>) {
    let key = format!("15550100000\0key-{n}").into_bytes();
    let mut m = message(n);
    m.idempotency = Some(IdempotencyPlacement::Here { key: key.clone(), payload_hash: vec![n as u8] });
    (m, key)
}

/// Proposes one append of `ns` on `leader` (planned from its applied `next_seq`); returns the
/// answered (seq, id) pairs and the entry's log index.
async fn append_on(leader: &Node, ns: &[u32]) -> (Vec<(u64, String)>, u64) {
    let first_seq = ShardState::load(leader.store(), ShardId(0)).unwrap().next_seq;
    let messages = ns.iter().map(|n| keyed(*n).0).collect();
    let entry = ShardEntry { at_ms: 10_000, first_seq, ops: vec![EntryOp::Append { messages }].into() };
    let written = leader.raft.client_write(entry).await.expect("the leader commits the append");
    assert_eq!(written.data.rejected, None, "entry refused: {:?}", written.data);
    let OpReply::Appended(outcomes) = &written.data.ops[0] else { panic!("append reply: {:?}", written.data) };
    (outcomes.iter().map(|o| (o.seq, o.message_id.as_str().to_owned())).collect(), written.log_id.index)
}

/// Waits until `node` applied `index`, then checks it stores message `n`'s id `id`.
async fn assert_stores(node: &Node, index: u64, records: &[(u32, &str)]) {
    wait_for(&node.raft, "the entry applied", |m| m.last_applied.is_some_and(|l| l.index >= index)).await;
    for (n, id) in records {
        let record = node.store().get_idempotency(&keyed(*n).1, 1_000).unwrap();
        let record = record.unwrap_or_else(|| panic!("node {}: no idempotency record of message {n}", node.id));
        assert_eq!(&record.message_id, id, "node {} stores the id the leader answered", node.id);
    }
}

async fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut().filter(|n| n.server.is_some()) {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_replicate_and_fail_over() {
    let res = resources();
    let timeouts = test_timeouts();
    let (mut nodes, members) = start_nodes(3, &res, &timeouts).await;
    let outcomes = bootstrap_all(&nodes, &members).await;
    assert_eq!(
        outcomes,
        vec![BootstrapOutcome::Initialized, BootstrapOutcome::NotFirst, BootstrapOutcome::NotFirst],
        "only the first member initializes"
    );
    let leader = leader_of(&nodes, 0, None).await;

    let (first, index) = append_on(&nodes[leader], &[1, 2, 3]).await;
    let records: Vec<(u32, &str)> = [1, 2, 3].into_iter().zip(first.iter().map(|(_, id)| id.as_str())).collect();
    for node in &nodes {
        assert_stores(node, index, &records).await;
    }
    let status = node_status(&nodes[0].peers, &nodes[leader].addr, WAIT).await.unwrap();
    assert_eq!(status.node_id, nodes[leader].id);
    let group = status.groups.iter().find(|g| g.shard == GROUP as u32).expect("group 0 in the leader's status");
    assert!(group.initialized && group.role == "leader", "{group:?}");
    assert_eq!(group.current_leader, Some(nodes[leader].id));
    assert!(group.last_applied_index >= Some(index), "{group:?}");
    assert_eq!(group.voters, vec![1, 2, 3]);

    // The leader's server stops and its replica shuts down: the other two elect a new leader over
    // the network, which continues the seqs.
    let gone = nodes[leader].id;
    nodes[leader].stop().await;
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let new_leader = leader_of(&nodes, survivor, Some(gone)).await;
    let (second, index) = append_on(&nodes[new_leader], &[4, 5]).await;
    let last_first = first.last().unwrap().0;
    assert_eq!(second.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![last_first + 1, last_first + 2]);
    for (_, id) in &second {
        assert!(first.iter().all(|(_, old)| old != id), "id {id} was answered before");
    }
    let records: Vec<(u32, &str)> = [4, 5].into_iter().zip(second.iter().map(|(_, id)| id.as_str())).collect();
    for node in nodes.iter().filter(|n| n.id != gone) {
        assert_stores(node, index, &records).await;
    }
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_after_the_log_was_purged_catches_up_from_a_snapshot() {
    let res = resources();
    // A snapshot every 5 entries, no log kept behind it: the first entries are gone from every log.
    let timeouts = RaftTimeouts {
        snapshot_logs_since_last: 5,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..test_timeouts()
    };
    let (mut nodes, members) = start_nodes(3, &res, &timeouts).await;
    bootstrap_all(&nodes, &members).await;
    let leader = leader_of(&nodes, 0, None).await;
    let mut answered = Vec::new();
    let mut indexes = Vec::new();
    for i in 0..10u32 {
        let (ids, index) = append_on(&nodes[leader], &[2 * i + 1, 2 * i + 2]).await;
        answered.push((2 * i + 1, ids[0].1.clone()));
        answered.push((2 * i + 2, ids[1].1.clone()));
        indexes.push(index);
    }
    // The log up to (at least) the fourth append is purged on the leader: a replica that starts
    // empty can get those records only from a snapshot.
    let purged_past = indexes[3];
    wait_for(&nodes[leader].raft, "the leader's log purged past the fourth append", |m| {
        m.purged.is_some_and(|p| p.index >= purged_past)
    })
    .await;

    let learner = Node::start(4, &res, &timeouts).await;
    nodes[leader].raft.add_learner(4, learner.member(), false).await.expect("the learner is added");
    let last = *indexes.last().unwrap();
    let records: Vec<(u32, &str)> = answered.iter().map(|(n, id)| (*n, id.as_str())).collect();
    assert_stores(&learner, last, &records).await;
    let m = learner.raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some_and(|s| s.index >= purged_past), "the learner installed a snapshot: {m:?}");
    nodes.push(learner);
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_first_member_never_initializes_and_is_caught_up_by_the_leader() {
    let res = resources();
    let timeouts = test_timeouts();
    let (mut nodes, members) = start_nodes(3, &res, &timeouts).await;
    bootstrap_all(&nodes, &members).await;
    let leader = leader_of(&nodes, 0, None).await;
    let (ids, index) = append_on(&nodes[leader], &[1, 2]).await;
    for node in &nodes {
        wait_for(&node.raft, "the append applied", |m| m.last_applied.is_some_and(|l| l.index >= index)).await;
    }
    let again =
        bootstrap(GROUP, nodes[0].raft.clone(), members.clone(), 1, nodes[0].peers.clone(), std::future::pending())
            .await
            .unwrap();
    assert_eq!(again, BootstrapOutcome::AlreadyInitialized, "an initialized replica does nothing");

    // Node 1 (the first member, the one that bootstraps) loses its data: a fresh replica on an
    // empty dir behind the same server.
    nodes[0].down().await;
    nodes[0].up(Some(tempfile::tempdir().unwrap()), &res, &timeouts).await;
    nodes[0].detect_rejoin(&members);
    let outcome =
        bootstrap(GROUP, nodes[0].raft.clone(), members.clone(), 1, nodes[0].peers.clone(), tokio::time::sleep(WAIT))
            .await
            .unwrap();
    assert!(matches!(outcome, BootstrapOutcome::PeerInitialized { node: 2 | 3 }), "outcome: {outcome:?}");

    // Its membership and records come from the group's leader (a new one if node 1 led).
    let m = wait_for(&nodes[0].raft, "the wiped member caught up", |m| {
        m.last_applied.is_some_and(|l| l.index >= index) && m.current_leader.is_some_and(|l| l != 1)
    })
    .await;
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, vec![1, 2, 3], "the membership the group was initialized with");
    assert_stores(&nodes[0], index, &[(1, ids[0].1.as_str()), (2, ids[1].1.as_str())]).await;
    stop_all(&mut nodes).await;
}

/// The group status node `of` reports (over `Status`, as `ferry cluster status` shows it).
async fn status_of(nodes: &[Node], of: usize) -> ferry_cluster::pb::GroupStatus {
    let status = node_status(&nodes[of].peers, &nodes[of].addr, WAIT).await.unwrap();
    status.groups.into_iter().find(|g| g.shard == GROUP as u32).expect("group 0 in the status")
}

/// openraft's FAQ "Can I wipe out the data of ONE node": A leads and commits with B while C is
/// down; B's disk is wiped; A dies; C comes back. Were B to grant C's vote, C would lead without
/// the committed appends. B is rejoining instead: it refuses, C only raises its term, and once A
/// is back the group's leader holds every committed append and catches B up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_refuses_votes_so_a_lagging_member_cannot_lead_without_committed_entries() {
    let res = resources();
    let timeouts = test_timeouts();
    let (mut nodes, members) = start_nodes(3, &res, &timeouts).await;
    bootstrap_all(&nodes, &members).await;
    let a = leader_of(&nodes, 0, None).await;
    let blank = nodes[a].raft.metrics().borrow().last_applied.unwrap().index;
    for node in &nodes {
        wait_for(&node.raft, "the blank entry applied", |m| m.last_applied.is_some_and(|l| l.index >= blank)).await;
    }
    let (b, c) = match a {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };

    nodes[c].down().await;
    let (ids, index) = append_on(&nodes[a], &[1, 2, 3]).await;
    let records: Vec<(u32, &str)> = [1, 2, 3].into_iter().zip(ids.iter().map(|(_, id)| id.as_str())).collect();
    assert_stores(&nodes[b], index, &records).await;
    nodes[a].down().await;
    nodes[b].down().await;
    nodes[b].up(Some(tempfile::tempdir().unwrap()), &res, &timeouts).await;
    let b_rejoin = nodes[b].detect_rejoin(&members);
    nodes[c].up(None, &res, &timeouts).await;
    nodes[c].detect_rejoin(&members);
    let lagging = wait_for(&nodes[c].raft, "C's log loaded", |m| m.last_log_index.is_some()).await;
    assert!(lagging.last_log_index < Some(index), "C lacks the appends: {lagging:?}");

    // C campaigns again and again: only B can answer, and it refuses.
    let (t0, a_id) = (lagging.current_term, nodes[a].id);
    let m = wait_for(&nodes[c].raft, "three more campaigns of C, or a new leader", |m| {
        m.current_term >= t0 + 3 || m.current_leader.is_some_and(|l| l != a_id)
    })
    .await;
    assert!(
        m.state != openraft::ServerState::Leader && m.current_leader.is_none_or(|l| l == a_id),
        "a leader without the appends committed up to index {index}: {:?} (C's last log index: {:?})",
        m.current_leader,
        m.last_log_index
    );
    let wiped = nodes[b].raft.metrics().borrow().clone();
    assert!(wiped.current_leader.is_none() && wiped.vote == Vote::default(), "B voted: {wiped:?}");
    let b_status = status_of(&nodes, b).await;
    assert!(b_status.rejoining && !b_status.initialized, "B's status: {b_status:?}");
    assert!(matches!(nodes[b].rejoin_mode(), RejoinMode::Rejoining | RejoinMode::Checking));
    assert!(!status_of(&nodes, c).await.rejoining, "C had its disk: it votes");

    // A comes back: only it can lead (C lacks the appends), and it catches B up.
    nodes[a].up(None, &res, &timeouts).await;
    nodes[a].detect_rejoin(&members);
    let leader = leader_of(&nodes, a, None).await;
    assert_eq!(leader, a, "the only member holding every committed append leads");
    for node in &nodes {
        assert_stores(node, index, &records).await;
    }
    let outcome = b_rejoin.await.unwrap().expect("B caught up");
    assert!(matches!(outcome, RejoinOutcome::CaughtUp { target, .. } if target >= index), "{outcome:?}");
    assert!(!status_of(&nodes, b).await.rejoining);
    stop_all(&mut nodes).await;
}

/// A wiped replica that caught up votes (and campaigns) again: with the leader gone, the group
/// elects a new one only with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_replica_that_caught_up_votes_again() {
    let res = resources();
    let timeouts = test_timeouts();
    let (mut nodes, members) = start_nodes(3, &res, &timeouts).await;
    bootstrap_all(&nodes, &members).await;
    let a = leader_of(&nodes, 0, None).await;
    let (ids, index) = append_on(&nodes[a], &[1, 2]).await;
    let b = (a + 1) % 3;
    nodes[b].down().await;
    nodes[b].up(Some(tempfile::tempdir().unwrap()), &res, &timeouts).await;
    let outcome = nodes[b].detect_rejoin(&members).await.unwrap().expect("the wiped replica catches up");
    let RejoinOutcome::CaughtUp { target, .. } = outcome else { panic!("not rejoining: {outcome:?}") };
    assert!(target >= index, "the target {target} covers the committed append at {index}");
    assert_eq!(nodes[b].rejoin_mode(), RejoinMode::Voting);
    assert!(!status_of(&nodes, b).await.rejoining);

    let gone = nodes[a].id;
    nodes[a].down().await;
    let survivor = (0..3).find(|i| *i != a && *i != b).unwrap();
    let new_leader = leader_of(&nodes, survivor, Some(gone)).await;
    let (more, index) = append_on(&nodes[new_leader], &[3]).await;
    for i in [b, survivor] {
        assert_stores(&nodes[i], index, &[(1, ids[0].1.as_str()), (2, ids[1].1.as_str()), (3, more[0].1.as_str())])
            .await;
    }
    stop_all(&mut nodes).await;
}

/// Answers shard 1 with the reversed body, refuses shard 2, never answers shard 3.
struct Target;

impl ForwardTarget for Target {
    fn handle(&self, shard: u16, body: Vec<u8>) -> ForwardFuture {
        Box::pin(async move {
            match shard {
                1 => Ok(body.into_iter().rev().collect()),
                2 => Err(ForwardError::Refused { node: 0, detail: "shard 2 is not led here".into() }),
                _ => std::future::pending().await,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_forwarding_maps_its_outcomes() {
    let timeouts = test_timeouts();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let registry = Registry::new();
    let server = serve(listener, 7, registry, Some(Arc::new(Target)), Some("s3cret"), &timeouts).await.unwrap();

    for secret in [Some("wrong"), None] {
        let peers = Peers::new(secret).unwrap();
        let refused = node_status(&peers, &addr, WAIT).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "secret {secret:?}: {refused:?}");
        let forwarder = ClusterForwarder::new(peers, [(7, addr.clone())].into(), WAIT);
        let e = forwarder.forward(7, 1, b"abc".to_vec()).await.expect_err("refused");
        assert!(matches!(e, ForwardError::Refused { node: 7, .. }), "secret {secret:?}: {e:?}");
    }
    assert!(Peers::new(Some("")).is_err(), "an empty secret is a configuration error");

    let peers = Peers::new(Some("s3cret")).unwrap();
    assert_eq!(node_status(&peers, &addr, WAIT).await.unwrap().node_id, 7);
    // A group that is not registered: Unreachable for openraft (it backs off), not a panic.
    let mut net = GroupNetwork::new(5, 1, peers.clone(), timeouts.clone());
    let mut client = net.new_client(7, &PeerNode { addr: addr.clone() }).await;
    let vote = VoteRequest { vote: Vote::new(1, 1), last_log_id: None };
    let e = client.vote(vote, RPCOption::new(WAIT)).await.expect_err("group 5 is not open");
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let addrs = [(7, addr.clone()), (8, closed_addr)].into();
    let forwarder = ClusterForwarder::new(peers, addrs, Duration::from_millis(300));
    assert_eq!(forwarder.forward(7, 1, b"abc".to_vec()).await.unwrap(), b"cba");
    let e = forwarder.forward(7, 2, b"abc".to_vec()).await.expect_err("refused");
    assert!(matches!(&e, ForwardError::Refused { node: 7, detail } if detail.contains("not led here")), "{e:?}");
    let e = forwarder.forward(7, 3, b"abc".to_vec()).await.expect_err("no answer");
    assert!(matches!(e, ForwardError::Indeterminate { node: 7, .. }), "{e:?}");
    let e = forwarder.forward(8, 1, b"abc".to_vec()).await.expect_err("nothing listens");
    assert!(matches!(e, ForwardError::Unreachable { node: 8, .. }), "{e:?}");
    let e = forwarder.forward(9, 1, b"abc".to_vec()).await.expect_err("not a member");
    assert!(matches!(e, ForwardError::Unreachable { node: 9, .. }), "{e:?}");
    // A snapshot whose checkpoint is gone (deleted under the send) is not a storage error:
    // openraft would stop the whole group on one.
    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let meta =
        openraft::SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "x".into() };
    let snapshot = openraft::Snapshot::<ShardRaft> { meta, snapshot: Box::new(CheckpointSnapshot { dir: missing }) };
    let e = client
        .full_snapshot(Vote::new(1, 1), snapshot, std::future::pending(), RPCOption::new(WAIT))
        .await
        .expect_err("nothing to send");
    assert!(matches!(e, openraft::error::StreamingError::Unreachable(_)), "{e:?}");
    // Dropping the clients closes the connection (and the call that never got an answer).
    drop((forwarder, net, client));
    server.shutdown().await.unwrap();
}

/// One `InstallSnapshot` call of `frames` straight from the generated client.
async fn send_frames(addr: &str, frames: Vec<ferry_cluster::pb::snapshot_frame::Frame>) -> tonic::Status {
    use ferry_cluster::pb;
    let mut client = pb::cluster_client::ClusterClient::connect(format!("http://{addr}")).await.unwrap();
    let frames: Vec<pb::SnapshotFrame> = frames.into_iter().map(|f| pb::SnapshotFrame { frame: Some(f) }).collect();
    client.install_snapshot(tokio_stream::iter(frames)).await.expect_err("the stream is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_snapshot_stream_is_refused_with_the_field_and_leaves_nothing() {
    use ferry_cluster::pb::snapshot_frame::Frame;
    use ferry_cluster::pb::{SnapshotChunk, SnapshotFile, SnapshotHeader};
    let res = resources();
    let mut node = Node::start(1, &res, &test_timeouts()).await;
    let header = |group: u32, files: &[(&str, u64)]| {
        Frame::Header(SnapshotHeader {
            group,
            vote: serde_json::to_vec(&Vote::new(1, 2)).unwrap(),
            meta: serde_json::to_vec(&openraft::SnapshotMeta::<u64, PeerNode> {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "s".into(),
            })
            .unwrap(),
            files: files.iter().map(|(n, s)| SnapshotFile { name: (*n).into(), size: *s }).collect(),
        })
    };
    let chunk = |file: u32, offset: u64, len: usize| Frame::Chunk(SnapshotChunk { file, offset, data: vec![7; len] });
    let cases = [
        (vec![header(9, &[])], tonic::Code::Unavailable, "group 9 is not open"),
        (vec![header(0, &[("../escape", 1)])], tonic::Code::InvalidArgument, "files: expected unique plain file names"),
        (vec![chunk(0, 0, 1)], tonic::Code::InvalidArgument, "frame 0: expected the snapshot header"),
        (vec![header(0, &[("CURRENT", 3)]), chunk(0, 0, 5)], tonic::Code::InvalidArgument, "data: expected at most"),
        (vec![header(0, &[("CURRENT", 3)]), chunk(0, 1, 1)], tonic::Code::InvalidArgument, "offset: expected 0"),
        (vec![header(0, &[("CURRENT", 3)]), chunk(1, 0, 1)], tonic::Code::InvalidArgument, "file: expected 0..1"),
        (
            vec![header(0, &[("CURRENT", 3)]), chunk(0, 0, 2)],
            tonic::Code::InvalidArgument,
            "ended with CURRENT at 2 of 3",
        ),
    ];
    let root = node.dir.path().join("snapshots");
    for (frames, code, message) in cases {
        let status = send_frames(&node.addr, frames).await;
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "expected {message:?} in {status:?}");
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "nothing is left in the snapshot root: {left:?}");
    }
    let m = node.raft.metrics().borrow().clone();
    assert!(m.snapshot.is_none() && m.vote == Vote::default(), "the replica is untouched: {m:?}");
    node.stop().await;
}

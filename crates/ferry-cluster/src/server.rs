//! The cluster server: `ferry.internal.v1.Cluster` over a [`Registry`] of groups.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_shard::raft::{ForwardError, PeerNode};
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::forward::ForwardTarget;
use crate::network::{KIND_APPEND_ENTRIES, KIND_VOTE, decode_append};
use crate::pb;
use crate::pb::cluster_server::{Cluster, ClusterServer as GrpcServer};
use crate::registry::{Group, Registry};
use crate::secret::{CheckSecret, refused};
use crate::{ClusterError, MAX_MESSAGE_BYTES, RaftTimeouts};

struct Service {
    node_id: u64,
    registry: Arc<Registry>,
    forward: Option<Arc<dyn ForwardTarget>>,
    snapshot_idle: Duration,
}

fn group_id(group: u32) -> Result<u16, Status> {
    u16::try_from(group).map_err(|_| refused(Code::InvalidArgument, format!("group: expected 0..65535, got {group}")))
}

impl Service {
    fn group(&self, group: u32) -> Result<Group, Status> {
        let id = group_id(group)?;
        self.registry
            .get(id)
            .ok_or_else(|| refused(Code::Unavailable, format!("group {id} is not open on node {}", self.node_id)))
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft replies serialize")
}

/// The replica has a vote, a log, an applied state, a snapshot or a membership: it is (or was)
/// part of its group, and the group must never be initialized from it.
pub(crate) fn initialized(m: &RaftMetrics<u64, PeerNode>) -> bool {
    m.vote != openraft::Vote::default()
        || m.last_log_index.is_some()
        || m.last_applied.is_some()
        || m.snapshot.is_some()
        || m.membership_config.membership().nodes().next().is_some()
}

/// A group's state as `Status` reports it (from its `Raft`'s metrics).
pub(crate) fn group_status(shard: u16, group: &Group) -> pb::GroupStatus {
    let m = group.raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let initialized = initialized(&m);
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    pb::GroupStatus {
        shard: shard as u32,
        initialized,
        role: role.to_owned(),
        current_term: m.current_term,
        current_leader: m.current_leader,
        last_log_index: m.last_log_index,
        last_applied_index: m.last_applied.map(|l| l.index),
        voters,
        rejoining: group.rejoin_state().refuses_votes(),
    }
}

/// A replica that does not vote (rejoining, design §6) answers a well-formed refusal with its own
/// vote, without calling `Raft::vote` (its vote and term stay as they are). `last_log_id`: its
/// last applied log id (openraft does not expose the last log id; the candidate uses it only to
/// delay its next election when it is greater than its own).
async fn refuse_vote(
    group_id: u32,
    group: &Group,
    rpc: &VoteRequest<u64>,
) -> Result<VoteResponse<u64>, RaftError<u64>> {
    let vote = group.raft.with_raft_state(|st| *st.vote_ref()).await.map_err(RaftError::Fatal)?;
    let last_applied = group.raft.metrics().borrow().last_applied;
    tracing::info!(group = group_id, candidate = %rpc.vote, "vote refused: this replica is rejoining (not caught up)");
    Ok(VoteResponse::new(vote, last_applied, false))
}

/// While the replica does not vote: the first accepted AppendEntries whose `leader_commit` is of
/// the leader's own term (the leader committed its blank entry, so its commit covers every entry
/// committed before it was elected) sets the catch-up target.
fn note_leader_commit(group_id: u32, group: &Group, vote: openraft::Vote<u64>, commit: Option<openraft::LogId<u64>>) {
    let Some(commit) = commit else { return };
    if !vote.is_committed() || commit.leader_id != vote.leader_id {
        return;
    }
    let set = group.rejoin.send_if_modified(|s| {
        if s.refuses_votes() && s.target.is_none() {
            s.target = Some(commit.index);
            true
        } else {
            false
        }
    });
    if set {
        tracing::info!(
            group = group_id,
            leader = vote.leader_id.voted_for().unwrap_or_default(),
            target = commit.index,
            "rejoining replica: votes again once it applied the leader's commit index"
        );
    }
}

#[tonic::async_trait]
impl Cluster for Service {
    async fn raft(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let group = self.group(request.group)?;
        let body = match request.kind {
            KIND_APPEND_ENTRIES => {
                let rpc = decode_append(&request.body).map_err(|e| refused(Code::InvalidArgument, e))?;
                let (vote, commit) = (rpc.vote, rpc.leader_commit);
                if group.rejoin_state().refuses_votes() {
                    group.rejoin.send_if_modified(|s| !std::mem::replace(&mut s.replicated, true));
                }
                let reply = group.raft.append_entries(rpc).await;
                if matches!(reply, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))) {
                    note_leader_commit(request.group, &group, vote, commit);
                }
                json(&reply)
            }
            KIND_VOTE => {
                let rpc: VoteRequest<u64> = serde_json::from_slice(&request.body)
                    .map_err(|e| refused(Code::InvalidArgument, format!("body: expected a JSON vote request: {e}")))?;
                if group.rejoin_state().refuses_votes() {
                    json(&refuse_vote(request.group, &group, &rpc).await)
                } else {
                    json(&group.raft.vote(rpc).await)
                }
            }
            kind => {
                return Err(refused(
                    Code::InvalidArgument,
                    format!("kind: expected {KIND_APPEND_ENTRIES} (append entries) or {KIND_VOTE} (vote), got {kind}"),
                ));
            }
        };
        Ok(Response::new(pb::RaftReply { body }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotFrame>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        crate::snapshot::receive(&self.registry, request.into_inner(), self.snapshot_idle).await.map(Response::new)
    }

    async fn forward(&self, request: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardReply>, Status> {
        let request = request.into_inner();
        let shard = group_id(request.shard)?;
        let Some(target) = &self.forward else {
            return Err(refused(Code::Unavailable, format!("node {} serves no forwarded ops", self.node_id)));
        };
        match target.handle(shard, request.body).await {
            Ok(body) => Ok(Response::new(pb::ForwardReply { body })),
            Err(ForwardError::Refused { detail, .. } | ForwardError::Unreachable { detail, .. }) => {
                Err(refused(Code::FailedPrecondition, detail))
            }
            Err(ForwardError::Indeterminate { detail, .. }) => Err(Status::aborted(detail)),
        }
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let groups = self.registry.groups().iter().map(|(id, g)| group_status(*id, g)).collect();
        Ok(Response::new(pb::NodeStatus { node_id: self.node_id, groups }))
    }
}

/// A running cluster server.
pub struct ClusterServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ClusterServer {
    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls, lets the calls in flight finish and returns once it has stopped.
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r.map_err(|e| ClusterError::Server(e.to_string())),
            Err(e) => Err(ClusterError::Server(e.to_string())),
        }
    }
}

/// Serves `ferry.internal.v1.Cluster` on `listener` for node `node_id`: Raft calls and snapshots
/// of the groups in `registry`, forwarded batches to `forward` (`None`: refused), `Status`.
/// `secret`: when set, every call must carry it (see the crate docs). `timeouts`: the snapshot
/// receiver's idle deadline per frame.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node_id: u64,
    registry: Arc<Registry>,
    forward: Option<Arc<dyn ForwardTarget>>,
    secret: Option<&str>,
    timeouts: &RaftTimeouts,
) -> Result<ClusterServer, ClusterError> {
    crate::secret::AddSecret::new(secret)?;
    let local_addr = listener.local_addr().map_err(|e| ClusterError::Server(format!("the listener's address: {e}")))?;
    let service = Service { node_id, registry, forward, snapshot_idle: timeouts.snapshot_chunk_idle };
    let grpc = GrpcServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = tonic::service::interceptor::InterceptedService::new(grpc, CheckSecret::new(secret));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        incoming,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(%local_addr, node_id, "cluster server serving");
    Ok(ClusterServer { local_addr, stop, task })
}

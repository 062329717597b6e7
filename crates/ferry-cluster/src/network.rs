//! The client side of the Raft traffic: one shared channel per peer address ([`Peers`]) and a
//! group's `RaftNetworkFactory` over it ([`GroupNetwork`]).
//!
//! Error mapping (what openraft does with it): a call that could not connect, or that the peer
//! refused before doing anything (wrong secret, group not open there), is `Unreachable` (openraft
//! backs off); no answer within `RPCOption::hard_ttl()` is `Timeout`; another transport failure is
//! `Network` (retried); an error of the remote `Raft` is `RemoteError`.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_shard::raft::{PeerNode, ShardRaft, encode_log_entry};
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RPCTypes, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};
use prost::Message;
use tokio::io::AsyncReadExt;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::RaftTimeouts;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::secret::{AddSecret, is_refused};
use crate::{ClusterError, MAX_MESSAGE_BYTES};

/// A client of one peer's cluster server (cheap to clone: the channel is shared).
pub(crate) type Client = ClusterClient<InterceptedService<Channel, AddSecret>>;

/// `RaftRequest.kind` of an AppendEntries.
pub(crate) const KIND_APPEND_ENTRIES: u32 = 1;
/// `RaftRequest.kind` of a Vote.
pub(crate) const KIND_VOTE: u32 = 2;
/// The largest snapshot chunk sent (and accepted).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// An AppendEntries body above this is split (openraft retries with fewer entries).
const APPEND_SPLIT_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// One lazily connected channel per peer address, shared by every group of the node, and the
/// secret every call carries.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    secret: AddSecret,
    connect_timeout: Duration,
}

impl Peers {
    /// `secret`: the cluster's shared secret (`None`: calls carry none). Refused when it is empty
    /// or not visible ASCII (it travels as gRPC metadata).
    pub fn new(secret: Option<&str>) -> Result<Arc<Peers>, ClusterError> {
        Ok(Arc::new(Peers {
            channels: Mutex::default(),
            secret: AddSecret::new(secret)?,
            connect_timeout: Duration::from_secs(2),
        }))
    }

    /// A client of the server at `addr` (`host:port`), over the address's shared channel.
    pub(crate) fn client(&self, addr: &str) -> Result<Client, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("peer address {addr:?}: {e}"))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(ClusterClient::with_interceptor(channel, self.secret.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// The call never reached the peer: connecting failed (refused, no route, connect timeout).
pub(crate) fn is_connect_error(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn io_error(detail: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(detail.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft messages serialize")
}

/// The `RaftNetworkFactory` of one group (= shard) on node `node_id`.
#[derive(Clone)]
pub struct GroupNetwork {
    group: u16,
    node_id: u64,
    peers: Arc<Peers>,
    timeouts: RaftTimeouts,
}

impl GroupNetwork {
    pub fn new(group: u16, node_id: u64, peers: Arc<Peers>, timeouts: RaftTimeouts) -> GroupNetwork {
        GroupNetwork { group, node_id, peers, timeouts }
    }
}

impl RaftNetworkFactory<ShardRaft> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerClient {
        PeerClient {
            group: self.group,
            node_id: self.node_id,
            target,
            node: node.clone(),
            client: self.peers.client(&node.addr),
            timeouts: self.timeouts.clone(),
        }
    }
}

/// Group `group`'s connection to replica `target` (see the module docs for the error mapping).
pub struct PeerClient {
    group: u16,
    node_id: u64,
    target: u64,
    node: PeerNode,
    /// `Err`: the peer's address does not parse (every call is `Unreachable`).
    client: Result<Client, String>,
    timeouts: RaftTimeouts,
}

type RaftRpcError = RPCError<u64, PeerNode, RaftError<u64>>;

impl PeerClient {
    fn client(&self) -> Result<Client, Unreachable> {
        self.client.clone().map_err(|e| Unreachable::new(&io_error(e)))
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<u64> {
        Timeout { action, id: self.node_id, target: self.target, timeout }
    }

    /// A failed call's status as openraft's error.
    fn status_error(&self, status: &Status) -> RPCError<u64, PeerNode, RaftError<u64>> {
        if is_connect_error(status) || is_refused(status) {
            RPCError::Unreachable(Unreachable::new(&io_error(format!(
                "node {} ({}): {status}",
                self.target, self.node.addr
            ))))
        } else {
            RPCError::Network(NetworkError::new(&io_error(format!(
                "node {} ({}): {status}",
                self.target, self.node.addr
            ))))
        }
    }

    /// One `Raft` call; decodes the remote `Raft`'s `Result`.
    async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: u32,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<T, RaftRpcError> {
        let action = if kind == KIND_VOTE { RPCTypes::Vote } else { RPCTypes::AppendEntries };
        let mut client = self.client()?;
        let ttl = option.hard_ttl();
        let request = pb::RaftRequest { group: self.group as u32, kind, body };
        let reply = match tokio::time::timeout(ttl, client.raft(request)).await {
            Err(_) => return Err(RPCError::Timeout(self.timeout(action, ttl))),
            Ok(Err(status)) => return Err(self.status_error(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<T, RaftError<u64>> = serde_json::from_slice(&reply.body).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&io_error(format!(
                "node {}: an unreadable reply: {e}",
                self.target
            ))))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    fn snapshot_status_error(&self, status: &Status) -> StreamingError<ShardRaft, Fatal<u64>> {
        match self.status_error(status) {
            RPCError::Unreachable(e) => StreamingError::Unreachable(e),
            RPCError::Network(e) => StreamingError::Network(e),
            other => StreamingError::Network(NetworkError::new(&other)),
        }
    }
}

/// The encoded AppendEntries body (entries in the raft_log encoding).
pub(crate) fn encode_append(rpc: &AppendEntriesRequest<ShardRaft>) -> Vec<u8> {
    pb::AppendEntriesBody {
        vote: json(&rpc.vote),
        prev_log_id: json(&rpc.prev_log_id),
        leader_commit: json(&rpc.leader_commit),
        entries: rpc.entries.iter().map(encode_log_entry).collect(),
    }
    .encode_to_vec()
}

/// The AppendEntries a body carries, or which part of it is malformed.
pub(crate) fn decode_append(body: &[u8]) -> Result<AppendEntriesRequest<ShardRaft>, String> {
    let body = pb::AppendEntriesBody::decode(body).map_err(|e| format!("body: not an AppendEntriesBody: {e}"))?;
    let field = |name: &str, bytes: &[u8]| -> Result<serde_json::Value, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("{name}: expected JSON: {e}"))
    };
    let vote = serde_json::from_value(field("vote", &body.vote)?).map_err(|e| format!("vote: expected a vote: {e}"))?;
    let prev_log_id = serde_json::from_value(field("prev_log_id", &body.prev_log_id)?)
        .map_err(|e| format!("prev_log_id: expected a log id or null: {e}"))?;
    let leader_commit = serde_json::from_value(field("leader_commit", &body.leader_commit)?)
        .map_err(|e| format!("leader_commit: expected a log id or null: {e}"))?;
    let entries = body
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| ferry_shard::raft::decode_log_entry(e).map_err(|e| format!("entries[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

/// Why sending the frames stopped.
enum SendFailure {
    /// A file of the checkpoint could not be read.
    Read(String),
    /// The stream took no frame within the idle deadline.
    Idle,
    /// The call ended (its result says why).
    CallEnded,
}

/// The regular files of a checkpoint directory, by name, with their sizes.
async fn list_files(dir: PathBuf) -> Result<Vec<(String, u64)>, String> {
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let meta = entry.metadata().map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if !meta.is_file() {
                return Err(format!("{}: not a regular file (a checkpoint is flat)", entry.path().display()));
            }
            let name = entry.file_name().into_string().map_err(|n| format!("{n:?}: not UTF-8"))?;
            files.push((name, meta.len()));
        }
        files.sort();
        Ok(files)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Sends every frame of the snapshot in `dir` on `tx`: the header, then each file's chunks.
async fn send_frames(
    tx: tokio::sync::mpsc::Sender<pb::SnapshotFrame>,
    header: pb::SnapshotHeader,
    dir: &Path,
    idle: Duration,
) -> Result<(), SendFailure> {
    use pb::snapshot_frame::Frame;
    let send = |frame: Frame| {
        let tx = tx.clone();
        async move {
            match tokio::time::timeout(idle, tx.send(pb::SnapshotFrame { frame: Some(frame) })).await {
                Err(_) => Err(SendFailure::Idle),
                Ok(Err(_)) => Err(SendFailure::CallEnded),
                Ok(Ok(())) => Ok(()),
            }
        }
    };
    let files: Vec<(String, u64)> = header.files.iter().map(|f| (f.name.clone(), f.size)).collect();
    send(Frame::Header(header)).await?;
    for (index, (name, size)) in files.iter().enumerate() {
        let path = dir.join(name);
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| SendFailure::Read(format!("{}: {e}", path.display())))?;
        let mut offset = 0u64;
        while offset < *size {
            let len = (*size - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            let mut data = vec![0u8; len];
            file.read_exact(&mut data).await.map_err(|e| SendFailure::Read(format!("{}: {e}", path.display())))?;
            send(Frame::Chunk(pb::SnapshotChunk { file: index as u32, offset, data })).await?;
            offset += len as u64;
        }
    }
    Ok(())
}

impl RaftNetwork<ShardRaft> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RaftRpcError> {
        let body = encode_append(&rpc);
        if body.len() > APPEND_SPLIT_BYTES && rpc.entries.len() > 1 {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(rpc.entries.len() as u64 / 2)));
        }
        self.call(KIND_APPEND_ENTRIES, body, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RaftRpcError> {
        self.call(KIND_VOTE, json(&rpc), &option).await
    }

    /// Streams the checkpoint directory (every file; skipping the `raft_log`/`raft_state` SSTs
    /// is a later optimization) and waits for the receiver's install. Every frame races
    /// `cancel` and [`RaftTimeouts::snapshot_chunk_idle`]; the answer after the last frame
    /// [`RaftTimeouts::snapshot_install`].
    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<ShardRaft>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<ShardRaft, Fatal<u64>>> {
        let dir = snapshot.snapshot.dir.clone();
        // Not `StorageError`: openraft makes that fatal for the whole group, and a checkpoint
        // can vanish under a send (the state machine deletes the previous one when it builds a
        // new one). `Unreachable` backs off and the retry sends the current snapshot.
        let target = self.target;
        let read_error = |e: String| {
            StreamingError::Unreachable(Unreachable::new(&io_error(format!(
                "the snapshot for node {target} could not be read: {e}"
            ))))
        };
        let mut client = self.client()?;
        let exchange = async {
            let files = list_files(dir.clone()).await.map_err(read_error)?;
            let header = pb::SnapshotHeader {
                group: self.group as u32,
                vote: json(&vote),
                meta: json(&snapshot.meta),
                files: files.into_iter().map(|(name, size)| pb::SnapshotFile { name, size }).collect(),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
            tokio::pin!(call);
            let idle = self.timeouts.snapshot_chunk_idle;
            let sent = tokio::select! {
                sent = send_frames(tx, header, &dir, idle) => sent,
                // The receiver ended the call before taking every frame: its answer says why.
                answered = &mut call => Err(match answered {
                    Err(status) => return Err(self.snapshot_status_error(&status)),
                    Ok(_) => SendFailure::CallEnded,
                }),
            };
            match sent {
                Ok(()) | Err(SendFailure::CallEnded) => {}
                Err(SendFailure::Read(e)) => return Err(read_error(e)),
                Err(SendFailure::Idle) => {
                    return Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, idle)));
                }
            }
            let wait = self.timeouts.snapshot_install;
            let reply = match tokio::time::timeout(wait, call).await {
                Err(_) => return Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, wait))),
                Ok(Err(status)) => return Err(self.snapshot_status_error(&status)),
                Ok(Ok(reply)) => reply.into_inner(),
            };
            let result: Result<SnapshotResponse<u64>, Fatal<u64>> =
                serde_json::from_slice(&reply.body).map_err(|e| {
                    StreamingError::Unreachable(Unreachable::new(&io_error(format!(
                        "node {}: an unreadable snapshot reply: {e}",
                        self.target
                    ))))
                })?;
            result
                .map_err(|e| StreamingError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = exchange => result,
        }
    }
}

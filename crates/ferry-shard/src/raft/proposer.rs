//! The writer of a replicated shard: the same mailbox and group commit as the single-node writer
//! (`writer.rs`), but a group commit becomes a Raft entry instead of a local synced write.
//!
//! One OS thread per shard takes every waiting op (up to `max_batch_messages`), then:
//! - **this node leads the group, its term's blank entry is applied** (every entry of an
//!   earlier term is then applied or dead for good) **and its leader gate is open** (a quorum
//!   answered within the lease, `leadership.rs`): it plans the entry ([`Planner`], seqs from the
//!   applied state at the start of each term), submits it with `client_write_ff` (submission is
//!   in order, so the seqs of pipelined entries follow each other), and a task answers each op from
//!   the applied entry's [`ShardResponse`] — after commit on a majority's disks and apply here;
//! - **otherwise**: a task waits (up to `leader_wait`) for a leader; if it is another node, the ops
//!   go to it over [`Forwarder`] (again, to whoever leads by then, while the leader is unreachable:
//!   nothing was sent) and its answers are relayed; if it is this node, they go back
//!   into this mailbox once its gate opens. No leader (or no quorum) by then: `Unavailable`.
//!
//! A proposal not committed within `leader_wait` (no quorum: two of three replicas down) fails
//! its ops as `Indeterminate`: it may still commit once a quorum is back, so no id is answered.
//!
//! At most `max_in_flight` entries and forwarded batches are outstanding; ops keep accumulating
//! meanwhile, so under load each entry grows (group commit is Raft batching). A proposal whose
//! outcome is unknown (the leader changed, the group stopped) fails its ops with
//! [`ShardError::Indeterminate`], never with an id; the apply-time checks (first seq, see
//! `apply.rs`) refuse an entry planned against a stale state.
//!
//! Replies count against the mailbox (`pending`) until they are sent, as in single-node mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ferry_model::ShardId;
use openraft::{Raft, RaftMetrics, ServerState};
use tokio::sync::Semaphore;

use super::forward::{ForwardError, Forwarder, decode_forward_reply, encode_forward_request};
use super::stages::ProposerStages;
use super::state_machine::StateHandle;
use super::types::{OpReply, PeerNode, ShardRaft, ShardResponse};
use crate::ShardError;
use crate::writer::{Planner, Waiter, WriteOp, WriterCounters, split_op};

/// Pause before a forwarded batch whose leader was unreachable looks for the leader again.
const FORWARD_RETRY: Duration = Duration::from_millis(100);

/// The term this node leads `m`'s group in and is ready to propose in, if any.
pub(crate) fn ready_term(m: &RaftMetrics<u64, PeerNode>, me: u64) -> Option<u64> {
    (m.state == ServerState::Leader
        && m.current_leader == Some(me)
        && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term))
    .then_some(m.current_term)
}

pub(crate) struct Proposer {
    pub(crate) shard: ShardId,
    pub(crate) node_id: u64,
    pub(crate) raft: Raft<ShardRaft>,
    pub(crate) state: StateHandle,
    pub(crate) forwarder: Arc<dyn Forwarder>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) max_batch_messages: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) leader_wait: Duration,
    pub(crate) pending: Arc<AtomicUsize>,
    pub(crate) counters: Arc<WriterCounters>,
    /// This shard's own mailbox: ops a forwarding task finds this node leads go back into it.
    pub(crate) mailbox: Sender<WriteOp>,
    pub(crate) crashed: Arc<AtomicBool>,
    /// The leader gate (`leadership.rs`): closed, this node does not propose even while openraft
    /// still calls it leader (it has not heard from a quorum within the lease).
    pub(crate) leading: tokio::sync::watch::Receiver<bool>,
    pub(crate) stages: ProposerStages,
}

/// The planner of the term this node proposes in.
struct Term {
    term: u64,
    planner: Planner,
}

impl Proposer {
    /// Runs until a `Stop` op (or every sender is gone); then waits (bounded) for what is in flight.
    pub(crate) fn run(self, rx: Receiver<WriteOp>) {
        let in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        let stale = Arc::new(AtomicBool::new(false));
        let mut term: Option<Term> = None;
        let mut stopping = false;
        while !stopping && let Ok(first) = rx.recv() {
            let mut ops = Vec::new();
            let mut weight = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    WriteOp::Stop => {
                        stopping = true;
                        break;
                    }
                    WriteOp::PanicForTest => panic!("the proposer panicked (test support)"),
                    WriteOp::Hold { release, weight: held } => {
                        // Test support, as in the writer: nothing is proposed while held.
                        self.dispatch(
                            std::mem::take(&mut ops),
                            std::mem::take(&mut weight),
                            &mut term,
                            &in_flight,
                            &stale,
                        );
                        let _ = release.recv();
                        self.pending.fetch_sub(held, Ordering::AcqRel);
                    }
                    op => {
                        weight += op.weight();
                        ops.push(op);
                    }
                }
                if weight < self.max_batch_messages {
                    next = rx.try_recv().ok();
                }
            }
            self.dispatch(ops, weight, &mut term, &in_flight, &stale);
            if self.crashed.load(Ordering::Acquire) {
                break;
            }
        }
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let drained = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), in_flight.acquire_many(all)).await.is_ok()
        });
        if !drained {
            tracing::warn!(shard = %self.shard, "proposer stopped with proposals still in flight");
        }
        tracing::debug!(shard = %self.shard, "proposer stopped");
    }

    /// Proposes `ops` as one entry, or forwards them to the leader.
    fn dispatch(
        &self,
        ops: Vec<WriteOp>,
        weight: usize,
        term: &mut Option<Term>,
        in_flight: &Arc<Semaphore>,
        stale: &Arc<AtomicBool>,
    ) {
        if ops.is_empty() {
            return;
        }
        if self.crashed.load(Ordering::Acquire) {
            self.pending.fetch_sub(weight, Ordering::AcqRel);
            return;
        }
        let waited = std::time::Instant::now();
        let permit = match self.runtime.block_on(in_flight.clone().acquire_owned()) {
            Ok(p) => p,
            Err(_) => unreachable!("the in-flight semaphore is never closed"),
        };
        self.stages.slot_wait.record(waited.elapsed().as_secs_f64());
        self.stages.batch.record(weight as f64);
        let ready = if *self.leading.borrow() { ready_term(&self.raft.metrics().borrow(), self.node_id) } else { None };
        let Some(ready) = ready else {
            *term = None;
            let task = self.forward_task(ops, weight);
            self.runtime.spawn(async move {
                task.await;
                drop(permit);
            });
            return;
        };
        // A proposal failed or was refused: what was planned after it is refused too (its first
        // seq no longer follows), so plan again from the applied state once those are answered.
        if stale.swap(false, Ordering::AcqRel) {
            let all = u32::try_from(self.max_in_flight - 1).unwrap_or(u32::MAX);
            if all > 0 {
                drop(self.runtime.block_on(in_flight.acquire_many(all)));
            }
            *term = None;
        }
        if term.as_ref().is_none_or(|t| t.term != ready) {
            let state = self.state.shard_state();
            tracing::info!(shard = %self.shard, term = ready, next_seq = state.next_seq, "leading: proposing");
            *term = Some(Term { term: ready, planner: Planner { next_seq: state.next_seq, last_at_ms: state.at_ms } });
        }
        let planner = &mut term.as_mut().expect("set above").planner;
        let (entry, waiters) = planner.plan(ops);
        let proposed = std::time::Instant::now();
        let submitted = self.runtime.block_on(self.raft.client_write_ff(entry));
        self.counters.synced_writes.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard;
        let pending = self.pending.clone();
        match submitted {
            Err(fatal) => {
                *term = None;
                pending.fetch_sub(weight, Ordering::AcqRel);
                let detail = format!("the raft group stopped: {fatal}");
                for w in waiters {
                    w.fail(ShardError::Unavailable { shard: shard.0, detail: detail.clone() });
                }
            }
            Ok(rx) => {
                let stale = stale.clone();
                let wait = self.leader_wait;
                let proposal = self.stages.proposal.clone();
                self.runtime.spawn(async move {
                    let result = tokio::time::timeout(wait, rx).await;
                    proposal.record(proposed.elapsed().as_secs_f64());
                    let Ok(result) = result else {
                        // No quorum answered in time (2 of 3 replicas down, a partition): the
                        // entry may still commit later, so its outcome is unknown. The entries
                        // after it keep their seqs (they commit in order, if at all).
                        pending.fetch_sub(weight, Ordering::AcqRel);
                        let detail = format!("not committed within {} ms (no quorum?)", wait.as_millis());
                        fail_all(waiters, ShardError::Indeterminate { shard: shard.0, detail });
                        drop(permit);
                        return;
                    };
                    pending.fetch_sub(weight, Ordering::AcqRel);
                    if !matches!(&result, Ok(Ok(w)) if w.data.rejected.is_none()) {
                        stale.store(true, Ordering::Release);
                    }
                    match result {
                        Ok(Ok(written)) => answer(shard, waiters, written.data),
                        Ok(Err(e)) => fail_all(
                            waiters,
                            ShardError::Indeterminate {
                                shard: shard.0,
                                detail: format!("not committed by this leader: {e}"),
                            },
                        ),
                        Err(_) => fail_all(
                            waiters,
                            ShardError::Indeterminate {
                                shard: shard.0,
                                detail: "the raft group dropped the proposal".into(),
                            },
                        ),
                    }
                    drop(permit);
                });
            }
        }
    }

    /// A task that finds the leader and hands `ops` to it (see the module docs).
    fn forward_task(&self, ops: Vec<WriteOp>, weight: usize) -> impl Future<Output = ()> + Send + 'static {
        let raft = self.raft.clone();
        let me = self.node_id;
        let shard = self.shard;
        let wait = self.leader_wait;
        let forwarder = self.forwarder.clone();
        let pending = self.pending.clone();
        let mailbox = self.mailbox.clone();
        let mut leading = self.leading.clone();
        let forward_seconds = self.stages.forward.clone();
        async move {
            let deadline = tokio::time::Instant::now() + wait;
            let unavailable = |ops: Vec<WriteOp>, detail: String| {
                pending.fetch_sub(weight, Ordering::AcqRel);
                for op in ops {
                    split_op(op).1.fail(ShardError::Unavailable { shard: shard.0, detail: detail.clone() });
                }
            };
            let found = raft.wait(Some(wait)).metrics(|m| m.current_leader.is_some(), "a leader").await;
            let leader = match found {
                Ok(m) => m.current_leader.expect("waited for"),
                Err(e) => return unavailable(ops, format!("no leader within {} ms ({e})", wait.as_millis())),
            };
            if leader == me {
                // This node is (becoming) the leader: wait for its gate (its term's first entry
                // applied, a quorum heard from), or give up at the deadline.
                let opened = tokio::time::timeout_at(deadline, leading.wait_for(|open| *open)).await;
                if !matches!(opened, Ok(Ok(_))) {
                    let detail = format!("this node leads but has no quorum within {} ms", wait.as_millis());
                    return unavailable(ops, detail);
                }
            }
            if leader == me {
                // This node leads now: the ops go back into the mailbox, still counted in
                // `pending` (the proposer uncounts them once they are answered).
                for op in ops {
                    let op_weight = op.weight();
                    if let Err(crossbeam_channel::SendError(op)) = mailbox.send(op) {
                        pending.fetch_sub(op_weight, Ordering::AcqRel);
                        split_op(op).1.fail(ShardError::Stopped(shard.0));
                    }
                }
                return;
            }
            let (entry_ops, waiters): (Vec<_>, Vec<_>) = ops.into_iter().map(split_op).unzip();
            let request = encode_forward_request(entry_ops);
            let mut leader = leader;
            let result = loop {
                let sent = std::time::Instant::now();
                let result = forwarder.forward(leader, shard.0, request.clone()).await;
                forward_seconds.record(sent.elapsed().as_secs_f64());
                // Not reached (its node is down, an election is under way): nothing was sent, so
                // it is safe to look for the leader again until the deadline.
                if !matches!(result, Err(ForwardError::Unreachable { .. })) {
                    break result;
                }
                tokio::time::sleep(FORWARD_RETRY).await;
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let next = raft
                    .wait(Some(remaining))
                    .metrics(|m| m.current_leader.is_some_and(|l| l != leader), "another leader")
                    .await;
                match next {
                    Ok(m) if m.current_leader != Some(me) => leader = m.current_leader.expect("waited for"),
                    // This node was elected meanwhile: the caller retries (it will find it).
                    _ => break result,
                }
            };
            pending.fetch_sub(weight, Ordering::AcqRel);
            match result {
                Ok(bytes) => match decode_forward_reply(shard.0, &bytes) {
                    Ok(results) if results.len() == waiters.len() => {
                        for (w, r) in waiters.into_iter().zip(results) {
                            match r {
                                Ok(reply) => w.reply(shard, reply),
                                Err(e) => w.fail(e),
                            }
                        }
                    }
                    Ok(results) => {
                        let detail = format!("{} replies for {} ops", results.len(), waiters.len());
                        fail_all(waiters, ShardError::Remote { shard: shard.0, detail })
                    }
                    Err(e) => fail_all(waiters, ShardError::Remote { shard: shard.0, detail: e.to_string() }),
                },
                Err(ForwardError::Unreachable { node, detail }) => fail_all(
                    waiters,
                    ShardError::Unavailable {
                        shard: shard.0,
                        detail: format!("leader node {node} unreachable: {detail}"),
                    },
                ),
                Err(e @ ForwardError::Indeterminate { .. }) => {
                    fail_all(waiters, ShardError::Indeterminate { shard: shard.0, detail: e.to_string() })
                }
                Err(ForwardError::Refused { node, detail }) => fail_all(
                    waiters,
                    ShardError::Unavailable { shard: shard.0, detail: format!("leader node {node} refused: {detail}") },
                ),
            }
        }
    }
}

fn fail_all(waiters: Vec<Waiter>, err: ShardError) {
    for w in waiters {
        w.fail(err.clone());
    }
}

/// Answers each op of an applied entry.
fn answer(shard: ShardId, waiters: Vec<Waiter>, response: ShardResponse) {
    if let Some(reason) = response.rejected {
        // Planned against a stale state (a bug guard, see `apply.rs`): nothing of it applied.
        tracing::error!(%shard, %reason, "entry refused at apply");
        return fail_all(
            waiters,
            ShardError::Unavailable { shard: shard.0, detail: format!("entry refused: {reason}") },
        );
    }
    if response.ops.len() != waiters.len() {
        let what = format!("{} replies for {} ops", response.ops.len(), waiters.len());
        return fail_all(waiters, ShardError::Corrupt { shard: shard.0, what });
    }
    for (w, reply) in waiters.into_iter().zip(response.ops) {
        w.reply(shard, reply);
    }
}

impl Waiter {
    /// Answers with a reply of an applied (or forwarded) entry.
    pub(crate) fn reply(self, shard: ShardId, reply: OpReply) {
        use crate::apply::OpOutcome;
        self.answer(
            shard,
            match reply {
                OpReply::Appended(a) => OpOutcome::Appended(a),
                OpReply::Done => OpOutcome::Done,
                OpReply::Resolved(r) => OpOutcome::Resolved(r),
            },
        )
    }
}

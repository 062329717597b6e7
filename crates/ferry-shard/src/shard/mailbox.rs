//! How a shard reaches the thread that writes for it, and how closing waits for that thread.
//!
//! A single node's writer serves every shard of its database (`writer.rs`): a shard's ops go into
//! the writer's one mailbox tagged with the shard's slot, and closing a shard waits until the
//! writer is done with it (the thread itself is joined by whoever closes the last of its shards).
//! A replicated shard's proposer (`raft/proposer.rs`) serves that shard alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::writer::{SlotOp, WriteOp};

/// Where a shard's write ops go.
pub(crate) enum Mailbox {
    /// A replicated shard's proposer.
    Own(Sender<WriteOp>),
    /// A single node's writer, shared by the shards of one database: this shard's slot in it.
    Slot(Sender<SlotOp>, usize),
}

impl Mailbox {
    /// Hands `op` to the thread; `Err` if it is gone.
    pub(crate) fn send(&self, op: WriteOp) -> Result<(), WriteOp> {
        match self {
            Mailbox::Own(tx) => tx.send(op).map_err(|e| e.0),
            Mailbox::Slot(tx, slot) => tx.send((*slot, op)).map_err(|e| e.0.1),
        }
    }
}

/// What closing a shard waits for.
pub(crate) enum WriterThread {
    /// A thread of the shard's own: joined.
    Own(JoinHandle<()>),
    /// The writer of several shards: `done` disconnects once the writer is done with this shard.
    Shared { done: Receiver<()>, thread: Arc<SharedThread> },
}

/// A writer thread serving several shards, joined once the last of them is closed.
pub(crate) struct SharedThread {
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Shards not closed yet.
    open: AtomicUsize,
}

impl SharedThread {
    pub(crate) fn new(handle: JoinHandle<()>, shards: usize) -> Arc<SharedThread> {
        Arc::new(SharedThread { handle: Mutex::new(Some(handle)), open: AtomicUsize::new(shards) })
    }
}

impl WriterThread {
    /// Whether the thread is done with the shard: after a close, or because it died (a panic).
    pub(crate) fn is_done(&self) -> bool {
        match self {
            WriterThread::Own(handle) => handle.is_finished(),
            WriterThread::Shared { done, .. } => {
                matches!(done.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
            }
        }
    }

    /// Waits until the writer is done with the shard (it has committed what the shard submitted
    /// before its `Stop`); the last shard of a shared writer joins the thread.
    pub(crate) fn wait(self) {
        match self {
            WriterThread::Own(handle) => {
                let _ = handle.join();
            }
            WriterThread::Shared { done, thread } => {
                // Never sent on: `Err` once the writer dropped the shard (or the thread ended).
                let _ = done.recv();
                if thread.open.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let handle = thread.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(handle) = handle {
                        let _ = handle.join();
                    }
                }
            }
        }
    }
}

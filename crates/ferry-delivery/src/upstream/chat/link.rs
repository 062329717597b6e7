//! The link of one shard to the chat server: the chat upstream's connection.
//!
//! A task per shard keeps one `ferry.chat.v1.Chat/Deliver` stream open: it sends the `Hello`
//! (node id and shard, so receipts come back to this shard also after a reconnect), hands the
//! shard's loop a sender for outgoing frames ([`LinkEvent::Up`]), forwards every server frame
//! ([`LinkEvent::Frame`]), and reports the end of the stream ([`LinkEvent::Down`]); then it
//! reconnects with backoff, forever, until shutdown. The tonic channel is lazy and reconnects by
//! itself; this task only re-opens the stream.
//!
//! Outgoing frames go through a bounded buffer (`window` + 1,024 frames: every loaded message has
//! at most one envelope in it, plus receipt acks), so a server that stops reading cannot grow
//! memory: a full buffer is the loop's cue to reset the stream ([`LinkHandle::reset`]), as are
//! ack timeouts in a row (a server that stops answering but keeps the stream open).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_proto::chat::v1::chat_client::ChatClient;
use ferry_proto::chat::v1::{ClientFrame, Hello, ServerFrame, client_frame};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::stats::{LinkState, ShardDeliveryStats};

/// The sending side of one open stream.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    frames: mpsc::Sender<ClientFrame>,
    reset: Arc<Notify>,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendFailure {
    /// The buffer is full: the server is not taking frames.
    Full,
    /// The stream is gone (a `Down` event follows).
    Closed,
}

impl LinkHandle {
    /// Queues a frame for the server without waiting.
    pub(crate) fn try_send(&self, frame: ClientFrame) -> Result<(), SendFailure> {
        self.frames.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendFailure::Full,
            mpsc::error::TrySendError::Closed(_) => SendFailure::Closed,
        })
    }

    /// Ends this stream: the link reports `Down` and opens a new one.
    pub(crate) fn reset(&self) {
        self.reset.notify_one();
    }
}

/// What the link tells the shard's loop.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A stream is open; frames sent on this handle go to the server.
    Up(LinkHandle),
    Frame(ServerFrame),
    /// The stream ended; nothing sent on the last `Up` sender is known to have arrived unless
    /// it was answered.
    Down(String),
}

/// Runs the link until `shutdown` turns true. Events go to `events`; `state` mirrors the link.
///
/// Cancel-safe in the sense that matters: dropping it (the supervisor aborts it after the loop
/// ended) closes the stream; whatever was in flight on it is resent by the next loop.
pub(crate) async fn run_link(
    client: ChatClient<Channel>,
    hello: Hello,
    events: mpsc::Sender<LinkEvent>,
    stats: Arc<ShardDeliveryStats>,
    reconnect_initial: Duration,
    buffer: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = reconnect_initial;
    loop {
        if *shutdown.borrow() {
            return;
        }
        stats.link_state.store(LinkState::Connecting as u8, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<ClientFrame>(buffer.max(1));
        let _ = tx.try_send(ClientFrame { frame: Some(client_frame::Frame::Hello(hello.clone())) });
        let reset = Arc::new(Notify::new());
        let mut client = client.clone();
        let opened = tokio::select! {
            r = client.deliver(ReceiverStream::new(rx)) => r,
            _ = shutdown.changed() => return,
        };
        let reason = match opened {
            Err(status) => format!("cannot open the delivery stream: {status}"),
            Ok(response) => {
                stats.link_state.store(LinkState::Connected as u8, Ordering::Relaxed);
                backoff = reconnect_initial;
                let handle = LinkHandle { frames: tx, reset: reset.clone() };
                if events.send(LinkEvent::Up(handle)).await.is_err() {
                    return;
                }
                let mut inbound = response.into_inner();
                loop {
                    tokio::select! {
                        frame = inbound.next() => match frame {
                            Some(Ok(frame)) => {
                                if events.send(LinkEvent::Frame(frame)).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(status)) => break format!("delivery stream failed: {status}"),
                            None => break "delivery stream closed by the server".to_owned(),
                        },
                        _ = reset.notified() => break "reset by the delivery loop".to_owned(),
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        stats.link_state.store(LinkState::Disconnected as u8, Ordering::Relaxed);
        if events.send(LinkEvent::Down(reason)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

//! `ferry-jetstream-bench`: the NATS JetStream half of `benches/compare/jetstream.sh`.
//!
//! Against a running `nats-server -js`, for each publish window W: creates a fresh file-storage
//! work-queue stream, publishes `--count` messages of `--payload` bytes with at most W publish acks
//! in flight, while a pull consumer acks each message; the run ends when the consumer has acked
//! every message and the stream reports 0 messages left (work-queue retention deletes on ack).
//! Prints msg/s publish→consumer-ack per window and the best (`best: window W = R msg/s`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use clap::Parser;
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
#[command(name = "ferry-jetstream-bench")]
struct Args {
    /// The NATS server (started with JetStream).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// Messages per window.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Publish windows (publishes awaiting their ack) to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64, 128, 256])]
    windows: Vec<usize>,
}

const STREAM: &str = "FERRYBENCH";

/// One run at one window: (publish-acked msg/s, consumer-acked msg/s).
async fn run_window(js: &jetstream::Context, args: &Args, window: usize) -> anyhow::Result<(f64, f64)> {
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["ferrybench.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .context("creating the consumer")?;
    let mut messages = consumer.messages().await.context("consumer messages")?;
    let consumed = Arc::new(AtomicU64::new(0));
    let count = args.count;
    let c = consumed.clone();
    let consumer_task = tokio::spawn(async move {
        while c.load(Ordering::Relaxed) < count {
            match messages.next().await {
                Some(Ok(m)) => {
                    m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("consumer: {e}")),
                None => return Err(anyhow::anyhow!("consumer stream ended")),
            }
        }
        anyhow::Ok(())
    });

    let payload = bytes::Bytes::from(vec![b'x'; args.payload]);
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(window);
    for i in 0..args.count {
        if in_flight.len() >= window {
            let ack: jetstream::context::PublishAckFuture = in_flight.pop_front().expect("non-empty");
            ack.await.context("publish ack")?;
        }
        let subject = format!("ferrybench.{}", i % 1024);
        in_flight.push_back(js.publish(subject, payload.clone()).await.context("publish")?);
    }
    for ack in in_flight {
        ack.await.context("publish ack")?;
    }
    let published = started.elapsed();
    consumer_task.await.context("consumer task")??;
    // Acks are fire-and-forget: done when the work queue is empty.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = stream.get_info().await.context("stream info")?;
        if info.state.messages == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{} messages still in the stream after 60 s", info.state.messages);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = started.elapsed();
    let _ = js.delete_stream(STREAM).await;
    Ok((count as f64 / published.as_secs_f64(), count as f64 / done.as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.server).await.with_context(|| format!("connecting to {}", args.server))?;
    let js = jetstream::new(client);
    println!(
        "jetstream: {} messages of {} B, file storage, work-queue stream, pull consumer acking each",
        args.count, args.payload
    );
    let mut best = (0usize, 0f64);
    for &window in &args.windows {
        let (publish_rate, acked_rate) = run_window(&js, &args, window).await?;
        println!("  window {window:>4}: published {publish_rate:.0} msg/s; publish→consumer-ack {acked_rate:.0} msg/s");
        if acked_rate > best.1 {
            best = (window, acked_rate);
        }
    }
    println!("best: window {} = {:.0} msg/s", best.0, best.1);
    Ok(())
}

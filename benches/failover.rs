//! Failover benchmark (issue #12): time from the SIGKILL of a shard's leader to the first envelope
//! the chat server acks on its successor's stream, over `--kills` kills (env `KILLS`), on three
//! real `ferry serve` processes (every shard a Raft group of the three, replication factor 3) and
//! one real `ferry chatsim`, under continuous load (`SendBatch` spread over the running nodes).
//! Each round kills the current leader of shard 0, waits for every shard it led to be delivered
//! by a successor, restarts it on its data dir and waits until the cluster is steady again. The
//! harness is `tests/support/failover.rs` (`tests/bench_scripts.rs` runs it at smoke size); the
//! times come from chatsim's `ChatAdmin/History` (one machine clock: kill and ack).
//!
//! ```sh
//! cargo bench --workspace --locked --bench failover    # 10 kills, 8 shards, ≤ 500 msg/s offered
//! KILLS=20 cargo bench --workspace --locked --bench failover -- --shards 2
//! ```

use std::time::Duration;

use clap::Parser;

#[path = "../tests/support/mod.rs"]
mod support;

#[derive(Parser, Debug)]
struct Args {
    /// SIGKILLs of a leader (rounds).
    #[arg(long, env = "KILLS", default_value_t = 10)]
    kills: usize,
    #[arg(long, env = "SHARDS", default_value_t = 8)]
    shards: u16,
    /// Messages per second offered at most, during the whole run (4 senders pace their SendBatch
    /// calls; a slow answer delays a sender's next call, so the accepted rate can be lower).
    #[arg(long, env = "RATE", default_value_t = 500)]
    rate: u64,
    /// Messages per SendBatch call.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Distinct recipients of the load.
    #[arg(long, default_value_t = 1000)]
    recipients: usize,
    /// Seconds of load between a steady cluster and the next kill.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let options = support::failover::FailoverOptions {
        kills: args.kills,
        shards: args.shards,
        rate: args.rate,
        batch: args.batch,
        recipients: args.recipients,
        settle: Duration::from_secs_f64(args.settle_secs),
    };
    println!(
        "== failover: 3 nodes, RF 3, {} shards, {} kills of shard 0's leader, {} msg/s offered in batches of {}",
        options.shards, options.kills, options.rate, options.batch
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = runtime.block_on(support::failover::run(&options));
    for line in report.lines() {
        println!("{line}");
    }
}

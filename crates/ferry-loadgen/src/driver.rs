//! The run itself: an open-loop scheduler hands calls to at most `--concurrency` in-flight tasks,
//! a sampler polls the counters (and chatsim's `Stats`) every [`SAMPLE_EVERY`] for the progress
//! bar, the timeline and the ack estimate.
//!
//! Open loop: with `--rate R`, call `i` is *scheduled* at `start + i * batch / R` whatever happened
//! before it, and its latency runs from that scheduled time, so a slow server shows up as latency
//! (time queued for a free slot counts) instead of silently lowering the send rate (coordinated
//! omission). Without `--rate` the loop is closed: each call starts as soon as a slot is free and
//! its latency runs from that moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_proto::chat::v1::chat_admin_client::ChatAdminClient;
use ferry_proto::chat::v1::{SimulateInboundRequest, StatsRequest};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, watch};
use tonic::transport::Channel;

use crate::LoadgenArgs;
use crate::client::{self, CallOutcome, MessageFactory};
use crate::report::{self, Percentiles, Report, Sample};

/// How often the sampler reads the counters and polls chatsim.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What the in-flight calls record into.
struct Recorder {
    accepted: AtomicU64,
    errored: AtomicU64,
    acked: AtomicU64,
    inner: Mutex<Recorded>,
}

struct Recorded {
    /// Accept latency in µs, one sample per accepted message.
    accept_latency: Histogram<u64>,
    errors: std::collections::BTreeMap<String, u64>,
    /// Accept latency by the second in which the call completed (index 0 = second 1).
    per_second: Vec<Histogram<u64>>,
}

impl Recorder {
    fn record(&self, outcome: CallOutcome, latency: Duration, second: usize) {
        let micros = latency.as_micros().max(1) as u64;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.accepted > 0 {
            inner.accept_latency.saturating_record_n(micros, outcome.accepted);
            while inner.per_second.len() <= second {
                inner.per_second.push(Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"));
            }
            inner.per_second[second].saturating_record_n(micros, outcome.accepted);
        }
        let mut errored = 0;
        for (code, n) in outcome.errors {
            errored += n;
            *inner.errors.entry(code).or_default() += n;
        }
        drop(inner);
        self.accepted.fetch_add(outcome.accepted, Ordering::Relaxed);
        self.errored.fetch_add(errored, Ordering::Relaxed);
    }
}

async fn chatsim_unique(client: &mut ChatAdminClient<Channel>) -> anyhow::Result<u64> {
    let stats = tokio::time::timeout(Duration::from_secs(2), client.stats(StatsRequest {}))
        .await
        .context("chatsim Stats timed out")??;
    Ok(stats.into_inner().unique_messages)
}

/// Makes every known recipient write to the business (chatsim `SimulateInbound`) and waits until
/// ferry acknowledged them all (so each user's 24-hour window is open before the first send).
async fn open_windows(chatsim: &mut ChatAdminClient<Channel>, args: &LoadgenArgs) -> anyhow::Result<()> {
    let business: String = args
        .sender
        .first()
        .map_or(client::DEFAULT_BUSINESS, String::as_str)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let acked = |c: &mut ChatAdminClient<Channel>| {
        let mut c = c.clone();
        async move { anyhow::Ok(c.stats(StatsRequest {}).await?.into_inner().inbound_acked) }
    };
    let before = acked(chatsim).await?;
    let all: Vec<u64> = (0..args.recipients).collect();
    for chunk in all.chunks(64) {
        let calls = chunk.iter().map(|&i| {
            let mut c = chatsim.clone();
            let request = SimulateInboundRequest {
                from: MessageFactory::known_wa_id(i),
                to: business.clone(),
                text: "hi (loadgen --open-windows)".into(),
                profile_name: String::new(),
            };
            async move { c.simulate_inbound(request).await }
        });
        for r in futures_util::future::join_all(calls).await {
            r.context("chatsim SimulateInbound")?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked(chatsim).await? < before + args.recipients {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ferry did not record the {} inbound messages of --open-windows within 120 s",
            args.recipients
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the load described by `args` and returns the report (also written to `--json`/`--plot`).
/// Not cancel-safe in the sense of reporting: dropping the future abandons in-flight calls.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let clients = client::connect(&args).await?;
    let mut chatsim = match &args.chatsim {
        Some(addr) => {
            let endpoint = client::endpoint(addr, false, None).await?;
            let channel = endpoint.connect().await.with_context(|| format!("connecting to chatsim at {addr}"))?;
            Some(ChatAdminClient::new(channel))
        }
        None => None,
    };
    if args.open_windows {
        let c = chatsim.as_mut().expect("validated: --open-windows needs --chatsim");
        open_windows(c, &args).await?;
    }
    // Acks count only what this run sends: everything chatsim saw before is the baseline.
    let baseline = match chatsim.as_mut() {
        Some(c) => Some(chatsim_unique(c).await.context("chatsim baseline Stats")?),
        None => None,
    };

    let factory = Arc::new(MessageFactory::new(&args));
    let batch = args.batch as u64;
    let total_calls = args.count.map(|c| c.div_ceil(batch));
    let duration = args.effective_duration();
    let recorder = Arc::new(Recorder {
        accepted: AtomicU64::new(0),
        errored: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        inner: Mutex::new(Recorded {
            accept_latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            errors: Default::default(),
            per_second: Vec::new(),
        }),
    });

    let progress = progress_bar(&args, duration);
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler =
        tokio::spawn(sample(start, recorder.clone(), chatsim, baseline, progress.clone(), stop_rx, args.count));

    // The scheduler.
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let deadline = duration.map(|d| start + d);
    let mut calls = 0u64;
    let mut sent = 0u64;
    loop {
        if total_calls.is_some_and(|total| calls >= total) {
            break;
        }
        let scheduled = match args.rate {
            Some(rate) => {
                let at = start + Duration::from_secs_f64(calls as f64 * batch as f64 / rate);
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                Some(at)
            }
            None => None,
        };
        let permit = slots.clone().acquire_owned().await.context("slots closed")?;
        let scheduled = match scheduled {
            Some(at) => at,
            None => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                now
            }
        };
        let first = calls * batch;
        let len = match args.count {
            Some(count) => batch.min(count - first),
            None => batch,
        };
        let mut client = clients[calls as usize % clients.len()].clone();
        let (factory, recorder) = (factory.clone(), recorder.clone());
        // Exactly floor(calls * share) of the first calls are unary, spread evenly.
        let unary = ((calls + 1) as f64 * args.unary_share).floor() > (calls as f64 * args.unary_share).floor();
        let use_batch = args.batch > 1 && !unary;
        tokio::spawn(async move {
            let outcome = client::send_call(&mut client, &factory, first, len, use_batch).await;
            let done = Instant::now();
            let second = done.duration_since(start).as_secs() as usize;
            recorder.record(outcome, done.duration_since(scheduled), second);
            drop(permit);
        });
        calls += 1;
        sent += len;
    }
    // Every slot free again = every call answered.
    let _all = slots.acquire_many(args.concurrency as u32).await.context("slots closed")?;
    let send_secs = start.elapsed().as_secs_f64();
    let accepted = recorder.accepted.load(Ordering::Relaxed);

    // Wait for the chat server to ack what was accepted (or stop making progress).
    if baseline.is_some() {
        let ack_deadline = Instant::now() + args.ack_timeout;
        let (mut last, mut last_change) = (recorder.acked.load(Ordering::Relaxed), Instant::now());
        loop {
            let acked = recorder.acked.load(Ordering::Relaxed);
            if acked >= accepted || Instant::now() >= ack_deadline {
                break;
            }
            if acked != last {
                (last, last_change) = (acked, Instant::now());
            } else if last_change.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        // One more sample after the final ack.
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
    }
    let _ = stop_tx.send(true);
    let samples = sampler.await.context("sampler task")?;
    progress.finish_and_clear();

    let recorded = recorder.inner.lock().unwrap_or_else(|e| e.into_inner());
    let (acked, ack_secs) = match baseline {
        Some(_) => {
            let acked = samples.iter().filter_map(|s| s.acked).max().unwrap_or(0);
            let at = samples.iter().find(|s| s.acked.is_some_and(|a| a >= acked)).map(|s| s.t_secs);
            (Some(acked), at)
        }
        None => (None, None),
    };
    let errors_total = recorded.errors.values().sum();
    let report = Report {
        accepted_per_sec: accepted as f64 / send_secs.max(1e-9),
        acked_per_sec: match (acked, ack_secs) {
            (Some(a), Some(s)) if s > 0.0 => Some(a as f64 / s),
            (Some(_), _) => Some(0.0),
            _ => None,
        },
        accept_latency_ms: Percentiles::from_micros(&recorded.accept_latency),
        accept_to_ack_latency_ms: if baseline.is_some() { report::estimate_accept_to_ack(&samples) } else { None },
        errors: recorded.errors.clone(),
        errors_total,
        sent,
        accepted,
        acked,
        calls,
        send_secs,
        ack_secs,
        accept_to_ack_method: report::ACCEPT_TO_ACK_METHOD,
        timeline: report::timeline(&samples, &recorded.per_second),
        config: args.clone(),
    };
    drop(recorded);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        crate::plot::draw(&report, path)?;
    }
    Ok(report)
}

fn progress_bar(args: &LoadgenArgs, duration: Option<Duration>) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let (len, template) = match (args.count, duration) {
        (Some(count), _) => (count, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} msgs  {msg}"),
        (None, Some(d)) => (d.as_millis() as u64, "{spinner} [{elapsed_precise}] {bar:30} {msg}"),
        (None, None) => (0, "{spinner} [{elapsed_precise}] {msg}"),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Samples the counters until told to stop; feeds the progress bar (rates over the last second).
async fn sample(
    start: Instant,
    recorder: Arc<Recorder>,
    mut chatsim: Option<ChatAdminClient<Channel>>,
    baseline: Option<u64>,
    progress: ProgressBar,
    mut stop: watch::Receiver<bool>,
    count: Option<u64>,
) -> Vec<Sample> {
    let mut samples = vec![Sample { t_secs: 0.0, accepted: 0, errors: 0, acked: baseline.map(|_| 0) }];
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        let acked = match (chatsim.as_mut(), baseline) {
            (Some(c), Some(base)) => match chatsim_unique(c).await {
                Ok(unique) => Some(unique.saturating_sub(base)),
                Err(_) => samples.last().and_then(|s| s.acked),
            },
            _ => None,
        };
        if let Some(a) = acked {
            recorder.acked.store(a, Ordering::Relaxed);
        }
        let now = Sample {
            t_secs: start.elapsed().as_secs_f64(),
            accepted: recorder.accepted.load(Ordering::Relaxed),
            errors: recorder.errored.load(Ordering::Relaxed),
            acked,
        };
        let second_ago = samples.iter().rev().find(|s| now.t_secs - s.t_secs >= 1.0).unwrap_or(&samples[0]);
        let span = (now.t_secs - second_ago.t_secs).max(1e-3);
        let acked_rate = match (now.acked, second_ago.acked) {
            (Some(a), Some(b)) => format!("{:.0}", a.saturating_sub(b) as f64 / span),
            _ => "-".to_owned(),
        };
        progress.set_message(format!(
            "accepted {:.0}/s  acked {acked_rate}/s  errors {}",
            (now.accepted - second_ago.accepted) as f64 / span,
            now.errors
        ));
        match count {
            Some(_) => progress.set_position(now.accepted + now.errors),
            None => progress.set_position(start.elapsed().as_millis() as u64),
        }
        samples.push(now);
        if *stop.borrow() {
            return samples;
        }
    }
}

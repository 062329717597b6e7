//! Where new key agreements run: a small pool of low-priority threads, so a burst of session
//! set-ups (10,000 recipients on a fresh node: each an X3DH, a few hundred µs of CPU) cannot delay
//! accepts.
//!
//! Run on the tokio workers, the set-ups of a fresh node took the workers from the gRPC ingest
//! for seconds (accept p99 3.9 s at `ferry loadgen --rate 30000 --batch 100 --recipients 10000`).
//! Here they run on `threads` OS threads of their own (half the cores, at least one) whose nice
//! value is raised by [`NICE`]: the kernel gives ingest, the shard writers and the delivery loops
//! the CPU first, and set-ups use what is left, at most `threads` cores. The queue is bounded by
//! the callers (`delivery.max_concurrent_session_setups` permits per shard).

use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

/// How much lower the set-up threads' priority is than the rest of the process (nice +10: about a
/// tenth of the CPU share of a normal thread when both want it).
const NICE: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The process's pool (started on first use).
fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx: Receiver<Job> = rx.clone();
            std::thread::Builder::new()
                .name(format!("key-agreement-{i}"))
                .spawn(move || {
                    lower_priority();
                    for job in rx {
                        // A panicking job drops its answer (its caller sees `None`); the thread
                        // serves on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .expect("spawn a key-agreement thread");
        }
        tx
    })
}

/// Raises this thread's nice value by [`NICE`] (Linux: per thread). A failure only logs: the
/// set-ups then compete at normal priority, as they did on the workers.
fn lower_priority() {
    // SAFETY: `gettid` and `setpriority` take plain integers and touch no memory of ours.
    let outcome = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if outcome != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the key-agreement threads' priority");
    }
}

/// Runs `f` on the pool; `None` if the pool dropped it (a panic in `f`).
///
/// Cancel-safe: dropping the future drops only the answer; `f` still runs to its end.
pub(super) async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool().send(job).ok()?;
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_jobs_off_the_caller_at_a_lower_priority() {
        let (name, nice) = super::run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            // SAFETY: as in `lower_priority`.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) };
            (name, nice)
        })
        .await
        .expect("the job ran");
        assert!(name.is_some_and(|n| n.starts_with("key-agreement-")), "ran on the pool");
        // SAFETY: as above, for the test's own thread.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (own + super::NICE).min(19), "the pool's threads are niced");
    }

    #[tokio::test]
    async fn a_panicking_job_answers_none_and_the_pool_keeps_serving() {
        assert_eq!(super::run(|| -> u32 { panic!("boom") }).await, None);
        assert_eq!(super::run(|| 7).await, Some(7));
    }
}

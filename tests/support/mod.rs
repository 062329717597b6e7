//! Test sandbox: start ferry in-process on port 0, or as a real `ferry serve` process.
#![allow(dead_code)]

pub mod cluster;
pub mod failover;
pub mod order;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::{Coordinator, CoordinatorConfig};
use ferry_proto::v1::messages_client::MessagesClient;
use ferry_proto::v1::{self, send_request::Content};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub type Client = MessagesClient<Channel>;

pub fn text(to: &str, body: &str) -> v1::SendRequest {
    v1::SendRequest {
        to: to.into(),
        content: Some(Content::Text(v1::TextMessage { body: body.into(), preview_url: false })),
        ..Default::default()
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    let endpoint = format!("http://{addr}");
    for _ in 0..100 {
        if let Ok(c) = MessagesClient::connect(endpoint.clone()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {endpoint}");
}

/// ferry's coordinator and gRPC ingest in this process, on a port-0 listener.
pub struct InProcess {
    pub addr: SocketAddr,
    pub coordinator: Arc<Coordinator>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    pub async fn start(shards: u16) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig::for_test(dir.path(), shards);
        InProcess::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: CoordinatorConfig) -> InProcess {
        let coordinator = Arc::new(Coordinator::open(&config).await.expect("open node"));
        InProcess::serve(dir, coordinator).await
    }

    /// Serves an open coordinator over gRPC on a port-0 listener.
    pub async fn serve(dir: tempfile::TempDir, coordinator: Arc<Coordinator>) -> InProcess {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let c = coordinator.clone();
        let server = tokio::spawn(async move {
            ferry_ingest::serve(listener, c, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        InProcess { addr, coordinator, dir, stop: Some(stop), server: Some(server) }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            join_server(h).await;
        }
    }

    /// Stops serving and hands back the data dir (the coordinator stays open until dropped).
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            join_server(h).await;
        }
        let dir = tempfile::TempDir::new().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// Waits for the server task; a panic in it fails the test (with the server's panic).
async fn join_server(h: tokio::task::JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(60), h).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the server task was cancelled: {e}"),
        Err(_) => panic!("the server did not stop within 60 s of its stop signal"),
    }
}

/// A node that also delivers: coordinator, gRPC ingest and delivery loops in this process, sending
/// to `upstream` (usually an in-process [`ferry_chatsim::ChatSim`]).
pub struct Delivering {
    pub node: InProcess,
    pub delivery: Option<ferry_delivery::DeliveryEngine>,
}

impl Delivering {
    pub async fn start(
        dir: tempfile::TempDir,
        config: CoordinatorConfig,
        upstream: SocketAddr,
        delivery: ferry_delivery::DeliveryConfig,
        clock: ferry_model::clock::SharedClock,
    ) -> Delivering {
        let coordinator = Arc::new(Coordinator::open_with_clock(&config, clock.clone()).await.expect("open node"));
        coordinator.start_pacing_rule();
        let engine =
            ferry_delivery::DeliveryEngine::start(coordinator.shards(), &upstream.to_string(), delivery, clock)
                .expect("start delivery");
        let node = InProcess::serve(dir, coordinator).await;
        Delivering { node, delivery: Some(engine) }
    }

    pub fn totals(&self) -> ferry_delivery::DeliverySnapshot {
        self.delivery.as_ref().expect("running").totals()
    }

    /// Stops ingest and delivery and closes the shards; returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let coordinator = self.node.coordinator.clone();
        if let Some(d) = self.delivery.take() {
            d.shutdown(Duration::from_secs(10)).await;
        }
        let dir = self.node.stop_keep_dir().await;
        coordinator.close();
        // The databases close when the last handle goes; background tasks drop theirs shortly
        // after shutdown. Wait, so a restart on the same dir does not find them locked.
        for _ in 0..200 {
            if Arc::strong_count(&coordinator) == 1 && coordinator.shards().iter().all(|s| Arc::strong_count(s) == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        drop(coordinator);
        dir
    }
}

/// Status of a message by id, over gRPC.
pub async fn status_of(client: &mut Client, id: &str) -> v1::MessageRecord {
    client.get_message(v1::GetMessageRequest { message_id: id.to_owned() }).await.expect("get message").into_inner()
}

/// Polls `check` every 50 ms until it returns true, or panics after `timeout` with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with `what` and what
/// the last check saw (its `Err`).
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `count` every 50 ms until it reaches `at_least`, or panics after `timeout` with `what`
/// and the last count.
pub async fn wait_for_count<F, Fut>(timeout: Duration, what: &str, at_least: usize, mut count: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    wait_for(timeout, what, || {
        let counted = count();
        async move {
            let n = counted.await;
            if n >= at_least { Ok(()) } else { Err(format!("{n} of {at_least}")) }
        }
    })
    .await;
}

/// Waits until every message in `ids` has status `read` (each within `timeout`).
pub async fn wait_until_read(client: &Client, ids: &[String], timeout: Duration) {
    for id in ids {
        wait_for(timeout, &format!("{id} read"), || {
            let (mut c, id) = (client.clone(), id.clone());
            async move {
                let status = status_of(&mut c, &id).await.status;
                if status == "read" { Ok(()) } else { Err(format!("status {status}")) }
            }
        })
        .await;
    }
}

/// A real `ferry serve` process.
pub struct FerryProcess {
    pub child: Child,
    /// gRPC address.
    pub addr: SocketAddr,
    /// HTTP address (JSON API, health, metrics).
    pub http_addr: SocketAddr,
    /// The admin password ferry generated and printed at first start (auth on, none configured).
    pub generated_admin_password: Option<String>,
}

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A command running the ferry binary without the caller's `FERRY_*` environment (a developer's
/// FERRY_DATA_DIR or FERRY_UPSTREAM must not change what a test runs).
pub fn ferry_command() -> Command {
    let mut command = Command::new(ferry_bin());
    clear_ferry_env(&mut command);
    command
}

/// Removes every `FERRY_*` variable of this process from `command`'s environment.
pub fn clear_ferry_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
}

/// Records that the calling test skipped (it returns right after, and cargo counts it as passed):
/// prints why and, under scripts/test.sh (`FERRY_SKIP_LOG`), appends a line to the skip log, so
/// the summary line counts it as skipped instead.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    println!("skipped: {test}: {why}");
    if let Some(log) = std::env::var_os("FERRY_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open FERRY_SKIP_LOG");
        writeln!(f, "{test}: {why}").expect("write FERRY_SKIP_LOG");
    }
}

impl FerryProcess {
    /// Starts `ferry serve` on port 0 (with its in-process chat server) and waits for its
    /// readiness line.
    pub fn spawn(data_dir: &Path, shards: u16) -> FerryProcess {
        FerryProcess::spawn_with(data_dir, shards, &[])
    }

    /// [`FerryProcess::spawn`] with extra flags, e.g. `["--upstream", addr]`. Auth is off
    /// (`--auth disabled`): see [`FerryProcess::spawn_with_auth`].
    pub fn spawn_with(data_dir: &Path, shards: u16, extra: &[&str]) -> FerryProcess {
        FerryProcess::start(data_dir, shards, extra, None, &[])
    }

    /// [`FerryProcess::spawn_with`] with extra environment variables (test hooks such as
    /// `FERRY_TEST_HOLD_KEY_SHARD_WRITES`).
    pub fn spawn_with_env(data_dir: &Path, shards: u16, extra: &[&str], env: &[(&str, &str)]) -> FerryProcess {
        FerryProcess::start(data_dir, shards, extra, None, env)
    }

    /// [`FerryProcess::spawn_with`] with auth on; `admin_password` goes to FERRY_ADMIN_PASSWORD
    /// (None: ferry generates one at first start, see `generated_admin_password`).
    pub fn spawn_with_auth(data_dir: &Path, shards: u16, admin_password: Option<&str>, extra: &[&str]) -> FerryProcess {
        FerryProcess::start(data_dir, shards, extra, Some(admin_password), &[])
    }

    /// `auth`: None = `--auth disabled`; Some(password) = auth on, with that admin password.
    fn start(
        data_dir: &Path,
        shards: u16,
        extra: &[&str],
        auth: Option<Option<&str>>,
        env: &[(&str, &str)],
    ) -> FerryProcess {
        let mut command = ferry_command();
        command.envs(env.iter().copied());
        command
            .args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--shards", &shards.to_string(), "--data-dir"])
            .arg(data_dir);
        match auth {
            None => command.args(["--auth", "disabled"]),
            Some(Some(password)) => command.env("FERRY_ADMIN_PASSWORD", password),
            Some(None) => &mut command,
        };
        let mut child = command
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut http_addr = None;
        let mut generated_admin_password = None;
        let addr = loop {
            let line = lines.next().expect("ferry serve exited before listening").unwrap();
            if let Some(p) = line.strip_prefix("ferry: generated admin password: ") {
                generated_admin_password = Some(p.to_owned());
            }
            if let Some(a) = line.strip_prefix("ferry: http listening on ") {
                http_addr = Some(a.parse().unwrap());
            }
            if let Some(a) = line.strip_prefix("ferry: grpc listening on ") {
                break a.parse().unwrap();
            }
        };
        let http_addr = http_addr.expect("the http readiness line comes before the grpc one");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        FerryProcess { child, addr, http_addr, generated_admin_password }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("ferry had exited before the SIGKILL: {status}");
        }
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "ferry ended otherwise than by the SIGKILL: {status}");
    }

    /// SIGTERM and wait for exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `ferry chatsim` process.
pub struct ChatSimProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChatSimProcess {
    /// Starts `ferry chatsim --listen LISTEN` and waits for its readiness line.
    pub fn spawn(listen: &str, extra: &[&str]) -> ChatSimProcess {
        let mut child = ferry_command()
            .args(["chatsim", "--listen", listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry chatsim");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("ferry chatsim exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("chatsim: listening on ") {
                break a.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ChatSimProcess { child, addr }
    }
}

impl Drop for ChatSimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chat server's counters, over gRPC.
pub async fn chat_stats(addr: SocketAddr) -> ferry_proto::chat::v1::StatsResponse {
    let mut c = ferry_proto::chat::v1::chat_admin_client::ChatAdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to chatsim");
    c.stats(ferry_proto::chat::v1::StatsRequest {}).await.expect("chatsim stats").into_inner()
}

/// A plain HTTP/1.1 GET over a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await
}

/// A plain HTTP/1.1 POST of a JSON body over a fresh connection: (status, body).
pub async fn http_post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, String) {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http_request(addr, head + &body).await
}

async fn http_request(addr: SocketAddr, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the http port");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an http response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

/// Concurrent senders over gRPC, each sending texts to its own recipients (`{prefix}{task:02}{n:06}`)
/// until stopped or refused; every answer is kept, and the error that stopped each sender. For
/// crash and drain tests.
pub struct SendLoad {
    answers: Arc<std::sync::Mutex<Vec<(v1::SendRequest, String)>>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<tonic::Status>>>,
    cut_off: Arc<std::sync::Mutex<Vec<v1::SendRequest>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`SendLoad`] saw.
pub struct LoadOutcome {
    /// Every id a client got back.
    pub ids: Vec<String>,
    /// Every answered request with its id.
    pub answers: Vec<(v1::SendRequest, String)>,
    /// The error that stopped each sender that stopped on one (refused, or cut off by a kill).
    pub errors: Vec<tonic::Status>,
    /// The request each of those senders had in flight (it may or may not have been written).
    pub cut_off: Vec<v1::SendRequest>,
}

impl SendLoad {
    pub fn start(client: &Client, senders: usize, prefix: &str) -> SendLoad {
        SendLoad::start_with(client, senders, prefix, false)
    }

    /// [`SendLoad::start`] whose every send carries an idempotency key (its recipient).
    pub fn start_keyed(client: &Client, senders: usize, prefix: &str) -> SendLoad {
        SendLoad::start_with(client, senders, prefix, true)
    }

    fn start_with(client: &Client, senders: usize, prefix: &str, keyed: bool) -> SendLoad {
        use std::sync::atomic::Ordering;
        let load = SendLoad {
            answers: Arc::default(),
            answered: Arc::default(),
            in_flight: Arc::default(),
            errors: Arc::default(),
            cut_off: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..senders)
            .map(|t| {
                let (mut c, answers, answered, in_flight, errors, cut_off, stop) = (
                    client.clone(),
                    load.answers.clone(),
                    load.answered.clone(),
                    load.in_flight.clone(),
                    load.errors.clone(),
                    load.cut_off.clone(),
                    load.stop.clone(),
                );
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let to = format!("{prefix}{t:02}{n:06}");
                        let mut request = text(&to, "under load");
                        if keyed {
                            request.idempotency_key = format!("load-{to}");
                        }
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        let answer = c.send(request.clone()).await;
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        match answer {
                            Ok(r) => {
                                answers.lock().unwrap().push((request, r.into_inner().message_id));
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(status) => {
                                // Refused (draining) or cut off (killed): this sender stops and
                                // says why (`wait_answered` fails on it; `finish` returns it).
                                errors.lock().unwrap().push(status);
                                cut_off.lock().unwrap().push(request);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        SendLoad { tasks, ..load }
    }

    /// Waits until at least `n` sends were answered with an id. Panics, saying what it saw, when
    /// every sender stopped before that (each on an error), or after 120 s.
    pub async fn wait_answered(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let answered = self.answered.load(Ordering::Relaxed);
            if answered >= n {
                return;
            }
            let stopped = self.tasks.iter().filter(|t| t.is_finished()).count();
            let errors = self.errors.lock().unwrap().clone();
            assert!(stopped < self.tasks.len(), "every sender stopped after {answered} of {n} answers: {errors:?}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} answers: {answered} answered, {stopped} senders stopped: {errors:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends started and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops the senders (each ends its send in flight) and returns what they saw. Panics if a
    /// sender has not stopped 60 s later, or panicked.
    pub async fn finish(self) -> LoadOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a sender did not stop within 60 s")
                .expect("a sender panicked");
        }
        let answers = self.answers.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        let cut_off = self.cut_off.lock().unwrap().clone();
        LoadOutcome { ids: answers.iter().map(|(_, id)| id.clone()).collect(), answers, errors, cut_off }
    }
}

/// Asserts that every id in `ids` is known to the node: queued, or already acked by the server.
pub async fn assert_all_kept(client: &mut Client, ids: &[String], after: &str) {
    for id in ids {
        let r = client
            .get_message(v1::GetMessageRequest { message_id: id.clone() })
            .await
            .unwrap_or_else(|s| panic!("answered {id} lost after {after}: {s}"))
            .into_inner();
        assert!(matches!(r.status.as_str(), "accepted" | "sent" | "delivered" | "read"), "{id}: {}", r.status);
    }
}

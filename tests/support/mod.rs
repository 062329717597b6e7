//! Test sandbox: start ferry in-process on port 0, or as a real `ferry serve` process.
#![allow(dead_code)]

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
            let _ = h.await;
        }
    }

    /// Stops serving and hands back the data dir (the coordinator stays open until dropped).
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        let dir = tempfile::TempDir::new().unwrap();
        std::mem::replace(&mut self.dir, dir)
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

/// Waits until every message in `ids` has status `read` (each within `timeout`).
pub async fn wait_until_read(client: &Client, ids: &[String], timeout: Duration) {
    for id in ids {
        eventually(timeout, &format!("{id} read"), || {
            let (mut c, id) = (client.clone(), id.clone());
            async move { status_of(&mut c, &id).await.status == "read" }
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

impl FerryProcess {
    /// Starts `ferry serve` on port 0 (with its in-process chat server) and waits for its
    /// readiness line.
    pub fn spawn(data_dir: &Path, shards: u16) -> FerryProcess {
        FerryProcess::spawn_with(data_dir, shards, &[])
    }

    /// [`FerryProcess::spawn`] with extra flags, e.g. `["--upstream", addr]`. Auth is off
    /// (`--auth disabled`): see [`FerryProcess::spawn_with_auth`].
    pub fn spawn_with(data_dir: &Path, shards: u16, extra: &[&str]) -> FerryProcess {
        FerryProcess::start(data_dir, shards, extra, None)
    }

    /// [`FerryProcess::spawn_with`] with auth on; `admin_password` goes to FERRY_ADMIN_PASSWORD
    /// (None: ferry generates one at first start, see `generated_admin_password`).
    pub fn spawn_with_auth(data_dir: &Path, shards: u16, admin_password: Option<&str>, extra: &[&str]) -> FerryProcess {
        FerryProcess::start(data_dir, shards, extra, Some(admin_password))
    }

    /// `auth`: None = `--auth disabled`; Some(password) = auth on, with that admin password.
    fn start(data_dir: &Path, shards: u16, extra: &[&str], auth: Option<Option<&str>>) -> FerryProcess {
        let mut command = Command::new(ferry_bin());
        command
            .args(["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--shards", &shards.to_string(), "--data-dir"])
            .arg(data_dir)
            .env_remove("FERRY_AUTH")
            .env_remove("FERRY_ADMIN_PASSWORD");
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
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
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
        let mut child = Command::new(ferry_bin())
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
/// until stopped or refused; every answered id is kept. For crash and drain tests.
pub struct SendLoad {
    ids: Arc<std::sync::Mutex<Vec<String>>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SendLoad {
    pub fn start(client: &Client, senders: usize, prefix: &str) -> SendLoad {
        use std::sync::atomic::Ordering;
        let load = SendLoad { ids: Arc::default(), answered: Arc::default(), stop: Arc::default(), tasks: Vec::new() };
        let tasks = (0..senders)
            .map(|t| {
                let (mut c, ids, answered, stop) =
                    (client.clone(), load.ids.clone(), load.answered.clone(), load.stop.clone());
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match c.send(text(&format!("{prefix}{t:02}{n:06}"), "under load")).await {
                            Ok(r) => {
                                ids.lock().unwrap().push(r.into_inner().message_id);
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => break, // refused: the server is draining or gone
                        }
                    }
                })
            })
            .collect();
        SendLoad { tasks, ..load }
    }

    /// Waits until at least `n` sends were answered with an id.
    pub async fn wait_answered(&self, n: usize) {
        while self.answered.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the senders and returns every id a client got back.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.ids.lock().unwrap().clone()
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

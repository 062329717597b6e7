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
}

/// A real `ferry serve` process.
pub struct FerryProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

impl FerryProcess {
    /// Starts `ferry serve` on port 0 and waits for its readiness line.
    pub fn spawn(data_dir: &Path, shards: u16) -> FerryProcess {
        let mut child = Command::new(ferry_bin())
            .args(["serve", "--grpc-listen", "127.0.0.1:0", "--shards", &shards.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("ferry serve exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("ferry: grpc listening on ") {
                break a.parse().unwrap();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        FerryProcess { child, addr }
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

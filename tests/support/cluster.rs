//! Cluster sandbox (issue #12): N real `ferry serve` processes on loopback, every shard a Raft
//! group of all N, delivering to one real `ferry chatsim`. Nodes can be SIGKILLed and restarted on
//! their data dirs; the leader of a shard is read from the nodes' `/v1/health` (`raft`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{ChatSimProcess, FerryProcess, http_get};

/// A free loopback port (bound and released: the cluster ports must be known before the nodes
/// start, since every node is given all of them).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Cluster {
    pub chatsim: ChatSimProcess,
    /// Node `i + 1`, `None` while it is down.
    pub nodes: Vec<Option<FerryProcess>>,
    dirs: Vec<tempfile::TempDir>,
    cluster_ports: Vec<u16>,
    shards: u16,
}

impl Cluster {
    /// Starts a chat server and `n` nodes with `shards` shards each.
    pub fn start(n: usize, shards: u16) -> Cluster {
        let chatsim = ChatSimProcess::spawn("127.0.0.1:0", &[]);
        let cluster_ports = (0..n).map(|_| free_port()).collect();
        let dirs = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster { chatsim, nodes: (0..n).map(|_| None).collect(), dirs, cluster_ports, shards };
        for id in 1..=n as u64 {
            cluster.restart(id);
        }
        cluster
    }

    fn peers(&self) -> String {
        let peers: Vec<String> =
            self.cluster_ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
        peers.join(",")
    }

    /// Starts node `id` (1-based) on its data dir (again, after a kill).
    pub fn restart(&mut self, id: u64) {
        let i = (id - 1) as usize;
        assert!(self.nodes[i].is_none(), "node {id} is running");
        let listen = format!("127.0.0.1:{}", self.cluster_ports[i]);
        let upstream = self.chatsim.addr.to_string();
        let peers = self.peers();
        let node = id.to_string();
        let rf = self.nodes.len().to_string();
        let args = [
            "--node-id",
            node.as_str(),
            "--cluster-listen",
            listen.as_str(),
            "--peers",
            peers.as_str(),
            "--replication-factor",
            rf.as_str(),
            "--upstream",
            upstream.as_str(),
            "--customer-service-window",
            "off",
        ];
        self.nodes[i] = Some(FerryProcess::spawn_with(self.dirs[i].path(), self.shards, &args));
    }

    /// SIGKILLs node `id`.
    pub fn kill9(&mut self, id: u64) {
        self.nodes[(id - 1) as usize].take().expect("node is running").kill9();
    }

    /// `ferry cluster status` over the internal API: one JSON value per node.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let out = super::ferry_command().args(["cluster", "status", "--peers", &self.peers()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ferry cluster status failed: {text} {}", String::from_utf8_lossy(&out.stderr));
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        let pid = self.node(id).child.id().to_string();
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Shards per node.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub fn node(&self, id: u64) -> &FerryProcess {
        self.nodes[(id - 1) as usize].as_ref().expect("node is running")
    }

    /// The gRPC addresses of the running nodes, by id.
    pub fn running(&self) -> Vec<(u64, SocketAddr)> {
        (self.nodes.iter().enumerate()).filter_map(|(i, n)| n.as_ref().map(|n| (i as u64 + 1, n.addr))).collect()
    }

    /// Node `id`'s view of shard `shard`'s group (`raft` of `/v1/health`), if it answers.
    pub async fn raft_view(&self, id: u64, shard: u16) -> Option<serde_json::Value> {
        let node = self.nodes[(id - 1) as usize].as_ref()?;
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(2), http_get(node.http_addr, "/v1/health")).await.ok()?;
        if status != 200 {
            return None;
        }
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(health["health"][format!("shard-{shard:02}")]["raft"].clone())
    }

    /// The running node that leads `shard` and delivers for it, if exactly one does (a paused
    /// node does not answer and is not counted).
    pub async fn delivering_leader(&self, shard: u16) -> Option<u64> {
        self.delivering_leader_among(shard, &self.running().into_iter().map(|(id, _)| id).collect::<Vec<_>>()).await
    }

    /// [`Cluster::delivering_leader`] among `nodes`.
    pub async fn delivering_leader_among(&self, shard: u16, nodes: &[u64]) -> Option<u64> {
        let mut leaders = Vec::new();
        for &id in nodes {
            if let Some(view) = self.raft_view(id, shard).await
                && view["role"] == "leader"
                && view["delivering"] == true
            {
                leaders.push(id);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits until a running node other than `not` leads `shard` and delivers; panics after
    /// `timeout`, saying what every node saw.
    pub async fn wait_leader(&self, shard: u16, not: Option<u64>, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.delivering_leader(shard).await
                && Some(l) != not
            {
                return l;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut views = Vec::new();
                for (id, _) in self.running() {
                    views.push((id, self.raft_view(id, shard).await));
                }
                panic!("no delivering leader of shard {shard} (other than {not:?}) after {timeout:?}: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

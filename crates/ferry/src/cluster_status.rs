//! `ferry cluster status`: every node's view of its shards' Raft groups, from the internal API's
//! `Status` call (the operator's first look at a cluster: who leads what, who lags).

use std::time::Duration;

use crate::cluster_config::ClusterConfig;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The cluster's nodes, comma-separated ID=HOST:PORT (their `cluster.listen`), as for `serve`.
    #[arg(long, env = "FERRY_PEERS", value_delimiter = ',', required = true)]
    peers: Vec<String>,
    /// The cluster's shared secret, if it has one. Prefer the env var.
    #[arg(long, env = "FERRY_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Seconds to wait for each node.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let config = ClusterConfig { peers: a.peers, ..ClusterConfig::default() };
    let peers = config.peer_map()?;
    let secret = a.cluster_secret.filter(|s| !s.is_empty());
    let client = ferry_cluster::Peers::new(secret.as_deref()).map_err(|e| anyhow::anyhow!("--cluster-secret: {e}"))?;
    let mut unreachable = 0;
    for (id, addr) in &peers {
        let line = match ferry_cluster::node_status(&client, addr, Duration::from_secs(a.timeout_secs)).await {
            Ok(status) => {
                let groups: Vec<serde_json::Value> = status
                    .groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "shard": g.shard,
                            "role": g.role,
                            "term": g.current_term,
                            "leader": g.current_leader,
                            "last_log_index": g.last_log_index,
                            "applied_index": g.last_applied_index,
                            "voters": g.voters,
                            "rejoining": g.rejoining,
                        })
                    })
                    .collect();
                serde_json::json!({"node": id, "addr": addr, "node_id": status.node_id, "groups": groups})
            }
            Err(status) => {
                unreachable += 1;
                serde_json::json!({"node": id, "addr": addr, "error": status.message()})
            }
        };
        crate::output::line(line.to_string())?;
    }
    if unreachable > 0 {
        anyhow::bail!("{unreachable} of {} nodes did not answer", peers.len());
    }
    Ok(())
}

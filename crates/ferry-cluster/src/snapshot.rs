//! The receiving side of `InstallSnapshot`: the streamed checkpoint is written into a fresh
//! `incoming-net-*` directory under the group's snapshot root, every file and the directory are
//! fsynced, and the group's `Raft` installs it (`install_full_snapshot`). The directory is removed
//! afterwards whatever happened (the state machine copies the data in and keeps its own
//! checkpoint).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_shard::raft::{CheckpointSnapshot, PeerNode, ShardRaft};
use openraft::error::Fatal;
use openraft::raft::SnapshotResponse;
use openraft::{Snapshot, SnapshotMeta, Vote};
use tokio::io::AsyncWriteExt;
use tonic::{Code, Status, Streaming};

use crate::network::SNAPSHOT_CHUNK_BYTES;
use crate::pb;
use crate::registry::Registry;
use crate::secret::refused;

/// Makes incoming directory names unique within the process.
static INCOMING: AtomicU64 = AtomicU64::new(0);

fn invalid(message: String) -> Status {
    refused(Code::InvalidArgument, message)
}

fn io_status(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

/// The next frame, within `idle`; `None` at the end of the stream.
async fn next_frame(
    stream: &mut Streaming<pb::SnapshotFrame>,
    idle: Duration,
) -> Result<Option<pb::snapshot_frame::Frame>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Err(_) => Err(Status::deadline_exceeded(format!("no snapshot frame within {idle:?}"))),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(frame))) => match frame.frame {
            None => Err(invalid("frame: expected a header or a chunk, got neither".into())),
            Some(f) => Ok(Some(f)),
        },
    }
}

/// A file name of a (flat) checkpoint directory: no separators, not `.`/`..`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Receives one snapshot stream and installs it (see the module docs).
pub(crate) async fn receive(
    registry: &Registry,
    mut stream: Streaming<pb::SnapshotFrame>,
    idle: Duration,
) -> Result<pb::SnapshotReply, Status> {
    let header = match next_frame(&mut stream, idle).await? {
        Some(pb::snapshot_frame::Frame::Header(h)) => h,
        Some(pb::snapshot_frame::Frame::Chunk(_)) => {
            return Err(invalid("frame 0: expected the snapshot header, got a chunk".into()));
        }
        None => return Err(invalid("stream: expected a snapshot header, got an empty stream".into())),
    };
    let group =
        u16::try_from(header.group).map_err(|_| invalid(format!("group: expected 0..65535, got {}", header.group)))?;
    let Some(target) = registry.get(group) else {
        return Err(refused(Code::Unavailable, format!("group {group} is not open on this node")));
    };
    let vote: Vote<u64> =
        serde_json::from_slice(&header.vote).map_err(|e| invalid(format!("vote: expected a JSON vote: {e}")))?;
    let meta: SnapshotMeta<u64, PeerNode> =
        serde_json::from_slice(&header.meta).map_err(|e| invalid(format!("meta: expected JSON snapshot meta: {e}")))?;
    let mut names = BTreeSet::new();
    for f in &header.files {
        if !valid_name(&f.name) || !names.insert(f.name.as_str()) {
            return Err(invalid(format!("files: expected unique plain file names, got {:?}", f.name)));
        }
    }

    let n = INCOMING.fetch_add(1, Ordering::Relaxed);
    let dir = target.snapshot_root.join(format!("incoming-net-{}-{n}", std::process::id()));
    let result = async {
        write_files(&dir, &header.files, &mut stream, idle).await?;
        if target.rejoin_state().refuses_votes() {
            target.rejoin.send_if_modified(|s| !std::mem::replace(&mut s.replicated, true));
        }
        let snapshot = Snapshot::<ShardRaft> { meta, snapshot: Box::new(CheckpointSnapshot { dir: dir.clone() }) };
        let installed: Result<SnapshotResponse<u64>, Fatal<u64>> =
            target.raft.install_full_snapshot(vote, snapshot).await;
        if let Err(e) = &installed {
            tracing::warn!(group, error = %e, "installing a received snapshot failed");
        }
        Ok(pb::SnapshotReply { body: serde_json::to_vec(&installed).expect("snapshot replies serialize") })
    }
    .await;
    let leftover = dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if leftover.exists()
            && let Err(e) = std::fs::remove_dir_all(&leftover)
        {
            tracing::warn!(dir = %leftover.display(), error = %e, "received snapshot directory not removed");
        }
    })
    .await;
    result
}

/// Creates `dir` with every file of `files`, fills them from the stream's chunks (in order, each
/// within its file's size), checks every file is complete and fsyncs the files and `dir`.
async fn write_files(
    dir: &PathBuf,
    files: &[pb::SnapshotFile],
    stream: &mut Streaming<pb::SnapshotFrame>,
    idle: Duration,
) -> Result<(), Status> {
    if tokio::fs::try_exists(dir).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(dir).await.map_err(|e| io_status("removing", dir, e))?;
    }
    tokio::fs::create_dir_all(dir).await.map_err(|e| io_status("creating", dir, e))?;
    let mut open = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        open.push(tokio::fs::File::create(&path).await.map_err(|e| io_status("creating", &path, e))?);
    }
    let mut written = vec![0u64; files.len()];
    let mut frame_no = 1u64;
    while let Some(frame) = next_frame(stream, idle).await? {
        let pb::snapshot_frame::Frame::Chunk(chunk) = frame else {
            return Err(invalid(format!("frame {frame_no}: expected a chunk, got a second header")));
        };
        let i = chunk.file as usize;
        let Some(f) = files.get(i) else {
            return Err(invalid(format!("frame {frame_no}: file: expected 0..{}, got {i}", files.len())));
        };
        if chunk.offset != written[i] {
            return Err(invalid(format!(
                "frame {frame_no}: offset: expected {} (the next byte of {}), got {}",
                written[i], f.name, chunk.offset
            )));
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if chunk.data.len() > SNAPSHOT_CHUNK_BYTES || end > f.size {
            return Err(invalid(format!(
                "frame {frame_no}: data: expected at most {} bytes within the {} bytes of {}, got {} at {}",
                SNAPSHOT_CHUNK_BYTES,
                f.size,
                f.name,
                chunk.data.len(),
                chunk.offset
            )));
        }
        open[i].write_all(&chunk.data).await.map_err(|e| io_status("writing", &dir.join(&f.name), e))?;
        written[i] = end;
        frame_no += 1;
    }
    for ((f, file), got) in files.iter().zip(&mut open).zip(&written) {
        if *got != f.size {
            return Err(invalid(format!("stream: ended with {} at {got} of {} bytes", f.name, f.size)));
        }
        file.flush().await.map_err(|e| io_status("writing", &dir.join(&f.name), e))?;
        file.sync_all().await.map_err(|e| io_status("syncing", &dir.join(&f.name), e))?;
    }
    let d = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| io_status("syncing", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn only_plain_file_names_are_accepted() {
        for ok in ["000012.sst", "CURRENT", "MANIFEST-000005", "OPTIONS-000007"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

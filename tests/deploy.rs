//! The deployment artefacts (`deploy/`): every Kubernetes manifest of both profiles validates
//! offline against the Kubernetes schemas (kubernetes-validate from PyPI, strict: an unknown field
//! fails), and `ferry probe`, the image's HEALTHCHECK, tells a live node from a dead one.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The validator's path from `scripts/setup.sh --k8s-validator`; None when PyPI cannot be reached.
fn validator() -> Option<PathBuf> {
    let out = Command::new("bash").arg(root().join("scripts/setup.sh")).arg("--k8s-validator").output().unwrap();
    match out.status.code() {
        Some(0) => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        Some(3) => None,
        _ => panic!("setup.sh --k8s-validator failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Kubernetes version the manifests are checked against.
const K8S: &str = "1.30";

fn validate(files: &[PathBuf]) -> (bool, String) {
    let Some(v) = validator() else { return (true, "skipped".into()) };
    let out = Command::new(v).args(["--strict", "-k", K8S]).args(files).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The profile's resources: base's, plus the overlay's complete replacements.
fn manifests(profile: &str) -> Vec<PathBuf> {
    let base = root().join("deploy/k8s/base");
    let mut files: Vec<PathBuf> = ["configmap", "secret", "services", "statefulset", "pdb", "servicemonitor"]
        .iter()
        .map(|f| base.join(format!("{f}.yaml")))
        .collect();
    if profile == "five-node" {
        files[0] = root().join("deploy/k8s/five-node/configmap.yaml");
    }
    files
}

fn check_profile(profile: &str) {
    if validator().is_none() {
        support::skip(&format!("k8s_manifests_{profile}"), "PyPI cannot be reached: kubernetes-validate not installed");
        return;
    }
    let (ok, text) = validate(&manifests(profile));
    println!("{text}");
    assert!(ok, "{profile}: a manifest does not validate:\n{text}");
    // Every core object was checked; only the CRD kind has no schema in the package.
    assert_eq!(text.matches(" passed for resource ").count(), 6, "{text}");
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("ServiceMonitor"), "unexpected warning: {line}");
    }
}

#[test]
fn k8s_manifests_of_the_default_profile_validate() {
    check_profile("base");
}

#[test]
fn k8s_manifests_of_the_five_node_profile_validate() {
    check_profile("five-node");
}

#[test]
fn a_broken_manifest_fails_validation() {
    if validator().is_none() {
        support::skip("a_broken_manifest_fails_validation", "PyPI cannot be reached");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("deploy/k8s/base/pdb.yaml")).unwrap();
    let broken = dir.path().join("pdb.yaml");
    std::fs::write(&broken, text.replace("maxUnavailable:", "maxUnavailabel:")).unwrap();
    let (ok, out) = validate(&[broken]);
    assert!(!ok && out.contains("maxUnavailabel"), "a misspelt field must fail: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_zero_on_a_live_node_and_one_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::FerryProcess::spawn(dir.path(), 1);
    let url = format!("http://{}/healthz", node.http_addr);
    let out = support::ferry_command().args(["probe", "--url", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200 "));
    let missing = format!("http://{}/nowhere", node.http_addr);
    let out = support::ferry_command().args(["probe", "--url", &missing]).output().unwrap();
    assert!(!out.status.success(), "a 404 is not healthy");
    node.terminate();
    let out = support::ferry_command().args(["probe", "--url", &url, "--timeout-secs", "2"]).output().unwrap();
    assert!(!out.status.success(), "a stopped node is not healthy");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

//! A real 3-node rmqtt cluster (`tests/cluster/cluster.sh`) and sealmq
//! gateways in front of it, for the cluster tests (`tests/cluster.rs`),
//! which `tests/cluster/run.sh` runs: rmqttd takes long to build, so these
//! tests are `#[ignore]`d in the ordinary test run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh")
}

/// Three rmqttd nodes on loopback, stopped when dropped (their logs are
/// printed if the test is failing, and kept with `SEALMQ_KEEP_CLUSTER`).
pub struct RmqttCluster {
    dir: tempfile::TempDir,
    /// Each node's MQTT listener, `127.0.0.1:port`, node 1 first.
    pub nodes: Vec<String>,
}

impl RmqttCluster {
    /// Starts the nodes and waits until each delivers to subscribers on
    /// every other (the script checks with mosquitto_pub/sub).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("sealmq-cluster").tempdir().unwrap();
        let status = Command::new("bash").arg(script()).arg("start").arg(dir.path()).status().unwrap();
        assert!(status.success(), "tests/cluster/cluster.sh start failed ({status}); logs in {}", dir.path().display());
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let nodes = env
            .lines()
            .find_map(|l| l.strip_prefix("NODES="))
            .expect("NODES= in the cluster's env file")
            .split(',')
            .map(str::to_string)
            .collect();
        Self { dir, nodes }
    }

    /// Every node's address, starting from node `first` (0-based): the
    /// order a gateway that should start on that node tries them.
    pub fn nodes_from(&self, first: usize) -> Vec<String> {
        (0..self.nodes.len()).map(|k| self.nodes[(first + k) % self.nodes.len()].clone()).collect()
    }

    /// SIGKILLs node `n` (1-based), as a crash would.
    pub fn kill(&self, n: usize) {
        let status =
            Command::new("bash").arg(script()).arg("kill").arg(self.dir.path()).arg(n.to_string()).status().unwrap();
        assert!(status.success(), "cluster.sh kill {n}");
    }

    /// Node `n`'s log so far.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{n}/rmqttd.log"))).unwrap_or_default()
    }
}

impl Drop for RmqttCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).status();
        if std::thread::panicking() {
            for n in 1..=self.nodes.len() {
                let log = self.log(n);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!(
                    "--- rmqttd node {n}, last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        if std::env::var_os("SEALMQ_KEEP_CLUSTER").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("cluster logs kept in {}", kept.display());
        }
    }
}

/// The `[upstream]` section for a gateway in front of `nodes`, tried in
/// the order given.
pub fn upstream_toml(nodes: &[String]) -> String {
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[upstream]\naddresses = [{}]\n", list.join(", "))
}

/// Whether `sealmq check-config` accepts `toml`.
pub fn config_accepted(toml: &str) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(super::sealmq_bin()).arg("check-config").arg(&path).output().unwrap();
    out.status.success()
}

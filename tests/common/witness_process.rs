//! A real standalone witness, `sealmq witness serve`, on an ephemeral
//! loopback port with a data directory of its own, for the end-to-end tests
//! that run a broker with a witness policy.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::broker::spawn_piped;
use super::sealmq_bin;

/// A running `sealmq witness serve` process; killed when dropped.
pub struct WitnessProcess {
    child: Child,
    /// Its HTTP listener.
    pub http: SocketAddr,
    /// Its cosigner key (C2SP tlog-cosignature), from the start-up banner.
    pub vkey: String,
    /// Everything it printed on stderr so far (its logs).
    pub stderr: Arc<Mutex<String>>,
}

impl WitnessProcess {
    /// Starts a witness of the log with verifier key `log_vkey`, its key
    /// named `name` (when `data` has no witness key yet); waits for its banner.
    pub fn start(data: &Path, log_vkey: &str, name: &str) -> Self {
        let mut command = Command::new(sealmq_bin());
        command
            .args(["--data", data.to_str().unwrap(), "witness", "serve", "--listen", "127.0.0.1:0"])
            .args(["--log", log_vkey, "--name", name])
            .env("RUST_LOG", "sealmq=debug,sealmq_broker=debug,sealmq_audit=info,warn");
        let (child, stderr, rx) = spawn_piped(command, "sealmq witness serve starts");
        let (mut http, mut vkey) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.is_none() || vkey.is_none() {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(_) => panic!("no witness start-up banner; stderr:\n{}", stderr.lock().unwrap()),
            };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("http"), Some(addr)) => http = Some(addr.trim_start_matches("http://").parse().unwrap()),
                (Some("witness"), Some(key)) => vkey = Some(key.to_string()),
                _ => {}
            }
        }
        Self { child, http: http.unwrap(), vkey: vkey.unwrap(), stderr }
    }

    /// The submission prefix a policy names (C2SP tlog-witness).
    pub fn url(&self) -> String {
        format!("http://{}/witness", self.http)
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

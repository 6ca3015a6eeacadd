//! A real `sealmq serve` process on ephemeral loopback ports with a real
//! data directory, for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sealmq_bin;

/// A running broker process.
pub struct BrokerProcess {
    child: Option<Child>,
    /// Its MQTT listener.
    pub mqtt: SocketAddr,
    /// Its HTTP listener.
    pub http: SocketAddr,
    /// The log's verifier key, from the start-up banner.
    pub vkey: String,
    /// The optional listeners the banner named: `mqtts`, `ws`, `wss`.
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    /// The data directory.
    pub data: PathBuf,
    /// Everything it printed on stderr so far (its logs).
    pub stderr: Arc<Mutex<String>>,
}

/// `--listen` and `--http` when the test lets the system choose the ports.
const EPHEMERAL: [&str; 2] = ["127.0.0.1:0", "127.0.0.1:0"];

/// What the broker logs in tests: its own debug lines, the router's none.
const DEFAULT_LOG: &str = "sealmq=debug,sealmq_broker=debug,sealmq_audit=info,rumqttd=off,warn";

impl BrokerProcess {
    /// Starts `sealmq serve` on 127.0.0.1 ephemeral ports with the embedded
    /// defaults and `data`, plus `extra` arguments; waits for its banner.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_log(data, extra, DEFAULT_LOG)
    }

    /// As [`BrokerProcess::start`], with `rust_log` as its `RUST_LOG` (which
    /// log lines it writes on stderr).
    pub fn start_with_log(data: &Path, extra: &[&str], rust_log: &str) -> Self {
        Self::launch(Command::new(sealmq_bin()), data, EPHEMERAL, extra, rust_log)
    }

    /// As [`BrokerProcess::start`], listening on `mqtt` and `http`: for
    /// brokers whose addresses others must know before they start (and keep
    /// across a restart), such as witnesses named in a policy.
    pub fn start_at(data: &Path, mqtt: SocketAddr, http: SocketAddr, extra: &[&str]) -> Self {
        let (mqtt, http) = (mqtt.to_string(), http.to_string());
        Self::launch(Command::new(sealmq_bin()), data, [&mqtt, &http], extra, DEFAULT_LOG)
    }

    /// As [`BrokerProcess::start_with_config`], with its file descriptor
    /// limit (soft and hard) set to `nofile`.
    pub fn start_with_nofile(data: &Path, toml: &str, nofile: u64) -> Self {
        let config = Self::write_config(data, toml);
        let mut shell = Command::new("sh");
        // `exec` keeps the broker's pid the child's, for stop().
        shell.arg("-c").arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")).arg(sealmq_bin());
        Self::launch(shell, data, EPHEMERAL, &["--config", config.to_str().unwrap()], DEFAULT_LOG)
    }

    fn launch(mut command: Command, data: &Path, [mqtt, http]: [&str; 2], extra: &[&str], rust_log: &str) -> Self {
        let mut args = vec!["--data", data.to_str().unwrap(), "serve", "--listen", mqtt, "--http", http];
        args.extend_from_slice(extra);
        command.args(&args).env("RUST_LOG", rust_log);
        let (child, stderr, rx) = spawn_piped(command, "sealmq serve starts");
        let (mut mqtt, mut http, mut vkey) = (None, None, None);
        let mut listeners = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while mqtt.is_none() || http.is_none() || vkey.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!("no start-up banner; stderr:\n{}", stderr.lock().unwrap()),
            };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("mqtt"), Some(addr)) => mqtt = Some(addr.parse().unwrap()),
                (Some("http"), Some(addr)) => http = Some(addr.trim_start_matches("http://").parse().unwrap()),
                (Some("vkey"), Some(key)) => vkey = Some(key.to_string()),
                (Some(kind @ ("mqtts" | "ws" | "wss")), Some(addr)) => {
                    let addr = addr.split("://").last().unwrap().trim_end_matches("/mqtt");
                    listeners.insert(kind.to_string(), addr.parse().unwrap());
                }
                _ => {}
            }
        }
        Self {
            child: Some(child),
            mqtt: mqtt.unwrap(),
            http: http.unwrap(),
            vkey: vkey.unwrap(),
            listeners,
            data: data.to_path_buf(),
            stderr,
        }
    }

    /// Starts with a configuration file holding `toml`.
    pub fn start_with_config(data: &Path, toml: &str) -> Self {
        let path = Self::write_config(data, toml);
        Self::start(data, &["--config", path.to_str().unwrap()])
    }

    /// Writes `toml` beside `data`; its path.
    fn write_config(data: &Path, toml: &str) -> PathBuf {
        std::fs::create_dir_all(data).unwrap();
        let path = data.with_extension("toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The process id of the running broker.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker is running").id()
    }

    /// How many lines it has written on stderr so far.
    pub fn stderr_lines(&self) -> usize {
        self.stderr.lock().unwrap().lines().count()
    }

    /// `host:port` of the MQTT listener, for mosquitto clients.
    pub fn mqtt_port(&self) -> String {
        self.mqtt.port().to_string()
    }

    /// Stops with SIGTERM and returns the exit status (a clean stop is 0).
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker did not stop within 30 s of SIGTERM; stderr:\n{}", self.stderr.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `command` with its stdout and stderr piped: stderr collected into
/// the returned string, stdout sent line by line to the receiver and read
/// to its end even once nobody listens (a closed pipe would make the
/// process's goodbye line fail).
pub fn spawn_piped(mut command: Command, what: &str) -> (Child, Arc<Mutex<String>>, Receiver<String>) {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect(what);
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let stderr = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = stderr.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, stderr, rx)
}

/// A process's resident memory, in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

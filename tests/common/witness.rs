//! A mesh of real sealmq processes witnessing one another (issue 13): three
//! brokers A, B, C, each a witness (`[witness]`) of the other two, and one
//! standalone `sealmq witness serve` W. Each broker's log has a C2SP
//! tlog-policy naming its three witnesses with their submission prefixes and
//! a 2-of-3 quorum. Plus what the tests need around it: plain HTTP with
//! headers, signed-note lines, and the independent C2SP checker
//! (`tests/witness/c2sp_check.py`, written from the C2SP texts alone).
//!
//! Every address is chosen before anything starts, because each policy must
//! name the other processes' URLs, and kept across restarts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::broker::BrokerProcess;
use super::mqtt::{self, QoS, kind};
use super::{BIN, sealmq};

/// How long anything asynchronous (a seal, a cosignature round, a restart)
/// may take on a loaded 2-core machine before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the processes log in these tests: enough to see every witness
/// request and refusal when a test fails.
const RUST_LOG: &str = "sealmq=debug,sealmq_broker=debug,sealmq_audit=info,rumqttd=off,warn";

/// `n` distinct loopback addresses that were free a moment ago: all are
/// held until all are chosen, so none is handed out twice.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Polls `probe` every 100 ms until it gives `Ok`, for at most [`PATIENCE`];
/// fails the test with `what` and the last `Err` (what was seen instead).
#[track_caller]
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) if Instant::now() > deadline => {
                panic!("{what}: not within {PATIENCE:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One sealmq broker of the mesh: its log, its witness key, and where it
/// listens (fixed, so restarts keep the URLs the others know).
pub struct Node {
    /// Its name in the other nodes' policies: "A", "B" or "C".
    pub name: &'static str,
    pub origin: String,
    pub data: PathBuf,
    /// `log <vkey>` from `sealmq init`.
    pub log_vkey: String,
    /// `witness <vkey>` from `sealmq init`.
    pub witness_vkey: String,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// Its `serve --config` file.
    pub config: PathBuf,
    /// The C2SP tlog-policy its log is witnessed under.
    pub policy: PathBuf,
    process: Option<BrokerProcess>,
}

impl Node {
    /// The running broker.
    #[track_caller]
    pub fn broker(&self) -> &BrokerProcess {
        self.process.as_ref().unwrap_or_else(|| panic!("broker {} is not running", self.name))
    }

    /// Starts `sealmq serve` with its configuration (and `extra` flags) on
    /// its addresses; waits for the banner.
    pub fn start(&mut self, extra: &[&str]) {
        assert!(self.process.is_none(), "broker {} is already running", self.name);
        let mut args = vec!["--config", self.config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let broker = BrokerProcess::start_at(&self.data, self.mqtt, self.http, &args);
        assert_eq!(broker.vkey, self.log_vkey, "broker {} serves another log than `sealmq init` made", self.name);
        self.process = Some(broker);
    }

    /// Stops it with SIGTERM; it must exit cleanly.
    #[track_caller]
    pub fn stop(&mut self) {
        let broker = self.process.take().unwrap_or_else(|| panic!("broker {} is not running", self.name));
        let logs = Arc::clone(&broker.stderr);
        let status = broker.stop();
        assert!(status.success(), "broker {} exited with {status} on SIGTERM; stderr:\n{}", self.name, tail(&logs));
    }

    /// Its stderr so far (empty when not running).
    pub fn logs(&self) -> String {
        self.process.as_ref().map(|p| p.stderr.lock().unwrap().clone()).unwrap_or_default()
    }

    /// `sealmq serve` with its configuration on its addresses, spawned
    /// without waiting for anything: for starts that must be refused.
    pub fn spawn_serve(&self, extra: &[&str]) -> Child {
        let (mqtt, http) = (self.mqtt.to_string(), self.http.to_string());
        let mut args = vec!["--listen", &mqtt, "--http", &http, "--config", self.config.to_str().unwrap()];
        args.extend_from_slice(extra);
        Command::new(BIN)
            .arg("--data")
            .arg(&self.data)
            .arg("serve")
            .args(&args)
            .env("RUST_LOG", RUST_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sealmq serve starts")
    }
}

/// The standalone witness W: `sealmq witness serve`.
pub struct Standalone {
    pub name: &'static str,
    pub data: PathBuf,
    /// The witness key's name in its vkey and cosignatures.
    pub key_name: String,
    pub vkey: String,
    pub http: SocketAddr,
    /// The log vkeys it follows.
    pub logs: Vec<String>,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Standalone {
    /// Starts `sealmq witness serve` on its address; waits for its banner,
    /// which must name its address and its vkey.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "witness {} is already running", self.name);
        let listen = self.http.to_string();
        let mut command = Command::new(BIN);
        command.arg("--data").arg(&self.data).args(["witness", "serve", "--listen", &listen, "--name", &self.key_name]);
        for log in &self.logs {
            command.args(["--log", log]);
        }
        let mut child = command
            .env("RUST_LOG", RUST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sealmq witness serve starts");
        self.stderr = collect(child.stderr.take().unwrap());
        let lines = lines(child.stdout.take().unwrap());
        let (mut http, mut vkey) = (None, None);
        let deadline = Instant::now() + PATIENCE;
        while http.is_none() || vkey.is_none() {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no banner from witness serve; stderr:\n{}", self.stderr.lock().unwrap()));
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("http"), Some(addr)) => http = Some(addr.trim_start_matches("http://").to_string()),
                (Some("witness"), Some(key)) => vkey = Some(key.to_string()),
                _ => {}
            }
        }
        assert_eq!(http.unwrap(), listen, "witness serve's banner names another address");
        assert_eq!(vkey.unwrap(), self.vkey, "witness serve's banner names another key than `witness vkey`");
        self.child = Some(child);
    }

    /// Stops it with SIGTERM; it must exit cleanly.
    #[track_caller]
    pub fn stop(&mut self) {
        let status = stop_child(self.child.take().expect("the witness is running"));
        assert!(status.success(), "witness {} exited with {status}; stderr:\n{}", self.name, tail(&self.stderr));
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then the exit status (SIGKILL and a failed test after 30 s).
fn stop_child(mut child: Child) -> ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not stop within {PATIENCE:?} of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything `pipe` says, gathered by a thread.
pub fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let all = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&all);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    all
}

/// `pipe`'s lines, as they come.
fn lines(pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even once nobody listens: a closed pipe would make
        // the process's next line on stdout (its goodbye) fail.
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The last 80 lines of a log.
pub fn tail(logs: &Mutex<String>) -> String {
    let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// The three brokers and the standalone witness, all running.
pub struct Mesh {
    pub nodes: Vec<Node>,
    pub w: Standalone,
    /// Where the data directories, configurations and policies live.
    pub dir: tempfile::TempDir,
}

/// `block_interval_ms`: seals come quickly, so checkpoints follow publishes.
const BLOCK_INTERVAL_MS: u64 = 50;
/// `[witnessing] min_interval_ms`.
const MIN_INTERVAL_MS: u64 = 100;

impl Mesh {
    /// Creates every data directory with `sealmq init` (and `witness vkey`
    /// for W), writes the policies and configurations from the vkeys those
    /// printed, and starts W, then A, B and C.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addrs = free_addrs(7);
        let nodes: Vec<Node> = ["A", "B", "C"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let lower = name.to_ascii_lowercase();
                let origin = format!("{lower}.sealmq.test/log");
                let data = dir.path().join(&lower);
                let (log_vkey, witness_vkey) = init(&data, &origin);
                Node {
                    name,
                    origin,
                    config: dir.path().join(format!("{lower}.toml")),
                    policy: dir.path().join(format!("{lower}-policy.txt")),
                    data,
                    log_vkey,
                    witness_vkey,
                    mqtt: addrs[2 * i],
                    http: addrs[2 * i + 1],
                    process: None,
                }
            })
            .collect();
        let w_data = dir.path().join("w");
        std::fs::create_dir_all(&w_data).unwrap();
        let key_name = "w.sealmq.test/witness".to_string();
        let w_vkey = sealmq(&w_data, &["witness", "vkey", "--name", &key_name]).ok().trim().to_string();
        assert!(w_vkey.starts_with(&format!("{key_name}+")), "witness vkey {w_vkey:?} is not named {key_name}");
        let w = Standalone {
            name: "W",
            data: w_data,
            key_name,
            vkey: w_vkey,
            http: addrs[6],
            logs: nodes.iter().map(|n| n.log_vkey.clone()).collect(),
            child: None,
            stderr: Arc::default(),
        };
        for i in 0..nodes.len() {
            let policy = policy_for(&nodes, i, &w);
            std::fs::write(&nodes[i].policy, policy).unwrap();
            let others: Vec<String> =
                nodes.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, n)| format!("{:?}", n.log_vkey)).collect();
            let config = format!(
                "block_interval_ms = {BLOCK_INTERVAL_MS}\n\n\
                 [unknown_devices]\npolicy = \"legacy\"\n\n\
                 [witnessing]\npolicy = {:?}\nmin_interval_ms = {MIN_INTERVAL_MS}\ntimeout_ms = 3000\n\n\
                 [witness]\nlogs = [{}]\n",
                nodes[i].policy.to_str().unwrap(),
                others.join(", "),
            );
            std::fs::write(&nodes[i].config, config).unwrap();
        }
        let mut mesh = Mesh { nodes, w, dir };
        mesh.w.start();
        for node in &mut mesh.nodes {
            node.start(&[]);
        }
        mesh
    }

    pub fn a(&self) -> &Node {
        &self.nodes[0]
    }

    /// The submission prefixes of the witnesses of node `i`'s log, by their
    /// policy names.
    pub fn witnesses_of(&self, i: usize) -> Vec<(&'static str, SocketAddr)> {
        let mut out: Vec<(&'static str, SocketAddr)> =
            self.nodes.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, n)| (n.name, n.http)).collect();
        out.push((self.w.name, self.w.http));
        out
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                let logs = node.logs();
                let lines: Vec<&str> = logs.lines().collect();
                eprintln!(
                    "---- broker {} ({}) log, last lines ----\n{}",
                    node.name,
                    node.origin,
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            eprintln!("---- witness W log, last lines ----\n{}", tail(&self.w.stderr));
        }
    }
}

/// `sealmq init --origin ORIGIN`: the log vkey and witness vkey it prints,
/// checked to be the same when run again (it is idempotent).
fn init(data: &Path, origin: &str) -> (String, String) {
    let parse = |out: &str| {
        let (mut log, mut witness) = (None, None);
        for line in out.lines() {
            match line.split_once(' ') {
                Some(("log", key)) => log = Some(key.trim().to_string()),
                Some(("witness", key)) => witness = Some(key.trim().to_string()),
                _ => {}
            }
        }
        let (log, witness) = (log.expect("a `log` line"), witness.expect("a `witness` line"));
        assert!(log.starts_with(&format!("{origin}+")), "log vkey {log:?} is not named after the origin {origin}");
        (log, witness)
    };
    let first = parse(&sealmq(data, &["init", "--origin", origin]).ok());
    assert_eq!(parse(&sealmq(data, &["init", "--origin", origin]).ok()), first, "sealmq init is not idempotent");
    first
}

/// Node `i`'s policy: its log, the other brokers and W as witnesses with
/// their submission prefixes, 2 of 3.
fn policy_for(nodes: &[Node], i: usize, w: &Standalone) -> String {
    let mut policy = format!("# the witnesses of {}\nlog {}\n", nodes[i].origin, nodes[i].log_vkey);
    let mut names = Vec::new();
    for (_, node) in nodes.iter().enumerate().filter(|&(j, _)| j != i) {
        policy.push_str(&format!("witness {} {} http://{}/witness\n", node.name, node.witness_vkey, node.http));
        names.push(node.name);
    }
    policy.push_str(&format!("witness {} {} http://{}/witness\n", w.name, w.vkey, w.http));
    names.push(w.name);
    policy.push_str(&format!("group g 2 {}\nquorum g\n", names.join(" ")));
    policy
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection; an error if the server is
/// not there or closes without a whole answer.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = response[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = super::http::dechunk(&body);
    }
    Ok(Reply { status, headers, body })
}

#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, b"").unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

#[track_caller]
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Reply {
    request(addr, "POST", path, body).unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
}

/// A checkpoint note read line by line, as C2SP tlog-checkpoint and
/// signed-note lay it out (no project code involved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteView {
    pub origin: String,
    pub size: u64,
    /// The root, base64 as written.
    pub root: String,
    /// Signature lines, `(key name, base64 blob)`.
    pub signatures: Vec<(String, String)>,
}

impl NoteView {
    /// The signature lines not by the log (named after the origin).
    pub fn cosignatures(&self) -> usize {
        self.signatures.iter().filter(|(name, _)| *name != self.origin).count()
    }
}

#[track_caller]
pub fn note_view(note: &str) -> NoteView {
    let (text, sigs) = note.rsplit_once("\n\n").unwrap_or_else(|| panic!("not a signed note: {note:?}"));
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(lines.len() >= 3, "not a checkpoint: {note:?}");
    let signatures = sigs
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("\u{2014} ").unwrap_or_else(|| panic!("not a signature line: {l:?}"));
            let (name, blob) = rest.split_once(' ').unwrap_or_else(|| panic!("not a signature line: {l:?}"));
            (name.to_string(), blob.to_string())
        })
        .collect();
    NoteView {
        origin: lines[0].to_string(),
        size: lines[1].parse().unwrap_or_else(|_| panic!("size {:?} is not a number", lines[1])),
        root: lines[2].to_string(),
        signatures,
    }
}

/// The independent checker's verdict on a note under a policy.
#[derive(Debug)]
pub struct Verdict {
    /// 0: log signature valid and quorum met.
    pub code: i32,
    /// Its JSON line.
    pub out: Value,
}

impl Verdict {
    /// The policy names of the witnesses whose cosignatures verified.
    pub fn cosigners(&self) -> Vec<String> {
        let list = self.out["cosigned_by"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<String> = list.iter().map(|c| c["witness"].as_str().unwrap().to_string()).collect();
        names.sort();
        names
    }
}

/// Runs `python3 tests/witness/c2sp_check.py --policy POLICY --note N`.
#[track_caller]
pub fn c2sp_check(policy: &Path, note: &str) -> Verdict {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), note).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/witness/c2sp_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--policy")
        .arg(policy)
        .arg("--note")
        .arg(file.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("c2sp_check.py printed no JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    Verdict { code: out.status.code().expect("c2sp_check.py exits"), out: json }
}

/// The log's witnessed checkpoint (`GET /v1/checkpoint/witnessed`), if it
/// has one and is up.
pub fn witnessed(http: SocketAddr) -> Option<String> {
    let reply = request(http, "GET", "/v1/checkpoint/witnessed", b"").ok()?;
    (reply.status == 200).then(|| reply.text())
}

/// The latest checkpoint (`GET /v1/checkpoint`).
#[track_caller]
pub fn latest(http: SocketAddr) -> String {
    let reply = get(http, "/v1/checkpoint");
    assert_eq!(reply.status, 200, "GET /v1/checkpoint: {}", reply.text());
    reply.text()
}

/// The latest checkpoint, or why there is none (yet), for polls.
pub fn checkpoint_now(http: SocketAddr) -> Result<String, String> {
    let reply = request(http, "GET", "/v1/checkpoint", b"").map_err(|e| e.to_string())?;
    if reply.status == 200 { Ok(reply.text()) } else { Err(format!("{}: {}", reply.status, reply.text())) }
}

/// Waits until the witnessed checkpoint covers `size` records; its note.
#[track_caller]
pub fn witnessed_at_least(node: &Node, size: u64) -> String {
    eventually(&format!("{}'s witnessed checkpoint covering {size} records", node.name), || {
        let note = witnessed(node.http).ok_or("no witnessed checkpoint")?;
        let view = note_view(&note);
        if view.size >= size { Ok(note) } else { Err(format!("size {}", view.size)) }
    })
}

/// What witness `addr` shows for `origin` at `GET /witness/v1/logs`:
/// `(size, note)`, if anything.
#[track_caller]
pub fn witness_state(addr: SocketAddr, origin: &str) -> Option<(u64, String)> {
    let reply = get(addr, "/witness/v1/logs");
    assert_eq!(reply.status, 200, "GET http://{addr}/witness/v1/logs: {}", reply.text());
    let logs = reply.json();
    let list = logs.as_array().unwrap_or_else(|| panic!("/witness/v1/logs is not an array: {logs}"));
    let entry = list.iter().find(|e| e["origin"] == origin)?;
    let size = entry["size"].as_u64().unwrap_or_else(|| panic!("no size in {entry}"));
    Some((size, entry["note"].as_str().unwrap_or_else(|| panic!("no note in {entry}")).to_string()))
}

/// Publishes `payloads` (MQTT 5, QoS 1) to `topic` on `addr` as `client`,
/// each acknowledged with success; the log indices the PUBACKs name.
#[track_caller]
pub fn publish(addr: SocketAddr, client: &str, topic: &str, payloads: &[String]) -> Vec<u64> {
    let mut conn = mqtt::connect5(addr, client);
    let mut indices = Vec::new();
    for (n, payload) in payloads.iter().enumerate() {
        let pkid = u16::try_from(n % 60_000 + 1).unwrap();
        conn.send5(&mqtt::publish5_packet(topic, QoS::AtLeastOnce, pkid, payload.as_bytes(), false, vec![])).unwrap();
        let ack = conn.expect(kind::PUBACK);
        assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "PUBACK for {payload:?}");
        let index = ack.user_property("sealmq-index").unwrap_or_else(|| panic!("no sealmq-index on {ack:?}"));
        indices.push(index.parse().expect("sealmq-index is a number"));
    }
    indices
}

/// Numbered payloads `prefix-0` … for [`publish`].
pub fn payloads(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

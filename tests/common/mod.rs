//! Helpers shared by the end-to-end tests: running the real `sealmq`
//! binary, parsing what it prints, and touching its SQLite file directly.

#![allow(dead_code)]

pub mod broker;
pub mod cluster;
pub mod http;
pub mod logged;
pub mod mosquitto;
pub mod mqtt;
pub mod rules;
pub mod signed;
pub mod transports;
pub mod witness;
pub mod witness_process;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sealmq");

/// The binary under test, as `broker.rs` asks for it: the load tool's tests
/// (`bench/tests`) share `broker.rs` and find `sealmq` their own way.
pub fn sealmq_bin() -> &'static Path {
    Path::new(BIN)
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// Exit code (a run killed by a signal fails the test in [`sealmq`]).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub what: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "{} failed:\nstdout: {}\nstderr: {}", self.what, self.stdout, self.stderr);
        self.stdout
    }

    /// Asserts exit 1 (a check ran and found something wrong) and returns
    /// the first stdout line, which must start with `FAILED: `.
    #[track_caller]
    pub fn failed(self) -> String {
        assert_eq!(self.code, 1, "{}: expected exit 1:\nstdout: {}\nstderr: {}", self.what, self.stdout, self.stderr);
        let first = self.stdout.lines().next().unwrap_or_default().to_string();
        assert!(first.starts_with("FAILED: "), "{}: expected a FAILED line, got {:?}", self.what, self.stdout);
        first
    }

    /// Asserts exit 2 (could not run) with an `error: ` message on stderr,
    /// and returns stderr.
    #[track_caller]
    pub fn error(self) -> String {
        assert_eq!(self.code, 2, "{}: expected exit 2:\nstdout: {}\nstderr: {}", self.what, self.stdout, self.stderr);
        assert!(
            self.stderr.contains("error"),
            "{}: exit 2 without an error message:\nstderr: {}",
            self.what,
            self.stderr
        );
        self.stderr
    }
}

/// Runs `sealmq --data DATA ARGS…` to completion, with no standard input.
/// Fails the test if the process panicked or died from a signal.
#[track_caller]
pub fn sealmq(data: &Path, args: &[&str]) -> Run {
    sealmq_with_stdin(data, args, None)
}

/// As [`sealmq`], feeding `stdin` to the process.
#[track_caller]
pub fn sealmq_with_stdin(data: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    use std::io::Write;

    let what = format!("sealmq --data {} {}", data.display(), args.join(" "));
    let mut child = base_command(data)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or_else(|| panic!("{what} died from a signal: {:?}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    };
    assert_no_panic(&run.what, run.code, &run.stdout, &run.stderr);
    run
}

/// The binary with `--data DATA`, a clean environment for its settings.
pub fn base_command(data: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.arg("--data").arg(data).env_remove("SEALMQ_DATA").env_remove("RUST_LOG").env("NO_COLOR", "1");
    command
}

#[track_caller]
pub fn assert_no_panic(what: &str, code: i32, stdout: &str, stderr: &str) {
    assert!(
        code != 101 && !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{what} panicked (exit {code}):\nstdout: {stdout}\nstderr: {stderr}"
    );
}

/// `audit load` of `records` signed records.
#[track_caller]
pub fn load(data: &Path, records: u64, block_records: u32, concurrency: u64) {
    let (records, block_records, concurrency) =
        (records.to_string(), block_records.to_string(), concurrency.to_string());
    let args = [
        "audit",
        "load",
        "--records",
        &records,
        "--block-records",
        &block_records,
        "--block-ms",
        "50",
        "--concurrency",
        &concurrency,
        "--origin",
        "sealmq.test/e2e",
    ];
    sealmq(data, &args).ok();
}

/// The numbers of an `ok:` line of `audit verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub blocks: u64,
    pub tree_size: u64,
    pub unsealed: u64,
    pub payloads: u64,
    /// Topics with a retained message, checked against the log.
    pub retained: u64,
    /// Publish payloads no longer stored (erased).
    pub erased: u64,
    /// Erasure records in the log.
    pub erasures: u64,
}

/// Parses `ok: R records in B blocks, tree size T, U unsealed, P payloads
/// checked, K retained topics match the log, E payloads erased by N
/// erasure records (…)`.
#[track_caller]
pub fn parse_verified(stdout: &str) -> Verified {
    let line = stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let shape_ok = words.len() > 26
        && words[0] == "ok:"
        && words[2] == "records"
        && words[5] == "blocks,"
        && words[6..8] == ["tree", "size"]
        && words[10] == "unsealed,"
        && words[12] == "payloads"
        && words[15..17] == ["retained", "topics"]
        && words[21..23] == ["payloads", "erased"]
        && words[25..27] == ["erasure", "records"];
    assert!(shape_ok, "unexpected verify output: {stdout:?}");
    let number = |i: usize| -> u64 {
        words[i].trim_end_matches(',').parse().unwrap_or_else(|_| panic!("not a number in {line:?}: {}", words[i]))
    };
    Verified {
        records: number(1),
        blocks: number(4),
        tree_size: number(8),
        unsealed: number(9),
        payloads: number(11),
        retained: number(14),
        erased: number(20),
        erasures: number(24),
    }
}

/// `audit verify`, which must pass; its numbers.
#[track_caller]
pub fn verify_ok(data: &Path) -> Verified {
    parse_verified(&sealmq(data, &["audit", "verify"]).ok())
}

/// A sealmq gateway with its log in `data`, routing through `upstream`.
/// (Here, not in `mosquitto.rs` or `broker.rs`: other crates' tests include
/// each of those alone.)
pub fn gateway_behind(data: &Path, upstream: &mosquitto::Mosquitto) -> broker::BrokerProcess {
    let toml = format!("[upstream]\naddress = \"{}\"\n", upstream.address());
    broker::BrokerProcess::start_with_config(data, &toml)
}

/// The origin (checkpoint origin line) of the log in `data`.
#[track_caller]
pub fn log_origin(data: &Path) -> String {
    vkey(data).parse::<sealmq_audit::VerifierKey>().unwrap().name().to_string()
}

/// The log's verifier key, as `audit vkey` prints it.
#[track_caller]
pub fn vkey(data: &Path) -> String {
    sealmq(data, &["audit", "vkey"]).ok().trim().to_string()
}

/// The device id inside a publish record: the str16 after version, kind and received_ms.
pub fn record_device_id(record: &[u8]) -> String {
    let (_, rest) = record.split_at(10);
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    String::from_utf8(rest[2..2 + len].to_vec()).unwrap()
}

/// Offset of the payload_sha256 field in a publish record (spec/log.md).
pub fn payload_sha256_offset(record: &[u8]) -> usize {
    let mut at = 10; // version, kind, received_ms
    for _ in 0..2 {
        // device_id, topic: str16
        at += 2 + usize::from(u16::from_be_bytes([record[at], record[at + 1]]));
    }
    at + 1 + 1 + 4 // qos, retain, payload_len
}

/// The public key of the synthetic device that wrote a `load-NNNN` record.
pub fn synthetic_device_key(device_id: &str) -> [u8; 32] {
    let n: u64 = device_id
        .strip_prefix("load-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{device_id:?} is not a synthetic device"));
    sealmq_audit::store::synthetic::SyntheticDevice::new(n, true).public_key()
}

/// RFC 6962 leaf hash, SHA-256(0x00 || record).
pub fn leaf_of(record: &[u8]) -> [u8; 32] {
    let mut input = vec![0u8];
    input.extend_from_slice(record);
    sealmq_audit::sha256(&input)
}

/// Copies the log's files (database, WAL, key) into a new directory.
pub fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A plain read-write SQLite connection to DATA/log.db, as anyone with
/// access to the file could open it.
pub struct Db {
    rt: tokio::runtime::Runtime,
    conn: Option<SqliteConnection>,
}

impl Db {
    pub fn open(data: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(data.join("log.db"))
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(10));
        let conn = rt.block_on(SqliteConnection::connect_with(&options)).unwrap();
        Self { rt, conn: Some(conn) }
    }

    /// A read-only connection to DATA/log.db, as an auditor reading a live
    /// log (WAL) would open it.
    pub fn open_read_only(data: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(data.join("log.db"))
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let conn = rt.block_on(SqliteConnection::connect_with(&options)).unwrap();
        Self { rt, conn: Some(conn) }
    }

    /// Runs one statement; rows affected, or the error's text.
    pub fn exec(&mut self, sql: &str) -> Result<u64, String> {
        let query = sqlx::query(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.execute(conn)).map(|r| r.rows_affected()).map_err(|e| e.to_string())
    }

    /// Runs one statement with a blob and an integer bound to `?1` and `?2`.
    pub fn exec_blob(&mut self, sql: &str, blob: &[u8], key: i64) -> Result<u64, String> {
        let query = sqlx::query(AssertSqlSafe(sql.to_string())).bind(blob.to_vec()).bind(key);
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.execute(conn)).map(|r| r.rows_affected()).map_err(|e| e.to_string())
    }

    /// Runs one statement with a text and an integer bound to `?1` and `?2`.
    pub fn exec_text(&mut self, sql: &str, text: &str, key: i64) -> Result<u64, String> {
        let query = sqlx::query(AssertSqlSafe(sql.to_string())).bind(text.to_string()).bind(key);
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.execute(conn)).map(|r| r.rows_affected()).map_err(|e| e.to_string())
    }

    /// One integer.
    pub fn int(&mut self, sql: &str) -> i64 {
        let query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_one(conn)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A column of integers.
    pub fn ints(&mut self, sql: &str) -> Vec<i64> {
        let query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_all(conn)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A column of blobs.
    pub fn blobs(&mut self, sql: &str) -> Vec<Vec<u8>> {
        let query = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_all(conn)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One blob, selected with `key` bound to `?1`.
    pub fn blob(&mut self, sql: &str, key: i64) -> Vec<u8> {
        let query = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql.to_string())).bind(key);
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_one(conn)).unwrap_or_else(|e| panic!("{sql} ({key}): {e}"))
    }

    /// One text, selected with `key` bound to `?1`.
    pub fn text(&mut self, sql: &str, key: i64) -> String {
        let query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_string())).bind(key);
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_one(conn)).unwrap_or_else(|e| panic!("{sql} ({key}): {e}"))
    }

    /// A column of texts.
    pub fn texts(&mut self, sql: &str) -> Vec<String> {
        let query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_all(conn)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Drops every append-only trigger, as an attacker with file access would.
    pub fn drop_triggers(&mut self) {
        let names = self.names("SELECT name FROM sqlite_master WHERE type = 'trigger'");
        assert!(names.iter().any(|n| n == "records_append_only_update"), "no append-only triggers: {names:?}");
        for name in names {
            self.exec(&format!("DROP TRIGGER \"{name}\"")).unwrap();
        }
    }

    fn names(&mut self, sql: &str) -> Vec<String> {
        let query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.to_string()));
        let conn = self.conn.as_mut().unwrap();
        self.rt.block_on(query.fetch_all(conn)).unwrap()
    }

    /// Closes the connection (checkpointing the WAL when it is the last one).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.rt.block_on(conn.close());
        }
    }
}

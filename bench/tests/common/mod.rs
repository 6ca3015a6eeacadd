//! Helpers for the load tool's end-to-end tests: the tool itself, and the
//! real `sealmq` broker it loads (started by the root package's
//! `tests/common/broker.rs`, shared here).

#![allow(dead_code)]

#[path = "../../../tests/common/broker.rs"]
pub mod broker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The load tool under test.
pub const BENCH: &str = env!("CARGO_BIN_EXE_sealmq-bench");

/// The `sealmq` binary of this build. Another package's binary has no
/// `CARGO_BIN_EXE_` here, so it is found where cargo puts it: in the
/// profile's directory (`target/debug`), the parent of the `deps/` this test
/// runs from. `cargo test --workspace` builds it (the root package's tests
/// need it); `cargo test -p sealmq-bench` alone needs `cargo build -p sealmq`
/// first.
pub fn sealmq_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary lies in <profile>/deps");
        let bin = profile_dir.join(format!("sealmq{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "{} is missing: build it first (`cargo build -p sealmq`, or run `cargo test --workspace`)",
            bin.display()
        );
        bin
    })
}

/// `sealmq --data DATA audit verify`, which must pass; the records it verified.
#[track_caller]
pub fn verified_records(data: &Path) -> u64 {
    let out = Command::new(sealmq_bin())
        .arg("--data")
        .arg(data)
        .args(["audit", "verify"])
        .env_remove("SEALMQ_DATA")
        .env("NO_COLOR", "1")
        .output()
        .expect("sealmq audit verify runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "audit verify failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // `ok: R records in B blocks, …`
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert!(words.len() > 2 && words[0] == "ok:" && words[2] == "records", "unexpected verify output: {stdout:?}");
    words[1].parse().unwrap_or_else(|_| panic!("not a number in {stdout:?}"))
}

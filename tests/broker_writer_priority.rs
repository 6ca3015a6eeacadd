//! The log's write connection thread runs above the broker's other
//! threads where the process may raise it, and as before where it may not
//! (saying so): every publish waits for that thread, twice per group
//! commit, and on a busy core it otherwise waits behind connection work.

mod common;

use common::broker::BrokerProcess;
use common::mqtt::{QoS, connect5, publish5_acked};
use rumqttc::v5::mqttbytes::v5;

/// The write connection thread's name (its `comm`).
const WRITER: &str = "sealmq-writer";
/// The default `log_writer_boost`.
const BOOST: i64 = 10;
/// What the broker logs when it may not raise the thread.
const NOT_RAISED: &str = "keeps the broker's priority";

/// Nice values of the broker's threads named `name`, and of its main thread.
fn nice_values(pid: u32, name: &str) -> (Vec<i64>, i64) {
    let nice = |tid: &str| -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    let mut named = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            named.push(nice(task.file_name().to_str().unwrap()));
        }
    }
    (named, nice(&pid.to_string()))
}

/// Whether this process could lower a nice value by `boost`: CAP_SYS_NICE
/// (bit 23 of the effective set), or an RLIMIT_NICE that allows it.
fn may_raise(from: i64, boost: i64) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let caps = u64::from_str_radix(caps, 16).unwrap();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: i64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max nice priority"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    caps & (1 << 23) != 0 || 20 - soft <= from - boost
}

/// The broker still logs and delivers with its writer where it is.
fn publish_one(broker: &BrokerProcess) {
    let mut client = connect5(broker.mqtt, "prio-check");
    let mut publish = v5::Publish::new("prio/check", QoS::AtLeastOnce, b"on".to_vec(), None);
    publish.pkid = 1;
    publish5_acked(&mut client, publish);
}

#[test]
fn the_write_connection_thread_is_raised_where_the_broker_may() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    publish_one(&broker);
    let (writers, main) = nice_values(broker.pid(), WRITER);
    assert_eq!(writers.len(), 1, "one thread named {WRITER}: {writers:?}");
    let logged = broker.stderr.lock().unwrap().contains(NOT_RAISED);
    if may_raise(main, BOOST) {
        assert_eq!(writers[0], (main - BOOST).max(-20), "the writer is {BOOST} nice levels above the main thread");
        assert!(!logged, "raised, yet the broker says it could not");
    } else {
        assert_eq!(writers[0], main, "not permitted: the writer keeps the broker's priority");
        assert!(logged, "the broker says the writer could not be raised");
    }
}

#[test]
fn a_boost_of_zero_leaves_the_write_connection_thread_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&dir.path().join("data"), "log_writer_boost = 0\n");
    publish_one(&broker);
    let (writers, main) = nice_values(broker.pid(), WRITER);
    assert_eq!(writers, vec![main], "the writer runs at the main thread's priority");
    assert!(!broker.stderr.lock().unwrap().contains(NOT_RAISED), "nothing was asked, nothing to report");
}

#[test]
fn without_the_right_to_raise_it_the_broker_runs_as_before_and_says_so() {
    // Dropping CAP_SYS_NICE from the bounding set needs CAP_SETPCAP; a test
    // run without it is the unprivileged case already, checked above.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = u64::from_str_radix(status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim(), 16).unwrap();
    if caps & (1 << 8) == 0 {
        eprintln!("skipped: no CAP_SETPCAP to drop CAP_SYS_NICE with; the test above covers this case");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_wrapped(
        &["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--"],
        &dir.path().join("data"),
        &[],
    );
    publish_one(&broker);
    let (writers, main) = nice_values(broker.pid(), WRITER);
    assert_eq!(writers, vec![main], "the writer keeps the broker's priority");
    assert!(broker.stderr.lock().unwrap().contains(NOT_RAISED), "the broker says why");
}

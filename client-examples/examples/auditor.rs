//! An auditor holding nothing but the log's verifier key and the broker's
//! HTTP address.
//!
//! ```sh
//! # Is record 42 in the log? (and, with --device-signatures, did its device sign it?)
//! cargo run -p client-examples --example auditor -- \
//!     --vkey "$(sealmq audit vkey)" --http 127.0.0.1:8080 --device-signatures 42 43
//! # Watch the log grow, checking each new checkpoint extends the last one.
//! cargo run -p client-examples --example auditor -- \
//!     --vkey "$(sealmq audit vkey)" --http 127.0.0.1:8080 --watch --state auditor.json
//! ```
//!
//! Every proof is checked offline with `sealmq-audit`: the server is only a
//! source of bytes. In watch mode the last verified checkpoint is kept in a
//! state file, so a restarted auditor goes on from it: a log that rewrote
//! history while the auditor was down is caught at the first new checkpoint.
//!
//! With `--logs FILE` (gateways behind one clustered broker, each with its
//! own log; format in `client_examples::load_logs`) it audits every log
//! listed, each with its own key and API: indices are then written
//! `ORIGIN:INDEX` (a bare index when only one log is listed), and --watch
//! follows each log's checkpoints, the state file keeping one per log.
//!
//! Exit codes: 0 when every check held, 1 when one did not (the message says
//! which), 2 when the auditor could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use client_examples::{
    Api, CheckError, CheckpointChain, DeviceKeys, EXIT_ERROR, EXIT_FAILED, FollowedLog, Step, cosigned_suffix,
    describe_policy, describe_record, exit_code, fetch_and_check_proof, followed_logs, write_atomically,
};
use sealmq_audit::{Policy, Record, check_device_signature};
use serde::{Deserialize, Serialize};

/// Checks inclusion proofs of log records offline, and watches the log's
/// checkpoints for consistency, with only the log's verifier key.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    /// The log's verifier key (`sealmq audit vkey`): the root of trust, given
    /// out of band, never taken from the server.
    #[arg(long, env = "SEALMQ_VKEY", required_unless_present_any = ["policy", "logs"])]
    vkey: Option<String>,
    /// A C2SP tlog-policy file instead of --vkey: the log's key and the
    /// quorum of witnesses that must cosign every checkpoint accepted.
    /// Proofs are then taken against the latest witnessed checkpoint, and
    /// --watch follows `/v1/checkpoint/witnessed`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Several logs instead of --vkey/--policy and --http: a JSON list of
    /// `{"origin", "vkey" or "policy", "url"}`, one per gateway's log.
    #[arg(long, value_name = "FILE")]
    logs: Option<PathBuf>,
    /// The broker's HTTP API, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Record indices to prove; with several --logs, `ORIGIN:INDEX`.
    #[arg(value_name = "INDEX")]
    indices: Vec<String>,
    /// Prove against the checkpoint of this tree size instead of the latest.
    #[arg(long, value_name = "N")]
    size: Option<u64>,
    /// Also check the device's MQS1 signature in each signed record, with
    /// the device keys from `GET /v1/devices`.
    #[arg(long)]
    device_signatures: bool,
    /// How long to wait for a record that is not sealed yet.
    #[arg(long, default_value_t = 5)]
    wait_secs: u64,
    /// Watch the log: poll its checkpoint, prove each new one consistent
    /// with the last one verified.
    #[arg(long)]
    watch: bool,
    /// With --watch: where the last verified checkpoint is kept across runs.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// With --watch: milliseconds between polls.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// With --watch: stop after this many new checkpoints were proven
    /// consistent (0: never).
    #[arg(long, default_value_t = 0)]
    checkpoints: u64,
    /// With --watch: stop after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    duration_secs: u64,
}

/// The watch state file.
#[derive(Serialize, Deserialize)]
struct WatchState {
    /// The log it is about, so a state file is not used for another log.
    vkey: String,
    /// The last checkpoint verified: the signed note.
    checkpoint: String,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<ExitCode> {
    let logs = followed_logs(args.logs.as_deref(), args.vkey.as_deref(), args.policy.as_deref(), &args.http)?;
    if args.indices.is_empty() && !args.watch {
        bail!("nothing to do: give record indices to prove, or --watch");
    }
    let indices = args.indices.iter().map(|i| parse_index(&logs, i)).collect::<Result<Vec<_>>>()?;
    for log in &logs {
        if let Ok(Some(served)) = log.api.vkey()
            && !log.policy.logs().iter().any(|l| l.key.to_string() == served)
        {
            // Only a hint for the operator: the checks use the key given.
            eprintln!("warning: {} says its verifier key is {served}; checking with the one(s) given", log.api.base());
        }
    }
    let mut code = ExitCode::SUCCESS;
    for (n, log) in logs.iter().enumerate() {
        let mine: Vec<u64> = indices.iter().filter(|(l, _)| *l == n).map(|&(_, i)| i).collect();
        if !mine.is_empty() {
            let proved = prove(&args, &log.api, &log.policy, &mine)?;
            if code == ExitCode::SUCCESS {
                code = proved;
            }
        }
    }
    if args.watch && code == ExitCode::SUCCESS {
        code = watch(&args, logs)?;
    }
    Ok(code)
}

/// `INDEX`, or `ORIGIN:INDEX` naming one of `logs`: which log, which index.
fn parse_index(logs: &[FollowedLog], text: &str) -> Result<(usize, u64)> {
    let (origin, index) = match text.rsplit_once(':') {
        Some((origin, index)) => (Some(origin), index),
        None => (None, text),
    };
    let index: u64 = index.parse().with_context(|| format!("{text:?} is not a record index"))?;
    let log = match origin {
        Some(origin) => logs
            .iter()
            .position(|l| l.origin == origin)
            .with_context(|| format!("{text:?}: {origin:?} is not among the logs followed"))?,
        None if logs.len() == 1 => 0,
        None => bail!("{text:?}: which log? with several logs, write ORIGIN:INDEX"),
    };
    Ok((log, index))
}

/// Proves each index; every failure is reported, the exit code says if any.
fn prove(args: &Args, api: &Api, policy: &Policy, indices: &[u64]) -> Result<ExitCode> {
    let wait = Duration::from_secs(args.wait_secs);
    let mut keys = None;
    // Proofs fetched one after another may be against different (growing)
    // checkpoints; the chain checks those are consistent with each other.
    let mut chain = CheckpointChain::with_policy(policy.clone());
    let mut failures = 0u64;
    let mut unchecked = 0u64;
    for &index in indices {
        let result =
            fetch_and_check_proof(api, policy, index, args.size, wait).and_then(|(bundle, proven, cosigners)| {
                let mut line = format!(
                    "ok: record {index}: {} — included in the checkpoint of tree size {} (root {}){}",
                    describe_record(&proven.record),
                    proven.checkpoint.size,
                    STANDARD.encode(proven.checkpoint.root),
                    cosigned_suffix(policy, &cosigners)
                );
                if args.device_signatures {
                    line.push_str(&device_signature(api, &mut keys, &proven.record)?);
                }
                chain.observe(api, &bundle.checkpoint)?;
                Ok(line)
            });
        match result {
            Ok(line) => println!("{line}"),
            Err(CheckError::Failed(why)) => {
                failures += 1;
                println!("FAILED: record {index}: {why}");
            }
            Err(CheckError::Unavailable(e)) => {
                unchecked += 1;
                println!("UNCHECKED: record {index}: {e:#}");
            }
        }
    }
    let total = indices.len();
    if failures > 0 {
        eprintln!("FAILED: {failures} of {total} record(s) did not check out");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if unchecked > 0 {
        eprintln!("error: {unchecked} of {total} record(s) could not be checked");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    println!("all {total} record(s) proven against checkpoints of the {}", describe_policy(policy));
    Ok(ExitCode::SUCCESS)
}

/// Checks the device signature inside a proven record; the text to append.
fn device_signature(api: &Api, keys: &mut Option<DeviceKeys>, record: &Record) -> Result<String, CheckError> {
    let Record::Publish(publish) = record else { return Ok(String::new()) };
    let Some(sb) = &publish.signature else { return Ok("; unsigned (no device signature to check)".into()) };
    if keys.is_none() {
        let mut fresh = DeviceKeys::new();
        fresh.refresh(api)?;
        *keys = Some(fresh);
    }
    let keys = keys.as_mut().ok_or_else(|| anyhow!("no device keys"))?;
    let Some(key) = keys.lookup(api, &sb.kid)? else {
        return Err(CheckError::Failed(format!("signed with key {}, which no device has", hex::encode(sb.kid))));
    };
    if key.device_id != publish.device_id {
        return Err(CheckError::Failed(format!(
            "signed with key {} of device {:?}, but logged as published by {:?}",
            hex::encode(sb.kid),
            key.device_id,
            publish.device_id
        )));
    }
    check_device_signature(record, &key.public_key).map_err(|e| CheckError::Failed(e.to_string()))?;
    Ok(format!("; device signature holds (key {})", hex::encode(sb.kid)))
}

/// One log being watched.
struct Watched {
    log: FollowedLog,
    chain: CheckpointChain,
    /// The last checkpoint note accepted, for the state file.
    note: Option<String>,
    extended: u64,
}

/// What one poll of one log found.
enum Polled {
    Nothing,
    Accepted,
    Failed,
}

/// Polls each log's checkpoint (the latest witnessed one, under a policy
/// with witnesses) and proves each new one consistent with the last.
fn watch(args: &Args, logs: Vec<FollowedLog>) -> Result<ExitCode> {
    let saved = load_state(args)?;
    let several = logs.len() > 1;
    let mut watched = Vec::with_capacity(logs.len());
    for log in logs {
        let key = |state: &&WatchState| log.policy.logs().iter().any(|l| l.key.to_string() == state.vkey.trim());
        let chain = match saved.iter().find(key) {
            Some(state) => {
                let chain = CheckpointChain::resume(log.policy.clone(), &state.checkpoint).map_err(|e| {
                    anyhow!("{}: {e}", args.state.as_ref().map_or("state".into(), |p| p.display().to_string()))
                })?;
                let size = chain.latest().map_or(0, |l| l.checkpoint.size);
                println!("watch: {}resuming from the checkpoint of tree size {size}", prefix(several, &log.origin));
                chain
            }
            None => CheckpointChain::with_policy(log.policy.clone()),
        };
        let note = saved.iter().find(key).map(|s| s.checkpoint.clone());
        watched.push(Watched { log, chain, note, extended: 0 });
    }
    if let Some(other) = saved.iter().find(|s| !watched.iter().any(|w| w.note.as_deref() == Some(&s.checkpoint))) {
        let path = args.state.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        bail!("{path} is the state of another log (verifier key {})", other.vkey);
    }
    let started = Instant::now();
    loop {
        for n in 0..watched.len() {
            match poll(&mut watched[n], several) {
                Polled::Failed => return Ok(ExitCode::from(EXIT_FAILED)),
                Polled::Accepted => save(args, &watched_states(&watched))?,
                Polled::Nothing => {}
            }
        }
        // Every log must have extended as often as asked.
        let extended = watched.iter().map(|w| w.extended).min().unwrap_or(0);
        if args.checkpoints > 0 && extended >= args.checkpoints {
            println!("watch: {extended} new checkpoint(s) proven consistent; stopping");
            return Ok(ExitCode::SUCCESS);
        }
        if args.duration_secs > 0 && started.elapsed() >= Duration::from_secs(args.duration_secs) {
            if args.checkpoints > 0 {
                eprintln!(
                    "error: only {extended} of {} new checkpoint(s) seen before the time ran out",
                    args.checkpoints
                );
                return Ok(ExitCode::from(EXIT_ERROR));
            }
            println!("watch: {extended} new checkpoint(s) proven consistent; time is up");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}

/// `"ORIGIN: "` when several logs are watched, so each line says which.
fn prefix(several: bool, origin: &str) -> String {
    if several { format!("{origin}: ") } else { String::new() }
}

/// One poll of one log's checkpoint.
fn poll(w: &mut Watched, several: bool) -> Polled {
    let witnessed = !w.log.policy.needs_no_witness();
    let p = prefix(several, &w.log.origin);
    let fetched = if witnessed { w.log.api.witnessed_checkpoint() } else { w.log.api.checkpoint() };
    match fetched {
        Ok(Some(note)) => match w.chain.observe(&w.log.api, &note) {
            Ok(Step::First { size }) => {
                let (key, cosigned) = accepted(&w.chain);
                println!("watch: {p}tree size {size}, signed by {}{cosigned}", key.name());
                w.note = Some(note);
                return Polled::Accepted;
            }
            Ok(Step::Same { .. }) => {}
            Ok(Step::Extended { from, to }) => {
                w.extended += 1;
                println!("watch: {p}tree size {to}{}, consistent with {from}", accepted(&w.chain).1);
                w.note = Some(note);
                return Polled::Accepted;
            }
            Ok(Step::Unwitnessed { size, cosigned }) => {
                // The broker serves as witnessed what the policy's quorum
                // did not cosign: this policy's witnesses differ from the
                // broker's, or it lies. Not accepted, not yet a failure.
                eprintln!(
                    "watch: {p}the checkpoint of tree size {size} is not cosigned by the policy's quorum (only by \
                     {cosigned:?}); not accepted"
                );
            }
            Ok(Step::Older { size, latest }) => {
                println!(
                    "FAILED: {p}the log's latest checkpoint went back to tree size {size} after {latest} had been \
                     verified (consistent, but a log never shrinks)"
                );
                return Polled::Failed;
            }
            Err(CheckError::Failed(why)) => {
                println!("FAILED: {p}{why}");
                return Polled::Failed;
            }
            Err(CheckError::Unavailable(e)) => eprintln!("watch: {p}could not check this time: {e:#}"),
        },
        Ok(None) if witnessed => eprintln!("watch: {p}the log has no witnessed checkpoint yet"),
        Ok(None) => eprintln!("watch: {p}the log has no checkpoint yet"),
        // A monitor rides out an unreachable server and tries again.
        Err(e) => eprintln!("watch: {p}{e:#}"),
    }
    Polled::Nothing
}

/// The key of the log followed and who cosigned the latest checkpoint.
fn accepted(chain: &CheckpointChain) -> (&sealmq_audit::VerifierKey, String) {
    let key = chain.log_key().expect("a checkpoint was accepted");
    let cosigners = chain.latest().map(|l| cosigned_suffix(chain.policy(), &l.cosigners)).unwrap_or_default();
    (key, cosigners)
}

/// What the state file keeps: each log's last verified checkpoint.
fn watched_states(watched: &[Watched]) -> Vec<WatchState> {
    watched
        .iter()
        .filter_map(|w| {
            let note = w.note.clone()?;
            Some(WatchState { vkey: accepted(&w.chain).0.to_string(), checkpoint: note })
        })
        .collect()
}

/// The saved states: one object for one log (the format before several
/// logs could be watched, still written for one), a list for several.
fn load_state(args: &Args) -> Result<Vec<WatchState>> {
    let Some(path) = args.state.as_ref().filter(|p| p.exists()) else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let not = || format!("{} is not a watch state file", path.display());
    match serde_json::from_str::<WatchState>(&text) {
        Ok(one) => Ok(vec![one]),
        Err(_) => serde_json::from_str(&text).with_context(not),
    }
}

/// Persists the last verified checkpoints, atomically.
fn save(args: &Args, states: &[WatchState]) -> Result<()> {
    let Some(path) = &args.state else { return Ok(()) };
    let json = match states {
        [one] if args.logs.is_none() => serde_json::to_string_pretty(one)?,
        all => serde_json::to_string_pretty(all)?,
    };
    write_atomically(path, json.as_bytes())
}

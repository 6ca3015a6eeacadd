//! A home-automation hub that trusts the broker as little as it can.
//!
//! ```sh
//! cargo run -p client-examples --example hub -- \
//!     --vkey "$(sealmq audit vkey)" --http 127.0.0.1:8080 --filter 'sensors/#'
//! ```
//!
//! It subscribes over MQTT 5 like any hub would, and for each message:
//!
//! - checks the device's MQS1 signature end to end (the `mqs1` user property
//!   the broker passes on), with the device keys from `GET /v1/devices`,
//!   refreshed when an unknown key id appears; unsigned messages are reported
//!   as such (`--require-signed` makes them failures);
//! - for a sample of messages (`--proof-every`), fetches the inclusion proof
//!   of the record the broker says it logged (`sealmq-index` on the
//!   delivery), checks it with the log's verifier key and checks the record
//!   is the message delivered: same topic, payload and signature.
//!
//! It follows `$SYS/sealmq/checkpoint`: each checkpoint must be signed by the
//! verifier key given on the command line (the root of trust: never fetched
//! from the server), and consistent with the last one seen
//! (`GET /v1/consistency`), so the log cannot rewrite what it committed to.
//!
//! With `--policy FILE` (a C2SP tlog-policy: the log's key, its witnesses
//! and a quorum) instead of `--vkey`, a checkpoint is accepted only once a
//! quorum of witnesses cosigned it, so the log cannot show this hub a
//! history the witnesses did not see; proofs are taken against the latest
//! witnessed checkpoint (`/v1/proof/{i}?witnessed=true`). Checkpoints not yet
//! cosigned are still checked for consistency, but not accepted.
//!
//! With `--logs FILE` instead (the gateways behind one clustered broker,
//! each with its own log: see `client_examples::load_logs` for the format)
//! the hub follows every log listed: each delivery names the log that holds
//! it (`sealmq-origin`, beside `sealmq-index`), and is checked against that
//! log alone, with its key, its device list and its proofs. A delivery from
//! a log not listed, or that does not say which log it is from while
//! several are followed, is a failure: the hub could not prove it.
//!
//! Every failure is printed on stderr as `FAILED: …` when it happens; at the
//! end a summary, and exit code 1 if anything failed (2 if it could not run).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use client_examples::{
    CHECKPOINT_TOPIC, CheckError, CheckpointChain, DeviceKeys, EXIT_ERROR, EXIT_FAILED, FollowedLog, INDEX_PROPERTY,
    ORIGIN_PROPERTY, ProofCheck, RECEIPTS_PROPERTY, Step, Verdict, check_delivered_in_log, check_delivery,
    check_proof_json, cosigned_suffix, describe_policy, exit_code, followed_logs, note_origin, printable,
    prove_key_registration,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::{Client, ConnectionError, Event, MqttOptions};
use sealmq_audit::mqs1::{Kid, SignatureBlock};
use sealmq_audit::{Record, check_device_signature};

/// Subscribes like a home-automation hub and checks every message's MQS1
/// signature, a sample of inclusion proofs, and the log's checkpoints.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    /// The log's verifier key (`sealmq audit vkey`): the root of trust, given
    /// out of band, never taken from the server.
    #[arg(long, env = "SEALMQ_VKEY", required_unless_present_any = ["policy", "logs"])]
    vkey: Option<String>,
    /// A C2SP tlog-policy file instead of --vkey: the log's key and the
    /// quorum of witnesses that must cosign each checkpoint accepted.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Several logs instead of --vkey/--policy and --http: a JSON list of
    /// `{"origin", "vkey" or "policy", "url"}`, one per gateway's log.
    #[arg(long, value_name = "FILE")]
    logs: Option<PathBuf>,
    /// The broker's MQTT host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The broker's HTTP API, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// The hub's MQTT client id (default: `hub-` and the process id).
    #[arg(long)]
    id: Option<String>,
    /// MQTT user name, if the hub is registered with a password.
    #[arg(long)]
    username: Option<String>,
    /// MQTT password; better passed in the environment than on the
    /// command line, where `ps` shows it.
    #[arg(long, env = "SEALMQ_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A topic filter to subscribe to; repeat for more.
    #[arg(long = "filter", default_value = "#")]
    filters: Vec<String>,
    /// Stop after this many messages (0: run until stopped). Checkpoints
    /// do not count.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    duration_secs: u64,
    /// Check the inclusion proof of every Nth message, starting with the
    /// first (1: every message; 0: none).
    #[arg(long, default_value_t = 10)]
    proof_every: u64,
    /// How long to wait for a message's record to be sealed and provable.
    #[arg(long, default_value_t = 30)]
    proof_timeout_secs: u64,
    /// Treat unsigned messages as failures.
    #[arg(long)]
    require_signed: bool,
    /// Also prove each device key's registration from the log (its
    /// `key_added` record), instead of taking `/v1/devices` at its word.
    #[arg(long)]
    prove_keys: bool,
}

/// A delivered message whose inclusion proof is still to be checked.
struct Pending {
    /// Which of [`Hub::logs`] holds it.
    log: usize,
    index: u64,
    topic: String,
    payload: Vec<u8>,
    sb: Option<SignatureBlock>,
    since: Instant,
    next_try: Instant,
}

/// What the hub has seen so far.
#[derive(Default)]
struct Tally {
    messages: u64,
    verified: u64,
    unsigned: u64,
    proofs: u64,
    checkpoints: u64,
    consistency: u64,
    keys_proven: u64,
    /// Checkpoints signed by the log that the policy's quorum had not cosigned.
    unwitnessed: u64,
    failures: u64,
    unchecked: u64,
}

/// One log the hub follows, and what it learnt of it.
struct Followed {
    log: FollowedLog,
    /// Device keys as this log's gateway lists them.
    keys: DeviceKeys,
    chain: CheckpointChain,
    proven_keys: HashSet<Kid>,
    messages: u64,
    proofs: u64,
}

struct Hub {
    args: Args,
    logs: Vec<Followed>,
    pending: VecDeque<Pending>,
    tally: Tally,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<ExitCode> {
    let mut logs = Vec::new();
    for log in followed_logs(args.logs.as_deref(), args.vkey.as_deref(), args.policy.as_deref(), &args.http)? {
        let mut keys = DeviceKeys::new();
        keys.refresh(&log.api).with_context(|| format!("fetching the device keys from {}", log.api.base()))?;
        if let Ok(Some(served)) = log.api.vkey()
            && !log.policy.logs().iter().any(|l| l.key.to_string() == served)
        {
            // Only a hint for the operator: the checks below use the key given.
            eprintln!("warning: {} says its verifier key is {served}; checking with the one(s) given", log.api.base());
        }
        println!("hub: {} device key(s) known; {}", keys.len(), describe_policy(&log.policy));
        let chain = CheckpointChain::with_policy(log.policy.clone());
        logs.push(Followed { log, keys, chain, proven_keys: HashSet::new(), messages: 0, proofs: 0 });
    }

    let id = args.id.clone().unwrap_or_else(|| format!("hub-{}", std::process::id()));
    let mut options = MqttOptions::new(id, &args.host, args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    // Ask for each delivery's log index, to prove it.
    options.set_user_properties(vec![(RECEIPTS_PROPERTY.to_string(), "1".to_string())]);
    if let Some(user) = &args.username {
        options.set_credentials(user, args.password.clone().unwrap_or_default());
    }
    let (client, mut connection) = Client::new(options, 100);
    let mut filters: Vec<Filter> = args.filters.iter().map(|f| filter(f)).collect();
    // `#` does not match `$SYS/…` topics (MQTT 4.7.2), so the checkpoint
    // topic is always subscribed to explicitly.
    filters.push(filter(CHECKPOINT_TOPIC));
    client.subscribe_many(filters).context("queueing the subscription")?;

    // The MQTT connection runs on its own thread so that HTTP checks on
    // this one never hold up acknowledgements and keep-alive pings.
    let (events, incoming) = mpsc::channel::<Result<Event, ConnectionError>>();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let stop = event.is_err();
            if events.send(event).is_err() || stop {
                break;
            }
        }
    });

    let mut hub = Hub { args, logs, pending: VecDeque::new(), tally: Tally::default() };
    let started = Instant::now();
    let mut lost = None;
    loop {
        match incoming.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => hub.on_publish(&publish),
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                let refused: Vec<_> = ack.return_codes.iter().filter(|c| !granted(c)).collect();
                if !refused.is_empty() {
                    bail!("the broker refused a subscription: {refused:?}");
                }
                println!("subscribed to {} and {CHECKPOINT_TOPIC}", hub.args.filters.join(" "));
            }
            Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => {
                lost = Some(format!("the broker disconnected the hub: {:?}", d.reason_code));
                break;
            }
            Ok(Ok(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => {
                lost = Some(format!("connection to the broker failed: {e}"));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                lost = Some("the MQTT client stopped".to_string());
                break;
            }
        }
        hub.check_pending();
        let enough = hub.args.count > 0 && hub.tally.messages >= hub.args.count;
        let timed_out = hub.args.duration_secs > 0 && started.elapsed() >= Duration::from_secs(hub.args.duration_secs);
        // Stop only once the proofs asked for are settled, so a run that
        // says "0 failures" checked everything it sampled.
        if (enough || timed_out) && hub.pending.is_empty() {
            break;
        }
    }
    let _ = client.disconnect();

    let t = &hub.tally;
    println!(
        "hub: {} message(s): {} signed and verified, {} unsigned; {} inclusion proof(s) checked; \
         {} checkpoint(s), {} consistency proof(s) checked; {} device key(s) proven; {} failure(s)",
        t.messages, t.verified, t.unsigned, t.proofs, t.checkpoints, t.consistency, t.keys_proven, t.failures
    );
    if hub.logs.len() > 1 {
        for f in &hub.logs {
            let size = f.chain.latest().map_or("none".to_string(), |l| l.checkpoint.size.to_string());
            println!(
                "hub: log {}: {} message(s), {} inclusion proof(s) checked, latest checkpoint verified: tree size {size}",
                f.log.origin, f.messages, f.proofs
            );
        }
    }
    if hub.logs.iter().any(|f| !f.log.policy.needs_no_witness()) {
        println!("hub: {} checkpoint(s) not accepted: not (yet) cosigned by the policy's quorum", t.unwitnessed);
    }
    if t.failures > 0 {
        eprintln!("FAILED: {} check(s) did not hold (see the FAILED lines above)", t.failures);
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if let Some(why) = lost {
        eprintln!("error: {why}");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if t.unchecked > 0 {
        eprintln!("error: {} check(s) could not be made (see above)", t.unchecked);
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// A QoS 1 subscription with Retain As Published: the retain flag is signed
/// (MQS1 flags bit 0), so the hub needs the publisher's flag, which brokers
/// otherwise clear on live deliveries.
fn filter(path: &str) -> Filter {
    Filter {
        path: path.to_string(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }
}

fn granted(code: &SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Success(_))
}

impl Hub {
    /// Reports a check that did not hold, or could not be made.
    fn report(&mut self, what: &str, error: CheckError) {
        match error {
            CheckError::Failed(why) => {
                self.tally.failures += 1;
                eprintln!("FAILED: {what}: {why}");
            }
            CheckError::Unavailable(e) => {
                self.tally.unchecked += 1;
                eprintln!("error: {what}: could not check: {e:#}");
            }
        }
    }

    fn on_publish(&mut self, publish: &Publish) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            self.tally.failures += 1;
            eprintln!("FAILED: a message's topic is not UTF-8");
            return;
        };
        let topic = topic.to_string();
        if topic == CHECKPOINT_TOPIC {
            self.on_checkpoint(&publish.payload);
            return;
        }
        self.tally.messages += 1;
        let props: Vec<(String, String)> =
            publish.properties.as_ref().map(|p| p.user_properties.clone()).unwrap_or_default();
        let index = props.iter().find(|(n, _)| n == INDEX_PROPERTY).and_then(|(_, v)| v.parse::<u64>().ok());
        let origin = props.iter().find(|(n, _)| n == ORIGIN_PROPERTY).map(|(_, v)| v.as_str());
        let label = match (origin, index) {
            (_, None) => format!("[no index] {topic}"),
            (Some(origin), Some(i)) if self.logs.len() > 1 => format!("[{origin} idx {i}] {topic}"),
            (_, Some(i)) => format!("[idx {i}] {topic}"),
        };
        let log = match (origin, self.logs.len()) {
            (Some(origin), _) => self.logs.iter().position(|f| f.log.origin == origin),
            // One log followed, and a gateway that does not say: its own.
            (None, 1) => Some(0),
            (None, _) => None,
        };
        let Some(log) = log else {
            self.tally.failures += 1;
            match origin {
                Some(origin) => {
                    eprintln!("FAILED: {label}: logged by {origin:?}, which is not among the logs followed");
                }
                None => eprintln!("FAILED: {label}: no {ORIGIN_PROPERTY} property: which of the logs holds it?"),
            }
            return;
        };
        self.logs[log].messages += 1;

        let pairs = props.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let followed = &mut self.logs[log];
        let (sb, payload) = match check_delivery(
            &mut followed.keys,
            &followed.log.api,
            &topic,
            publish.retain,
            pairs,
            &publish.payload,
        ) {
            Ok((Verdict::Signed { device_id, sb, active }, payload)) => {
                self.tally.verified += 1;
                let revoked = if active { "" } else { ", key since revoked" };
                println!(
                    "{label}  signed by {device_id:?} (kid {}, ctr {}{revoked})  {}",
                    hex::encode(sb.kid),
                    sb.ctr,
                    printable(payload)
                );
                self.prove_key(log, &sb.kid);
                (Some(sb), payload.to_vec())
            }
            Ok((Verdict::Unsigned, payload)) => {
                self.tally.unsigned += 1;
                println!("{label}  UNSIGNED  {}", printable(payload));
                if self.args.require_signed {
                    self.tally.failures += 1;
                    eprintln!("FAILED: {label}: unsigned message (--require-signed)");
                }
                (None, payload.to_vec())
            }
            Err(e) => {
                self.report(&label, e);
                return;
            }
        };

        let sample = self.args.proof_every > 0 && (self.tally.messages - 1).is_multiple_of(self.args.proof_every);
        if sample {
            match index {
                Some(index) => {
                    let now = Instant::now();
                    self.pending.push_back(Pending { log, index, topic, payload, sb, since: now, next_try: now });
                }
                None => {
                    // The broker logs every message before delivering it and
                    // says where: a delivery without an index is not provable.
                    self.tally.failures += 1;
                    eprintln!("FAILED: {label}: delivered without a {INDEX_PROPERTY} property; cannot prove it");
                }
            }
        }
    }

    /// With `--prove-keys`, proves once that a key's registration is in the log.
    fn prove_key(&mut self, log: usize, kid: &Kid) {
        let followed = &self.logs[log];
        if !self.args.prove_keys || followed.proven_keys.contains(kid) {
            return;
        }
        let Some(key) = followed.keys.get(kid).cloned() else { return };
        let wait = Duration::from_secs(self.args.proof_timeout_secs);
        match prove_key_registration(&followed.log.api, &followed.log.policy, &key.device_id, &key.public_key, wait) {
            Ok(index) => {
                self.logs[log].proven_keys.insert(*kid);
                self.tally.keys_proven += 1;
                println!("key {} of {:?}: registration proven (log record {index})", hex::encode(kid), key.device_id);
            }
            Err(e) => self.report(&format!("key {} of {:?}", hex::encode(kid), key.device_id), e),
        }
    }

    fn on_checkpoint(&mut self, payload: &[u8]) {
        let Ok(note) = std::str::from_utf8(payload) else {
            self.tally.failures += 1;
            eprintln!("FAILED: checkpoint: payload on {CHECKPOINT_TOPIC} is not text");
            return;
        };
        self.tally.checkpoints += 1;
        // The gateway's own log's checkpoints: which of the logs is its?
        let Some(log) = self.logs.iter().position(|f| f.log.origin == note_origin(note)).or_else(|| {
            // One log followed: its chain judges (and reports) whatever came.
            (self.logs.len() == 1).then_some(0)
        }) else {
            self.tally.failures += 1;
            eprintln!("FAILED: checkpoint: of {:?}, which is not among the logs followed", note_origin(note));
            return;
        };
        self.observe(log, note, "checkpoint");
    }

    /// Passes a checkpoint note through its log's chain and reports what it found.
    fn observe(&mut self, log: usize, note: &str, source: &str) {
        let followed = &mut self.logs[log];
        let step = followed.chain.observe(&followed.log.api, note);
        let cosigned =
            followed.chain.latest().map(|l| cosigned_suffix(&followed.log.policy, &l.cosigners)).unwrap_or_default();
        let source =
            if self.logs.len() > 1 { format!("{source} of {}", self.logs[log].log.origin) } else { source.to_string() };
        match step {
            Ok(Step::First { size }) => println!("{source}: tree size {size}, signed by the log{cosigned}"),
            Ok(Step::Same { .. }) => {}
            Ok(Step::Extended { from, to }) => {
                self.tally.consistency += 1;
                println!("{source}: tree size {to}{cosigned}, consistent with {from}");
            }
            Ok(Step::Unwitnessed { size, cosigned }) => {
                // Not a failure: witnesses cosign after the log signs.
                self.tally.unwitnessed += 1;
                println!(
                    "{source}: tree size {size}, signed by the log but not accepted: the policy's quorum is not met \
                     (cosigned by {})",
                    if cosigned.is_empty() { "no witness yet".to_string() } else { cosigned.join(", ") }
                );
            }
            Ok(Step::Older { size, latest }) => {
                self.tally.consistency += 1;
                println!("{source}: tree size {size} (older), extended by {latest}");
            }
            Err(e) => self.report(&source, e),
        }
    }

    /// Tries the proofs that are due; keeps the unsealed ones for later.
    fn check_pending(&mut self) {
        let timeout = Duration::from_secs(self.args.proof_timeout_secs);
        for _ in 0..self.pending.len() {
            let Some(item) = self.pending.pop_front() else { break };
            if item.next_try > Instant::now() {
                self.pending.push_back(item);
                continue;
            }
            // Prove against the latest checkpoint this hub has verified when
            // it covers the record, so the proof ties into the chain.
            let followed = &self.logs[item.log];
            let size = followed.chain.latest().map(|l| l.checkpoint.size).filter(|&size| size > item.index);
            let what = self.what(&item);
            let witnessed = !followed.log.policy.needs_no_witness();
            let fetched = match size {
                // Else the latest checkpoint the witnesses' quorum cosigned.
                None if witnessed => followed.log.api.witnessed_proof(item.index),
                size => followed.log.api.proof(item.index, size),
            };
            let retry = |mut item: Pending, pending: &mut VecDeque<Pending>| {
                // Blocks seal every 250 ms by default; witnesses cosign soon after.
                item.next_try = Instant::now() + Duration::from_millis(250);
                pending.push_back(item);
            };
            match fetched {
                Ok(Some(json)) => {
                    if let Some(unwitnessed) = self.check_proof(&item, &json) {
                        if item.since.elapsed() < timeout {
                            retry(item, &mut self.pending);
                        } else {
                            self.report(&what, CheckError::Failed(unwitnessed));
                        }
                    }
                }
                Ok(None) if item.since.elapsed() < timeout => retry(item, &mut self.pending),
                Ok(None) => self.report(
                    &what,
                    CheckError::Failed(format!(
                        "the log has no {}proof after {timeout:?}: the record was not sealed",
                        if witnessed { "witnessed " } else { "" }
                    )),
                ),
                Err(e) => self.report(&what, CheckError::Unavailable(e)),
            }
        }
    }

    /// Checks one fetched proof; `Some(why)` when its checkpoint is not
    /// (yet) cosigned by the policy's quorum, to try again later.
    fn check_proof(&mut self, item: &Pending, json: &str) -> Option<String> {
        let what = self.what(item);
        let policy = self.logs[item.log].log.policy.clone();
        let (bundle, proven, cosigners) = match check_proof_json(json, &policy, item.index) {
            Ok(ProofCheck::Witnessed(bundle, proven, cosigners)) => (bundle, proven, cosigners),
            Ok(ProofCheck::Unwitnessed { size, cosigned }) => {
                return Some(format!(
                    "no proof against a checkpoint the policy's quorum cosigned: the latest, of tree size {size}, is \
                     cosigned by {cosigned:?}"
                ));
            }
            Err(e) => {
                self.report(&what, e);
                return None;
            }
        };
        if let Err(e) = check_delivered_in_log(&proven, &item.topic, &item.payload, item.sb.as_ref()) {
            self.report(&what, e);
            return None;
        }
        // The record carries the signature too: check it there as well, as
        // an auditor holding only the bundle would.
        if let (Record::Publish(p), Some(sb)) = (&proven.record, &item.sb)
            && let Some(key) = self.logs[item.log].keys.get(&sb.kid)
            && let Err(e) = check_device_signature(&proven.record, &key.public_key)
        {
            self.report(&what, CheckError::Failed(format!("device {:?}: {e}", p.device_id)));
            return None;
        }
        self.tally.proofs += 1;
        self.logs[item.log].proofs += 1;
        println!(
            "proof: record {} is in the log{} at tree size {}{} and is the message delivered",
            item.index,
            if self.logs.len() > 1 { format!(" {}", self.logs[item.log].log.origin) } else { String::new() },
            proven.checkpoint.size,
            cosigned_suffix(&policy, &cosigners)
        );
        // The bundle's checkpoint must fit the chain the hub follows of
        // that log (for another gateway's log, the only way the hub sees
        // its checkpoints: they are published to that gateway's clients).
        self.observe(item.log, &bundle.checkpoint, &format!("{what}: its checkpoint"));
        None
    }

    /// How a pending proof is named in output.
    fn what(&self, item: &Pending) -> String {
        if self.logs.len() > 1 {
            format!("proof of record {} of {}", item.index, self.logs[item.log].log.origin)
        } else {
            format!("proof of record {}", item.index)
        }
    }
}

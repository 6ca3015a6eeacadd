//! An irrigation valve that obeys only commands it can prove came from a
//! rule — the other end of the irrigation example.
//!
//! ```sh
//! cargo run -p client-examples --example valve -- \
//!     --vkey "$(sealmq audit vkey)" --rule client-examples/rules/irrigate.toml
//! ```
//!
//! It subscribes to `farm/+/valve` (MQTT 5, asking for each delivery's log
//! index) and, for each command:
//!
//! - fetches the inclusion proof of the record the broker says it logged,
//!   checks it with the log's verifier key (the root of trust, given on the
//!   command line) and checks the record is the command delivered;
//! - requires the record to be a rule's action (auth 2), and with `--rule
//!   FILE`, an action of exactly that rule document (its SHA-256 is the
//!   record's rule hash); it also proves the trigger the action names;
//! - then acts: `open` opens the bed's valve for `--water-secs`, after which
//!   the valve closes and reports it as the retained state `closed` on the
//!   same topic, which the rule reads (`retained(…) != 'open'`) before it
//!   opens the valve again.
//!
//! A command that is not proven, or not from an accepted rule, is refused:
//! `FAILED: …` on stderr, and exit code 1 at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use client_examples::{
    Api, CheckError, EXIT_FAILED, INDEX_PROPERTY, RECEIPTS_PROPERTY, check_delivered_in_log, describe_record,
    exit_code, fetch_and_check_proof, load_policy, printable,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::{Client, ConnectionError, Event, MqttOptions};
use sealmq_audit::{Policy, Record, sha256};

/// An irrigation valve: acts on `farm/+/valve` commands proven to be a
/// rule's actions in the log.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    /// The log's verifier key (`sealmq audit vkey`), given out of band.
    #[arg(long, env = "SEALMQ_VKEY", required_unless_present = "policy")]
    vkey: Option<String>,
    /// A C2SP tlog-policy file instead of --vkey.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Accept only actions of this rule document (repeat for more); without
    /// it, an action of any rule is accepted.
    #[arg(long = "rule", value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// The broker's MQTT host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The broker's HTTP API, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// The valve's MQTT client id.
    #[arg(long, default_value = "valve")]
    id: String,
    /// The command topics.
    #[arg(long, default_value = "farm/+/valve")]
    filter: String,
    /// How long an opened valve waters before it closes.
    #[arg(long, default_value_t = 5)]
    water_secs: u64,
    /// Stop after this many commands (0: run until stopped), once the open
    /// valves have closed.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    duration_secs: u64,
    /// How long to wait for a command's record to be sealed and provable.
    #[arg(long, default_value_t = 30)]
    proof_timeout_secs: u64,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

/// An open valve: its topic and when it closes.
struct Open {
    topic: String,
    until: Instant,
}

struct Valve {
    args: Args,
    api: Api,
    policy: Policy,
    accepted: Vec<[u8; 32]>,
    client: Client,
    open: Vec<Open>,
    commands: u64,
    failures: u64,
}

fn run(args: Args) -> Result<ExitCode> {
    let policy = load_policy(args.vkey.as_deref(), args.policy.as_deref())?;
    let mut accepted = Vec::new();
    for file in &args.rules {
        let document = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        accepted.push(sha256(&document));
    }
    let api = Api::new(&args.http)?;
    let mut options = MqttOptions::new(&args.id, &args.host, args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    // The log index of each delivery, to prove the command.
    options.set_user_properties(vec![(RECEIPTS_PROPERTY.to_string(), "1".to_string())]);
    let (client, mut connection) = Client::new(options, 100);
    client
        .subscribe_many([Filter {
            path: args.filter.clone(),
            qos: QoS::AtLeastOnce,
            // Not its own `closed` reports.
            nolocal: true,
            preserve_retain: true,
            // Commands as they come, not a retained one from before it started.
            retain_forward_rule: RetainForwardRule::Never,
        }])
        .context("queueing the subscription")?;
    // The connection runs on its own thread so proofs fetched on this one
    // never hold up acknowledgements and keep-alive pings.
    let (events, incoming) = mpsc::channel::<Result<Event, ConnectionError>>();
    std::thread::spawn(move || {
        for event in connection.iter() {
            let stop = event.is_err();
            if events.send(event).is_err() || stop {
                break;
            }
        }
    });

    let mut valve = Valve { args, api, policy, accepted, client, open: Vec::new(), commands: 0, failures: 0 };
    let started = Instant::now();
    loop {
        match incoming.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => valve.on_command(&publish),
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if !ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))) {
                    bail!("the broker refused the subscription: {:?}", ack.return_codes);
                }
                println!("valve {:?}: subscribed to {}", valve.args.id, valve.args.filter);
            }
            Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => bail!("the broker disconnected us: {:?}", d.reason_code),
            Ok(Ok(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => bail!("connection to the broker failed: {e}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped"),
        }
        valve.close_due()?;
        let enough = valve.args.count > 0 && valve.commands >= valve.args.count;
        let timed_out =
            valve.args.duration_secs > 0 && started.elapsed() >= Duration::from_secs(valve.args.duration_secs);
        if (enough && valve.open.is_empty()) || timed_out {
            break;
        }
    }
    // Let the last `closed` report go out before disconnecting.
    std::thread::sleep(Duration::from_millis(300));
    let _ = valve.client.disconnect();
    println!("valve: {} command(s), {} refused", valve.commands, valve.failures);
    if valve.failures > 0 {
        eprintln!("FAILED: {} command(s) refused (see the FAILED lines above)", valve.failures);
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

impl Valve {
    fn on_command(&mut self, publish: &Publish) {
        self.commands += 1;
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let bed = topic.split('/').nth(1).unwrap_or("?").to_string();
        match self.prove(&topic, publish) {
            Ok(why) => println!("{why}"),
            Err(e) => {
                self.failures += 1;
                eprintln!("FAILED: refused {topic} {:?}: {e}", printable(&publish.payload));
                return;
            }
        }
        match &publish.payload[..] {
            b"open" => {
                println!("bed {bed}: valve OPEN, watering for {} s", self.args.water_secs);
                self.open.retain(|o| o.topic != topic);
                let until = Instant::now() + Duration::from_secs(self.args.water_secs);
                self.open.push(Open { topic, until });
            }
            other => println!("bed {bed}: ignoring the unknown command {:?}", printable(other)),
        }
    }

    /// Proves the command is a logged action of an accepted rule; one line
    /// saying what it is.
    fn prove(&self, topic: &str, publish: &Publish) -> Result<String, CheckError> {
        let wait = Duration::from_secs(self.args.proof_timeout_secs);
        let props = publish.properties.as_ref().map(|p| p.user_properties.as_slice()).unwrap_or_default();
        let Some(index) = props.iter().find(|(n, _)| n == INDEX_PROPERTY).and_then(|(_, v)| v.parse::<u64>().ok())
        else {
            return Err(CheckError::Failed("the delivery carries no log index".into()));
        };
        let (_, proven, _) = fetch_and_check_proof(&self.api, &self.policy, index, None, wait)?;
        // A rule's action carries no device signature: the proof and the
        // cause are what vouch for it.
        check_delivered_in_log(&proven, topic, &publish.payload, None)?;
        let Record::Publish(record) = &proven.record else { unreachable!("checked to be the publish delivered") };
        let Some(cause) = record.cause else {
            return Err(CheckError::Failed(format!(
                "record {index} is a publish by {:?}, not a rule's action",
                record.device_id
            )));
        };
        if !self.accepted.is_empty() && !self.accepted.contains(&cause.rule_hash) {
            return Err(CheckError::Failed(format!(
                "record {index} is an action of rule {:?} (hash {}), not of a --rule document",
                record.device_id.trim_start_matches("$rule/"),
                hex::encode(cause.rule_hash)
            )));
        }
        let (_, trigger, _) = fetch_and_check_proof(&self.api, &self.policy, cause.trigger_index, None, wait)?;
        Ok(format!(
            "[idx {index}] {topic} {:?}: proven at tree size {}, an action of rule {:?} (hash {}) \
             caused by record {}: {}",
            printable(&publish.payload),
            proven.checkpoint.size,
            record.device_id.trim_start_matches("$rule/"),
            &hex::encode(cause.rule_hash)[..16],
            cause.trigger_index,
            describe_record(&trigger.record)
        ))
    }

    /// Closes the valves whose watering time is over, reporting `closed` as
    /// the retained state of their topic.
    fn close_due(&mut self) -> Result<()> {
        let now = Instant::now();
        let (due, open): (Vec<Open>, Vec<Open>) = self.open.drain(..).partition(|o| o.until <= now);
        self.open = open;
        for o in due {
            self.client
                .publish(o.topic.clone(), QoS::AtLeastOnce, true, b"closed".to_vec())
                .context("queueing the closed report")?;
            println!(
                "bed {}: valve closed (retained \"closed\" on {})",
                o.topic.split('/').nth(1).unwrap_or("?"),
                o.topic
            );
        }
        Ok(())
    }
}

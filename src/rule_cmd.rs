//! `sealmq rule …`: rules (spec/rules.md) — install, list, show, remove,
//! and test one against a message without installing it.
//!
//! Like `sealmq device`, it works whether or not a broker runs on the same
//! data directory: it never opens the log for writing. An install or
//! removal is checked here, then waits as a kind-3 record in the rule
//! outbox until the broker's sequencer logs it; which rules are active is
//! read from the log itself (a fold over its kind-3 records).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sealmq_audit::store::{DB_FILE, LogReader, Registry};
use sealmq_audit::{RuleEvent, RuleRecord, sha256};
use sealmq_rules::store::{self as rule_store, RuleHistoryEntry, RuleOutbox};
use sealmq_rules::{CEL_VERSION, Outcome, RetainedTexts, RuleDocument, Trigger, evaluate};

/// What to tell the operator about when a change reaches the log.
const LOGGED_WHEN: &str = "when the broker next syncs (within a second if it is running, else at its next start)";

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Install a rule from a TOML rule document (spec/rules.md); a rule of
    /// the same name is replaced. The document is checked first (its
    /// expressions compile within the documented limits) and logged byte
    /// for byte.
    Add {
        /// The rule document.
        file: PathBuf,
    },
    /// List the active rules (from the log) and changes waiting to be logged.
    List,
    /// One rule: its document, hash, install record and history.
    Show {
        /// The rule's name.
        name: String,
    },
    /// Remove an active rule: it stops firing from its removal record on.
    Remove {
        /// The rule's name.
        name: String,
    },
    /// Evaluate a rule document against one message, without installing
    /// it: the action it would take, or why it takes none. `retained()`
    /// reads the retained state of the log in --data when there is one,
    /// else sees nothing retained.
    Test {
        /// The rule document.
        file: PathBuf,
        /// The message's topic.
        #[arg(long)]
        topic: String,
        /// The message's payload, as text.
        #[arg(long, allow_hyphen_values = true)]
        payload: String,
        /// The publishing device's id.
        #[arg(long, default_value = "test-device")]
        device: String,
        /// As if the message were MQS1-signed (`signed` is true).
        #[arg(long)]
        signed: bool,
    },
}

pub async fn run(data: &Path, command: RuleCommand) -> Result<ExitCode> {
    match command {
        RuleCommand::Add { file } => add(data, &file).await,
        RuleCommand::List => list(data).await,
        RuleCommand::Show { name } => show(data, &name).await,
        RuleCommand::Remove { name } => remove(data, &name).await,
        RuleCommand::Test { file, topic, payload, device, signed } => {
            test(data, &file, &topic, payload.as_bytes(), &device, signed).await
        }
    }
}

/// Reads and checks a rule document; errors name the file and the problem.
fn read_document(file: &Path) -> Result<RuleDocument> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    RuleDocument::parse(&bytes).with_context(|| format!("{}: the rule is refused", file.display()))
}

async fn open_outbox(data: &Path) -> Result<RuleOutbox> {
    RuleOutbox::open(data).await.with_context(|| format!("opening the rule outbox in {}", data.display()))
}

/// The log in `data`, when there is one (`sealmq device` and `rule add`
/// create the database before any log exists).
async fn open_log(data: &Path) -> Result<Option<LogReader>> {
    if !data.join(DB_FILE).exists() {
        return Ok(None);
    }
    match LogReader::open(data).await {
        Ok(reader) => Ok(Some(reader)),
        Err(sealmq_audit::store::StoreError::NoLog(_)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening the log in {}", data.display())),
    }
}

/// The changes waiting in the rule outbox, in the order they will be logged.
async fn queued(data: &Path) -> Result<Vec<RuleRecord>> {
    if !data.join(DB_FILE).exists() {
        return Ok(Vec::new());
    }
    let registry = Registry::open(data).await.with_context(|| format!("opening the database in {}", data.display()))?;
    let queued = registry.queued_rule_records().await;
    registry.close().await;
    Ok(queued?)
}

async fn add(data: &Path, file: &Path) -> Result<ExitCode> {
    let document = read_document(file)?;
    let outbox = open_outbox(data).await?;
    let change = outbox.install(document.bytes()).await;
    outbox.close().await;
    let change = change.with_context(|| format!("{}: the rule is refused", file.display()))?;
    println!("rule {:?}: sha256 {}", document.name(), hex::encode(document.hash()));
    println!(
        "on {:?}, publishes to {:?} (QoS {}{})",
        document.on().as_str(),
        document.topic().as_str(),
        document.qos(),
        if document.retain() { ", retained" } else { "" }
    );
    if change.replaces {
        println!("replaces the rule of that name (active or queued)");
    }
    println!("will be logged as a kind-3 install record {LOGGED_WHEN}");
    Ok(ExitCode::SUCCESS)
}

async fn remove(data: &Path, name: &str) -> Result<ExitCode> {
    let outbox = open_outbox(data).await?;
    let change = outbox.remove(name).await;
    outbox.close().await;
    change?;
    println!(
        "rule {name:?} will be logged as removed (a kind-3 record) {LOGGED_WHEN}; it fires on nothing logged after"
    );
    Ok(ExitCode::SUCCESS)
}

/// The first 16 hex characters of a hash, as `list` shows it.
fn short(hash: &[u8]) -> String {
    hex::encode(&hash[..8])
}

/// What a pending (outbox) change says, for `list` and `show`.
fn pending_text(record: &RuleRecord) -> String {
    match &record.event {
        RuleEvent::Installed { document } => format!("install, sha256 {}", hex::encode(sha256(document))),
        RuleEvent::Removed => "removal".to_string(),
    }
}

async fn list(data: &Path) -> Result<ExitCode> {
    let active = match open_log(data).await? {
        Some(reader) => rule_store::active_rules(&reader).await?,
        None => Vec::new(),
    };
    let pending = queued(data).await?;
    if active.is_empty() && pending.is_empty() {
        println!("no rules are active");
    } else {
        let mut rows = vec![["NAME", "HASH", "INSTALLED", "ON"].map(String::from)];
        for rule in &active {
            let on =
                RuleDocument::parse(&rule.document).map_or_else(|_| "?".to_string(), |d| d.on().as_str().to_string());
            rows.push([rule.name.clone(), short(&rule.hash), format!("#{}", rule.install_index), on]);
        }
        for record in &pending {
            let (hash, on) = match &record.event {
                RuleEvent::Installed { document } => (
                    short(&sha256(document)),
                    RuleDocument::parse(document).map_or_else(|_| "?".to_string(), |d| d.on().as_str().to_string()),
                ),
                RuleEvent::Removed => ("-".to_string(), "(removal)".to_string()),
            };
            rows.push([record.rule_name.clone(), hash, "pending".to_string(), on]);
        }
        crate::device_cmd::print_table(&rows);
    }
    if !pending.is_empty() {
        println!("{} change(s) wait to be logged {LOGGED_WHEN}", pending.len());
    }
    println!("rules are evaluated with {CEL_VERSION} (what `sealmq audit replay` runs against)");
    Ok(ExitCode::SUCCESS)
}

async fn show(data: &Path, name: &str) -> Result<ExitCode> {
    let history = match open_log(data).await? {
        Some(reader) => rule_store::history(&reader, name).await?,
        None => Vec::new(),
    };
    let pending: Vec<RuleRecord> = queued(data).await?.into_iter().filter(|r| r.rule_name == name).collect();
    if history.is_empty() && pending.is_empty() {
        bail!("no rule {name:?} was ever installed in the log in {} (see `sealmq rule list`)", data.display());
    }
    match history.last().map(|e| (e.index, &e.record)) {
        Some((index, RuleRecord { event: RuleEvent::Installed { document }, .. })) => {
            println!(
                "rule {name:?}: active since its install record #{index}, sha256 {}",
                hex::encode(sha256(document))
            );
        }
        Some((index, _)) => println!("rule {name:?}: removed by record #{index}"),
        None => println!("rule {name:?}: not in the log yet"),
    }
    println!("history:");
    for RuleHistoryEntry { index, record } in &history {
        match &record.event {
            RuleEvent::Installed { document } => {
                println!("  #{index}  installed  sha256 {}  at {} ms", hex::encode(sha256(document)), record.at_ms);
            }
            RuleEvent::Removed => println!("  #{index}  removed  at {} ms", record.at_ms),
        }
    }
    for record in &pending {
        println!("  pending  {}", pending_text(record));
    }
    if !pending.is_empty() {
        println!("pending changes are logged {LOGGED_WHEN}");
    }
    // The document last queued, else the one that is, or was last, installed.
    let queued_document = pending.iter().rev().find_map(|record| match &record.event {
        RuleEvent::Installed { document } => Some(("queued to be installed".to_string(), document)),
        RuleEvent::Removed => None,
    });
    let logged_document = || {
        history.iter().rev().find_map(|entry| match &entry.record.event {
            RuleEvent::Installed { document } => Some((format!("installed at #{}", entry.index), document)),
            RuleEvent::Removed => None,
        })
    };
    if let Some((which, document)) = queued_document.or_else(logged_document) {
        println!("document ({which}):");
        print!("{}", String::from_utf8_lossy(document));
        if !document.ends_with(b"\n") {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn test(data: &Path, file: &Path, topic: &str, payload: &[u8], device: &str, signed: bool) -> Result<ExitCode> {
    let document = read_document(file)?;
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        bail!("--topic {topic:?} is not a topic name a message can be published to");
    }
    let (retained, source) = match open_log(data).await? {
        Some(reader) => {
            let rules = rule_store::load(&reader).await.context("reading the retained state from the log")?;
            let next = rules.next_index();
            (rules.retained().clone(), format!("the retained state of the log in {} at index {next}", data.display()))
        }
        None => (RetainedTexts::new(), format!("nothing retained (there is no log in {})", data.display())),
    };
    let received_ms = sealmq_audit::store::now_ms();
    let trigger = Trigger { topic, device, signed, received_ms, payload };
    println!(
        "rule {:?} (sha256 {}) against a message on {topic:?} from {device:?}",
        document.name(),
        hex::encode(document.hash())
    );
    println!("retained() reads {source}");
    // The verdict in the engine's words (`Outcome` shows itself), then
    // what a person checking a rule also wants to see.
    let outcome = evaluate(&document, &trigger, &retained);
    println!("{outcome}");
    match &outcome {
        Outcome::Fired(action) => println!("payload: {} bytes", action.payload.len()),
        Outcome::NoMatch => println!("on = {:?} does not match {topic:?}", document.on().as_str()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

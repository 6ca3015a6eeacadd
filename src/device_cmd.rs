//! `sealmq device …`: the device registry (who may connect, with which
//! keys, policy, password and ACL).
//!
//! Works whether or not a broker runs on the same data directory: it opens
//! the registry directly (never the log, whose writer lock the broker
//! holds), and every change it makes waits in the registry outbox until the
//! broker's sequencer logs it as kind-2 records.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1::{self, Kid};
use sealmq_audit::store::{Change, DB_FILE, Device, DeviceSettings, Policy, Registry};
use sealmq_audit::{RegistryEvent, RegistryRecord};

/// What to tell the operator about when a change reaches the log.
const LOGGED_WHEN: &str = "when the broker next syncs (within a second if it is running)";

/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410), up to the raw key:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device, or change a registered one. What is not given is
    /// kept; a new device is `signed`, without password, and may publish
    /// and subscribe anywhere until ACL patterns are given.
    Add {
        /// The device id: its MQTT client id.
        id: String,
        /// Add this MQS1 public key: 64 hex characters, a PEM "PUBLIC KEY"
        /// (Ed25519 SPKI), or a file holding either (as `keygen` writes).
        #[arg(long, value_name = "HEX|PEM|FILE", allow_hyphen_values = true)]
        key: Option<String>,
        /// signed: every publish must carry an MQS1 signature; legacy:
        /// unsigned publishes are accepted, and logged as unsigned.
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        /// The device's MQTT password (stored as an Argon2 hash). `-` reads
        /// it from the first line of standard input, which keeps it out of
        /// the process list and shell history.
        #[arg(long, value_name = "PW", allow_hyphen_values = true)]
        password: Option<String>,
        /// A topic it may publish to; MQTT wildcards allowed, `{device}`
        /// stands for its id. Repeat for more; replaces the earlier list.
        #[arg(long = "allow-pub", value_name = "PATTERN", conflicts_with = "allow_any_pub")]
        allow_pub: Vec<String>,
        /// A topic filter it may subscribe to (covering every topic the
        /// subscription can match); as --allow-pub.
        #[arg(long = "allow-sub", value_name = "PATTERN", conflicts_with = "allow_any_sub")]
        allow_sub: Vec<String>,
        /// Lift the publish restriction (drop every --allow-pub pattern).
        #[arg(long)]
        allow_any_pub: bool,
        /// Lift the subscribe restriction (drop every --allow-sub pattern).
        #[arg(long)]
        allow_any_sub: bool,
    },
    /// List the registered devices, their policy, password, ACL and keys.
    List,
    /// Revoke a device's key: publishes signed with it are refused from
    /// then on. A revoked key cannot be added again.
    Revoke {
        /// The device id.
        id: String,
        /// The key id: 16 hex characters, as `device list` shows.
        kid: String,
    },
    /// Make a new device key pair: PREFIX.key (the private seed, hex, mode
    /// 0600: it belongs on the device) and PREFIX.pub (the public key, hex,
    /// for `device add --key`).
    Keygen {
        /// Where to write, without the .key/.pub suffix.
        #[arg(long, value_name = "PREFIX", default_value = "device")]
        out: PathBuf,
    },
}

/// `--policy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Every publish must be MQS1-signed.
    Signed,
    /// Unsigned publishes are accepted (logged as unsigned).
    Legacy,
}

impl From<PolicyArg> for Policy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::Signed => Policy::Signed,
            PolicyArg::Legacy => Policy::Legacy,
        }
    }
}

pub async fn run(data: &Path, command: DeviceCommand) -> Result<ExitCode> {
    match command {
        DeviceCommand::Add { id, key, policy, password, allow_pub, allow_sub, allow_any_pub, allow_any_sub } => {
            let key = key.as_deref().map(parse_public_key).transpose()?;
            let password = match password.as_deref() {
                Some("-") => Some(read_password_line()?),
                other => other.map(str::to_string),
            };
            let acl = |patterns: Vec<String>, any: bool| (any || !patterns.is_empty()).then_some(patterns);
            let settings = DeviceSettings {
                policy: policy.map(Policy::from),
                password,
                allow_pub: acl(allow_pub, allow_any_pub),
                allow_sub: acl(allow_sub, allow_any_sub),
                key,
            };
            add(data, &id, &settings).await
        }
        DeviceCommand::List => list(data).await,
        DeviceCommand::Revoke { id, kid } => revoke(data, &id, &kid).await,
        DeviceCommand::Keygen { out } => keygen(&out),
    }
}

async fn open(data: &Path) -> Result<Registry> {
    Registry::open(data).await.with_context(|| format!("opening the device registry in {}", data.display()))
}

async fn add(data: &Path, id: &str, settings: &DeviceSettings) -> Result<ExitCode> {
    let registry = open(data).await?;
    let change = registry.add_device(id, settings).await?;
    let device = registry.list().await?.into_iter().find(|d| d.id == id);
    registry.close().await;
    let verb = if change.created { "registered" } else { "updated" };
    match &device {
        Some(device) => println!("{verb} device {id:?}: {}", summary(device)),
        None => println!("{verb} device {id:?}"),
    }
    if let Some(key) = &settings.key {
        println!("added key {}", hex::encode(mqs1::kid(key)));
    }
    report_logging(&change);
    Ok(ExitCode::SUCCESS)
}

async fn revoke(data: &Path, id: &str, kid: &str) -> Result<ExitCode> {
    let kid: Kid = hex::decode(kid.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("KID {kid:?} is not 16 hex characters (as `sealmq device list` shows)"))?;
    let registry = open(data).await?;
    let change = registry.revoke_key(id, kid).await?;
    let following = registry.follow_state().await?.filter(|state| state.active);
    let peers = active_peers(&registry).await?;
    registry.close().await;
    println!("revoked key {} of device {id:?}", hex::encode(kid));
    report_logging(&change);
    match (following, peers.is_empty()) {
        // Allowed (it only refuses more), but without peers it is this gateway's alone.
        (Some(state), true) => eprintln!(
            "warning: this gateway follows the primary log {}: the key is revoked on this gateway only; revoke \
             it on the primary for every gateway to refuse it, or list the gateways as [registry] peers",
            state.vkey
        ),
        // Whether the peers take it is their configuration: say what it depends on.
        (_, false) => eprintln!(
            "the revocation reaches every gateway that lists this one in its [registry] peers (this one lists {}), \
             within a follow interval of its being logged here",
            peers.join(", ")
        ),
        (None, true) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The origins of the peer logs the broker follows (as of its last start).
async fn active_peers(registry: &Registry) -> Result<Vec<String>> {
    let states = registry.peer_states().await?;
    Ok(states.iter().filter(|state| state.active).map(|state| state.origin().to_string()).collect())
}

/// Says which kind-2 records a change queued and when they reach the log.
fn report_logging(change: &Change) {
    if change.records.is_empty() {
        println!(
            "no log record: the log records keys and policies, not passwords or ACLs; a running broker applies \
             the change within a second (registry version {})",
            change.version
        );
        return;
    }
    let what: Vec<String> = change.records.iter().map(describe).collect();
    let (count, noun) = match change.records.len() {
        1 => ("a".to_string(), "record"),
        n => (n.to_string(), "records"),
    };
    println!("{} will be logged as {count} kind-2 {noun} {LOGGED_WHEN}", what.join(", "));
}

fn describe(record: &RegistryRecord) -> String {
    match record.event {
        RegistryEvent::KeyAdded { public_key } => format!("key added ({})", hex::encode(mqs1::kid(&public_key))),
        RegistryEvent::KeyRevoked { kid } => format!("key revoked ({})", hex::encode(kid)),
        RegistryEvent::PolicySet { signed_required } => {
            format!("policy set ({})", if signed_required { "signed" } else { "legacy" })
        }
    }
}

/// One line about a device: policy, password, ACL.
fn summary(device: &Device) -> String {
    format!(
        "policy {}, password {}, publish {}, subscribe {}",
        device.policy,
        if device.password_hash.is_some() { "set" } else { "none" },
        acl_text(&device.allow_pub),
        acl_text(&device.allow_sub)
    )
}

fn acl_text(patterns: &[String]) -> String {
    if patterns.is_empty() { "any".to_string() } else { patterns.join(" ") }
}

async fn list(data: &Path) -> Result<ExitCode> {
    if !data.join(DB_FILE).exists() {
        println!("no devices registered (there is no database in {} yet)", data.display());
        return Ok(ExitCode::SUCCESS);
    }
    let registry = open(data).await?;
    let snapshot = registry.snapshot().await?;
    let following = registry.follow_state().await?.filter(|state| state.active);
    let peers = registry.peer_states().await?;
    registry.close().await;
    if let Some(state) = following {
        println!(
            "following the primary log {}: {} of its registry records applied, up to its index {} (checkpoint of \
             size {} accepted)",
            state.vkey, state.applied, state.scanned, state.tree_size
        );
    }
    for state in peers.iter().filter(|state| state.active) {
        println!(
            "following the revocations of the peer log {}: {} applied, up to its index {} (checkpoint of size {} \
             accepted)",
            state.vkey, state.applied, state.scanned, state.tree_size
        );
    }
    if snapshot.devices.is_empty() {
        println!("no devices registered");
    } else {
        let mut rows = vec![["ID", "POLICY", "PASSWORD", "PUBLISH", "SUBSCRIBE", "KEYS"].map(String::from)];
        for device in &snapshot.devices {
            let keys: Vec<String> = device
                .keys
                .iter()
                .map(|k| format!("{} {}", hex::encode(k.kid), if k.is_active() { "active" } else { "revoked" }))
                .collect();
            rows.push([
                device.id.clone(),
                device.policy.to_string(),
                if device.password_hash.is_some() { "yes" } else { "no" }.to_string(),
                acl_text(&device.allow_pub),
                acl_text(&device.allow_sub),
                if keys.is_empty() { "-".to_string() } else { keys.join(", ") },
            ]);
        }
        print_table(&rows);
    }
    if snapshot.unlogged > 0 {
        println!("{} registry change(s) wait to be logged {LOGGED_WHEN}", snapshot.unlogged);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn keygen(prefix: &Path) -> Result<ExitCode> {
    let with_suffix = |suffix: &str| {
        let mut path = OsString::from(prefix.as_os_str());
        path.push(suffix);
        PathBuf::from(path)
    };
    let (key_path, pub_path) = (with_suffix(".key"), with_suffix(".pub"));
    for path in [&key_path, &pub_path] {
        if path.exists() {
            bail!("{} exists already; not overwriting a key (choose another --out)", path.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    write_new(&key_path, &format!("{}\n", hex::encode(seed)), 0o600)?;
    write_new(&pub_path, &format!("{}\n", hex::encode(public)), 0o644)?;
    println!("public key: {}", hex::encode(public));
    println!("kid: {}", hex::encode(mqs1::kid(&public)));
    println!(
        "wrote {} (private seed: keep it on the device, nowhere else) and {}",
        key_path.display(),
        pub_path.display()
    );
    println!("register it with: sealmq device add <ID> --key {}", pub_path.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (never replacing a file) with `mode`, writes and syncs it.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_password_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        bail!("--password -: standard input held no password");
    }
    Ok(password.to_string())
}

/// `--key`: 64 hex characters, a PEM public key, or a file holding either.
fn parse_public_key(arg: &str) -> Result<[u8; 32]> {
    let text = arg.trim();
    if let Some(key) = parse_key_text(text)? {
        return Ok(key);
    }
    let contents = std::fs::read(arg).map_err(|e| {
        anyhow::anyhow!("--key {arg:?} is not 64 hex characters, a PEM public key, or a readable file ({e})")
    })?;
    let contents = String::from_utf8(contents)
        .map_err(|_| anyhow::anyhow!("--key file {arg}: not text (expected 64 hex characters or a PEM public key)"))?;
    parse_key_text(contents.trim())?
        .with_context(|| format!("--key file {arg}: expected 64 hex characters or a PEM \"PUBLIC KEY\""))
}

/// A key given as text: `Ok(None)` when it looks like neither hex nor PEM.
fn parse_key_text(text: &str) -> Result<Option<[u8; 32]>> {
    if text.starts_with("-----BEGIN") {
        return parse_pem(text).map(Some);
    }
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let raw = hex::decode(text).context("hex key")?;
        return Ok(raw.try_into().ok());
    }
    Ok(None)
}

/// A PEM "PUBLIC KEY" holding an Ed25519 SubjectPublicKeyInfo.
fn parse_pem(text: &str) -> Result<[u8; 32]> {
    let first = text.lines().next().unwrap_or_default().trim();
    let label = first.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")).unwrap_or_default();
    if label != "PUBLIC KEY" {
        bail!(
            "the PEM is a {label:?}, not a \"PUBLIC KEY\"{}",
            if label.contains("PRIVATE") { " (export the public half: openssl pkey -pubout)" } else { "" }
        );
    }
    let end = "-----END PUBLIC KEY-----";
    let body = text.lines().skip(1).take_while(|line| line.trim() != end).collect::<String>();
    if !text.lines().any(|line| line.trim() == end) {
        bail!("the PEM has no {end} line");
    }
    let der = STANDARD
        .decode(body.split_whitespace().collect::<String>())
        .map_err(|e| anyhow::anyhow!("the PEM body is not base64: {e}"))?;
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(raw) if der.len() == 44 => Ok(raw.try_into().context("32-byte key")?),
        _ => bail!("the PEM public key is not an Ed25519 key (expected the 44-byte SPKI of OID 1.3.101.112)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

    fn pem_of(raw: &[u8]) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(raw);
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der))
    }

    #[test]
    fn keys_from_hex_and_pem() {
        let raw: [u8; 32] = hex::decode(HEX).unwrap().try_into().unwrap();
        assert_eq!(parse_public_key(HEX).unwrap(), raw);
        assert_eq!(parse_public_key(&format!(" {} \n", HEX.to_uppercase())).unwrap(), raw);
        assert_eq!(parse_public_key(&pem_of(&raw)).unwrap(), raw);
        // Base64 split over lines, CRLF.
        let pem = pem_of(&raw).replace('\n', "\r\n");
        assert_eq!(parse_public_key(&pem).unwrap(), raw);
    }

    #[test]
    fn bad_keys_say_why() {
        let err = |arg: &str| parse_public_key(arg).unwrap_err().to_string();
        assert!(err(&HEX[..62]).contains("not 64 hex characters"));
        assert!(err("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").contains("pubout"));
        assert!(err("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----").contains("base64"));
        assert!(err("-----BEGIN PUBLIC KEY-----\nAAAA").contains("END PUBLIC KEY"));
        // Another algorithm's SPKI (the length of a P-256 one), and X25519's
        // (same length, OID 1.3.101.110).
        let p256 = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----", STANDARD.encode([0x30u8; 91]));
        assert!(err(&p256).contains("not an Ed25519 key"));
        let mut x25519 = ED25519_SPKI_PREFIX.to_vec();
        x25519[8] = 0x6e;
        x25519.extend_from_slice(&[7; 32]);
        let x25519 = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----", STANDARD.encode(x25519));
        assert!(err(&x25519).contains("not an Ed25519 key"));
    }

    #[test]
    fn spki_prefix_is_the_rfc_8410_one() {
        // RFC 8410 §10.1's example public key.
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let raw = parse_public_key(pem).unwrap();
        assert_eq!(hex::encode(raw), "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1");
    }
}

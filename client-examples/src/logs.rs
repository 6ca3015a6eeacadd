//! Several logs at once: gateways behind one clustered broker each keep a
//! log of their own (own origin, own key), and a subscriber receives
//! messages that any of them logged. A hub or auditor that follows them all
//! is given the set out of band, as a small JSON file (`--logs FILE`):
//!
//! ```json
//! [
//!   {"origin": "plant-a.example/log", "vkey": "plant-a.example/log+…+…", "url": "http://10.0.0.1:8080"},
//!   {"vkey": "plant-b.example/log+…+…", "url": "http://10.0.0.2:8080"},
//!   {"policy": "plant-c.policy", "url": "http://10.0.0.3:8080"}
//! ]
//! ```
//!
//! Each entry names one log by its verifier key (`vkey`) or a C2SP
//! tlog-policy file (`policy`, relative to the JSON file) for a log with
//! witnesses, and the HTTP API serving its proofs (`url`). `origin` is
//! optional; when given it must be the key's name, which is the origin
//! line of the log's checkpoints (a typo is caught here, not at the first
//! delivery). Each delivery names the log that holds it in its
//! [`crate::ORIGIN_PROPERTY`], next to [`crate::INDEX_PROPERTY`].

use std::path::Path;

use anyhow::{Context, Result, bail};
use sealmq_audit::Policy;
use serde::Deserialize;

use crate::{Api, load_policy};

/// One log followed: its origin, what its checkpoints must satisfy, and
/// where its proofs are fetched from.
pub struct FollowedLog {
    /// The log's origin (the name of its verifier key).
    pub origin: String,
    /// Its verifier key alone, or a tlog-policy with witnesses.
    pub policy: Policy,
    /// Its HTTP API.
    pub api: Api,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    origin: Option<String>,
    vkey: Option<String>,
    policy: Option<String>,
    url: String,
}

/// Reads a `--logs` file: at least one log, each origin once.
pub fn load_logs(path: &Path) -> Result<Vec<FollowedLog>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).with_context(|| format!("--logs {}: not a JSON list of logs", path.display()))?;
    if entries.is_empty() {
        bail!("--logs {}: no log", path.display());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut logs: Vec<FollowedLog> = Vec::with_capacity(entries.len());
    for (n, entry) in entries.into_iter().enumerate() {
        let what = format!("--logs {}, log {}", path.display(), n + 1);
        let policy_path = entry.policy.as_deref().map(|p| base.join(p));
        let policy = load_policy(entry.vkey.as_deref(), policy_path.as_deref()).with_context(|| what.clone())?;
        let [log] = policy.logs() else {
            bail!("{what}: its policy names {} logs; give one entry per log", policy.logs().len());
        };
        let origin = log.key.name().to_string();
        if let Some(given) = &entry.origin
            && *given != origin
        {
            bail!("{what}: origin {given:?} is not its key's name {origin:?}");
        }
        if logs.iter().any(|l| l.origin == origin) {
            bail!("{what}: origin {origin:?} is listed twice");
        }
        let api = Api::new(&entry.url).with_context(|| what.clone())?;
        logs.push(FollowedLog { origin, policy, api });
    }
    Ok(logs)
}

/// The logs an example follows: those of `--logs FILE`, or the one log of
/// `--vkey`/`--policy` served at `--http`.
pub fn followed_logs(
    logs: Option<&Path>,
    vkey: Option<&str>,
    policy: Option<&Path>,
    http: &str,
) -> Result<Vec<FollowedLog>> {
    if let Some(file) = logs {
        if vkey.is_some() || policy.is_some() {
            bail!("give --logs or --vkey/--policy, not both (is SEALMQ_VKEY set?)");
        }
        return load_logs(file);
    }
    let policy = load_policy(vkey, policy)?;
    let [log] = policy.logs() else {
        bail!("the policy names {} logs; for several logs, give --logs FILE with each log's URL", policy.logs().len());
    };
    let origin = log.key.name().to_string();
    Ok(vec![FollowedLog { origin, policy, api: Api::new(http)? }])
}

/// The origin line of a checkpoint note (its first line), to tell which
/// followed log it claims to be from; the signature is checked after.
pub fn note_origin(note: &str) -> &str {
    note.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use sealmq_audit::LogKey;

    use super::*;

    fn vkey(origin: &str, seed: u8) -> String {
        LogKey::from_seed(origin, &[seed; 32]).unwrap().verifier().to_string()
    }

    fn load(json: &str) -> Result<Vec<FollowedLog>> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs.json");
        std::fs::write(&path, json).unwrap();
        load_logs(&path)
    }

    #[test]
    fn a_logs_file_names_each_log_once_by_its_key() {
        let (a, b) = (vkey("a.example/log", 1), vkey("b.example/log", 2));
        let logs = load(&format!(
            r#"[{{"origin": "a.example/log", "vkey": "{a}", "url": "http://127.0.0.1:1"}},
                {{"vkey": "{b}", "url": "127.0.0.1:2"}}]"#
        ))
        .unwrap();
        let origins: Vec<&str> = logs.iter().map(|l| l.origin.as_str()).collect();
        assert_eq!(origins, ["a.example/log", "b.example/log"]);
        assert_eq!(logs[1].api.base(), "http://127.0.0.1:2");

        let wrong = load(&format!(r#"[{{"origin": "b.example/log", "vkey": "{a}", "url": "h:1"}}]"#));
        assert!(format!("{:#}", wrong.err().unwrap()).contains("is not its key's name"));
        let twice = load(&format!(r#"[{{"vkey": "{a}", "url": "h:1"}}, {{"vkey": "{a}", "url": "h:2"}}]"#));
        assert!(format!("{:#}", twice.err().unwrap()).contains("listed twice"));
        assert!(load("[]").is_err());
        assert!(load(&format!(r#"[{{"vkey": "{a}"}}]"#)).is_err(), "a log without its URL");
        assert!(load(&format!(r#"[{{"vkey": "{a}", "url": "h:1", "extra": 1}}]"#)).is_err());
    }

    #[test]
    fn a_checkpoints_origin_is_its_first_line() {
        assert_eq!(note_origin("a.example/log\n12\nroot=\n\n— a.example/log sig\n"), "a.example/log");
        assert_eq!(note_origin(""), "");
    }
}

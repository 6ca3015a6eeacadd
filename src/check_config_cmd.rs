//! `sealmq check-config FILE`: validates a configuration as `sealmq serve
//! --config FILE` would read it, and prints the effective configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sealmq_audit::Policy;
use sealmq_broker::BrokerConfig;
use sealmq_broker::config::ConfigError;

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file (see broker/sealmq.example.toml).
    file: PathBuf,
}

/// Exit 0 and the effective configuration (every key, defaults filled in,
/// as TOML that reads back as the same configuration) on stdout; an error
/// naming the offending key (exit 2) otherwise.
pub fn run(data: Option<&Path>, args: CheckConfigArgs) -> Result<ExitCode> {
    let mut config = match BrokerConfig::from_file(&args.file) {
        Ok(config) => config,
        Err(ConfigError::Parse { path, source }) => {
            // TOML's message shows the line; name the key with its table too.
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let key = source.span().and_then(|span| offending_key(&text, span.start));
            let error = ConfigError::Parse { path, source };
            return Err(match key {
                Some(key) => anyhow::Error::new(error).context(key),
                None => error.into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // As `serve` would run it: --data (or SEALMQ_DATA) overrides the file.
    if let Some(data) = data {
        config.data = data.to_path_buf();
        config.check()?;
    }
    // Files the configuration names are read only at start; a missing one
    // should show here, not when the service is restarted at night.
    if let Some(path) = &config.witnessing.policy {
        let text = std::fs::read_to_string(path).with_context(|| format!("witnessing.policy: {}", path.display()))?;
        text.parse::<Policy>().with_context(|| format!("witnessing.policy: {}", path.display()))?;
    }
    if let Some(tls) = &config.tls {
        for (key, path) in
            [("tls.cert", Some(&tls.cert)), ("tls.key", Some(&tls.key)), ("tls.client_ca", tls.client_ca.as_ref())]
        {
            if let Some(path) = path {
                std::fs::metadata(path).with_context(|| format!("{key}: {}", path.display()))?;
            }
        }
    }
    // A secret is not for a terminal or a CI log; everything else is shown.
    let hidden = config.upstream.password.take().is_some();
    let text = toml::to_string_pretty(&config).context("printing the configuration")?;
    println!("# The effective configuration of {}: every key, defaults filled in.", args.file.display());
    if hidden {
        println!("# upstream.password is set in the file and not shown here.");
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The dotted key of the `key = value` line (or the `[table]` header) at
/// byte `offset` of a TOML text: its table's name, from the last header
/// above it, joined to the key before its `=`.
fn offending_key(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |at| at + 1);
    let line = text[start..].lines().next().unwrap_or_default().trim();
    let header = |line: &str| {
        let line = line.trim();
        line.strip_prefix('[')
            .map(|rest| rest.trim_start_matches('[').split(']').next().unwrap_or_default().trim().to_string())
    };
    if let Some(table) = header(line) {
        return Some(table);
    }
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = text[..start].lines().rev().find_map(header);
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::offending_key;

    #[test]
    fn the_key_is_named_with_its_table() {
        let text = "listen = \"x\"\n\n[limits]\nmax_inflight = 0\n[[weird]]\n";
        assert_eq!(offending_key(text, 3).as_deref(), Some("listen"));
        assert_eq!(offending_key(text, text.find("0\n").unwrap()).as_deref(), Some("limits.max_inflight"));
        assert_eq!(offending_key(text, text.find("[limits]").unwrap() + 2).as_deref(), Some("limits"));
        assert_eq!(offending_key(text, text.find("weird").unwrap()).as_deref(), Some("weird"));
        assert_eq!(offending_key("a.b = 1", 6).as_deref(), Some("a.b"));
    }
}

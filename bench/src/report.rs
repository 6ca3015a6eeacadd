//! The results of a run: the JSON report and the human table.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::BenchArgs;
use crate::stats::{Tally, latency_json};

/// What a run measured, for the report.
pub struct Results {
    pub label: String,
    pub addr: SocketAddr,
    pub v5: bool,
    pub publishers: usize,
    pub subscribers: usize,
    /// Seconds measured (--duration's, or its default).
    pub duration: f64,
    /// The measured window, in seconds.
    pub window_s: f64,
    pub sent: u64,
    pub published_per_s: f64,
    pub acked: u64,
    pub acked_per_s: f64,
    pub tally: Tally,
    pub delivered_per_s: f64,
    pub expected: u64,
    /// Publish to delivery.
    pub latency: Histogram<u64>,
    /// Publish to acknowledgement.
    pub ack_latency: Histogram<u64>,
    pub foreign: u64,
    pub unacked: u64,
    pub rejected: u64,
    pub stalls: u64,
    pub checkpoint: Option<Checkpoints>,
    /// `--idle`'s figures, or null.
    pub idle: Value,
    pub rss_start: Option<u64>,
    pub rss_end: Option<u64>,
    pub rss_max: Option<u64>,
    pub broker_cpu: Option<f64>,
    /// The broker's CPU seconds (user + system) in the measured window.
    pub broker_cpu_secs: Option<f64>,
    /// Those, in µs, per message delivered in the window.
    pub broker_cpu_us_per_delivered: Option<f64>,
    pub tool_cpu: Option<f64>,
    /// QoS ≥ 1 and messages lost, unacknowledged or rejected.
    pub failed_qos: bool,
    pub ok: bool,
}

/// `--checkpoints`: PUBACK to the first checkpoint covering the record.
pub struct Checkpoints {
    pub hist: Histogram<u64>,
    /// Records no checkpoint covered by the end.
    pub uncovered: usize,
    /// Checkpoints seen.
    pub notes: u64,
}

/// Prints the table and writes the JSON report (`--json`).
pub fn write(args: &BenchArgs, r: &Results) -> Result<()> {
    let (label, addr, p_count, s_count) = (&r.label, r.addr, r.publishers, r.subscribers);
    let mqtt = if r.v5 { "5" } else { "3.1.1" };

    let report = json!({
        "label": label,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config": {
            "host": args.host, "sub_host": args.sub_host, "mqtt": mqtt, "publishers": p_count, "subscribers": s_count,
            "topics_per_publisher": args.topics, "pattern": args.pattern.name(), "qos": args.qos,
            "payload": args.payload, "signed": args.signed, "rate_per_publisher": args.rate,
            "inflight": args.inflight, "duration_s": r.duration, "count": args.count,
            "warmup_s": args.warmup, "idle": args.idle,
        },
        "window_s": r.window_s,
        "published": r.sent, "published_per_s": r.published_per_s,
        "acked": r.acked, "acked_per_s": if args.qos > 0 { json!(r.acked_per_s) } else { Value::Null },
        "delivered": r.tally.delivered, "delivered_per_s": r.delivered_per_s, "expected_deliveries": r.expected,
        "latency_ms": latency_json(&r.latency),
        "ack_latency_ms": latency_json(&r.ack_latency),
        "lost": r.tally.lost, "duplicated": r.tally.duplicated, "unexpected": r.tally.unexpected, "foreign": r.foreign,
        "unacked": r.unacked, "rejected": r.rejected, "qos0_window_stalls": r.stalls,
        "checkpoint_latency_ms": r.checkpoint.as_ref().map_or(Value::Null, |c| latency_json(&c.hist)),
        "checkpoint_uncovered": r.checkpoint.as_ref().map(|c| c.uncovered),
        "checkpoints_seen": r.checkpoint.as_ref().map(|c| c.notes),
        "idle": r.idle,
        "broker": args.broker_pid.map(|pid| json!({
            "pid": pid,
            "rss_start_kib": r.rss_start,
            "rss_end_kib": r.rss_end,
            "rss_max_kib": r.rss_max,
            "cpu_percent": r.broker_cpu.map(|c| c.round()),
            "cpu_secs": r.broker_cpu_secs.map(|c| (c * 100.0).round() / 100.0),
            "cpu_us_per_delivered": r.broker_cpu_us_per_delivered.map(|c| (c * 100.0).round() / 100.0),
        })),
        "tool_cpu_percent": r.tool_cpu.map(|c| c.round()),
        "ok": r.ok,
    });

    // The human table.
    let mode = if args.rate > 0.0 {
        format!("{} msgs/s per publisher", args.rate)
    } else {
        format!("max rate, window {} per publisher", args.inflight)
    };
    let span = match args.count {
        Some(n) => format!("{n} msgs per publisher, {:.1} s warm-up", args.warmup),
        None => format!("{:.1} s measured after {:.1} s warm-up", r.duration, args.warmup),
    };
    println!("sealmq bench: {label}");
    println!(
        "  {addr}, MQTT {mqtt}, {p_count} publishers → {s_count} subscribers ({}), QoS {}, {} B, {}",
        args.pattern.name(),
        args.qos,
        args.payload,
        if args.signed { "MQS1-signed" } else { "unsigned" }
    );
    println!("  {mode}; {span}");
    println!();
    let row = |name: &str, value: String| println!("  {name:<32} {value}");
    let lat = |h: &Histogram<u64>| {
        if h.is_empty() {
            return "-".to_string();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        )
    };
    if p_count > 0 {
        row("published", format!("{} msgs, {}/s", group(r.sent), group(r.published_per_s as u64)));
        if args.qos > 0 {
            row("acknowledged", format!("{} msgs, {}/s", group(r.acked), group(r.acked_per_s as u64)));
            row("ack latency p50 / p90 / p99 / max", lat(&r.ack_latency));
        }
        if s_count > 0 {
            row(
                "delivered",
                format!(
                    "{} msgs, {}/s (expected {})",
                    group(r.tally.delivered),
                    group(r.delivered_per_s as u64),
                    group(r.expected)
                ),
            );
            row("latency p50 / p90 / p99 / max", lat(&r.latency));
            row("lost / duplicated", format!("{} / {}", group(r.tally.lost), group(r.tally.duplicated)));
        }
        if args.qos > 0 {
            row("unacknowledged / rejected", format!("{} / {}", group(r.unacked), group(r.rejected)));
        }
        if r.tally.unexpected > 0 || r.foreign > 0 {
            row("misrouted / foreign", format!("{} / {}", group(r.tally.unexpected), group(r.foreign)));
        }
        if r.stalls > 0 {
            row("QoS 0 window stalls", group(r.stalls));
        }
    }
    if let Some(Checkpoints { hist: h, uncovered, notes }) = &r.checkpoint {
        let value = if h.is_empty() {
            format!("- ({notes} checkpoints seen)")
        } else {
            format!(
                "{:.0} / {:.0} / {:.0} ms ({} records, {notes} checkpoints, {uncovered} uncovered)",
                h.value_at_quantile(0.5) as f64 / 1e6,
                h.value_at_quantile(0.99) as f64 / 1e6,
                h.max() as f64 / 1e6,
                group(h.len())
            )
        };
        row("PUBACK → checkpoint p50 / p99 / max", value);
    }
    if let Some(idle) = r.idle.as_object() {
        let (before, after) =
            (idle["rss_before_kib"].as_u64().unwrap_or(0), idle["rss_after_kib"].as_u64().unwrap_or(0));
        row(
            "idle connections",
            format!(
                "{}: RSS {} → {}, {:.1} KiB per connection (connected in {:.1} s)",
                group(args.idle as u64),
                mib(before),
                mib(after),
                idle["bytes_per_connection"].as_f64().unwrap_or(0.0) / 1024.0,
                idle["connect_secs"].as_f64().unwrap_or(0.0)
            ),
        );
    }
    if args.broker_pid.is_some() {
        row(
            "broker RSS start / end / max",
            format!(
                "{} / {} / {}",
                r.rss_start.map_or("-".into(), mib),
                r.rss_end.map_or("-".into(), mib),
                r.rss_max.map_or("-".into(), mib)
            ),
        );
        row("broker CPU", r.broker_cpu.map_or("-".into(), |c| format!("{c:.0} % of one core")));
        if let Some(us) = r.broker_cpu_us_per_delivered {
            row("broker CPU per delivered message", format!("{us:.2} µs"));
        }
    }
    row("load tool CPU", r.tool_cpu.map_or("-".into(), |c| format!("{c:.0} % of one core")));
    let verdict = if r.ok {
        "OK".to_string()
    } else {
        let mut why = Vec::new();
        if r.failed_qos {
            why.push(format!("QoS {}: lost, unacknowledged or rejected messages", args.qos));
        }
        if r.tally.duplicated > 0 {
            why.push("duplicates".into());
        }
        if r.tally.unexpected > 0 {
            why.push("messages delivered to a client that did not subscribe to them".into());
        }
        format!("FAILED: {}", why.join("; "))
    };
    row("result", verdict);

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `n` with thousands separators.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

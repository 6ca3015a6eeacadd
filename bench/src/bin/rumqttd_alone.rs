//! `rumqttd_alone`: rumqttd on its own, for the benchmark comparison
//! (`tests/bench/compare.sh`).
//!
//! It runs rumqttd with the settings the gateway gave the rumqttd it
//! embedded before routing moved in process (`router_settings`,
//! `connection_settings` below), listening on the given addresses, without
//! authentication: the Rust broker sealmq's gateway and log are compared
//! with.
//!
//! ```text
//! rumqttd_alone [--listen ADDR] [--listen-v4 ADDR] [--max-connections N] [--max-packet-size BYTES]
//! ```
//!
//! `--listen` (default 127.0.0.1:1884) serves MQTT 5, as the gateway's
//! upstream links speak; `--listen-v4` adds an MQTT 3.1.1 listener (rumqttd
//! serves each protocol on its own port). The defaults of the limits are
//! sealmq's (`[limits]` in `broker/sealmq.example.toml`). It runs until
//! killed; it prints `listening` lines once the listeners accept.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sealmq_broker::config::Limits;

/// What the command line asked for.
struct Options {
    v5: SocketAddr,
    v4: Option<SocketAddr>,
    max_connections: usize,
    max_packet_size: u32,
}

fn parse_args() -> Result<Options, String> {
    let limits = Limits::default();
    let mut options = Options {
        v5: SocketAddr::from(([127, 0, 0, 1], 1884)),
        v4: None,
        max_connections: limits.max_connections,
        max_packet_size: limits.max_packet_size,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => options.v5 = value.parse().map_err(|e| bad(&e))?,
            "--listen-v4" => options.v4 = Some(value.parse().map_err(|e| bad(&e))?),
            "--max-connections" => options.max_connections = value.parse().map_err(|e| bad(&e))?,
            "--max-packet-size" => options.max_packet_size = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// A listener with the gateway's per-connection settings, without `auth`.
fn server(name: &str, listen: SocketAddr, max_packet_size: u32) -> rumqttd::ServerSettings {
    let connections = connection_settings(max_packet_size, None);
    rumqttd::ServerSettings { name: name.into(), listen, tls: None, next_connection_delay_ms: 0, connections }
}

fn config(options: &Options) -> rumqttd::Config {
    let router = router_settings(options.max_packet_size, options.max_connections);
    let v4 = options.v4.map(|addr| HashMap::from([("1".to_string(), server("v4", addr, options.max_packet_size))]));
    rumqttd::Config {
        id: 0,
        router,
        v4,
        v5: Some(HashMap::from([("1".to_string(), server("v5", options.v5, options.max_packet_size))])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Waits until `addr` accepts TCP connections: rumqttd binds its listeners
/// on threads of its own and cannot say when they are up.
fn wait_listening(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("rumqttd_alone: {why}");
            }
            eprintln!(
                "usage: rumqttd_alone [--listen ADDR (MQTT 5)] [--listen-v4 ADDR (MQTT 3.1.1)] \
                 [--max-connections N] [--max-packet-size BYTES]"
            );
            return ExitCode::from(2);
        }
    };
    let mut broker = rumqttd::Broker::new(config(&options));
    // rumqttd's error type is large; only its message leaves the thread.
    let router =
        std::thread::Builder::new().name("rumqttd".into()).spawn(move || broker.start().map_err(|e| e.to_string()));
    let router = match router {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("rumqttd_alone: cannot start the router thread: {e}");
            return ExitCode::from(2);
        }
    };
    for (protocol, addr) in [("mqtt5", Some(options.v5)), ("mqtt311", options.v4)] {
        let Some(addr) = addr else { continue };
        if !wait_listening(addr) {
            eprintln!("rumqttd_alone: nothing listens on {addr} after 10 s");
            return ExitCode::from(2);
        }
        // Scripts read the addresses from stdout.
        println!("listening {protocol} {addr}");
    }
    println!(
        "rumqttd 0.20 alone: max_connections {}, max_packet_size {}",
        options.max_connections, options.max_packet_size
    );
    match router.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("rumqttd_alone: the router stopped: {e}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}

/// rumqttd segment size: at least one largest packet.
fn segment_size(max_packet_size: u32) -> usize {
    (max_packet_size as usize).max(1024 * 1024)
}

/// The router settings the gateway gave its embedded rumqttd before
/// routing moved in process (kept so the comparison stays the same).
fn router_settings(max_packet_size: u32, max_connections: usize) -> rumqttd::RouterConfig {
    rumqttd::RouterConfig {
        // Above the gateway's own limit: refusals there would leave stale
        // state in rumqttd.
        max_connections: max_connections + 64,
        // QoS 0 publishes moved to one link per router pass (QoS 1/2 are
        // bounded by rumqttd's fixed 100 in flight). 200 is the capacity
        // rumqttd preallocates for each link's outgoing queue, so a pass
        // never grows it. No value here sizes per-link memory: rumqttd's
        // ~44 KiB per idle link are fixed-size buffers and queues.
        max_outgoing_packet_count: 200,
        // Per-filter logs are kept in memory: small segments, few of them.
        max_segment_size: segment_size(max_packet_size),
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// Its per-connection settings then (`auth`: user → password).
fn connection_settings(max_packet_size: u32, auth: Option<HashMap<String, String>>) -> rumqttd::ConnectionSettings {
    rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        // Compared with each packet's remaining length; the gateway's
        // internal user properties ride on top of the client's packet.
        max_payload_size: max_packet_size as usize + 4096,
        // Packets read from one link before the router takes them: a batch
        // limit, not an allocation (that queue is preallocated for 200).
        max_inflight_count: 100,
        auth,
        external_auth: None,
        dynamic_filters: false,
    }
}

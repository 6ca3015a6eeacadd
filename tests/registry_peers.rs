//! A key revoked anywhere is refused everywhere (issue 15): gateways list
//! each other in `[registry] peers` and apply each other's revocations.
//! Three gateways: a primary P and followers A and B, each listing the
//! other two. A device registered on P reaches A and B; its key revoked on
//! follower A is refused on P and on B within seconds, also in sessions
//! already open there; each log records the revocation once (applying it
//! from a peer does not echo it back and forth); every log verifies. With
//! the primary down, B still learns it from A's log, and the primary takes
//! it from its peers when it is back. A
//! peer whose checkpoints are not signed by the configured key gets
//! nothing applied, loudly; with the right key the same revocation arrives.
//!
//! Real processes: three `sealmq serve`, real SQLite files, raw MQTT 5
//! clients signing with MQS1.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealmq_audit::RegistryEvent;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, try_connect5};
use common::signed::{self as signed, Answer, Dev, publish_signed, registry_records};
use common::witness::free_addrs;
use common::{sealmq, verify_ok};

/// How long a revocation may take to act on another gateway: logged and
/// sealed where it was made (250 ms polls), a peer round (`FOLLOW_MS`),
/// logged and swapped in there (250 ms poll). Generous for a loaded machine.
const WITHIN: Duration = Duration::from_secs(10);
const FOLLOW_MS: u64 = 250;
/// Long enough for several rounds of every follower: nothing may change in it.
const QUIET: Duration = Duration::from_secs(3);

/// One gateway's fixed addresses, data directory and origin, so that the
/// others can be configured with them before it starts.
struct Gateway {
    name: &'static str,
    data: PathBuf,
    mqtt: SocketAddr,
    http: SocketAddr,
    vkey: String,
}

impl Gateway {
    fn origin(&self) -> String {
        format!("gateways.test/{}", self.name)
    }

    /// Starts it with `registry` (the lines of its `[registry]` table).
    fn start(&self, registry: &str) -> BrokerProcess {
        let toml = format!(
            "origin = \"{}\"\nblock_interval_ms = 50\n\n[unknown_devices]\npolicy = \"reject\"\n\n[registry]\n\
             follow_interval_ms = {FOLLOW_MS}\n{registry}",
            self.origin()
        );
        let config = self.data.with_extension("toml");
        std::fs::create_dir_all(&self.data).unwrap();
        std::fs::write(&config, toml).unwrap();
        BrokerProcess::start_at(&self.data, self.mqtt, self.http, &["--config", config.to_str().unwrap()])
    }

    /// `peers = [...]` listing `others` (with `vkey` in place of theirs when given).
    fn peers_line(others: &[(&Gateway, Option<&str>)]) -> String {
        let entries: Vec<String> = others
            .iter()
            .map(|(g, vkey)| format!("{{ url = \"http://{}\", vkey = \"{}\" }}", g.http, vkey.unwrap_or(&g.vkey)))
            .collect();
        format!("peers = [{}]\n", entries.join(", "))
    }
}

/// Gateways named `names` in `dir`, each started once (and stopped) to make
/// its log and key.
fn gateways(dir: &Path, names: [&'static str; 3]) -> [Gateway; 3] {
    let addrs = free_addrs(6);
    let mut i = 0;
    names.map(|name| {
        let (mqtt, http) = (addrs[i], addrs[i + 1]);
        i += 2;
        let mut gateway = Gateway { name, data: dir.join(name), mqtt, http, vkey: String::new() };
        let broker = gateway.start("");
        gateway.vkey = broker.vkey.clone();
        assert!(gateway.vkey.starts_with(&format!("{}+", gateway.origin())), "{}", gateway.vkey);
        // Only its key was needed (and a SIGTERM right after the banner can
        // come before `serve` handles it).
        broker.kill();
        gateway
    })
}

/// The `[registry]` lines of gateway `me` of the mesh `[P, A, B]`: A and B
/// follow P, and each lists the other two as peers.
fn mesh(all: &[Gateway; 3], me: usize) -> String {
    let others: Vec<(&Gateway, Option<&str>)> = (0..3).filter(|i| *i != me).map(|i| (&all[i], None)).collect();
    let follow = match me {
        0 => String::new(),
        _ => format!("follow = \"http://{}\"\nfollow_vkey = \"{}\"\n", all[0].http, all[0].vkey),
    };
    format!("{follow}{}", Gateway::peers_line(&others))
}

/// Waits until `dev`, registered on the primary, is in the followers' logs.
fn wait_registered(followers: &[Gateway], dev: &Dev) {
    for gateway in followers {
        let took = within(&format!("the registration reaches {}'s log", gateway.name), WITHIN, || {
            events_of(&gateway.data, &dev.id).len() == 2
        });
        eprintln!("registered on p, in {}'s log after {took:?}", gateway.name);
    }
}

/// `dev`'s history: policy signed, key added, key revoked.
fn revoked_history(dev: &Dev) -> Vec<RegistryEvent> {
    vec![
        RegistryEvent::PolicySet { signed_required: true },
        RegistryEvent::KeyAdded { public_key: dev.public() },
        RegistryEvent::KeyRevoked { kid: dev.kid() },
    ]
}

/// Connects as `dev` and publishes one signed message on `peers/ID`.
fn connect_and_publish(broker: &BrokerProcess, dev: &Dev, ctr: u64) -> Option<Answer> {
    signed::connect_and_publish(broker.mqtt, dev, ctr, &format!("peers/{}", dev.id))
}

/// An open session of `dev`, which publishes fine now.
fn open_session(broker: &BrokerProcess, dev: &Dev, ctr: &mut u64) -> Conn {
    let (mut conn, connack) = try_connect5(broker.mqtt, &dev.id, None);
    assert_eq!(connack.connack_code(), 0, "{} refused on {}", dev.id, broker.http);
    *ctr += 1;
    assert_eq!(publish_signed(&mut conn, dev, *ctr, &format!("peers/{}", dev.id)), Answer::Ack(0));
    conn
}

#[track_caller]
fn within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn events_of(data: &Path, device: &str) -> Vec<RegistryEvent> {
    registry_records(data).into_iter().filter(|(_, r)| r.device_id == device).map(|(_, r)| r.event).collect()
}

fn revocations(data: &Path) -> usize {
    registry_records(data).iter().filter(|(_, r)| matches!(r.event, RegistryEvent::KeyRevoked { .. })).count()
}

#[test]
fn a_key_revoked_on_one_follower_is_refused_on_the_primary_and_the_other_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let all = gateways(tmp.path(), ["p", "a", "b"]);
    let [p, a, b] = [0, 1, 2].map(|i| all[i].start(&mesh(&all, i)));
    let [gp, ga, gb] = &all;
    let dev = Dev::new("sensor-everywhere");

    // Registered on the primary, admitted by both followers.
    dev.register(&gp.data, "signed", &[]);
    wait_registered(&all[1..], &dev);
    let mut ctr = 0;
    for (name, gateway) in [("A", &a), ("B", &b)] {
        let took = within(&format!("follower {name} admits the device"), WITHIN, || {
            ctr += 1;
            connect_and_publish(gateway, &dev, ctr) == Some(Answer::Ack(0))
        });
        eprintln!("registered on P, admitted by {name} after {took:?}");
    }
    // Sessions open on P and B while the key is revoked on A.
    let mut on_p = open_session(&p, &dev, &mut ctr);
    let mut on_b = open_session(&b, &dev, &mut ctr);
    let revoke = sealmq(&ga.data, &["device", "revoke", &dev.id, &dev.kid_hex()]);
    let told = revoke.stderr.clone();
    revoke.ok();
    assert!(
        told.contains("reaches every gateway that lists this one") && !told.contains("on this gateway only"),
        "the operator is not told the revocation travels: {told}"
    );
    // A's own peer (its primary's revocations arrive by following it).
    assert!(told.contains(&gb.origin()), "the peers are not named: {told}");
    let revoked_at = Instant::now();

    for (name, conn) in [("P", &mut on_p), ("B", &mut on_b)] {
        within(&format!("{name} refuses the key revoked on A in an open session"), WITHIN, || {
            ctr += 1;
            let answer = publish_signed(conn, &dev, ctr, &format!("peers/{}", dev.id));
            assert!(answer == Answer::Ack(0) || answer.refused(), "{name}: a signed publish answered {answer:?}");
            answer.refused() || conn.closed
        });
        eprintln!("revoked on A, refused in an open session on {name} after {:?}", revoked_at.elapsed());
    }
    for (name, gateway) in [("P", &p), ("A", &a), ("B", &b)] {
        ctr += 1;
        let answer = connect_and_publish(gateway, &dev, ctr);
        assert!(answer.is_some_and(Answer::refused), "{name}, a new session after the revocation: {answer:?}");
    }

    // Every gateway saw the revocation from up to three logs (A's, P's, and
    // B's or A's): each log records it once, and nothing echoes on.
    std::thread::sleep(QUIET);
    for (name, gateway) in [("P", gp), ("A", ga), ("B", gb)] {
        assert_eq!(events_of(&gateway.data, &dev.id), revoked_history(&dev), "the device's history in {name}'s log");
        assert_eq!(revocations(&gateway.data), 1, "revocations in {name}'s log");
    }
    let listed = sealmq(&gb.data, &["device", "list"]).ok();
    assert!(listed.contains(&format!("following the revocations of the peer log {}: 1 applied", ga.vkey)), "{listed}");

    for broker in [p, a, b] {
        assert!(broker.stop().success());
    }
    for gateway in &all {
        verify_ok(&gateway.data);
    }
}

#[test]
fn a_revocation_reaches_the_other_follower_while_the_primary_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let all = gateways(tmp.path(), ["p", "a", "b"]);
    let [p, a, b] = [0, 1, 2].map(|i| all[i].start(&mesh(&all, i)));
    let dev = Dev::new("sensor-primary-down");
    dev.register(&all[0].data, "signed", &[]);
    wait_registered(&all[1..], &dev);
    assert_eq!(connect_and_publish(&b, &dev, 1), Some(Answer::Ack(0)), "B admits the device");

    // With the primary down, only A's log can tell B.
    assert!(p.stop().success());
    sealmq(&all[1].data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    let mut ctr = 1;
    let took = within("B refuses the key revoked on A while the primary is down", WITHIN, || {
        ctr += 1;
        connect_and_publish(&b, &dev, ctr).is_some_and(Answer::refused)
    });
    eprintln!("revoked on A with the primary down, refused on B after {took:?}");

    // The primary, back, takes it from its peers; nobody logs it twice.
    let p = all[0].start(&mesh(&all, 0));
    within("the primary applies the revocation made while it was down", WITHIN, || revocations(&all[0].data) == 1);
    ctr += 1;
    let answer = connect_and_publish(&p, &dev, ctr);
    assert!(answer.is_some_and(Answer::refused), "the primary after the revocation: {answer:?}");
    std::thread::sleep(QUIET);
    for gateway in &all {
        assert_eq!(events_of(&gateway.data, &dev.id), revoked_history(&dev), "the history in {}'s log", gateway.name);
        assert_eq!(revocations(&gateway.data), 1, "revocations in {}'s log", gateway.name);
    }
    for broker in [p, a, b] {
        assert!(broker.stop().success());
    }
    for gateway in &all {
        verify_ok(&gateway.data);
    }
}

#[test]
fn a_peer_whose_checkpoints_another_key_signs_gets_nothing_applied() {
    let tmp = tempfile::tempdir().unwrap();
    // X revokes; G lists X with the key of I, a log of the same origin.
    let [gx, gg, gi] = gateways(tmp.path(), ["x", "g", "i"]);
    std::fs::remove_dir_all(&gi.data).unwrap();
    let impostor = Gateway { name: "x", ..gi };
    let broker = impostor.start("");
    let wrong_vkey = broker.vkey.clone();
    broker.kill();
    assert!(wrong_vkey.starts_with(&format!("{}+", gx.origin())) && wrong_vkey != gx.vkey, "{wrong_vkey}");

    // The device is registered on both (G is its own primary here).
    let dev = Dev::new("revoked-on-x");
    dev.register(&gx.data, "signed", &[]);
    dev.register(&gg.data, "signed", &[]);
    let x = gx.start("");
    let g = gg.start(&Gateway::peers_line(&[(&gx, Some(&wrong_vkey))]));
    sealmq(&gx.data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    within("X logs and seals the revocation", WITHIN, || revocations(&gx.data) == 1);
    std::thread::sleep(QUIET);

    assert_eq!(
        connect_and_publish(&g, &dev, 1),
        Some(Answer::Ack(0)),
        "G refuses a key only an unverified peer revoked"
    );
    assert_eq!(revocations(&gg.data), 0, "G logged a revocation from an unverified peer");
    let stderr = g.stderr.lock().unwrap().clone();
    assert!(stderr.contains("REFUSED the peer") && stderr.contains("does not open"), "not refused loudly:\n{stderr}");
    assert!(g.stop().success());

    // The same peer with its own key: the revocation arrives.
    let g = gg.start(&Gateway::peers_line(&[(&gx, None)]));
    within("G applies X's revocation once X's key is configured", WITHIN, || revocations(&gg.data) == 1);
    let mut ctr = 1;
    within("G refuses the key revoked on X", WITHIN, || {
        ctr += 1;
        connect_and_publish(&g, &dev, ctr).is_some_and(Answer::refused)
    });
    assert!(g.stop().success());
    assert!(x.stop().success());
    verify_ok(&gg.data);
}

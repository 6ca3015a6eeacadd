//! The external router against a real Mosquitto (Debian's `mosquitto`
//! package; `tests/run` installs it): two gateways, each its own
//! [`External`] router, sharing one broker started by the test on an
//! ephemeral loopback port. Fails (never skips) without mosquitto.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sealmq_broker::codec::v5::PublishProperties;
use sealmq_broker::route::external::ExternalStats;
use sealmq_broker::route::{Delivery, External, Inbox, Message, SubOptions};
use tokio::time::Instant;

#[path = "../../tests/common/mosquitto.rs"]
mod mosquitto;

use mosquitto::Mosquitto;

/// A gateway's router on `broker`.
async fn gateway(broker: &Mosquitto, id: &str) -> External {
    External::connect(&broker.address(), "", "", id, &format!("{id}.example/log"), 2).await.unwrap()
}

fn inbox(session: u64, client_id: &str) -> Arc<Inbox> {
    Arc::new(Inbox::new(session, 10_000, client_id.into(), Default::default()))
}

fn options(id: usize) -> SubOptions {
    SubOptions { qos: 2, no_local: false, retain_as_published: true, id: Some(id) }
}

fn message(topic: &str, from: &str, index: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(format!("payload {index}")),
        properties: None,
        qos: 1,
        retain: false,
        index: Some(index),
        origin: None,
        from: from.into(),
        at: Instant::now(),
    })
}

/// Waits for `n` deliveries (fails after 10 s), then checks that no more come.
async fn take(inbox: &Inbox, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        match inbox.pop() {
            Some(delivery) => got.push(delivery),
            None => {
                let wait = tokio::time::timeout_at(deadline, inbox.ready()).await;
                assert!(wait.is_ok() || !inbox.is_empty(), "{} of {n} deliveries within 10 s", got.len());
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(inbox.is_empty(), "more than {n} deliveries");
    got
}

fn indexes(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.message.index.unwrap()).collect()
}

/// The log indexes delivered, in no order (publishes through two gateways have none).
fn index_set(deliveries: &[Delivery]) -> BTreeSet<u64> {
    deliveries.iter().map(|d| d.message.index.unwrap()).collect()
}

fn assert_clean(stats: ExternalStats) {
    assert_eq!(stats, ExternalStats::default(), "no connection lost, nothing dropped, ignored or unrouted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_gateways_once_with_its_route_and_properties_intact() {
    let broker = Mosquitto::start();
    let (a, b) = (gateway(&broker, "gw-a").await, gateway(&broker, "gw-b").await);
    let remote = inbox(1, "sub-a");
    a.subscribe(&remote, "plant/+/temp", options(7)).await.unwrap();
    // On the publisher's own gateway: the publisher itself with No Local,
    // and another client. Both are served from the broker's copy.
    let publisher = inbox(2, "dev-1");
    b.subscribe(&publisher, "plant/#", SubOptions { no_local: true, ..options(1) }).await.unwrap();
    let local = inbox(3, "other");
    b.subscribe(&local, "plant/#", options(2)).await.unwrap();

    let properties = |i: u64| PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from(vec![0, 1, 2, i as u8])),
        user_properties: vec![("k".into(), i.to_string()), ("k".into(), "again".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    for i in 0..20u64 {
        let mut m = Arc::into_inner(message(&format!("plant/{}/temp", i % 3), "dev-1", 100 + i)).unwrap();
        m.qos = (i % 3) as u8;
        m.retain = i % 2 == 0;
        m.properties = Some(properties(i));
        b.publish(Arc::new(m));
    }
    let got = take(&remote, 20).await;
    assert_eq!(indexes(&got), (100..120).collect::<Vec<_>>(), "each once, in order");
    for (i, d) in (0u64..).zip(&got) {
        let m = &d.message;
        assert_eq!(
            (m.topic_str(), &m.payload[..]),
            (&*format!("plant/{}/temp", i % 3), format!("payload {}", 100 + i).as_bytes())
        );
        assert_eq!((m.qos, m.retain), ((i % 3) as u8, i % 2 == 0), "QoS and retain as published");
        assert_eq!(&*m.from, "gw-b\0dev-1", "qualified: never a client of this gateway");
        assert_eq!(m.origin.as_deref(), Some("gw-b.example/log"), "its index is in the publishing gateway's log");
        assert_eq!(d.options, options(7));
        let mut props = m.properties.clone().unwrap();
        let expiry = props.message_expiry_interval.take().unwrap();
        assert!((3590..=3600).contains(&expiry), "expiry counts down, {expiry}");
        assert_eq!(props, PublishProperties { message_expiry_interval: None, ..properties(i) });
    }
    let got = take(&local, 20).await;
    assert_eq!(indexes(&got), (100..120).collect::<Vec<_>>(), "a gateway's own publishes: once, from the broker");
    assert!(got.iter().all(|d| &*d.message.from == "dev-1"), "local publisher unqualified");
    assert!(got.iter().all(|d| d.message.origin.is_none()), "in this gateway's own log");
    assert!(take(&publisher, 0).await.is_empty(), "No Local");
    assert_clean(a.stats());
    assert_clean(b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_get_one_delivery_each() {
    let broker = Mosquitto::start();
    let (a, b) = (gateway(&broker, "gw-a").await, gateway(&broker, "gw-b").await);
    let session = inbox(1, "s");
    for (id, filter) in [(1, "o/#"), (2, "o/+"), (3, "o/x")] {
        a.subscribe(&session, filter, options(id)).await.unwrap();
    }
    // Another session on one of those filters: the same upstream subscription.
    let other = inbox(2, "t");
    a.subscribe(&other, "o/x", options(9)).await.unwrap();
    b.publish(message("o/x", "p", 1));
    a.publish(message("o/x", "p", 2));
    a.publish(message("o/y", "p", 3));
    let got = take(&session, 8).await;
    let mut seen: Vec<(u64, usize)> = got.iter().map(|d| (d.message.index.unwrap(), d.options.id.unwrap())).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]);
    assert_eq!(index_set(&take(&other, 2).await), [1, 2].into());
    assert_clean(a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_gateways_takes_each_message_once_in_total() {
    let broker = Mosquitto::start();
    let (a, b) = (gateway(&broker, "gw-a").await, gateway(&broker, "gw-b").await);
    let members = [inbox(1, "m1"), inbox(2, "m2"), inbox(3, "m3")];
    a.subscribe(&members[0], "$share/w/jobs/#", options(1)).await.unwrap();
    a.subscribe(&members[1], "$share/w/jobs/#", options(1)).await.unwrap();
    b.subscribe(&members[2], "$share/w/jobs/#", options(1)).await.unwrap();
    // Same share name, another filter: another group, which gets every message.
    let other_group = inbox(4, "v");
    a.subscribe(&other_group, "$share/w/jobs/+", options(2)).await.unwrap();
    for i in 0..80 {
        let via = if i % 2 == 0 { &a } else { &b };
        via.publish(message("jobs/x", &format!("p{}", i % 5), i));
    }
    assert_eq!(take(&other_group, 80).await.len(), 80);
    let mut counts = Vec::new();
    let mut all = BTreeSet::new();
    for member in &members {
        let got: Vec<Delivery> = std::iter::from_fn(|| member.pop()).collect();
        counts.push(got.len());
        for index in indexes(&got) {
            assert!(all.insert(index), "message {index} delivered twice");
        }
    }
    assert_eq!(all, (0..80).collect(), "every message once in total ({counts:?})");
    assert!(counts.iter().all(|&n| n > 0), "both gateways, and both local members, take turns: {counts:?}");
    assert_clean(a.stats());
    assert_clean(b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_deliveries_here_and_upstream() {
    let broker = Mosquitto::start();
    let (a, b) = (gateway(&broker, "gw-a").await, gateway(&broker, "gw-b").await);
    let leaving = inbox(1, "u");
    let staying = inbox(2, "s");
    a.subscribe(&leaving, "u/#", options(1)).await.unwrap();
    a.subscribe(&staying, "u/+", options(2)).await.unwrap();
    b.publish(message("u/x", "p", 1));
    assert_eq!(indexes(&take(&leaving, 1).await), [1]);
    assert_eq!(indexes(&take(&staying, 1).await), [1]);

    assert!(a.unsubscribe(1, "u/#"));
    assert!(!a.unsubscribe(1, "u/#"), "only once");
    assert!(!a.unsubscribe(2, "u/#"), "not that session's");
    // The upstream UNSUBSCRIBE is not waited for: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.publish(message("u/x", "p", 2));
    assert_eq!(indexes(&take(&staying, 1).await), [2]);
    assert!(take(&leaving, 0).await.is_empty());
    assert_clean(a.stats());
    // Subscribing again works as new.
    a.subscribe(&leaving, "u/#", options(3)).await.unwrap();
    b.publish(message("u/x", "p", 3));
    assert_eq!(take(&leaving, 1).await[0].options.id, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_never_knock_each_other_off_but_a_shared_id_is_seen_and_backs_off() {
    let broker = Mosquitto::start();
    let (a, b) = (gateway(&broker, "gw-a").await, gateway(&broker, "gw-b").await);
    let (sa, sb) = (inbox(1, "x"), inbox(2, "x"));
    a.subscribe(&sa, "k/#", options(1)).await.unwrap();
    b.subscribe(&sb, "k/#", options(1)).await.unwrap();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        a.publish(message("k/a", "x", i));
        b.publish(message("k/b", "x", i + 1));
        i += 2;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(take(&sa, i as usize).await.len(), take(&sb, i as usize).await.len());
    assert_clean(a.stats());
    assert_clean(b.stats());
    assert!(!broker.log().contains("already connected"), "no take-over:\n{}", broker.log());

    // A second gateway with gateway A's id: the two take each other's
    // connections over, which is counted, and backs off (no storm).
    let twin = gateway(&broker, "gw-a").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let losses = a.stats().connection_losses + twin.stats().connection_losses;
    assert!((1..=40).contains(&losses), "{losses} connections lost in 2 s");
    assert_eq!(b.stats().connection_losses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_reconnect_and_resubscribe_when_the_broker_restarts() {
    let mut broker = Mosquitto::start();
    let (a, b) = (Arc::new(gateway(&broker, "gw-a").await), gateway(&broker, "gw-b").await);
    let on_a = inbox(1, "ra");
    let on_b = inbox(2, "rb");
    a.subscribe(&on_a, "r/#", options(1)).await.unwrap();
    b.subscribe(&on_b, "$share/g/r/x", options(2)).await.unwrap();
    b.publish(message("r/x", "p", 1));
    a.publish(message("r/x", "p", 2));
    for inbox in [&on_a, &on_b] {
        assert_eq!(index_set(&take(inbox, 2).await), [1, 2].into());
    }

    broker.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.is_ready() || b.is_ready() {
        assert!(Instant::now() < deadline, "the routers did not notice the broker went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A subscription made while the broker is away completes once it is back.
    let late = inbox(3, "late");
    let pending = tokio::spawn({
        let (a, late) = (Arc::clone(&a), Arc::clone(&late));
        async move { a.subscribe(&late, "late/+", options(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.run();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(a.is_ready() && b.is_ready()) {
        assert!(Instant::now() < deadline, "the routers did not reconnect and resubscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pending.await.unwrap().unwrap();
    b.publish(message("r/x", "p", 3));
    a.publish(message("r/x", "p", 4));
    b.publish(message("late/1", "p", 5));
    // Two gateways' publishes: no order between them.
    for inbox in [&on_a, &on_b] {
        assert_eq!(index_set(&take(inbox, 2).await), [3, 4].into());
    }
    assert_eq!(indexes(&take(&late, 1).await), [5]);
    assert!(a.stats().connection_losses >= 2 && b.stats().connection_losses >= 2, "both connections of each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_sending_nonsense_costs_a_reconnection_never_a_panic() {
    use sealmq_broker::codec::encode_v5;
    use sealmq_broker::codec::v5::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS};
    use sealmq_broker::route::external::wire::Route;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A fake broker: CONNACK to everyone, then per connection, in order of
    // arrival: packets that make no sense here (the first two: the
    // router's first connections), a length past any limit, a reserved
    // packet type; after that, silence.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        for n in 0.. {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut out = bytes::BytesMut::new();
                let ack = ConnAck { session_present: false, code: ConnectReturnCode::Success, properties: None };
                encode_v5(&Packet::ConnAck(ack), &mut out).unwrap();
                match n {
                    0 | 1 => {
                        let unrouted = Publish::new("t/x", QoS::AtMostOnce, "no route", None);
                        encode_v5(&Packet::Publish(unrouted), &mut out).unwrap();
                        let mut stray = Publish::new("t/x", QoS::AtMostOnce, "nobody's", None);
                        let origin = "gw-x.example/log".into();
                        Route { index: Some(1), origin, qos: 0, retain: false, from: "gw-x/c".into() }
                            .attach(&mut stray);
                        stray.properties.as_mut().unwrap().subscription_identifiers = vec![99];
                        encode_v5(&Packet::Publish(stray), &mut out).unwrap();
                        encode_v5(&Packet::PubAck(PubAck::new(7, None)), &mut out).unwrap();
                    }
                    2 => out.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
                    3 => out.extend_from_slice(&[0x00, 0x00]),
                    _ => {}
                }
                let mut connect = [0u8; 1024];
                let _ = stream.read(&mut connect).await;
                let _ = stream.write_all(&out).await;
                while stream.read(&mut connect).await.is_ok_and(|read| read > 0) {}
            });
        }
    });
    let router = External::connect(&address, "user", "secret", "gw-a", "gw-a.example/log", 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(router.stats().connection_losses >= 4 && router.is_ready()) {
        assert!(Instant::now() < deadline, "{:?}", router.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = router.stats();
    assert_eq!((stats.connection_losses, stats.ignored_publishes, stats.unrouted_copies), (4, 2, 2));
}

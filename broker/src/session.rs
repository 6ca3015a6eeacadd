//! One client connection: CONNECT and admission, then the relay between the
//! client and its upstream link, where every PUBLISH is checked, logged
//! durably and only then forwarded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use sealmq_audit::mqs1::Kid;
use sealmq_audit::store::StoreError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::admission::{Admission, PROP_INDEX, PROP_RECEIPTS, Route, admit, remember_if_retained};
use crate::codec::{
    ClientCodec, CodecError, FilterKind, Version, connack_v31_refused, peek_protocol_level, topic_matches, v5,
    validate_filter, validate_topic_name,
};
use crate::gateway::{Shared, Slot, TakeRequest};
use crate::identity::{Device, Refusal, check_password};
use crate::limits::PublishRate;
use crate::transport::{ClientRead, ClientWrite, Listener, upgrade, write_flushed};
use crate::upstream::{UpstreamLink, UpstreamReader, UpstreamWriter, close_link, down_topic, up_client_id, up_filter};

use v5::{DisconnectReasonCode as Dc, PubAckReason, PubRecReason, QoS, SubscribeReasonCode};

/// Reads from the router handled in one turn of a connection's task
/// (up to 16 KiB each) before it lets other tasks run.
const ROUTER_READS_PER_TURN: usize = 64;
/// Keep-alive the gateway uses upstream; it pings when idle.
const UPSTREAM_KEEP_ALIVE: u16 = 60;
/// Publishes of one connection being logged at once; reading from the
/// client pauses beyond this (back-pressure, not loss).
const PIPELINE_DEPTH: usize = 256;

/// Serves one client until it disconnects; errors end only this connection.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, kind: Listener, slot: Slot) {
    let timeout = Duration::from_millis(shared.config.limits.connect_timeout_ms);
    // The transport's handshakes count against the CONNECT timeout too.
    let accepted = tokio::time::timeout(timeout, async {
        // Boxed: the TLS and WebSocket handshake state is most of this
        // future, and unboxed it would stay in every connection's task for
        // its whole life (about 5.6 KiB per idle connection).
        let upgraded =
            Box::pin(upgrade(kind, stream, shared.tls.as_ref(), shared.config.limits.max_packet_size)).await?;
        let mut client = Client::new(upgraded.read, upgraded.write);
        let connect = read_connect(&shared, &mut client, peer, upgraded.cert_identity.as_deref()).await?;
        Ok::<_, End>(connect.map(|connect| (client, connect)))
    })
    .await;
    let (client, connect) = match accepted {
        Ok(Ok(Some(accepted))) => accepted,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = kind.scheme(), error = %e, "refused before CONNECT completed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, listener = kind.scheme(), "no CONNECT within the connect timeout");
            return;
        }
    };
    let client_id = connect.client_id.clone();
    if let Err(e) = run(shared, client, connect, peer, slot).await {
        tracing::debug!(%peer, client_id, error = %e, "connection ended");
    }
}

/// Answers a connection past the connection limit: reads its CONNECT (for
/// the protocol version) and refuses it as the spec says (MQTT 5: 0x89
/// server busy; 3.1.1: 0x03 server unavailable), within a short time.
pub async fn refuse_busy(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, kind: Listener) {
    let answer = async {
        let upgraded = upgrade(kind, stream, shared.tls.as_ref(), shared.config.limits.max_packet_size).await?;
        let mut client = Client::new(upgraded.read, upgraded.write);
        let Some(codec) = read_connect_codec(&shared, &mut client).await? else { return Ok(()) };
        refuse(&mut client, &codec, v5::ConnectReturnCode::ServerBusy).await;
        Ok::<_, End>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), answer).await {
        tracing::debug!(%peer, error = %e, "refusing a connection past the limit");
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("client protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

/// The client's byte stream (whatever its transport) and buffers.
struct Client {
    read: ClientRead,
    write: ClientWrite,
    buf: BytesMut,
    out: BytesMut,
}

impl Client {
    /// `out` starts empty (an idle connection then holds no output buffer,
    /// one resident page less) and keeps the size it grows to. `buf` stays
    /// 4 KiB: while decoded payloads still share it, `BytesMut` refills into
    /// a new buffer of its first capacity, so a smaller one means more,
    /// smaller reads (1 KiB: 47% more syscalls per 1 KiB publish, −10%
    /// throughput).
    fn new(read: ClientRead, write: ClientWrite) -> Self {
        Self { read, write, buf: BytesMut::with_capacity(4096), out: BytesMut::new() }
    }

    async fn fill(&mut self) -> Result<bool, std::io::Error> {
        Ok(self.read.read_buf(&mut self.buf).await? > 0)
    }

    /// Encodes a packet into the output buffer; [`Client::flush`] sends it.
    fn queue(&mut self, codec: &ClientCodec, packet: &v5::Packet) -> Result<(), End> {
        match codec.encode(packet, &mut self.out) {
            Ok(_) => Ok(()),
            // Larger than the client's Maximum Packet Size: MQTT 5 says drop it.
            Err(CodecError::PacketTooLarge { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends what is queued: one write for everything handled since the last.
    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            write_flushed(&mut self.write, &self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn send(&mut self, codec: &ClientCodec, packet: &v5::Packet) -> Result<(), End> {
        self.queue(codec, packet)?;
        self.flush().await
    }
}

/// A decoded, admitted CONNECT.
struct Connected {
    codec: ClientCodec,
    client_id: String,
    assigned_id: bool,
    keep_alive: u16,
    device: Arc<Device>,
    will: Option<(v5::LastWill, Option<v5::LastWillProperties>)>,
    request_problem_info: bool,
    /// The client's Receive Maximum: QoS 1/2 deliveries it takes unacknowledged.
    receive_max: usize,
    /// False: resume the session the client id had, if any.
    clean_start: bool,
    /// How long the session outlives the connection, in seconds (0: not at all).
    session_expiry: u32,
    /// MQTT 5 Will Delay Interval, in seconds.
    will_delay: u32,
    /// Whether the client asked for receipts ([`PROP_RECEIPTS`]).
    receipts: bool,
}

/// Reads up to the CONNECT's protocol level: the codec for the client's
/// MQTT version, or `None` when the client left or is refused (MQTT 3.1
/// and unknown versions are answered here).
async fn read_connect_codec(shared: &Shared, client: &mut Client) -> Result<Option<ClientCodec>, End> {
    let level = loop {
        match peek_protocol_level(&client.buf) {
            Ok(Some(level)) => break level,
            Ok(None) => {}
            Err(e @ CodecError::UnsupportedProtocol { .. }) => {
                // MQTT 3.1.1 §3.1.2.2: answer CONNACK 0x01, then close.
                write_flushed(&mut client.write, &connack_v31_refused()).await?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        if !client.fill().await? {
            return Ok(None);
        }
    };
    if level == 3 {
        write_flushed(&mut client.write, &connack_v31_refused()).await?;
        return Ok(None);
    }
    let version = if level == 5 { Version::V5 } else { Version::V311 };
    // Until the CONNECT is accepted, a client may make the broker hold no
    // more than the pre-login limit, whatever length it declares.
    let limits = &shared.config.limits;
    let max_incoming = limits.max_connect_packet_size.min(limits.max_packet_size);
    Ok(Some(ClientCodec { version, max_incoming, max_outgoing: None }))
}

/// Reads the CONNECT and decides on it; answers refusals itself.
/// `cert_identity`: the device id the client's TLS certificate names.
async fn read_connect(
    shared: &Shared,
    client: &mut Client,
    peer: SocketAddr,
    cert_identity: Option<&str>,
) -> Result<Option<Connected>, End> {
    let Some(mut codec) = read_connect_codec(shared, client).await? else { return Ok(None) };
    let version = codec.version;
    let packet = loop {
        match codec.decode(&mut client.buf) {
            Ok(Some(packet)) => break packet,
            Ok(None) => {
                if !client.fill().await? {
                    return Ok(None);
                }
            }
            // 3.1.1 has no CONNACK code for a CONNECT too large: just close.
            Err(e @ CodecError::PacketTooLarge { .. }) if version == Version::V311 => return Err(e.into()),
            Err(e) => {
                refuse(client, &codec, e.connack_code()).await;
                return Err(e.into());
            }
        }
    };
    codec.max_incoming = shared.config.limits.max_packet_size;
    let v5::Packet::Connect(connect, will, login) = packet else {
        return Err(CodecError::ProtocolError("the first packet is not CONNECT".into()).into());
    };
    let properties = connect.properties.clone().unwrap_or_else(v5::ConnectProperties::new);
    codec.max_outgoing = properties.max_packet_size;

    let (client_id, assigned_id) = if connect.client_id.is_empty() {
        if !connect.clean_start && version == Version::V311 {
            refuse(client, &codec, v5::ConnectReturnCode::ClientIdentifierNotValid).await;
            return Ok(None);
        }
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        (format!("sealmq-{}", hex::encode(id)), true)
    } else {
        (connect.client_id.clone(), false)
    };
    if client_id.contains('\0') {
        refuse(client, &codec, v5::ConnectReturnCode::ClientIdentifierNotValid).await;
        return Ok(None);
    }
    if properties.authentication_method.is_some() {
        refuse(client, &codec, v5::ConnectReturnCode::BadAuthenticationMethod).await;
        return Ok(None);
    }
    // An address that failed too often is refused before anything is
    // checked, so guessing costs it time and the broker no Argon2 work.
    if !shared.logins.allows(peer.ip()) {
        shared.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, client_id, "refused: too many failed logins from this address");
        let code = match version {
            Version::V5 => v5::ConnectReturnCode::ConnectionRateExceeded,
            Version::V311 => v5::ConnectReturnCode::ServerUnavailable,
        };
        refuse(client, &codec, code).await;
        return Ok(None);
    }
    let failed = |why: &str| {
        shared.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
        shared.logins.failed(peer.ip());
        tracing::info!(%peer, client_id, "refused: {why}");
    };
    if let Some(identity) = cert_identity
        && identity != client_id
    {
        failed(&format!("its client certificate names {identity:?}, not this client id"));
        refuse(client, &codec, v5::ConnectReturnCode::NotAuthorized).await;
        return Ok(None);
    }
    let device = match shared.identities().lookup(&client_id) {
        Ok(device) => device,
        Err(refusal) => {
            failed("not a registered device");
            refuse(client, &codec, connack_code(refusal)).await;
            return Ok(None);
        }
    };
    let password = login.map(|l| l.password.into_bytes());
    let checked = {
        let _turn = shared.password_checks.acquire().await;
        check_password(&device, password).await
    };
    if let Err(refusal) = checked {
        failed("wrong or missing password");
        refuse(client, &codec, connack_code(refusal)).await;
        return Ok(None);
    }
    let will_delay = will.as_ref().and_then(|w| w.properties.as_ref()).and_then(|p| p.delay_interval).unwrap_or(0);
    let will = match will {
        Some(will) => match validate_topic_name(&will.topic) {
            Ok(topic) if !topic.starts_with('$') && device.may_publish(topic) => {
                let properties = will.properties.clone();
                Some((will, properties))
            }
            _ => {
                refuse(client, &codec, v5::ConnectReturnCode::TopicNameInvalid).await;
                return Ok(None);
            }
        },
        None => None,
    };
    Ok(Some(Connected {
        codec,
        client_id,
        assigned_id,
        keep_alive: connect.keep_alive,
        device,
        will,
        request_problem_info: properties.request_problem_info != Some(0),
        receive_max: usize::from(properties.receive_maximum.unwrap_or(u16::MAX)),
        clean_start: connect.clean_start,
        // 3.1.1 clean session 0 keeps the session with no expiry; MQTT 5
        // keeps it for Session Expiry Interval seconds (default 0).
        session_expiry: match version {
            Version::V311 if !connect.clean_start => u32::MAX,
            Version::V311 => 0,
            Version::V5 => properties.session_expiry_interval.unwrap_or(0),
        },
        will_delay,
        receipts: properties.user_properties.iter().any(|(name, value)| name == PROP_RECEIPTS && value == "1"),
    }))
}

fn connack_code(refusal: Refusal) -> v5::ConnectReturnCode {
    match refusal {
        Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
        Refusal::BadPassword => v5::ConnectReturnCode::BadUserNamePassword,
    }
}

async fn refuse(client: &mut Client, codec: &ClientCodec, code: v5::ConnectReturnCode) {
    let ack = v5::ConnAck { session_present: false, code, properties: None };
    let _ = client.send(codec, &v5::Packet::ConnAck(ack)).await;
    let _ = client.write.shutdown().await;
}

/// A client PUBLISH that passed every check, waiting for its record to be durable.
type Pending = Pin<Box<dyn Future<Output = Logged> + Send>>;

/// A publish whose append finished.
struct Logged {
    /// The upstream packet (QoS 2 goes upstream as QoS 1).
    publish: v5::Publish,
    route: Route,
    /// The QoS the client published with.
    qos: QoS,
    result: Result<u64, StoreError>,
}

/// One of the client's subscriptions.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    /// The QoS granted.
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    /// The client's Subscription Identifier, given back on its deliveries.
    id: Option<usize>,
    /// The Subscription Identifier the link uses upstream for this filter:
    /// the router tags each copy with it, so each copy is delivered for
    /// exactly the subscription it matched, at that one's QoS.
    link_id: usize,
}

/// A client SUBSCRIBE waiting for the router's SUBACKs (one per filter
/// sent upstream): the reason code per filter, decided locally or by the
/// router, and the retained messages to send once it is answered.
#[derive(Default)]
struct SubscribeWait {
    codes: Vec<Option<SubscribeReasonCode>>,
    /// Per forwarded filter: (its position, the client's filter, whether to
    /// send its retained messages once granted).
    forwarded: Vec<(usize, String, bool)>,
    awaiting: usize,
}

/// A client QoS 2 publish between its PUBLISH and its PUBREL: the same
/// packet id again in between is the same message [MQTT-4.3.3-9].
#[derive(Debug, Clone, Copy)]
enum Qos2In {
    /// Being logged; `owed` retransmissions wait for its PUBREC too.
    Logging { owed: u16 },
    /// Logged at `index` (`None`: an MQS1 retransmission, not logged again).
    Recorded { index: Option<u64> },
}

/// What the relay keeps per connection.
struct Relay {
    shared: Arc<Shared>,
    codec: ClientCodec,
    device: Arc<Device>,
    /// The registry generation `device` was looked up under.
    registry_seen: u64,
    client_id: String,
    problem_info: bool,
    /// Whether deliveries carry the record's index ([`PROP_RECEIPTS`]).
    receipts: bool,
    aliases: HashMap<u16, Bytes>,
    subscriptions: HashMap<String, Subscription>,
    /// Upstream Subscription Identifier → the client's filter.
    by_link_id: HashMap<usize, String>,
    next_link_id: usize,
    /// Client QoS 2 publishes awaiting PUBREL, by packet id.
    qos2_in: HashMap<u16, Qos2In>,
    /// Logged publishes waiting for room in `router_budget`, in order.
    to_router: VecDeque<v5::Publish>,
    /// Sizes of the QoS 1/2 publishes sent to the router and not yet
    /// acknowledged by it (it acknowledges in order), and their sum.
    router_unacked: VecDeque<usize>,
    router_unacked_bytes: usize,
    /// Bytes this connection may have unacknowledged at the router; see
    /// [`crate::upstream::router_budget`].
    router_budget: usize,
    /// QoS 1/2 publishes from the client not yet completed (its Receive Maximum is ours).
    inflight: usize,
    /// SUBSCRIBE/UNSUBSCRIBE sent upstream, by upstream packet id: the
    /// client's packet id (and, for SUBSCRIBE, the filter's position).
    pending_subacks: HashMap<u16, (u16, usize)>,
    subscribe_waits: HashMap<u16, SubscribeWait>,
    pending_unsubacks: HashMap<u16, (u16, Vec<Option<v5::UnsubAckReason>>)>,
    next_up_pkid: u16,
    used_kids: HashSet<Kid>,
    pipeline: FuturesOrdered<Pending>,
    /// QoS 1/2 deliveries the client may have unacknowledged at once: its
    /// Receive Maximum, at most `limits.max_inflight`.
    window: usize,
    /// QoS 1/2 deliveries sent and not completed by the client, by packet id.
    outgoing: HashMap<u16, Outgoing>,
    /// Numbers deliveries in sending order, to resend them in that order.
    next_seq: u64,
    next_pkid: u16,
    /// Deliveries waiting for room in the window, or for a parked session's
    /// client to come back, with when they arrived (their Message Expiry
    /// Interval runs meanwhile); at most `limits.max_queued_messages`.
    held: VecDeque<(v5::Publish, Instant)>,
    /// Whether deliveries are being dropped because `held` is full (warned
    /// once per episode, which ends when it is down to half).
    overflowing: bool,
    /// The client's publish budget: past it, reading from it pauses.
    rate: PublishRate,
}

/// A QoS 1/2 delivery the client has not completed.
struct Outgoing {
    seq: u64,
    qos: u8,
    /// Awaiting PUBACK or PUBREC: kept to be sent again, with DUP, when a
    /// persistent session resumes. `None` for QoS 2 past PUBREC: PUBREL
    /// sent, awaiting PUBCOMP.
    publish: Option<v5::Publish>,
}

/// A persistent session between connections: its state (with what arrived
/// meanwhile, in `held`) and its upstream link, which keeps its
/// subscriptions in the router.
pub(crate) struct Parked {
    relay: Relay,
    up_read: UpstreamReader,
    up_write: UpstreamWriter,
    /// The last connection's will, waiting for its delay.
    will: Option<PendingWill>,
}

/// A will waiting for its Will Delay Interval: published when that has
/// passed or the session ends, whichever is first, and not at all if a new
/// connection resumes the session first [MQTT-3.1.3-9].
struct PendingWill {
    publish: v5::Publish,
    at: Instant,
}

/// How the relay loop ended.
enum Exit {
    /// The client sent DISCONNECT (normal): no will, unless it asked for
    /// one (0x04); MQTT 5 may change the Session Expiry Interval there.
    Normal { publish_will: bool, session_expiry: Option<u32> },
    /// Another connection with the same client id takes the session over.
    TakenOver(TakeRequest),
    /// The client or network failed, keep-alive expired, or the gateway
    /// closed it for a protocol error: the will is published.
    Abnormal,
    /// Shutdown: no will.
    Shutdown,
}

async fn run(
    shared: Arc<Shared>,
    mut client: Client,
    connect: Connected,
    peer: SocketAddr,
    slot: Slot,
) -> Result<(), End> {
    let Connected {
        codec,
        client_id,
        assigned_id,
        keep_alive,
        device,
        will,
        request_problem_info,
        receive_max,
        clean_start,
        session_expiry,
        will_delay,
        receipts,
    } = connect;
    let (generation, mut takes, previous) = shared.claim_session(&client_id);
    // The client id's previous holder hands its session over (a live
    // connection is disconnected with 0x8E first).
    let previous = match previous {
        Some(take) => request_session(take).await,
        None => None,
    };
    // A small window keeps what a slow client has not taken in the session's
    // bounded queue, rather than in a socket buffer that blocks the task.
    let window = receive_max.min(usize::from(shared.config.limits.max_inflight));
    let (mut relay, mut up_read, mut up_write, resumed) = match previous {
        Some(parked) if !clean_start => {
            // Resumed before its delay passed: the last connection's will
            // is not sent [MQTT-3.1.3-9].
            let Parked { mut relay, up_read, up_write, will: _ } = *parked;
            relay.codec = codec;
            relay.device = device;
            relay.registry_seen = shared.registry_generation();
            relay.problem_info = request_problem_info;
            relay.receipts = receipts;
            relay.window = window;
            relay.aliases.clear();
            relay.inflight = 0;
            (relay, up_read, up_write, true)
        }
        previous => {
            if let Some(parked) = previous {
                // Clean Start ends the old session, and with it the wait of its will.
                let Parked { up_read, up_write, will, .. } = *parked;
                if let Some(will) = will {
                    crate::system::publish_will(&shared, &client_id, will.publish).await;
                }
                close_link(up_read, up_write).await;
            }
            let link = match UpstreamLink::connect(
                &shared.upstream,
                &up_client_id(&client_id, generation),
                UPSTREAM_KEEP_ALIVE,
            )
            .await
            {
                Ok(link) => link,
                Err(e) => {
                    tracing::error!(client_id, error = %e, "cannot open the upstream link");
                    refuse(&mut client, &codec, v5::ConnectReturnCode::ServerUnavailable).await;
                    shared.release_session(&client_id, generation);
                    return Err(e.into());
                }
            };
            let (up_read, up_write) = link.split();
            let mut relay = Relay::new(&shared, codec, device, client_id.clone(), request_problem_info, window);
            relay.receipts = receipts;
            (relay, up_read, up_write, false)
        }
    };
    let limits = &shared.config.limits;
    let properties = v5::ConnAckProperties {
        // Said when the broker keeps the session for less than asked [MQTT-3.2.2-...].
        session_expiry_interval: (session_expiry > limits.max_session_expiry_secs)
            .then_some(limits.max_session_expiry_secs),
        receive_max: Some(limits.max_inflight),
        // QoS 2 is supported; MQTT 5 says to send Maximum QoS only when below 2.
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(limits.max_packet_size),
        assigned_client_identifier: assigned_id.then(|| client_id.clone()),
        topic_alias_max: Some(limits.max_topic_aliases),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    };
    let ack =
        v5::ConnAck { session_present: resumed, code: v5::ConnectReturnCode::Success, properties: Some(properties) };
    client.send(&relay.codec, &v5::Packet::ConnAck(ack)).await?;
    tracing::debug!(%peer, client_id, version = ?relay.codec.version, resumed, "connected");
    if resumed {
        relay.resume(&mut client).await?;
    }

    let exit = relay.relay(&mut client, &mut up_read, &mut up_write, keep_alive, &mut takes).await;
    let _ = client.flush().await;
    let _ = up_write.flush().await;
    let _ = client.write.shutdown().await;
    let publish_will = match &exit {
        Ok(Exit::Normal { publish_will, .. }) => *publish_will,
        Ok(Exit::Shutdown) => false,
        Ok(Exit::Abnormal | Exit::TakenOver(_)) | Err(_) => true,
    };
    let expiry = match &exit {
        Ok(Exit::Normal { session_expiry: Some(update), .. }) if session_expiry > 0 => *update,
        _ => session_expiry,
    };
    let expiry = Duration::from_secs(u64::from(expiry.min(shared.config.limits.max_session_expiry_secs)));
    // The session outlives the connection for its Session Expiry Interval,
    // whatever Clean Start was [MQTT-3.1.2-23].
    let persistent = !expiry.is_zero();
    let will = will.filter(|_| publish_will).map(|(will, properties)| will_publish(will, properties));
    // A will with a delay waits in the session; without one, or when the
    // session ends now, it goes at once.
    let will = match will {
        Some(publish) if persistent && will_delay > 0 => {
            let delay = Duration::from_secs(u64::from(will_delay)).min(expiry);
            Some(PendingWill { publish, at: Instant::now() + delay })
        }
        Some(publish) => {
            crate::system::publish_will(&shared, &client_id, publish).await;
            None
        }
        None => None,
    };
    match exit {
        Ok(Exit::TakenOver(reply)) => {
            // The new holder already owns the client id in the table, and
            // decides on the pending will (see above).
            let parked = persistent.then(|| Box::new(Parked { relay, up_read, up_write, will }));
            if let Err(Some(parked)) = reply.send(parked) {
                if let Some(will) = parked.will {
                    crate::system::publish_will(&shared, &client_id, will.publish).await;
                }
                close_link(parked.up_read, parked.up_write).await;
            }
            Ok(())
        }
        Ok(Exit::Normal { .. } | Exit::Abnormal) | Err(_) if persistent => {
            let parked = Parked { relay, up_read, up_write, will };
            tokio::spawn(park(shared, client_id, generation, parked, slot.park(), takes, expiry));
            exit.map(|_| ())
        }
        exit => {
            close_link(up_read, up_write).await;
            shared.release_session(&client_id, generation);
            exit.map(|_| ())
        }
    }
}

/// The PUBLISH a will becomes.
fn will_publish(will: v5::LastWill, properties: Option<v5::LastWillProperties>) -> v5::Publish {
    let properties = properties.map(|p| v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    v5::Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        pkid: 0,
        payload: will.message,
        properties,
    }
}

/// Asks a client id's previous holder for its session; a holder that does
/// not answer in time loses it.
async fn request_session(take: tokio::sync::mpsc::Sender<TakeRequest>) -> Option<Box<Parked>> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    take.send(reply).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), answer).await.ok()?.ok()?
}

/// Keeps a disconnected persistent session: its upstream link stays open,
/// messages for it are queued (bounded), its will waits for its delay, and
/// it ends when it expires, the broker stops, or a connection takes it.
/// Until then it holds its share of the descriptor budget: the link's
/// descriptors are still in use.
async fn park(
    shared: Arc<Shared>,
    client_id: String,
    generation: u64,
    parked: Parked,
    _descriptors: OwnedSemaphorePermit,
    mut takes: tokio::sync::mpsc::Receiver<TakeRequest>,
    expiry: Duration,
) {
    let Parked { mut relay, mut up_read, mut up_write, mut will } = parked;
    let deadline = Instant::now() + expiry;
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(UPSTREAM_KEEP_ALIVE) / 2));
    let mut shutdown = shared.shutdown.clone();
    tracing::debug!(client_id, expiry_secs = expiry.as_secs(), "session parked");
    let mut stopping = false;
    loop {
        let will_at = will.as_ref().map(|w| w.at);
        tokio::select! {
            take = takes.recv() => {
                if let Some(reply) = take {
                    let parked = Box::new(Parked { relay, up_read, up_write, will });
                    if let Err(Some(parked)) = reply.send(Some(parked)) {
                        if let Some(will) = parked.will {
                            crate::system::publish_will(&shared, &client_id, will.publish).await;
                        }
                        close_link(parked.up_read, parked.up_write).await;
                    }
                    return;
                }
                break;
            }
            packet = up_read.recv() => match packet {
                Ok(Some(packet)) => {
                    if relay.while_parked(&mut up_write, packet).await.is_err() || up_write.flush().await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            _ = ping.tick() => {
                if up_write.send(&v5::Packet::PingReq(v5::PingReq)).await.is_err() {
                    break;
                }
            }
            () = sleep_until(will_at) => {
                if let Some(will) = will.take() {
                    crate::system::publish_will(&shared, &client_id, will.publish).await;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = stopped(&mut shutdown) => {
                stopping = true;
                break;
            }
        }
    }
    tracing::debug!(client_id, "parked session ended");
    // The session ends: a will still waiting goes now (not at shutdown,
    // where no will goes, as for live connections).
    if let Some(will) = will.filter(|_| !stopping) {
        crate::system::publish_will(&shared, &client_id, will.publish).await;
    }
    close_link(up_read, up_write).await;
    shared.release_session(&client_id, generation);
}

impl Relay {
    fn new(
        shared: &Arc<Shared>,
        codec: ClientCodec,
        device: Arc<Device>,
        client_id: String,
        problem_info: bool,
        window: usize,
    ) -> Self {
        Self {
            shared: Arc::clone(shared),
            codec,
            device,
            registry_seen: shared.registry_generation(),
            client_id,
            problem_info,
            receipts: false,
            window,
            outgoing: HashMap::new(),
            next_seq: 0,
            next_pkid: 1,
            held: VecDeque::new(),
            overflowing: false,
            aliases: HashMap::new(),
            subscriptions: HashMap::new(),
            by_link_id: HashMap::new(),
            next_link_id: 1,
            qos2_in: HashMap::new(),
            to_router: VecDeque::new(),
            router_unacked: VecDeque::new(),
            router_unacked_bytes: 0,
            router_budget: crate::upstream::router_budget(shared.config.limits.max_packet_size),
            inflight: 0,
            pending_subacks: HashMap::new(),
            subscribe_waits: HashMap::new(),
            pending_unsubacks: HashMap::new(),
            next_up_pkid: u16::MAX,
            used_kids: HashSet::new(),
            pipeline: FuturesOrdered::new(),
            rate: PublishRate::new(shared.config.limits.max_publish_rate),
        }
    }

    /// Resumes a persistent session on a new connection: what the client
    /// had not acknowledged goes again, in its first order (PUBLISH with
    /// DUP, or PUBREL), then what arrived while it was away.
    async fn resume(&mut self, client: &mut Client) -> Result<(), End> {
        let mut order: Vec<(u64, u16)> = self.outgoing.iter().map(|(&pkid, out)| (out.seq, pkid)).collect();
        order.sort_unstable();
        for (_, pkid) in order {
            let packet = match &self.outgoing[&pkid].publish {
                Some(publish) => {
                    let mut publish = publish.clone();
                    publish.dup = true;
                    v5::Packet::Publish(publish)
                }
                None => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
            };
            client.queue(&self.codec, &packet)?;
        }
        self.pump(client).await
    }

    /// Handles a router packet for a parked session.
    async fn while_parked(&mut self, up: &mut UpstreamWriter, packet: v5::Packet) -> Result<(), End> {
        match packet {
            v5::Packet::Publish(publish) => {
                settle_with_router(up, &publish)?;
                self.refresh_device();
                for delivery in self.route(publish) {
                    self.hold(delivery);
                }
            }
            v5::Packet::PubRel(rel) => up.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
            v5::Packet::PubAck(_) | v5::Packet::PubRec(_) => self.router_acked(up)?,
            v5::Packet::SubAck(ack) => {
                if let Some((pkid, _)) = self.pending_subacks.remove(&ack.pkid) {
                    self.subscribe_waits.remove(&pkid);
                }
            }
            v5::Packet::UnsubAck(ack) => {
                self.pending_unsubacks.remove(&ack.pkid);
            }
            v5::Packet::Disconnect(_) => {
                return Err(End::Upstream(crate::upstream::UpstreamError::Refused("router sent DISCONNECT".into())));
            }
            _ => {}
        }
        Ok(())
    }

    /// Looks the device up again when the registry changed since it last
    /// was: every registry change applies to the session from its next
    /// decision on. `false` when the device may no longer connect at all.
    fn refresh_device(&mut self) -> bool {
        let generation = self.shared.registry_generation();
        if generation == self.registry_seen {
            return true;
        }
        match self.shared.identities().lookup(&self.client_id) {
            Ok(device) => {
                self.device = device;
                self.registry_seen = generation;
                true
            }
            Err(_) => false,
        }
    }

    /// A packet identifier for a SUBSCRIBE or UNSUBSCRIBE sent upstream.
    /// Counted down from the top, away from the client's own publish
    /// identifiers, which go upstream as they are.
    fn up_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_up_pkid;
            self.next_up_pkid = if pkid <= 1 { u16::MAX } else { pkid - 1 };
            if !self.pending_subacks.contains_key(&pkid) && !self.pending_unsubacks.contains_key(&pkid) {
                return pkid;
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn relay(
        &mut self,
        client: &mut Client,
        up_read: &mut UpstreamReader,
        up_write: &mut UpstreamWriter,
        keep_alive: u16,
        takes: &mut tokio::sync::mpsc::Receiver<TakeRequest>,
    ) -> Result<Exit, End> {
        let client_timeout = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut client_deadline = client_timeout.map(|t| Instant::now() + t);
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(UPSTREAM_KEEP_ALIVE) / 2));
        ping.reset();
        let mut shutdown = self.shared.shutdown.clone();
        let mut revoked = self.shared.revoked.subscribe();
        loop {
            // A client over its publish rate is not read from until it has
            // budget again: slowed down, and nothing it sent is lost.
            let throttled = self.rate.wait_until();
            let reading = self.pipeline.len() + self.to_router.len() < PIPELINE_DEPTH && throttled.is_none();
            // Packets already buffered are handled before reading more.
            if reading {
                match self.codec.decode(&mut client.buf) {
                    Ok(Some(packet)) => {
                        client_deadline = client_timeout.map(|t| Instant::now() + t);
                        match self.on_client_packet(client, up_write, packet).await? {
                            None => continue,
                            Some(exit) => {
                                self.drain(client, up_write).await?;
                                return Ok(exit);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::info!(client_id = self.client_id, error = %e, "malformed packet from client");
                        self.disconnect(client, e.v5_reason(), &e.to_string()).await;
                        self.drain(client, up_write).await?;
                        return Ok(Exit::Abnormal);
                    }
                }
            }
            // Everything handled so far goes out in one write each way.
            up_write.flush().await?;
            client.flush().await?;
            tokio::select! {
                read = client.read.read_buf(&mut client.buf), if reading => {
                    if read? == 0 {
                        // EOF without DISCONNECT: abnormal, the will goes out.
                        self.drain(client, up_write).await?;
                        return Ok(Exit::Abnormal);
                    }
                }
                Some(logged) = self.pipeline.next() => {
                    self.forward(client, up_write, logged).await?;
                    while let Some(Some(logged)) = self.pipeline.next().now_or_never() {
                        self.forward(client, up_write, logged).await?;
                    }
                }
                packet = up_read.recv() => {
                    let Some(packet) = packet? else {
                        self.disconnect(client, Dc::UnspecifiedError, "the router closed the connection").await;
                        return Ok(Exit::Abnormal);
                    };
                    self.on_router_packet(client, up_write, packet).await?;
                    // Everything the router has sent so far, in this turn:
                    // a subscriber's task must keep pace with all the
                    // publishers' tasks together, or the router's log
                    // overwrites what it has not read.
                    let mut reads = 0;
                    loop {
                        while let Some(packet) = up_read.buffered()? {
                            self.on_router_packet(client, up_write, packet).await?;
                        }
                        reads += 1;
                        if reads > ROUTER_READS_PER_TURN || !up_read.try_fill()? {
                            break;
                        }
                    }
                }
                () = sleep_until(throttled) => {}
                () = sleep_until(client_deadline) => {
                    tracing::info!(client_id = self.client_id, "keep-alive expired");
                    self.disconnect(client, Dc::KeepAliveTimeout, "keep-alive expired").await;
                    self.drain(client, up_write).await?;
                    return Ok(Exit::Abnormal);
                }
                _ = ping.tick() => {
                    up_write.queue(&v5::Packet::PingReq(v5::PingReq))?;
                }
                Some(reply) = takes.recv() => {
                    self.disconnect(client, Dc::SessionTakenOver, "another connection took over this client id").await;
                    self.drain(client, up_write).await?;
                    return Ok(Exit::TakenOver(reply));
                }
                kids = revoked.recv() => {
                    if let Ok(kids) = kids && kids.iter().any(|kid| self.used_kids.contains(kid)) {
                        self.disconnect(client, Dc::NotAuthorized, "a key this connection signed with was revoked").await;
                        self.drain(client, up_write).await?;
                        return Ok(Exit::Abnormal);
                    }
                }
                () = stopped(&mut shutdown) => {
                    self.drain(client, up_write).await?;
                    self.disconnect(client, Dc::ServerShuttingDown, "the broker is shutting down").await;
                    return Ok(Exit::Shutdown);
                }
            }
        }
    }

    /// Forwards everything still being logged (so nothing logged is lost).
    async fn drain(&mut self, client: &mut Client, up: &mut UpstreamWriter) -> Result<(), End> {
        while let Some(logged) = self.pipeline.next().await {
            self.forward(client, up, logged).await?;
        }
        // The connection ends: what waits for the router's budget goes now.
        while let Some(publish) = self.to_router.pop_front() {
            up.queue(&v5::Packet::Publish(publish))?;
        }
        Ok(())
    }

    /// Sends logged publishes to the router while its budget allows (and
    /// always at least one when nothing is unacknowledged there).
    fn feed_router(&mut self, up: &mut UpstreamWriter) -> Result<(), End> {
        while let Some(next) = self.to_router.front() {
            let size = next.payload.len() + next.topic.len();
            if !self.router_unacked.is_empty() && self.router_unacked_bytes + size > self.router_budget {
                break;
            }
            let Some(publish) = self.to_router.pop_front() else { break };
            if publish.qos != QoS::AtMostOnce {
                self.router_unacked.push_back(size);
                self.router_unacked_bytes += size;
            }
            up.queue(&v5::Packet::Publish(publish))?;
        }
        Ok(())
    }

    /// The router acknowledged the oldest QoS 1/2 publish sent to it.
    fn router_acked(&mut self, up: &mut UpstreamWriter) -> Result<(), End> {
        if let Some(size) = self.router_unacked.pop_front() {
            self.router_unacked_bytes -= size;
        }
        self.feed_router(up)
    }

    async fn disconnect(&mut self, client: &mut Client, reason: Dc, why: &str) {
        let properties = self.problem_info.then(|| v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(why.to_string()),
            user_properties: Vec::new(),
            server_reference: None,
        });
        let _ = client.queue(&self.codec, &v5::Packet::Disconnect(v5::Disconnect { reason_code: reason, properties }));
        let _ = client.flush().await;
    }

    /// Handles one packet from the client; `Some` ends the connection.
    async fn on_client_packet(
        &mut self,
        client: &mut Client,
        up: &mut UpstreamWriter,
        packet: v5::Packet,
    ) -> Result<Option<Exit>, End> {
        match packet {
            v5::Packet::Publish(publish) => {
                self.rate.spend();
                return self.client_publish(client, publish).await;
            }
            v5::Packet::PubAck(ack) => {
                if matches!(self.outgoing.get(&ack.pkid), Some(out) if out.qos == 1) {
                    self.outgoing.remove(&ack.pkid);
                    self.pump(client).await?;
                }
            }
            v5::Packet::PubRec(rec) => {
                let Some(out) = self.outgoing.get_mut(&rec.pkid) else { return Ok(None) };
                if out.qos != 2 || out.publish.is_none() {
                    return Ok(None);
                }
                if matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers) {
                    out.publish = None;
                    client.queue(&self.codec, &v5::Packet::PubRel(v5::PubRel::new(rec.pkid, None)))?;
                } else {
                    // A PUBREC with an error code ends the exchange (MQTT 5 §4.3.3).
                    self.outgoing.remove(&rec.pkid);
                    self.pump(client).await?;
                }
            }
            v5::Packet::PubRel(rel) => {
                let mut comp = v5::PubComp::new(rel.pkid, None);
                if let Some(Qos2In::Recorded { .. }) = self.qos2_in.get(&rel.pkid) {
                    self.qos2_in.remove(&rel.pkid);
                    self.inflight = self.inflight.saturating_sub(1);
                } else {
                    // Unknown, or released before its PUBREC was sent.
                    comp.reason = v5::PubCompReason::PacketIdentifierNotFound;
                }
                client.queue(&self.codec, &v5::Packet::PubComp(comp))?;
            }
            v5::Packet::PubComp(comp) => {
                if matches!(self.outgoing.get(&comp.pkid), Some(out) if out.qos == 2 && out.publish.is_none()) {
                    self.outgoing.remove(&comp.pkid);
                    self.pump(client).await?;
                }
            }
            v5::Packet::Subscribe(subscribe) => self.client_subscribe(client, up, subscribe).await?,
            v5::Packet::Unsubscribe(unsubscribe) => self.client_unsubscribe(client, up, unsubscribe).await?,
            v5::Packet::PingReq(_) => client.queue(&self.codec, &v5::Packet::PingResp(v5::PingResp))?,
            v5::Packet::Disconnect(disconnect) => {
                let publish_will = disconnect.reason_code == Dc::DisconnectWithWillMessage;
                let session_expiry = disconnect.properties.and_then(|p| p.session_expiry_interval);
                return Ok(Some(Exit::Normal { publish_will, session_expiry }));
            }
            v5::Packet::Connect(..) => {
                self.disconnect(client, Dc::ProtocolError, "a second CONNECT").await;
                return Ok(Some(Exit::Abnormal));
            }
            other => {
                tracing::info!(client_id = self.client_id, packet = ?other, "packet not allowed from a client");
                self.disconnect(client, Dc::ProtocolError, "packet type not allowed from a client").await;
                return Ok(Some(Exit::Abnormal));
            }
        }
        Ok(None)
    }

    /// Sends one retained message after a SUBACK, at min(published, granted)
    /// QoS, with the subscription's identifier and the expiry it has left.
    async fn send_retained(
        &mut self,
        client: &mut Client,
        topic: String,
        message: &crate::retained::Retained,
        sub: Subscription,
    ) -> Result<(), End> {
        let mut properties = Some(message.properties.clone());
        if !crate::expiry::age(&mut properties, message.since, Instant::now()) {
            return Ok(());
        }
        let mut properties = properties.unwrap_or_default();
        if self.receipts {
            properties.user_properties.retain(|(name, _)| !name.starts_with("sealmq-"));
            if let Some(index) = message.index {
                properties.user_properties.push((PROP_INDEX.to_string(), index.to_string()));
            }
        }
        properties.subscription_identifiers = sub.id.into_iter().collect();
        let delivery = v5::Publish {
            dup: false,
            qos: qos_from(message.qos.min(sub.qos)),
            retain: true,
            topic: Bytes::from(topic),
            pkid: 0,
            payload: message.payload.clone(),
            properties: Some(properties),
        };
        self.send_delivery(client, delivery).await
    }

    /// Sends a delivery now, or queues it while the window is full.
    async fn send_delivery(&mut self, client: &mut Client, delivery: v5::Publish) -> Result<(), End> {
        if delivery.qos == QoS::AtMostOnce || (self.held.is_empty() && self.outgoing.len() < self.window) {
            self.send_now(client, delivery).await
        } else {
            self.hold(delivery);
            Ok(())
        }
    }

    /// Queues a delivery; past `max_queued_messages` it is dropped, counted
    /// and warned about (the audit log still has the message).
    fn hold(&mut self, delivery: v5::Publish) {
        let limit = self.shared.config.limits.max_queued_messages;
        if self.held.len() < limit {
            self.held.push_back((delivery, Instant::now()));
            return;
        }
        self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.overflowing {
            self.overflowing = true;
            tracing::warn!(
                client_id = self.client_id,
                limit,
                "session queue full: deliveries to this client are dropped until it catches up"
            );
        }
    }

    /// Sends deliveries from the queue while the window has room; those
    /// whose Message Expiry Interval passed while queued are dropped, the
    /// others go with the interval they have left [MQTT-3.3.2-5/6].
    async fn pump(&mut self, client: &mut Client) -> Result<(), End> {
        let now = Instant::now();
        while self.outgoing.len() < self.window {
            let Some((mut delivery, since)) = self.held.pop_front() else { break };
            if crate::expiry::age(&mut delivery.properties, since, now) {
                self.send_now(client, delivery).await?;
            }
        }
        if self.overflowing && self.held.len() <= self.shared.config.limits.max_queued_messages / 2 {
            self.overflowing = false;
            tracing::info!(client_id = self.client_id, "session queue below half: deliveries resume");
        }
        Ok(())
    }

    /// Sends a delivery, giving QoS 1/2 a packet id and keeping it until completed.
    async fn send_now(&mut self, client: &mut Client, mut delivery: v5::Publish) -> Result<(), End> {
        if delivery.qos == QoS::AtMostOnce {
            return client.queue(&self.codec, &v5::Packet::Publish(delivery));
        }
        let pkid = self.free_pkid();
        delivery.pkid = pkid;
        let packet = v5::Packet::Publish(delivery);
        client.queue(&self.codec, &packet)?;
        // Encoded: the packet itself is what a resumed session sends again.
        let v5::Packet::Publish(delivery) = packet else { unreachable!("built as a PUBLISH above") };
        let out = Outgoing { seq: self.next_seq, qos: delivery.qos as u8, publish: Some(delivery) };
        self.next_seq += 1;
        self.outgoing.insert(pkid, out);
        Ok(())
    }

    /// A packet id no delivery in flight uses. There is one: the window is
    /// at most 65,535 and this is called only when it has room.
    fn free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&pkid) {
                return pkid;
            }
        }
    }

    async fn reject_publish(
        &mut self,
        client: &mut Client,
        (qos, pkid): (QoS, u16),
        topic: &str,
        reason: u8,
        why: &str,
    ) -> Result<Option<Exit>, End> {
        self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = self.client_id, topic, why, "publish rejected");
        if self.codec.version == Version::V311 {
            // 3.1.1 has no negative acknowledgement: QoS 0 is dropped, QoS 1/2 close the connection.
            return Ok(if qos == QoS::AtMostOnce { None } else { Some(Exit::Abnormal) });
        }
        let properties = self.problem_info.then(|| why.to_string());
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = v5::PubAck::new(pkid, None);
                ack.reason = pub_ack_reason(reason);
                ack.properties = properties.map(|reason_string| v5::PubAckProperties {
                    reason_string: Some(reason_string),
                    user_properties: vec![],
                });
                client.queue(&self.codec, &v5::Packet::PubAck(ack))?;
                self.inflight = self.inflight.saturating_sub(1);
            }
            QoS::ExactlyOnce => {
                let mut rec = v5::PubRec::new(pkid, None);
                rec.reason = pub_rec_reason(reason);
                rec.properties = properties.map(|reason_string| v5::PubRecProperties {
                    reason_string: Some(reason_string),
                    user_properties: vec![],
                });
                client.queue(&self.codec, &v5::Packet::PubRec(rec))?;
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        Ok(None)
    }

    async fn client_publish(&mut self, client: &mut Client, mut publish: v5::Publish) -> Result<Option<Exit>, End> {
        let limits = &self.shared.config.limits;
        if publish.qos != QoS::AtMostOnce {
            if publish.qos == QoS::ExactlyOnce
                && let Some(state) = self.qos2_in.get_mut(&publish.pkid)
            {
                // The same packet id before its PUBREL: the same message,
                // not logged or delivered again [MQTT-4.3.3-9]; answered
                // with PUBREC like the first.
                match state {
                    Qos2In::Logging { owed } => *owed = owed.saturating_add(1),
                    Qos2In::Recorded { index } => {
                        let index = *index;
                        let rec = self.pubrec(publish.pkid, index);
                        client.queue(&self.codec, &rec)?;
                    }
                }
                return Ok(None);
            }
            self.inflight += 1;
            if self.inflight > usize::from(limits.max_inflight) && self.codec.version == Version::V5 {
                self.disconnect(
                    client,
                    Dc::ReceiveMaximumExceeded,
                    "more unacknowledged publishes than Receive Maximum",
                )
                .await;
                return Ok(Some(Exit::Abnormal));
            }
        }
        // Topic alias (MQTT 5 §3.3.2.3.4): resolve, and never forward it.
        let alias = publish.properties.as_mut().and_then(|p| p.topic_alias.take());
        if let Some(alias) = alias {
            if alias == 0 || alias > limits.max_topic_aliases {
                self.disconnect(client, Dc::TopicAliasInvalid, "topic alias out of range").await;
                return Ok(Some(Exit::Abnormal));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        self.disconnect(client, Dc::ProtocolError, "unknown topic alias").await;
                        return Ok(Some(Exit::Abnormal));
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if publish.topic.is_empty() {
            // MQTT 5 §3.3.2.1: an empty topic needs a topic alias.
            self.disconnect(client, Dc::ProtocolError, "empty topic name without a topic alias").await;
            return Ok(Some(Exit::Abnormal));
        }
        let topic = match validate_topic_name(&publish.topic) {
            Ok(topic)
                if topic.len() <= limits.max_topic_length && topic.split('/').count() <= limits.max_topic_levels =>
            {
                topic.to_string()
            }
            Ok(_) => {
                self.disconnect(client, Dc::TopicNameInvalid, "topic longer or deeper than this broker allows").await;
                return Ok(Some(Exit::Abnormal));
            }
            Err(e) => {
                // Not UTF-8 or U+0000 is Malformed Packet (MQTT 5 §1.5.4), wildcards Topic Name Invalid.
                self.disconnect(client, e.v5_reason(), &e.to_string()).await;
                return Ok(Some(Exit::Abnormal));
            }
        };
        let (qos, pkid) = (publish.qos, publish.pkid);
        // Decided under the registry as it is, and queued in the log before
        // it may change (see `Shared::registry_gate`).
        let shared = Arc::clone(&self.shared);
        let gate = shared.registry_gate.read().await;
        if !self.refresh_device() {
            drop(gate);
            self.disconnect(client, Dc::NotAuthorized, "the device is no longer registered").await;
            return Ok(Some(Exit::Abnormal));
        }
        match admit(&shared, &self.device, &topic, publish) {
            Admission::Rejected { code, why } => {
                drop(gate);
                self.reject_publish(client, (qos, pkid), &topic, code, &why).await
            }
            Admission::Duplicate => {
                drop(gate);
                self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client.queue(&self.codec, &v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?;
                        self.inflight = self.inflight.saturating_sub(1);
                    }
                    QoS::ExactlyOnce => {
                        self.qos2_in.insert(pkid, Qos2In::Recorded { index: None });
                        client.queue(&self.codec, &v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?;
                    }
                }
                Ok(None)
            }
            Admission::Log { entry, forward, route, kid } => {
                let submitted = shared.log.submit(vec![entry]).await;
                drop(gate);
                self.used_kids.extend(kid);
                if qos == QoS::ExactlyOnce {
                    self.qos2_in.insert(pkid, Qos2In::Logging { owed: 0 });
                }
                let logged = async move {
                    let result = match submitted {
                        Ok(appending) => appending.await.map(|indices| indices.start),
                        Err(e) => Err(e),
                    };
                    Logged { publish: forward, route, qos, result }
                };
                self.pipeline.push_back(Box::pin(logged));
                Ok(None)
            }
        }
    }

    /// A PUBREC for a client's QoS 2 publish logged at `index`: with the
    /// index, unless the client asked for no properties on acknowledgements
    /// [MQTT-3.1.2-29].
    fn pubrec(&self, pkid: u16, index: Option<u64>) -> v5::Packet {
        let mut rec = v5::PubRec::new(pkid, None);
        rec.properties =
            self.receipt(index).map(|user_properties| v5::PubRecProperties { reason_string: None, user_properties });
        v5::Packet::PubRec(rec)
    }

    /// The `sealmq-index` user property for an acknowledgement, where allowed.
    fn receipt(&self, index: Option<u64>) -> Option<Vec<(String, String)>> {
        let index = index.filter(|_| self.problem_info)?;
        Some(vec![(PROP_INDEX.to_string(), index.to_string())])
    }

    /// A record is durable (or failed): forward upstream, or tell the client.
    async fn forward(&mut self, client: &mut Client, up: &mut UpstreamWriter, logged: Logged) -> Result<(), End> {
        let Logged { mut publish, mut route, qos, result } = logged;
        let pkid = publish.pkid;
        match result {
            Ok(index) => {
                self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                route.index = Some(index);
                remember_if_retained(&self.shared.retained, &publish, &route);
                route.attach(&mut publish);
                self.to_router.push_back(publish);
                self.feed_router(up)?;
                match qos {
                    QoS::AtMostOnce => {}
                    // Durable, and on its way to the router (in order, on
                    // one socket): acknowledged now, not after the router's
                    // PUBACK, which would add a round trip through it.
                    QoS::AtLeastOnce => {
                        let mut ack = v5::PubAck::new(pkid, None);
                        ack.properties = self
                            .receipt(Some(index))
                            .map(|user_properties| v5::PubAckProperties { reason_string: None, user_properties });
                        self.inflight = self.inflight.saturating_sub(1);
                        client.queue(&self.codec, &v5::Packet::PubAck(ack))?;
                    }
                    // QoS 2: PUBREC now (to each retransmission too); PUBCOMP on PUBREL.
                    QoS::ExactlyOnce => {
                        let owed = match self.qos2_in.insert(pkid, Qos2In::Recorded { index: Some(index) }) {
                            Some(Qos2In::Logging { owed }) => owed,
                            _ => 0,
                        };
                        let rec = self.pubrec(pkid, Some(index));
                        for _ in 0..=owed {
                            client.queue(&self.codec, &rec)?;
                        }
                    }
                }
            }
            Err(e) => {
                // Not logged, so not forwarded and not acknowledged as a success.
                tracing::error!(device = self.client_id, error = %e, "could not log a publish; it was not delivered");
                if qos == QoS::ExactlyOnce {
                    self.qos2_in.remove(&pkid);
                }
                if self.codec.version == Version::V311 && qos != QoS::AtMostOnce {
                    return Err(End::Io(std::io::Error::other("the audit log is not accepting records")));
                }
                let why = format!("the audit log is not accepting records: {e}");
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let _ = self.reject_publish(client, (qos, pkid), &topic, 0x80, &why).await?;
            }
        }
        Ok(())
    }

    async fn client_subscribe(
        &mut self,
        client: &mut Client,
        up: &mut UpstreamWriter,
        subscribe: v5::Subscribe,
    ) -> Result<(), End> {
        // Subscription Identifiers are supported (the codec refuses 0 and
        // out-of-range values); one covers every filter of its SUBSCRIBE.
        let id = subscribe.properties.as_ref().and_then(|p| p.id);
        self.refresh_device();
        let limits = &self.shared.config.limits;
        let mut wait = SubscribeWait::default();
        let mut upstream = Vec::new();
        for mut filter in subscribe.filters {
            let code = match validate_filter(&filter.path) {
                Err(_) => Some(SubscribeReasonCode::TopicFilterInvalid),
                Ok(_) if filter.path.len() > limits.max_topic_length => Some(SubscribeReasonCode::TopicFilterInvalid),
                Ok(_) if !self.device.may_subscribe(&filter.path) => Some(SubscribeReasonCode::NotAuthorized),
                Ok(_)
                    if !self.subscriptions.contains_key(&filter.path)
                        && self.subscriptions.len() >= limits.max_subscriptions =>
                {
                    Some(SubscribeReasonCode::QuotaExceeded)
                }
                // (No Local on a shared subscription, MQTT 5 §3.8.3.1, is
                // refused by the codec as a protocol error.)
                Ok(kind) => {
                    let previous = self.subscriptions.get(&filter.path).copied();
                    let link_id = match previous {
                        Some(previous) => previous.link_id,
                        None => {
                            let link_id = self.next_link_id;
                            self.next_link_id += 1;
                            self.by_link_id.insert(link_id, filter.path.clone());
                            link_id
                        }
                    };
                    // A SUBSCRIBE for an existing filter replaces it, its
                    // identifier included [MQTT-3.8.4-3].
                    let sub = Subscription {
                        qos: filter.qos as u8,
                        no_local: filter.nolocal,
                        retain_as_published: filter.preserve_retain,
                        id,
                        link_id,
                    };
                    self.subscriptions.insert(filter.path.clone(), sub);
                    // Retained messages are the gateway's to send (crate::retained):
                    // never for shared subscriptions, and as Retain Handling says.
                    let send_retained = match (&kind, &filter.retain_forward_rule) {
                        (FilterKind::Shared { .. }, _) | (_, v5::RetainForwardRule::Never) => false,
                        (_, v5::RetainForwardRule::OnNewSubscribe) => previous.is_none(),
                        (_, v5::RetainForwardRule::OnEverySubscribe) => true,
                    };
                    wait.forwarded.push((wait.codes.len(), filter.path.clone(), send_retained));
                    filter.path = up_filter(&filter.path);
                    // The gateway takes every delivery over from the router
                    // at once and applies the granted QoS itself (`route`):
                    // at QoS 0 the router pushes deliveries without waiting
                    // for acks, which would otherwise come back only when
                    // the subscriber's task gets a turn, and its per-filter
                    // log overwrites what a link has not read meanwhile.
                    filter.qos = QoS::AtMostOnce;
                    // Its own SUBSCRIBE upstream: the identifier tags the copies
                    // of this filter alone.
                    upstream.push((filter, link_id));
                    None
                }
            };
            wait.codes.push(code);
        }
        if upstream.is_empty() {
            let codes = wait.codes.into_iter().map(|c| c.unwrap_or(SubscribeReasonCode::Unspecified)).collect();
            let ack = v5::SubAck { pkid: subscribe.pkid, return_codes: codes, properties: None };
            return client.queue(&self.codec, &v5::Packet::SubAck(ack));
        }
        wait.awaiting = upstream.len();
        let positions: Vec<usize> = wait.forwarded.iter().map(|(position, ..)| *position).collect();
        self.subscribe_waits.insert(subscribe.pkid, wait);
        for ((filter, link_id), position) in upstream.into_iter().zip(positions) {
            let pkid = self.up_pkid();
            self.pending_subacks.insert(pkid, (subscribe.pkid, position));
            let properties = Some(v5::SubscribeProperties { id: Some(link_id), user_properties: Vec::new() });
            up.queue(&v5::Packet::Subscribe(v5::Subscribe { pkid, filters: vec![filter], properties }))?;
        }
        Ok(())
    }

    async fn client_unsubscribe(
        &mut self,
        client: &mut Client,
        up: &mut UpstreamWriter,
        unsubscribe: v5::Unsubscribe,
    ) -> Result<(), End> {
        let mut decided = Vec::with_capacity(unsubscribe.filters.len());
        let mut upstream_filters = Vec::new();
        for filter in unsubscribe.filters {
            if validate_filter(&filter).is_err() {
                decided.push(Some(v5::UnsubAckReason::TopicFilterInvalid));
            } else if let Some(sub) = self.subscriptions.remove(&filter) {
                self.by_link_id.remove(&sub.link_id);
                upstream_filters.push(up_filter(&filter));
                decided.push(None);
            } else {
                decided.push(Some(v5::UnsubAckReason::NoSubscriptionExisted));
            }
        }
        if upstream_filters.is_empty() {
            let reasons = decided.into_iter().map(|r| r.unwrap_or(v5::UnsubAckReason::Success)).collect();
            let ack = v5::UnsubAck { pkid: unsubscribe.pkid, reasons, properties: None };
            return client.queue(&self.codec, &v5::Packet::UnsubAck(ack));
        }
        let pkid = self.up_pkid();
        self.pending_unsubacks.insert(pkid, (unsubscribe.pkid, decided));
        let forward = v5::Unsubscribe { pkid, filters: upstream_filters, properties: None };
        up.queue(&v5::Packet::Unsubscribe(forward))?;
        Ok(())
    }

    /// Handles one packet from the router.
    async fn on_router_packet(
        &mut self,
        client: &mut Client,
        up: &mut UpstreamWriter,
        packet: v5::Packet,
    ) -> Result<(), End> {
        match packet {
            v5::Packet::Publish(publish) => self.deliver(client, up, publish).await?,
            // Publishes were acknowledged to the client once durable.
            v5::Packet::PubAck(ack) => {
                if ack.reason != PubAckReason::Success {
                    tracing::warn!(client_id = self.client_id, reason = ?ack.reason, "the router refused a publish");
                }
                self.router_acked(up)?;
            }
            // Nothing goes upstream at QoS 2; an external broker might still answer so.
            v5::Packet::PubRec(rec) => {
                self.router_acked(up)?;
                up.queue(&v5::Packet::PubRel(v5::PubRel::new(rec.pkid, None)))?;
            }
            // The gateway owns its deliveries from PUBREC on (see `settle_with_router`).
            v5::Packet::PubRel(rel) => up.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
            v5::Packet::SubAck(ack) => self.router_suback(client, ack).await?,
            v5::Packet::UnsubAck(ack) => {
                let Some((pkid, decided)) = self.pending_unsubacks.remove(&ack.pkid) else { return Ok(()) };
                let mut from_router = ack.reasons.into_iter();
                let reasons = decided
                    .into_iter()
                    .map(|local| local.or_else(|| from_router.next()).unwrap_or(v5::UnsubAckReason::Success))
                    .collect();
                client.queue(&self.codec, &v5::Packet::UnsubAck(v5::UnsubAck { pkid, reasons, properties: None }))?;
            }
            v5::Packet::PubComp(_) | v5::Packet::PingResp(_) => {}
            v5::Packet::Disconnect(disconnect) => {
                tracing::warn!(client_id = self.client_id, reason = ?disconnect.reason_code, "the router disconnected a link");
                return Err(End::Upstream(crate::upstream::UpstreamError::Refused(format!(
                    "router sent DISCONNECT {:?}",
                    disconnect.reason_code
                ))));
            }
            other => tracing::debug!(client_id = self.client_id, packet = ?other, "ignoring a router packet"),
        }
        Ok(())
    }

    /// The router answered one filter of a client SUBSCRIBE; once all are
    /// answered, the client gets its SUBACK (granted the QoS it asked for:
    /// the router was asked for QoS 0), then the retained messages.
    async fn router_suback(&mut self, client: &mut Client, ack: v5::SubAck) -> Result<(), End> {
        let Some((pkid, position)) = self.pending_subacks.remove(&ack.pkid) else { return Ok(()) };
        let Some(wait) = self.subscribe_waits.get_mut(&pkid) else { return Ok(()) };
        let Some((_, filter, _)) = wait.forwarded.iter().find(|(p, ..)| *p == position) else { return Ok(()) };
        let code = match ack.return_codes.first() {
            Some(SubscribeReasonCode::Success(_)) => {
                let granted = self.subscriptions.get(filter).map_or(0, |sub| sub.qos);
                SubscribeReasonCode::Success(qos_from(granted))
            }
            Some(refused) => *refused,
            None => SubscribeReasonCode::Unspecified,
        };
        wait.codes[position] = Some(code);
        wait.awaiting -= 1;
        if wait.awaiting > 0 {
            return Ok(());
        }
        let Some(wait) = self.subscribe_waits.remove(&pkid) else { return Ok(()) };
        let granted: Vec<bool> =
            wait.codes.iter().map(|c| matches!(c, Some(SubscribeReasonCode::Success(_)))).collect();
        let codes = wait.codes.into_iter().map(|c| c.unwrap_or(SubscribeReasonCode::Unspecified)).collect();
        client.queue(&self.codec, &v5::Packet::SubAck(v5::SubAck { pkid, return_codes: codes, properties: None }))?;
        for (position, filter, send_retained) in wait.forwarded {
            let Some(sub) = self.subscriptions.get(&filter).copied() else { continue };
            if !send_retained || !granted[position] {
                continue;
            }
            for (topic, message) in self.shared.retained.matching(&filter) {
                self.send_retained(client, topic, &message, sub).await?;
            }
        }
        Ok(())
    }

    /// Takes a routed message over from the router and delivers it.
    async fn deliver(&mut self, client: &mut Client, up: &mut UpstreamWriter, publish: v5::Publish) -> Result<(), End> {
        settle_with_router(up, &publish)?;
        self.refresh_device();
        for delivery in self.route(publish) {
            self.send_delivery(client, delivery).await?;
        }
        Ok(())
    }

    /// What a routed copy becomes for this client, with the MQTT semantics
    /// the router lacks: QoS is min(published, granted) [MQTT-3.3.4-2]
    /// [MQTT-3.8.4-8], No Local [MQTT-3.8.3-3], Retain As Published
    /// [MQTT-3.3.1-12/13], the client's Subscription Identifiers
    /// [MQTT-3.3.4-3]; the gateway's route property is taken off, and the
    /// record's index added for a client that asked for receipts. The
    /// router tags each copy with the upstream identifier of the one filter
    /// it matched, so each of overlapping subscriptions gets its own copy at
    /// its own QoS. Subscriptions the client's ACL no longer allows get
    /// nothing. Packet ids are given when the copies are sent.
    fn route(&self, publish: v5::Publish) -> Vec<v5::Publish> {
        let mut properties = publish.properties.unwrap_or_default();
        let route = Route::detach(&mut properties);
        let link_ids = std::mem::take(&mut properties.subscription_identifiers);
        let Some(topic) = std::str::from_utf8(&publish.topic).ok().and_then(down_topic) else { return Vec::new() };
        let (published_qos, published_retain) =
            route.as_ref().map_or((publish.qos as u8, false), |route| (route.qos, route.retain));
        let own = route.as_ref().is_some_and(|route| route.from == self.client_id);
        if self.receipts {
            properties.user_properties.retain(|(name, _)| !name.starts_with("sealmq-"));
            if let Some(index) = route.as_ref().and_then(|route| route.index) {
                properties.user_properties.push((PROP_INDEX.to_string(), index.to_string()));
            }
        }
        let eligible =
            |(filter, sub): &(&String, &Subscription)| !(own && sub.no_local) && self.device.may_subscribe(filter);
        let copies: Vec<(u8, bool, Vec<usize>)> = if link_ids.is_empty() {
            // A router that does not tag copies: one copy for all matching
            // subscriptions, at the highest QoS, with all their identifiers
            // [MQTT-3.3.4-4].
            let matching: Vec<_> =
                self.subscriptions.iter().filter(|(filter, _)| topic_matches(filter, topic)).filter(eligible).collect();
            if matching.is_empty() {
                return Vec::new();
            }
            let qos = matching.iter().map(|(_, sub)| sub.qos).max().unwrap_or(0);
            let rap = matching.iter().any(|(_, sub)| sub.retain_as_published);
            vec![(qos, rap, matching.iter().filter_map(|(_, sub)| sub.id).collect())]
        } else {
            link_ids
                .iter()
                .filter_map(|link_id| self.by_link_id.get(link_id))
                .filter_map(|filter| self.subscriptions.get_key_value(filter))
                .filter(eligible)
                .map(|(_, sub)| (sub.qos, sub.retain_as_published, sub.id.into_iter().collect()))
                .collect()
        };
        // The router's topic without its prefix: the same bytes, not a copy.
        let topic = publish.topic.slice_ref(topic.as_bytes());
        copies
            .into_iter()
            .map(|(granted, retain_as_published, ids)| {
                let mut properties = properties.clone();
                properties.subscription_identifiers = ids;
                v5::Publish {
                    dup: false,
                    qos: qos_from(granted.min(published_qos)),
                    // The router sets retain only on retained messages sent
                    // at subscribe time (it clears it on live deliveries).
                    retain: publish.retain || (published_retain && retain_as_published),
                    topic: topic.clone(),
                    pkid: 0,
                    payload: publish.payload.clone(),
                    properties: Some(properties),
                }
            })
            .collect()
    }
}

/// Resolves once the broker is shutting down.
/// Acknowledges a router delivery at once (PUBACK, or PUBREC and later
/// PUBCOMP): from here the delivery is the gateway's, held to the client's
/// window and queue. Waiting for the client instead would leave a slow
/// client's messages in the router's per-filter in-memory log, which
/// overwrites what a lagging reader has not read yet, silently.
fn settle_with_router(up: &mut UpstreamWriter, publish: &v5::Publish) -> Result<(), End> {
    match publish.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => up.queue(&v5::Packet::PubAck(v5::PubAck::new(publish.pkid, None)))?,
        QoS::ExactlyOnce => up.queue(&v5::Packet::PubRec(v5::PubRec::new(publish.pkid, None)))?,
    }
    Ok(())
}

pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn qos_from(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn pub_ack_reason(code: u8) -> PubAckReason {
    match code {
        0x87 => PubAckReason::NotAuthorized,
        0x90 => PubAckReason::TopicNameInvalid,
        0x99 => PubAckReason::PayloadFormatInvalid,
        _ => PubAckReason::UnspecifiedError,
    }
}

fn pub_rec_reason(code: u8) -> PubRecReason {
    match code {
        0x87 => PubRecReason::NotAuthorized,
        0x90 => PubRecReason::TopicNameInvalid,
        0x99 => PubRecReason::PayloadFormatInvalid,
        _ => PubRecReason::UnspecifiedError,
    }
}

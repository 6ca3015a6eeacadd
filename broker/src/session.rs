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

use crate::admission::{Admission, PROP_FROM, PROP_INDEX, PROP_QOS, PROP_RETAIN, admit, remember_if_retained};
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
    Ok(Some(ClientCodec { version, max_incoming: shared.config.limits.max_packet_size, max_outgoing: None }))
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
            Err(e) => {
                refuse(client, &codec, e.connack_code()).await;
                return Err(e.into());
            }
        }
    };
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
    publish: v5::Publish,
    result: Result<u64, StoreError>,
}

/// A SUBSCRIBE waiting for the router's SUBACK: the local decision per
/// filter (`None`: forwarded), and per forwarded filter the client's filter,
/// the QoS it asked for (the router is asked for QoS 0, see
/// `client_subscribe`) and whether to send its retained messages once granted.
type PendingSubscribe = (Vec<Option<SubscribeReasonCode>>, Vec<(String, u8, bool)>);

/// What the relay keeps per connection.
struct Relay {
    shared: Arc<Shared>,
    codec: ClientCodec,
    device: Arc<Device>,
    client_id: String,
    problem_info: bool,
    aliases: HashMap<u16, Bytes>,
    /// Client filter → (granted QoS, No Local, Retain As Published).
    subscriptions: HashMap<String, (u8, bool, bool)>,
    /// Client QoS 2 publishes forwarded upstream and not completed: packet id → log index.
    forwarded: HashMap<u16, u64>,
    /// Logged publishes waiting for room in `router_budget`, in order.
    to_router: VecDeque<v5::Publish>,
    /// Sizes of the QoS 1/2 publishes sent to the router and not yet
    /// acknowledged by it (it acknowledges in order), and their sum.
    router_unacked: VecDeque<usize>,
    router_unacked_bytes: usize,
    /// Bytes this connection may have unacknowledged at the router; see
    /// [`crate::upstream::router_budget`].
    router_budget: usize,
    /// Client QoS 2 publishes answered by the gateway itself (duplicates).
    local_qos2: HashSet<u16>,
    /// QoS 1/2 publishes from the client not yet completed (its Receive Maximum is ours).
    inflight: usize,
    /// SUBSCRIBE/UNSUBSCRIBE answers decided locally, merged with upstream's.
    pending_subacks: HashMap<u16, PendingSubscribe>,
    pending_unsubacks: HashMap<u16, Vec<Option<v5::UnsubAckReason>>>,
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
    /// client to come back; at most `limits.max_queued_messages`.
    held: VecDeque<v5::Publish>,
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
            let Parked { mut relay, up_read, up_write } = *parked;
            relay.codec = codec;
            relay.device = device;
            relay.problem_info = request_problem_info;
            relay.window = window;
            relay.aliases.clear();
            relay.inflight = 0;
            (relay, up_read, up_write, true)
        }
        previous => {
            if let Some(parked) = previous {
                let Parked { up_read, up_write, .. } = *parked;
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
            (
                Relay::new(&shared, codec, device, client_id.clone(), request_problem_info, window),
                up_read,
                up_write,
                false,
            )
        }
    };
    let limits = &shared.config.limits;
    let properties = v5::ConnAckProperties {
        session_expiry_interval: None,
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
        subscription_identifiers_available: Some(0),
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
    if publish_will && let Some((will, properties)) = will {
        relay.publish_will(will, properties).await;
    }
    let expiry = match &exit {
        Ok(Exit::Normal { session_expiry: Some(update), .. }) if session_expiry > 0 => *update,
        _ => session_expiry,
    };
    let expiry = Duration::from_secs(u64::from(expiry.min(shared.config.limits.max_session_expiry_secs)));
    let persistent = !clean_start && !expiry.is_zero();
    match exit {
        Ok(Exit::TakenOver(reply)) => {
            // The new holder already owns the client id in the table.
            let parked = persistent.then(|| Box::new(Parked { relay, up_read, up_write }));
            if let Err(Some(parked)) = reply.send(parked) {
                close_link(parked.up_read, parked.up_write).await;
            }
            Ok(())
        }
        Ok(Exit::Normal { .. } | Exit::Abnormal) if persistent => {
            let parked = (relay, up_read, up_write, slot.park());
            tokio::spawn(park(shared, client_id, generation, parked, takes, expiry));
            Ok(())
        }
        exit => {
            close_link(up_read, up_write).await;
            shared.release_session(&client_id, generation);
            exit.map(|_| ())
        }
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
/// messages for it are queued (bounded), and it ends when it expires, the
/// broker stops, or a connection takes it. Until then it holds its share of
/// the descriptor budget: the link's descriptors are still in use.
async fn park(
    shared: Arc<Shared>,
    client_id: String,
    generation: u64,
    (mut relay, mut up_read, mut up_write, _descriptors): (Relay, UpstreamReader, UpstreamWriter, OwnedSemaphorePermit),
    mut takes: tokio::sync::mpsc::Receiver<TakeRequest>,
    expiry: Duration,
) {
    let deadline = Instant::now() + expiry;
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(UPSTREAM_KEEP_ALIVE) / 2));
    let mut shutdown = shared.shutdown.clone();
    tracing::debug!(client_id, expiry_secs = expiry.as_secs(), "session parked");
    loop {
        tokio::select! {
            take = takes.recv() => {
                if let Some(reply) = take {
                    let parked = Box::new(Parked { relay, up_read, up_write });
                    if let Err(Some(parked)) = reply.send(Some(parked)) {
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
            () = tokio::time::sleep_until(deadline) => break,
            () = stopped(&mut shutdown) => break,
        }
    }
    tracing::debug!(client_id, "parked session ended");
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
            client_id,
            problem_info,
            window,
            outgoing: HashMap::new(),
            next_seq: 0,
            next_pkid: 1,
            held: VecDeque::new(),
            overflowing: false,
            aliases: HashMap::new(),
            subscriptions: HashMap::new(),
            forwarded: HashMap::new(),
            to_router: VecDeque::new(),
            router_unacked: VecDeque::new(),
            router_unacked_bytes: 0,
            router_budget: crate::upstream::router_budget(shared.config.limits.max_packet_size),
            local_qos2: HashSet::new(),
            inflight: 0,
            pending_subacks: HashMap::new(),
            pending_unsubacks: HashMap::new(),
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
                if let Some(delivery) = self.route(publish) {
                    self.hold(delivery);
                }
            }
            v5::Packet::PubRel(rel) => up.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
            v5::Packet::PubAck(_) => self.router_acked(up)?,
            v5::Packet::PubRec(_) => self.router_acked(up)?,
            v5::Packet::PubComp(comp) => {
                self.forwarded.remove(&comp.pkid);
            }
            v5::Packet::SubAck(ack) => {
                self.pending_subacks.remove(&ack.pkid);
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
                if self.local_qos2.remove(&rel.pkid) {
                    client.queue(&self.codec, &v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?;
                    self.inflight = self.inflight.saturating_sub(1);
                } else if self.forwarded.contains_key(&rel.pkid) {
                    // rumqttd ignores a PUBREL with properties: send none.
                    up.queue(&v5::Packet::PubRel(v5::PubRel::new(rel.pkid, None)))?;
                } else {
                    let mut comp = v5::PubComp::new(rel.pkid, None);
                    comp.reason = v5::PubCompReason::PacketIdentifierNotFound;
                    client.queue(&self.codec, &v5::Packet::PubComp(comp))?;
                }
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

    /// Sends one retained message after a SUBACK, at min(published, granted) QoS.
    async fn send_retained(
        &mut self,
        client: &mut Client,
        topic: String,
        message: &crate::retained::Retained,
        granted: u8,
    ) -> Result<(), End> {
        let delivery = v5::Publish {
            dup: false,
            qos: qos_from(message.qos.min(granted)),
            retain: true,
            topic: Bytes::from(topic),
            pkid: 0,
            payload: message.payload.clone(),
            properties: Some(message.properties.clone()),
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
            self.held.push_back(delivery);
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

    /// Sends deliveries from the queue while the window has room.
    async fn pump(&mut self, client: &mut Client) -> Result<(), End> {
        while self.outgoing.len() < self.window {
            let Some(delivery) = self.held.pop_front() else { break };
            self.send_now(client, delivery).await?;
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
                && (self.local_qos2.contains(&publish.pkid) || self.forwarded.contains_key(&publish.pkid))
            {
                // A retransmitted QoS 2 PUBLISH: already logged; answer PUBREC again once known.
                if self.local_qos2.contains(&publish.pkid) {
                    client.queue(&self.codec, &v5::Packet::PubRec(v5::PubRec::new(publish.pkid, None)))?;
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
        match admit(&self.shared, &self.device, &topic, publish) {
            Admission::Rejected { code, why } => self.reject_publish(client, (qos, pkid), &topic, code, &why).await,
            Admission::Duplicate => {
                self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client.queue(&self.codec, &v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?;
                        self.inflight = self.inflight.saturating_sub(1);
                    }
                    QoS::ExactlyOnce => {
                        self.local_qos2.insert(pkid);
                        client.queue(&self.codec, &v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?;
                    }
                }
                Ok(None)
            }
            Admission::Log { entry, forward, kid } => {
                self.used_kids.extend(kid);
                let log = Arc::clone(&self.shared.log);
                self.pipeline.push_back(Box::pin(async move {
                    let result = log.append_one(entry).await;
                    Logged { publish: forward, result }
                }));
                Ok(None)
            }
        }
    }

    /// A record is durable (or failed): forward upstream, or tell the client.
    async fn forward(&mut self, client: &mut Client, up: &mut UpstreamWriter, logged: Logged) -> Result<(), End> {
        let Logged { mut publish, result } = logged;
        match result {
            Ok(index) => {
                self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let index_text = index.to_string();
                if let Some(properties) = publish.properties.as_mut() {
                    properties.user_properties.push((PROP_INDEX.to_string(), index_text.clone()));
                }
                let (qos, pkid) = (publish.qos, publish.pkid);
                remember_if_retained(&self.shared.retained, &publish, index);
                self.to_router.push_back(publish);
                self.feed_router(up)?;
                match qos {
                    QoS::AtMostOnce => {}
                    // Durable, and on its way to the router (in order, on
                    // one socket): acknowledged now, not after the router's
                    // PUBACK, which would add a round trip through it.
                    QoS::AtLeastOnce => {
                        let mut ack = v5::PubAck::new(pkid, None);
                        ack.properties = Some(v5::PubAckProperties {
                            reason_string: None,
                            user_properties: vec![(PROP_INDEX.to_string(), index_text)],
                        });
                        self.inflight = self.inflight.saturating_sub(1);
                        client.queue(&self.codec, &v5::Packet::PubAck(ack))?;
                    }
                    // QoS 2 goes on with the router (PUBREC, PUBREL, PUBCOMP).
                    QoS::ExactlyOnce => {
                        self.forwarded.insert(pkid, index);
                    }
                }
            }
            Err(e) => {
                // Not logged, so not forwarded and not acknowledged as a success.
                tracing::error!(device = self.client_id, error = %e, "could not log a publish; it was not delivered");
                if self.codec.version == Version::V311 && publish.qos != QoS::AtMostOnce {
                    return Err(End::Io(std::io::Error::other("the audit log is not accepting records")));
                }
                let why = format!("the audit log is not accepting records: {e}");
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let _ = self.reject_publish(client, (publish.qos, publish.pkid), &topic, 0x80, &why).await?;
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
        if subscribe.properties.as_ref().is_some_and(|p| p.id.is_some()) {
            self.disconnect(
                client,
                Dc::SubscriptionIdentifiersNotSupported,
                "subscription identifiers are not supported",
            )
            .await;
            return Err(CodecError::ProtocolError("subscription identifier".into()).into());
        }
        let limits = &self.shared.config.limits;
        let mut decided = Vec::with_capacity(subscribe.filters.len());
        let mut upstream_filters = Vec::new();
        let mut retained = Vec::new();
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
                    let is_new = self
                        .subscriptions
                        .insert(filter.path.clone(), (filter.qos as u8, filter.nolocal, filter.preserve_retain))
                        .is_none();
                    // Retained messages are the gateway's to send (crate::retained):
                    // never for shared subscriptions, and as Retain Handling says.
                    let send_retained = match (&kind, &filter.retain_forward_rule) {
                        (FilterKind::Shared { .. }, _) | (_, v5::RetainForwardRule::Never) => false,
                        (_, v5::RetainForwardRule::OnNewSubscribe) => is_new,
                        (_, v5::RetainForwardRule::OnEverySubscribe) => true,
                    };
                    retained.push((filter.path.clone(), filter.qos as u8, send_retained));
                    filter.path = up_filter(&filter.path);
                    // The gateway takes every delivery over from the router
                    // at once and applies the granted QoS itself (`route`):
                    // at QoS 0 the router pushes deliveries without waiting
                    // for acks, which would otherwise come back only when
                    // the subscriber's task gets a turn, and its per-filter
                    // log overwrites what a link has not read meanwhile.
                    filter.qos = QoS::AtMostOnce;
                    upstream_filters.push(filter);
                    None
                }
            };
            decided.push(code);
        }
        if upstream_filters.is_empty() {
            let codes = decided.into_iter().map(|c| c.unwrap_or(SubscribeReasonCode::Unspecified)).collect();
            let ack = v5::SubAck { pkid: subscribe.pkid, return_codes: codes, properties: None };
            return client.queue(&self.codec, &v5::Packet::SubAck(ack));
        }
        self.pending_subacks.insert(subscribe.pkid, (decided, retained));
        let forward = v5::Subscribe { pkid: subscribe.pkid, filters: upstream_filters, properties: None };
        up.queue(&v5::Packet::Subscribe(forward))?;
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
            } else if self.subscriptions.remove(&filter).is_none() {
                decided.push(Some(v5::UnsubAckReason::NoSubscriptionExisted));
            } else {
                upstream_filters.push(up_filter(&filter));
                decided.push(None);
            }
        }
        if upstream_filters.is_empty() {
            let reasons = decided.into_iter().map(|r| r.unwrap_or(v5::UnsubAckReason::Success)).collect();
            let ack = v5::UnsubAck { pkid: unsubscribe.pkid, reasons, properties: None };
            return client.queue(&self.codec, &v5::Packet::UnsubAck(ack));
        }
        self.pending_unsubacks.insert(unsubscribe.pkid, decided);
        let forward = v5::Unsubscribe { pkid: unsubscribe.pkid, filters: upstream_filters, properties: None };
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
            // QoS 1 publishes were acknowledged to the client when forwarded.
            v5::Packet::PubAck(ack) => {
                if ack.reason != PubAckReason::Success {
                    tracing::warn!(client_id = self.client_id, reason = ?ack.reason, "the router refused a publish");
                }
                self.router_acked(up)?;
            }
            v5::Packet::PubRec(rec) => {
                self.router_acked(up)?;
                let index = self.forwarded.get(&rec.pkid).copied();
                let mut answer = v5::PubRec::new(rec.pkid, None);
                answer.reason = rec.reason;
                answer.properties = index.map(|index| v5::PubRecProperties {
                    reason_string: None,
                    user_properties: vec![(PROP_INDEX.to_string(), index.to_string())],
                });
                client.queue(&self.codec, &v5::Packet::PubRec(answer))?;
            }
            v5::Packet::PubComp(comp) => {
                if self.forwarded.remove(&comp.pkid).is_some() {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                client.queue(&self.codec, &v5::Packet::PubComp(v5::PubComp::new(comp.pkid, None)))?;
            }
            // The gateway owns its deliveries from PUBREC on (see `settle_with_router`).
            v5::Packet::PubRel(rel) => up.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
            v5::Packet::SubAck(ack) => {
                let (decided, retained) = self.pending_subacks.remove(&ack.pkid).unwrap_or_default();
                let mut from_router = ack.return_codes.into_iter().zip(retained);
                let mut send_retained = Vec::new();
                let codes = decided
                    .into_iter()
                    .map(|local| {
                        local.unwrap_or_else(|| match from_router.next() {
                            // Granted at QoS 0 upstream; the client gets the QoS it asked for.
                            Some((SubscribeReasonCode::Success(_), (filter, qos, retained))) => {
                                if retained {
                                    send_retained.push((filter, qos));
                                }
                                SubscribeReasonCode::Success(qos_from(qos))
                            }
                            Some((refused, _)) => refused,
                            None => SubscribeReasonCode::Unspecified,
                        })
                    })
                    .collect();
                client.queue(
                    &self.codec,
                    &v5::Packet::SubAck(v5::SubAck { pkid: ack.pkid, return_codes: codes, properties: None }),
                )?;
                for (filter, granted) in send_retained {
                    for (topic, message) in self.shared.retained.matching(&filter) {
                        self.send_retained(client, topic, &message, granted).await?;
                    }
                }
            }
            v5::Packet::UnsubAck(ack) => {
                let decided = self.pending_unsubacks.remove(&ack.pkid).unwrap_or_default();
                let mut from_router = ack.reasons.into_iter();
                let reasons = decided
                    .into_iter()
                    .map(|local| local.or_else(|| from_router.next()).unwrap_or(v5::UnsubAckReason::Success))
                    .collect();
                client.queue(
                    &self.codec,
                    &v5::Packet::UnsubAck(v5::UnsubAck { pkid: ack.pkid, reasons, properties: None }),
                )?;
            }
            v5::Packet::PingResp(_) => {}
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

    /// Takes a routed message over from the router and delivers it.
    async fn deliver(&mut self, client: &mut Client, up: &mut UpstreamWriter, publish: v5::Publish) -> Result<(), End> {
        settle_with_router(up, &publish)?;
        match self.route(publish) {
            Some(delivery) => self.send_delivery(client, delivery).await,
            None => Ok(()),
        }
    }

    /// What a routed message becomes for this client, with the MQTT
    /// semantics the router lacks: QoS is min(published, granted), No
    /// Local, Retain As Published; the gateway's own properties are
    /// stripped. `None` when it is not for this client after all (No Local,
    /// or unsubscribed meanwhile). The packet id is given when it is sent.
    fn route(&self, publish: v5::Publish) -> Option<v5::Publish> {
        let up_qos = publish.qos as u8;
        let mut properties = publish.properties.unwrap_or_default();
        let mut from = None;
        let mut published_qos = up_qos;
        let mut published_retain = false;
        properties.user_properties.retain(|(name, value)| match name.as_str() {
            PROP_FROM => {
                from = Some(value.clone());
                false
            }
            PROP_QOS => {
                published_qos = value.parse().unwrap_or(up_qos);
                false
            }
            PROP_RETAIN => {
                published_retain = value == "1";
                false
            }
            _ => true,
        });
        let topic = std::str::from_utf8(&publish.topic).ok().and_then(down_topic)?;
        let own = from.as_deref() == Some(self.client_id.as_str());
        // The matching subscriptions (No Local ones left out for the
        // publisher itself): the highest granted QoS, and whether any asks
        // for Retain As Published. `topic_matches` reads `$share/` filters.
        let (granted, retain_as_published) = self
            .subscriptions
            .iter()
            .filter(|(filter, (_, nolocal, _))| !(own && *nolocal) && topic_matches(filter, topic))
            .map(|(_, &(granted, _, rap))| (granted, rap))
            .reduce(|a, b| (a.0.max(b.0), a.1 || b.1))?;
        // The router sets retain only on retained messages sent at subscribe
        // time (it clears it on live deliveries); Retain As Published
        // (MQTT-3.3.1-13) gives live deliveries the publisher's flag back.
        Some(v5::Publish {
            dup: false,
            qos: qos_from(granted.min(published_qos)),
            retain: publish.retain || (published_retain && retain_as_published),
            // The router's topic without its prefix: the same bytes, not a copy.
            topic: publish.topic.slice_ref(topic.as_bytes()),
            pkid: 0,
            payload: publish.payload,
            properties: Some(properties),
        })
    }

    /// Publishes the will as the device would have: checked, logged, then routed.
    async fn publish_will(&mut self, will: v5::LastWill, properties: Option<v5::LastWillProperties>) {
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
        let publish = v5::Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            payload: will.message,
            properties,
        };
        crate::system::publish_as_device(&self.shared, &self.device, publish).await;
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

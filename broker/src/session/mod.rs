//! One client connection: CONNECT and admission, then the relay, where
//! every PUBLISH is checked, logged durably and only then routed, and the
//! router's deliveries for the session go to the client.
//!
//! - [`connect`]: the connection up to its accepted CONNECT;
//! - [`relay`]: the connection's loop and its per-connection state ([`Relay`]);
//! - [`publish`]: a client's PUBLISH: admission, the log, QoS 1/2 with the client;
//! - [`deliver`]: deliveries to the client: its window, QoS flows, retained;
//! - [`subscribe`]: SUBSCRIBE and UNSUBSCRIBE;
//! - [`park`]: a session kept between connections, and delayed wills.

mod connect;
mod deliver;
mod park;
mod publish;
mod relay;
mod subscribe;
mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::connect::{Client, Connected, read_connect, read_connect_codec, refuse};
pub(crate) use self::park::Parked;
use self::park::{PendingWill, park, will_publish};
use self::relay::Relay;
pub use self::table::Sessions;
use self::table::{TakeRequest, Takes, request_session};
use crate::codec::{CodecError, v5};
use crate::gateway::{Shared, Slot};
use crate::net::transport::{Listener, upgrade};
use crate::ops::metrics::{OpenConnection, Protocol, Refusal, Transport};
use crate::route::Inbox;

use v5::{PubAckReason, PubRecReason, QoS};

/// Publishes of one connection being logged at once; reading from the
/// client pauses beyond this (back-pressure, not loss).
const PIPELINE_DEPTH: usize = 256;

/// Serves one client until it disconnects; errors end only this connection.
///
/// This future is every connection's task for its whole life, so it is
/// kept small: what a connection needs only while it starts (handshakes,
/// the CONNECT, taking a session over, CONNACK) or ends (wills, parking)
/// runs in boxed futures allocated for those moments only, and an idle
/// connection keeps just the relay's state (see [`Relay::relay`]).
pub(crate) fn serve(
    shared: Arc<Shared>,
    sessions: Arc<Sessions>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    slot: Slot,
) -> impl Future<Output = ()> + Send {
    // One pointer in the task, not its five arguments for its whole life.
    serve_boxed(Box::new(Incoming { shared, sessions, stream, peer, kind, slot }))
}

/// A connection as accepted.
struct Incoming {
    shared: Arc<Shared>,
    sessions: Arc<Sessions>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    slot: Slot,
}

async fn serve_boxed(incoming: Box<Incoming>) {
    let Some(mut live) = Box::pin(open(incoming)).await else { return };
    let exit = match live.started.take() {
        Some(e) => Err(*e),
        None => live.relay.relay(&mut live.client, live.keep_alive, &mut live.closing.takes).await,
    };
    Box::pin(finish(live, exit)).await;
}

/// A connection whose CONNECT was accepted, with its session.
struct Live {
    shared: Arc<Shared>,
    sessions: Arc<Sessions>,
    client: Client,
    relay: Relay,
    keep_alive: u16,
    /// An error answering the CONNECT or resending what a resumed session
    /// had in flight: the session then ends as on any abnormal disconnection.
    started: Option<Box<End>>,
    closing: Closing,
    peer: SocketAddr,
    slot: Slot,
    /// Counts the connection as open (`/metrics`) while it is.
    open: OpenConnection,
}

/// The connection up to its accepted CONNECT and its session: `None` when
/// it was refused or left first. Bounded by the CONNECT timeout, which the
/// transport's handshakes count against too.
async fn open(incoming: Box<Incoming>) -> Option<Live> {
    let Incoming { shared, sessions, stream, peer, kind, slot } = *incoming;
    let timeout = Duration::from_millis(shared.config.limits.connect_timeout_ms);
    let accepted = tokio::time::timeout(timeout, async {
        let upgraded = upgrade(kind, stream, shared.tls.as_ref(), shared.config.limits.max_packet_size).await?;
        let mut client = Client::new(upgraded.read, upgraded.write);
        let connect = read_connect(&shared, &mut client, peer, upgraded.cert_identity.as_deref()).await?;
        Ok::<_, End>(connect.map(|connect| (client, connect)))
    })
    .await;
    let (mut client, connect) = match accepted {
        Ok(Ok(Some(accepted))) => accepted,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = kind.scheme(), error = %e, "refused before CONNECT completed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, listener = kind.scheme(), "no CONNECT within the connect timeout");
            return None;
        }
    };
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
    let protocol = match codec.version {
        crate::codec::Version::V311 => Protocol::V311,
        crate::codec::Version::V5 => Protocol::V5,
    };
    let open = shared.stats.connection_opened(transport(kind), protocol);
    let (generation, takes, previous) = sessions.claim(&client_id);
    let opening = Opening {
        codec,
        client_id: &client_id,
        assigned_id,
        device,
        request_problem_info,
        receive_max,
        clean_start,
        session_expiry,
        receipts,
        generation,
    };
    let (relay, started) = start(&shared, &mut client, opening, previous, peer).await;
    // A will is rare, and large: boxed, it costs others one pointer.
    let will = will.map(Box::new);
    let closing = Closing { generation, session_expiry, will, will_delay, takes };
    let started = started.err().map(Box::new);
    Some(Live { shared, sessions, client, relay, keep_alive, started, closing, peer, slot, open })
}

/// The listener's label in `/metrics`.
fn transport(kind: Listener) -> Transport {
    match kind {
        Listener::Mqtt => Transport::Tcp,
        Listener::Mqtts => Transport::Tls,
        Listener::Ws => Transport::Ws,
        Listener::Wss => Transport::Wss,
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
        shared.stats.refused(Refusal::Busy);
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
    #[error("router: {0}")]
    Route(#[from] crate::route::RouteError),
    #[error(transparent)]
    Transport(#[from] crate::net::transport::TransportError),
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

/// What [`start`] takes from the CONNECT.
struct Opening<'a> {
    codec: crate::codec::ClientCodec,
    client_id: &'a str,
    assigned_id: bool,
    device: Arc<crate::devices::identity::Device>,
    request_problem_info: bool,
    receive_max: usize,
    clean_start: bool,
    session_expiry: u32,
    receipts: bool,
    generation: u64,
}

/// The session a new connection relays for: the one its client id had
/// (taken over from the previous holder, live or parked) unless Clean
/// Start, else a new one; answered with CONNACK, and a resumed session's
/// unacknowledged deliveries sent again. The relay comes back on an error
/// too: the session still ends as an abnormal disconnection does.
async fn start(
    shared: &Arc<Shared>,
    client: &mut Client,
    opening: Opening<'_>,
    previous: Option<tokio::sync::oneshot::Sender<TakeRequest>>,
    peer: SocketAddr,
) -> (Relay, Result<(), End>) {
    let Opening {
        codec,
        client_id,
        assigned_id,
        device,
        request_problem_info,
        receive_max,
        clean_start,
        session_expiry,
        receipts,
        generation,
    } = opening;
    // The client id's previous holder hands its session over (a live
    // connection is disconnected with 0x8E first).
    let previous = match previous {
        Some(take) => request_session(take).await,
        None => None,
    };
    // A small window keeps what a slow client has not taken in the session's
    // bounded inbox, rather than in a socket buffer that blocks the task.
    let window = receive_max.min(usize::from(shared.config.limits.max_inflight));
    let (mut relay, resumed) = match previous {
        Some(parked) if !clean_start => {
            // Resumed before its delay passed: the last connection's will
            // is not sent [MQTT-3.1.3-9].
            let Parked { mut relay, will: _ } = *parked;
            relay.codec = codec;
            relay.device = device;
            relay.registry_seen = shared.registry_generation();
            relay.problem_info = request_problem_info;
            relay.receipts = receipts;
            relay.window = window;
            relay.aliases = Default::default();
            relay.inflight = 0;
            (relay, true)
        }
        previous => {
            if let Some(parked) = previous {
                // Clean Start ends the old session, and with it the wait of its will.
                parked.end(shared, client_id).await;
            }
            let inbox = Arc::new(Inbox::new(
                generation,
                shared.config.limits.max_queued_messages,
                Arc::from(client_id),
                Arc::clone(shared.stats.queue_full()),
            ));
            let mut relay = Relay::new(shared, codec, device, inbox, request_problem_info, window);
            relay.receipts = receipts;
            (relay, false)
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
        assigned_client_identifier: assigned_id.then(|| client_id.to_string()),
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
    if let Err(e) = client.send(&relay.codec, &v5::Packet::ConnAck(ack)).await {
        return (relay, Err(e));
    }
    tracing::debug!(%peer, client_id, version = ?relay.codec.version, resumed, "connected");
    let resumed = if resumed { relay.resume(client).await } else { Ok(()) };
    (relay, resumed)
}

/// What [`finish`] needs of the CONNECT (the client id is the relay's).
struct Closing {
    generation: u64,
    /// As the CONNECT asked.
    session_expiry: u32,
    will: Option<Box<(v5::LastWill, Option<v5::LastWillProperties>)>>,
    will_delay: u32,
    takes: Takes,
}

/// Ends the connection: the will (now, or waiting in the session for its
/// delay), then the session handed to the connection that took it over,
/// parked for its expiry, or ended.
async fn finish(live: Live, exit: Result<Exit, End>) {
    let Live { shared, sessions, mut client, relay, closing, peer, slot, open, .. } = live;
    let client_id = relay.client_id.to_string();
    if let Err(e) = &exit {
        tracing::debug!(%peer, client_id, error = %e, "connection ended");
    }
    let Closing { generation, session_expiry, will, will_delay, takes } = closing;
    let _ = client.flush().await;
    let _ = client.write.shutdown().await;
    drop(client);
    // The connection's descriptor and place are free from here: a parked
    // session holds neither.
    drop(slot);
    drop(open);
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
    let will = will.filter(|_| publish_will).map(|will| {
        let (will, properties) = *will;
        will_publish(will, properties)
    });
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
            // decides on the pending will.
            let parked = Box::new(Parked { relay, will });
            if !persistent {
                parked.end(&shared, &client_id).await;
                let _ = reply.send(None);
            } else if let Err(Some(parked)) = reply.send(Some(parked)) {
                parked.end(&shared, &client_id).await;
            }
        }
        Ok(Exit::Normal { .. } | Exit::Abnormal) | Err(_) if persistent => {
            let parked = Parked { relay, will };
            tokio::spawn(park(shared, sessions, client_id, generation, parked, takes, expiry));
        }
        _ => {
            Parked { relay, will }.end(&shared, &client_id).await;
            sessions.release(&client_id, generation);
        }
    }
}

/// Resolves once the broker is shutting down.
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

//! The router behind the gateway: an embedded rumqttd on a loopback port
//! with a random per-boot credential (or an external MQTT 5 broker), and
//! [`UpstreamLink`], one MQTT 5 connection to it.
//!
//! rumqttd types stop here. Its known traps are avoided by construction:
//! every topic and filter sent upstream carries an ASCII prefix (a topic
//! whose first character is multi-byte panics its router), client ids are
//! hex-encoded (ids with `/`, `+`, `#` or `$` poison its will handling), and
//! upstream sessions are always clean (a persistent sole member of a shared
//! group panics it on disconnect).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener as StdListener};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::codec::{CodecError, decode_v5, encode_v5, v5};
pub use crate::route::wire::{down_topic, up_filter, up_topic};

/// Where and how to reach the router.
#[derive(Clone)]
pub struct UpstreamTarget {
    /// Its MQTT 5 listener.
    pub addr: SocketAddr,
    /// Username for every upstream connection.
    pub username: String,
    /// Password for every upstream connection (random per boot when embedded).
    pub password: String,
}

impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget").field("addr", &self.addr).field("username", &self.username).finish()
    }
}

/// Errors talking to the router.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The socket failed.
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The router sent something undecodable.
    #[error("upstream protocol: {0}")]
    Codec(#[from] CodecError),
    /// The router refused or dropped the connection.
    #[error("upstream refused the connection: {0}")]
    Refused(String),
    /// The embedded router did not come up.
    #[error("the embedded router did not start: {0}")]
    Start(String),
}

/// The upstream client id of one link of a client: hex, so that no
/// character of the client's id means anything to the router, and unique
/// per link (`link` is the connection's generation). Take-over is the
/// gateway's business: with the same id, the router could process a new
/// link's CONNECT before the old link's close, and then drop the new one.
pub fn up_client_id(client_id: &str, link: u64) -> String {
    format!("c{}-{link:x}", hex::encode(client_id.as_bytes()))
}

/// Starts rumqttd on its own thread, on a free loopback port, accepting only
/// a random per-boot credential, and waits until it answers.
pub async fn start_embedded(max_packet_size: u32, max_connections: usize) -> Result<UpstreamTarget, UpstreamError> {
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(|e| UpstreamError::Start(format!("no randomness: {e}")))?;
    let username = "sealmq-gateway".to_string();
    let password = hex::encode(secret);
    let mut last_error = String::new();
    // The port is found by binding port 0 and releasing it, since rumqttd
    // cannot report the port it bound; another process may take it in
    // between, so a failed probe moves on to another port.
    for _ in 0..5 {
        let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let config = rumqttd_config(port, &username, &password, max_packet_size, max_connections);
        std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            // Returns only when every listener thread has ended.
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded router stopped");
            }
        })?;
        let target = UpstreamTarget {
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            username: username.clone(),
            password: password.clone(),
        };
        for _ in 0..50 {
            match UpstreamLink::connect(&target, "sealmq-probe", 30).await {
                Ok(link) => {
                    link.close().await;
                    tracing::info!(%target.addr, "embedded router listening on loopback");
                    return Ok(target);
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    Err(UpstreamError::Start(last_error))
}

/// rumqttd's segment size for per-filter logs: room for the largest packet.
fn segment_size(max_packet_size: u32) -> usize {
    (max_packet_size as usize).max(1024 * 1024)
}

/// Bytes of publishes one connection may have sent to the router and not
/// had acknowledged. rumqttd appends a publish to each matching filter's
/// in-memory log and overwrites the oldest segment when a log is full,
/// whether or not its readers have read it; a burst larger than a segment
/// from one link, appended before the subscriber's link reads, would lose
/// messages (it did with 1 MiB payloads, 16 in flight). Half a segment,
/// and always at least one publish, keeps bursts within what the log holds.
pub fn router_budget(max_packet_size: u32) -> usize {
    segment_size(max_packet_size) / 2
}

/// The embedded router's settings; `rumqttd_alone` (the benchmark's
/// rumqttd without the gateway) runs with the same.
pub fn router_settings(max_packet_size: u32, max_connections: usize) -> rumqttd::RouterConfig {
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

/// The embedded router's per-connection settings (`auth`: user → password).
pub fn connection_settings(max_packet_size: u32, auth: Option<HashMap<String, String>>) -> rumqttd::ConnectionSettings {
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

fn rumqttd_config(
    port: u16,
    username: &str,
    password: &str,
    max_packet_size: u32,
    max_connections: usize,
) -> rumqttd::Config {
    let router = router_settings(max_packet_size, max_connections);
    let auth = HashMap::from([(username.to_string(), password.to_string())]);
    let connections = connection_settings(max_packet_size, Some(auth));
    let server = rumqttd::ServerSettings {
        name: "sealmq-upstream".into(),
        listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: None,
        v5: Some(HashMap::from([("1".to_string(), server)])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Largest packet read from upstream: a client's largest plus the gateway's properties.
const UPSTREAM_MAX_PACKET: u32 = 64 * 1024 * 1024;

/// One MQTT 5 connection to the router.
pub struct UpstreamLink {
    reader: UpstreamReader,
    writer: UpstreamWriter,
}

/// The reading half of an [`UpstreamLink`].
pub struct UpstreamReader {
    stream: OwnedReadHalf,
    buf: BytesMut,
}

/// The writing half of an [`UpstreamLink`].
pub struct UpstreamWriter {
    stream: OwnedWriteHalf,
    buf: BytesMut,
}

impl UpstreamLink {
    /// Connects with a clean session and waits for a successful CONNACK.
    pub async fn connect(target: &UpstreamTarget, client_id: &str, keep_alive: u16) -> Result<Self, UpstreamError> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        // The writer starts empty and keeps the size it grows to: an idle
        // link holds no output buffer (one resident page less). The reader
        // stays 8 KiB: while deliveries still share it, `BytesMut` refills
        // into a new buffer of its first capacity (1 KiB: a quarter more
        // syscalls per message, ~10% less 1→1 throughput); idle, it costs one
        // resident page whatever its size.
        let mut link = Self {
            reader: UpstreamReader { stream: read, buf: BytesMut::with_capacity(8 * 1024) },
            writer: UpstreamWriter { stream: write, buf: BytesMut::new() },
        };
        let connect = v5::Connect { keep_alive, client_id: client_id.to_string(), clean_start: true, properties: None };
        let login = v5::Login { username: target.username.clone(), password: target.password.clone() };
        link.writer.send(&v5::Packet::Connect(connect, None, Some(login))).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), link.reader.recv()).await;
        match answer {
            Ok(Ok(Some(v5::Packet::ConnAck(ack)))) if ack.code == v5::ConnectReturnCode::Success => Ok(link),
            Ok(Ok(Some(v5::Packet::ConnAck(ack)))) => Err(UpstreamError::Refused(format!("{:?}", ack.code))),
            Ok(Ok(Some(other))) => Err(UpstreamError::Refused(format!("answered CONNECT with {other:?}"))),
            Ok(Ok(None)) => Err(UpstreamError::Refused("closed without CONNACK".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Refused("no CONNACK within 5 s".into())),
        }
    }

    /// Splits into halves that can be used from separate branches of a `select!`.
    pub fn split(self) -> (UpstreamReader, UpstreamWriter) {
        (self.reader, self.writer)
    }

    /// Closes the connection (see [`close_link`]).
    pub async fn close(self) {
        close_link(self.reader, self.writer).await;
    }
}

/// How long a closing link waits for the router to read what was sent.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Closes a link gracefully: shuts the sending side down (see
/// [`UpstreamWriter::close`]), then reads until the router closes its side.
/// Dropping the socket at once would lose the last publishes sent: a socket
/// closed with unread data in it (the router's acks) sends RST, and the
/// router would drop what it had not read yet.
pub async fn close_link(mut reader: UpstreamReader, mut writer: UpstreamWriter) {
    let _ = writer.flush().await;
    writer.close().await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            reader.buf.clear();
            match reader.stream.read_buf(&mut reader.buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

impl UpstreamReader {
    /// The next packet; `None` when the router closed the connection.
    pub async fn recv(&mut self) -> Result<Option<v5::Packet>, UpstreamError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(Some(packet));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next packet if it has already been read, without reading more.
    pub fn buffered(&mut self) -> Result<Option<v5::Packet>, UpstreamError> {
        Ok(decode_v5(&mut self.buf, UPSTREAM_MAX_PACKET)?)
    }

    /// Reads what the socket already has, without waiting: false when it
    /// had nothing (or was closed, which the next [`Self::recv`] reports).
    pub fn try_fill(&mut self) -> Result<bool, UpstreamError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.try_read_buf(&mut self.buf) {
            Ok(read) => Ok(read > 0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl UpstreamWriter {
    /// Encodes a packet into the output buffer; [`UpstreamWriter::flush`] sends it.
    pub fn queue(&mut self, packet: &v5::Packet) -> Result<(), UpstreamError> {
        encode_v5(packet, &mut self.buf)?;
        Ok(())
    }

    /// Sends everything queued, in one write.
    pub async fn flush(&mut self) -> Result<(), UpstreamError> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Encodes and sends one packet (after anything queued).
    pub async fn send(&mut self, packet: &v5::Packet) -> Result<(), UpstreamError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Shuts the socket down, deliberately without a DISCONNECT packet.
    ///
    /// rumqttd frees a connection's slot when it reads a DISCONNECT and then
    /// again when the socket closes, by slot number: if a new connection took
    /// the slot in between, the second free drops that innocent connection.
    /// Upstream links carry no will (wills are the gateway's), so an abrupt
    /// close means the same to the router, and it is freed exactly once.
    pub async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_hex_and_per_link() {
        assert_eq!(up_client_id("a/b+#", 26), "c612f622b23-1a");
    }
}

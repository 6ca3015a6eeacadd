//! One MQTT 5 connection to an external broker, as the external router
//! ([`super`]) uses it: CONNECT with Clean Start and what the
//! broker answered (its limits), then packets read and written with the
//! gateway's own framing ([`decode_v5`], [`encode_v5`]), which never panics
//! on what a peer sends.
//!
//! Reading ([`Link::recv`]) is cancel-safe, so it can be a branch of a
//! `select!`; writes are queued ([`Link::queue`]) and sent by
//! [`Link::flush`] outside it, one write per batch.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{CodecError, decode_v5, encode_v5, packet_name, v5};

/// Largest packet accepted from the broker (told to it as our Maximum
/// Packet Size, so it never sends a larger one): a client's largest packet
/// plus the gateway's properties. A connection's read buffer can grow to it.
pub const MAX_INCOMING_PACKET: u32 = 64 * 1024 * 1024;

/// How long the broker has to accept the TCP connection, and then to answer CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Errors on one connection to the external broker. Any of them ends the
/// connection (the router reconnects).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent bytes that are not MQTT 5 (or a packet could not be encoded).
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    /// The broker refused the CONNECT.
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    /// The broker sent a DISCONNECT.
    #[error("the broker disconnected: {0}")]
    Disconnected(String),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// The broker sent a packet that has no place here.
    #[error("unexpected from the broker: {0}")]
    Unexpected(String),
    /// The broker did not answer or read in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Username and password for the broker; empty means absent.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The username (empty: none sent).
    pub username: String,
    /// The password (empty: none sent). Never printed.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// What the broker's CONNACK allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Its Receive Maximum: QoS 1 publishes it takes unacknowledged (at least 1).
    pub receive_max: u16,
    /// The largest packet it accepts.
    pub max_packet: u32,
    /// The keep-alive in force (the broker may impose its own).
    pub keep_alive: Duration,
    /// Its Maximum QoS (0, 1 or 2).
    pub max_qos: u8,
    /// Whether it supports Subscription Identifiers.
    pub subscription_ids: bool,
}

/// One connection, after a successful CONNACK.
pub struct Link {
    stream: TcpStream,
    incoming: BytesMut,
    outgoing: BytesMut,
    max_packet: u32,
}

impl Link {
    /// Connects to `address` (`host:port`, resolved on each call) as
    /// `client_id` with Clean Start, and waits for a successful CONNACK.
    pub async fn connect(
        address: &str,
        client_id: &str,
        credentials: &Credentials,
        keep_alive: u16,
    ) -> Result<(Self, Accepted), LinkError> {
        let stream = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(address))
            .await
            .map_err(|_| LinkError::Timeout("TCP connect"))??;
        stream.set_nodelay(true)?;
        let mut link = Self {
            stream,
            incoming: BytesMut::with_capacity(8 * 1024),
            outgoing: BytesMut::new(),
            max_packet: u32::MAX,
        };
        let properties =
            v5::ConnectProperties { max_packet_size: Some(MAX_INCOMING_PACKET), ..v5::ConnectProperties::new() };
        let connect = v5::Connect {
            keep_alive,
            client_id: client_id.to_string(),
            clean_start: true,
            properties: Some(properties),
        };
        let login = v5::Login { username: credentials.username.clone(), password: credentials.password.clone() };
        link.queue(&v5::Packet::Connect(connect, None, Some(login)))?;
        link.flush(CONNECT_WAIT).await?;
        let ack = match tokio::time::timeout(CONNECT_WAIT, link.recv()).await {
            Err(_) => return Err(LinkError::Timeout("CONNACK")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(v5::Packet::ConnAck(ack))) => ack,
            Ok(Ok(other)) => return Err(LinkError::Unexpected(format!("{} instead of CONNACK", packet_name(&other)))),
        };
        let properties = ack.properties.as_ref();
        if ack.code != v5::ConnectReturnCode::Success {
            let reason = properties.and_then(|p| p.reason_string.as_deref()).unwrap_or_default();
            return Err(LinkError::Refused(format!("{:?} {reason}", ack.code)));
        }
        let accepted = Accepted {
            receive_max: properties.and_then(|p| p.receive_max).unwrap_or(u16::MAX).max(1),
            max_packet: properties.and_then(|p| p.max_packet_size).unwrap_or(u32::MAX),
            keep_alive: Duration::from_secs(properties.and_then(|p| p.server_keep_alive).unwrap_or(keep_alive).into()),
            max_qos: properties.and_then(|p| p.max_qos).unwrap_or(2).min(2),
            subscription_ids: properties.and_then(|p| p.subscription_identifiers_available) != Some(0),
        };
        link.max_packet = accepted.max_packet;
        Ok((link, accepted))
    }

    /// The next packet from the broker. Cancel-safe: what was read stays buffered.
    pub async fn recv(&mut self) -> Result<v5::Packet, LinkError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            if self.incoming.capacity() - self.incoming.len() < 4096 {
                self.incoming.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.incoming).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    /// The next packet if it has been read already.
    pub fn buffered(&mut self) -> Result<Option<v5::Packet>, LinkError> {
        Ok(decode_v5(&mut self.incoming, MAX_INCOMING_PACKET)?)
    }

    /// Encodes a packet for the next [`Self::flush`]; `Ok(false)` (nothing
    /// queued) when it is larger than the broker accepts.
    pub fn queue(&mut self, packet: &v5::Packet) -> Result<bool, LinkError> {
        let before = self.outgoing.len();
        let size = encode_v5(packet, &mut self.outgoing)?;
        if u32::try_from(size).map_or(true, |size| size > self.max_packet) {
            self.outgoing.truncate(before);
            return Ok(false);
        }
        Ok(true)
    }

    /// Bytes queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Sends everything queued, in one write; fails if the broker does not
    /// take it `within`.
    pub async fn flush(&mut self, within: Duration) -> Result<(), LinkError> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(within, self.stream.write_all(&self.outgoing))
            .await
            .map_err(|_| LinkError::Timeout("the broker did not read what was sent"))??;
        self.outgoing.clear();
        if self.outgoing.capacity() > 1024 * 1024 {
            // A burst is over: do not keep its buffer.
            self.outgoing = BytesMut::new();
        }
        Ok(())
    }
}

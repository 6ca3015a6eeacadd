//! A new connection up to its accepted CONNECT: the client's byte stream,
//! the protocol version, the pre-login limit, identity and password, will.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sealmq_audit::{RULE_DEVICE_PREFIX, SYSTEM_DEVICE_PREFIX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::End;
use crate::admission::PROP_RECEIPTS;
use crate::codec::{
    ClientCodec, CodecError, SPLICE_MIN, Version, connack_v31_refused, peek_protocol_level, v5, validate_topic_name,
};
use crate::devices::identity::{Device, Refusal, check_password};
use crate::gateway::Shared;
use crate::net::transport::{ClientRead, ClientWrite, write_all_vectored, write_flushed};
use crate::ops::metrics;

/// Bytes read from a client at once.
const READ_SIZE: usize = 4096;

/// The largest output buffer a connection keeps between writes: room for a
/// window of small acknowledgements and deliveries, reused; a larger one
/// (a burst) is freed once written.
const OUT_KEEP: usize = 4096;

/// The client's byte stream (whatever its transport) and buffers.
pub(super) struct Client {
    pub(super) read: ClientRead,
    pub(super) write: ClientWrite,
    pub(super) buf: BytesMut,
    out: BytesMut,
    /// Large payloads queued without a copy into `out`: each goes out right
    /// after `out[..offset]` (see [`crate::codec::SPLICE_MIN`]).
    spliced: Vec<(usize, Bytes)>,
}

impl Client {
    /// `out` starts empty (an idle connection then holds no output buffer,
    /// one resident page less) and keeps the size it grows to, up to
    /// [`OUT_KEEP`]; large payloads never grow it (they are sent from where
    /// they are). `buf` stays 4 KiB: while decoded payloads still share it,
    /// `BytesMut` refills into a new buffer of its first capacity, so a
    /// smaller one means more, smaller reads (1 KiB: 47% more syscalls per
    /// 1 KiB publish, −10% throughput).
    pub(super) fn new(read: ClientRead, write: ClientWrite) -> Self {
        Self { read, write, buf: BytesMut::with_capacity(4096), out: BytesMut::new(), spliced: Vec::new() }
    }

    pub(super) async fn fill(&mut self) -> Result<bool, std::io::Error> {
        Ok(self.read.read_buf(&mut self.buf).await? > 0)
    }

    /// Reads what the client sent next into the buffer; `false` at EOF.
    /// Waits for data first with no buffer (plain TCP: an idle connection
    /// holds none, see [`Client::release_idle_buffer`]), then reserves a
    /// whole read's room (an empty `BytesMut` would otherwise be read into
    /// 64 bytes at a time). Cancel-safe: nothing is read until the last step.
    pub(super) async fn read_more(&mut self) -> Result<bool, std::io::Error> {
        self.read.ready().await?;
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        self.fill().await
    }

    /// Lets go of the read buffer once every byte in it was decoded and
    /// nothing else shares it: a connection between bursts holds none.
    pub(super) fn release_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Encodes a packet into the output buffer; [`Client::flush`] sends it.
    pub(super) fn queue(&mut self, codec: &ClientCodec, packet: &v5::Packet) -> Result<(), End> {
        self.queue_unless_too_large(codec, packet).map(|_| ())
    }

    /// [`Client::queue`], saying whether the packet was queued: `false`
    /// when it is larger than the client's Maximum Packet Size, which MQTT 5
    /// says to drop [MQTT-3.1.2-25].
    pub(super) fn queue_unless_too_large(&mut self, codec: &ClientCodec, packet: &v5::Packet) -> Result<bool, End> {
        let encoded = match packet {
            v5::Packet::Publish(publish) if publish.payload.len() >= SPLICE_MIN => {
                codec.encode_publish_head(publish, &mut self.out).map(|_| {
                    self.spliced.push((self.out.len(), publish.payload.clone()));
                })
            }
            _ => codec.encode(packet, &mut self.out).map(drop),
        };
        match encoded {
            Ok(()) => Ok(true),
            Err(CodecError::PacketTooLarge { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends what is queued: one write for everything handled since the
    /// last. An output buffer a burst grew past [`OUT_KEEP`] is let go once
    /// written: a subscriber that got a thousand retained messages on
    /// SUBSCRIBE would otherwise hold their size for as long as it stays.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        self.write_out().await?;
        if self.out.capacity() > OUT_KEEP {
            self.out = BytesMut::new();
            self.spliced = Vec::new();
        }
        Ok(())
    }

    /// Writes `out`, each spliced payload in its place, and empties both.
    async fn write_out(&mut self) -> Result<(), End> {
        if !self.spliced.is_empty() {
            let mut slices = Vec::with_capacity(2 * self.spliced.len() + 1);
            let mut at = 0;
            for (offset, payload) in &self.spliced {
                slices.push(IoSlice::new(&self.out[at..*offset]));
                slices.push(IoSlice::new(payload));
                at = *offset;
            }
            slices.push(IoSlice::new(&self.out[at..]));
            write_all_vectored(&mut self.write, &mut slices).await?;
            self.spliced.clear();
            self.out.clear();
        } else if !self.out.is_empty() {
            write_flushed(&mut self.write, &self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    pub(super) async fn send(&mut self, codec: &ClientCodec, packet: &v5::Packet) -> Result<(), End> {
        self.queue(codec, packet)?;
        self.flush().await
    }
}

/// A decoded, admitted CONNECT.
pub(super) struct Connected {
    pub(super) codec: ClientCodec,
    pub(super) client_id: String,
    pub(super) assigned_id: bool,
    pub(super) keep_alive: u16,
    pub(super) device: Arc<Device>,
    pub(super) will: Option<(v5::LastWill, Option<v5::LastWillProperties>)>,
    pub(super) request_problem_info: bool,
    /// The client's Receive Maximum: QoS 1/2 deliveries it takes unacknowledged.
    pub(super) receive_max: usize,
    /// False: resume the session the client id had, if any.
    pub(super) clean_start: bool,
    /// How long the session outlives the connection, in seconds (0: not at all).
    pub(super) session_expiry: u32,
    /// MQTT 5 Will Delay Interval, in seconds.
    pub(super) will_delay: u32,
    /// Whether the client asked for receipts ([`PROP_RECEIPTS`]).
    pub(super) receipts: bool,
}

/// Reads up to the CONNECT's protocol level: the codec for the client's
/// MQTT version, or `None` when the client left or is refused (MQTT 3.1
/// and unknown versions are answered here).
pub(super) async fn read_connect_codec(shared: &Shared, client: &mut Client) -> Result<Option<ClientCodec>, End> {
    let level = loop {
        match peek_protocol_level(&client.buf) {
            Ok(Some(level)) => break level,
            Ok(None) => {}
            Err(e @ CodecError::UnsupportedProtocol { .. }) => {
                // MQTT 3.1.1 §3.1.2.2: answer CONNACK 0x01, then close.
                shared.stats.refused(metrics::Refusal::Protocol);
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
        shared.stats.refused(metrics::Refusal::Protocol);
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
pub(super) async fn read_connect(
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
            Err(e @ CodecError::PacketTooLarge { .. }) if version == Version::V311 => {
                shared.stats.refused(metrics::Refusal::Protocol);
                return Err(e.into());
            }
            Err(e) => {
                shared.stats.refused(metrics::Refusal::Protocol);
                refuse(client, &codec, e.connack_code()).await;
                return Err(e.into());
            }
        }
    };
    codec.max_incoming = shared.config.limits.max_packet_size;
    let v5::Packet::Connect(connect, will, login) = packet else {
        shared.stats.refused(metrics::Refusal::Protocol);
        return Err(CodecError::ProtocolError("the first packet is not CONNECT".into()).into());
    };
    let properties = connect.properties.clone().unwrap_or_else(v5::ConnectProperties::new);
    codec.max_outgoing = properties.max_packet_size;

    let (client_id, assigned_id) = if connect.client_id.is_empty() {
        if !connect.clean_start && version == Version::V311 {
            shared.stats.refused(metrics::Refusal::ClientId);
            refuse(client, &codec, v5::ConnectReturnCode::ClientIdentifierNotValid).await;
            return Ok(None);
        }
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        (format!("sealmq-{}", hex::encode(id)), true)
    } else {
        (connect.client_id.clone(), false)
    };
    // `$rule/…` is how rules' actions name their publisher in the log
    // (spec/rules.md), `$sealmq/…` the broker's own records (erasures):
    // no client may pose as a rule or as the broker. A rejected ClientID is
    // answered 0x85 Client Identifier not valid in MQTT 5 (§3.1.3.1,
    // [MQTT-3.1.3-8]) and 0x02 Identifier rejected in 3.1.1 ([MQTT-3.1.3-9]);
    // such ids are outside what 3.1.1 requires servers to take (1–23 of
    // [0-9a-zA-Z], [MQTT-3.1.3-5]).
    if client_id.contains('\0')
        || client_id.starts_with(RULE_DEVICE_PREFIX)
        || client_id.starts_with(SYSTEM_DEVICE_PREFIX)
    {
        shared.stats.refused(metrics::Refusal::ClientId);
        refuse(client, &codec, v5::ConnectReturnCode::ClientIdentifierNotValid).await;
        return Ok(None);
    }
    if properties.authentication_method.is_some() {
        shared.stats.refused(metrics::Refusal::AuthMethod);
        refuse(client, &codec, v5::ConnectReturnCode::BadAuthenticationMethod).await;
        return Ok(None);
    }
    // An address that failed too often is refused before anything is
    // checked, so guessing costs it time and the broker no Argon2 work.
    if !shared.logins.allows(peer.ip()) {
        shared.stats.refused(metrics::Refusal::LoginRate);
        tracing::warn!(%peer, client_id, "refused: too many failed logins from this address");
        let code = match version {
            Version::V5 => v5::ConnectReturnCode::ConnectionRateExceeded,
            Version::V311 => v5::ConnectReturnCode::ServerUnavailable,
        };
        refuse(client, &codec, code).await;
        return Ok(None);
    }
    let failed = |why: &str, refusal: Refusal| {
        shared.stats.refused(match refusal {
            Refusal::NotAuthorized => metrics::Refusal::NotAuthorized,
            Refusal::BadPassword => metrics::Refusal::BadPassword,
        });
        shared.logins.failed(peer.ip());
        tracing::info!(%peer, client_id, "refused: {why}");
    };
    if let Some(identity) = cert_identity
        && identity != client_id
    {
        failed(&format!("its client certificate names {identity:?}, not this client id"), Refusal::NotAuthorized);
        refuse(client, &codec, v5::ConnectReturnCode::NotAuthorized).await;
        return Ok(None);
    }
    let device = match shared.identities().lookup(&client_id) {
        Ok(device) => device,
        Err(refusal) => {
            failed("not a registered device", refusal);
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
        failed("wrong or missing password", refusal);
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
                shared.stats.refused(metrics::Refusal::WillTopic);
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

pub(super) async fn refuse(client: &mut Client, codec: &ClientCodec, code: v5::ConnectReturnCode) {
    let ack = v5::ConnAck { session_present: false, code, properties: None };
    let _ = client.send(codec, &v5::Packet::ConnAck(ack)).await;
    let _ = client.write.shutdown().await;
}

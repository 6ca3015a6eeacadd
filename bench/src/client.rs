//! The lean MQTT client: connections set up (CONNECT, SUBSCRIBE), then
//! handed to the publisher, subscriber and idle tasks.
//!
//! **Why a hand-written client and not rumqttc's `AsyncClient`.** The load
//! tool shares the machine with the broker (one core each under
//! `compare.sh`), so every microsecond it spends per message is one the
//! measurement cannot see past. rumqttc's event loop moves each publish
//! through a request channel, allocates a `Publish` (and for MQTT 5 every
//! user property as `String`s) per message in both directions, keeps its
//! own in-flight bookkeeping that the tool would have to duplicate, and
//! hides the PUBACK properties the checkpoint measurement needs behind its
//! event types. Measured on this machine (1 → 1, QoS 1, 64 B, against
//! Mosquitto): see `BENCHMARKS.md` ("The load tool"). Here each connection
//! is one task over a split `TcpStream`: publishes are encoded straight into
//! a write buffer that goes out in one `write` per batch, frames are decoded
//! in place from the read buffer, and nothing is allocated per message
//! unless the message is signed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::wire;

/// Keep-alive asked for in CONNECT; every connection pings at half of it.
const KEEP_ALIVE_SECS: u16 = 60;
pub const PING_EVERY_NS: u64 = 30_000_000_000;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// How long setup steps (CONNACK, SUBACK) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One connected client, before its task takes it over.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: Vec<u8>,
    v5: bool,
    /// The broker's Receive Maximum (MQTT 5 CONNACK), else 65535.
    pub receive_max: u16,
    /// Packet id of the next SUBSCRIBE.
    next_pkid: u16,
}

/// Reads more bytes into `rbuf`, with room for at least `want` more (the
/// rest of a frame that is partly in), and at least half a chunk.
pub async fn fill<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, rbuf: &mut Vec<u8>, want: usize) -> Result<usize> {
    if rbuf.capacity() - rbuf.len() < want.max(READ_CHUNK / 2) {
        rbuf.reserve(want.max(READ_CHUNK));
    }
    Ok(stream.read_buf(rbuf).await?)
}

/// Connections opened from one local address at most. Linux gives a
/// source address about 28,000 ephemeral ports to one destination
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default); past this
/// many, connections to a loopback broker come from 127.0.0.2, .3, ….
const PER_SOURCE: usize = 20_000;

/// The local address connection `i` of a batch comes from: the system's
/// choice, unless the batch is larger than one source address can carry.
fn source_for(addr: SocketAddr, i: usize) -> Option<SocketAddr> {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_loopback() && i >= PER_SOURCE => {
            let n = u8::try_from(1 + i / PER_SOURCE).ok()?;
            Some(SocketAddr::from(([127, 0, 0, n], 0)))
        }
        _ => None,
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr, v5: bool, client_id: &str) -> Result<Self> {
        Self::open_from(addr, None, v5, client_id).await
    }

    /// Opens a connection from `source` (any port), or from the system's choice.
    pub async fn open_from(addr: SocketAddr, source: Option<SocketAddr>, v5: bool, client_id: &str) -> Result<Self> {
        let stream = match source {
            None => TcpStream::connect(addr).await,
            Some(source) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(source).with_context(|| format!("binding {source}"))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Self { stream, rbuf: Vec::new(), v5, receive_max: u16::MAX, next_pkid: 1 };
        let mut buf = Vec::new();
        wire::connect(&mut buf, v5, client_id, KEEP_ALIVE_SECS, u16::MAX);
        conn.stream.write_all(&buf).await?;
        let (first, body) = conn.next_packet().await.with_context(|| format!("{client_id}: waiting for CONNACK"))?;
        ensure!(first >> 4 == wire::CONNACK, "{client_id}: expected CONNACK, got packet type {}", first >> 4);
        let (code, receive_max) = wire::connack_in(&body, v5)?;
        ensure!(code == 0, "{client_id}: the broker refused the connection (code {code:#04x})");
        conn.receive_max = receive_max.max(1);
        Ok(conn)
    }

    /// The next packet during setup (publishes that arrive then are skipped).
    async fn next_packet(&mut self) -> Result<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        loop {
            if let Some(h) = wire::header(&self.rbuf)?
                && self.rbuf.len() >= h.end
            {
                let body = self.rbuf[h.body..h.end].to_vec();
                self.rbuf.drain(..h.end);
                if h.first >> 4 == wire::PUBLISH && h.first & 0x06 == 0 {
                    continue;
                }
                return Ok((h.first, body));
            }
            // Small reads here: thousands of idle connections may be set up,
            // and only the tasks that carry traffic need a large buffer.
            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                self.rbuf.reserve(1024);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Ok(Ok(0)) => bail!("the broker closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no answer within {} s", SETUP_TIMEOUT.as_secs()),
            }
        }
    }

    /// Subscribes to `filters` at `qos`, in packets of up to 64 filters.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> Result<()> {
        for chunk in filters.chunks(64) {
            let pkid = self.next_pkid;
            self.next_pkid += 1;
            let mut buf = Vec::new();
            wire::subscribe(&mut buf, self.v5, pkid, chunk, qos);
            self.stream.write_all(&buf).await?;
            let (first, body) = self.next_packet().await.context("waiting for SUBACK")?;
            ensure!(first >> 4 == wire::SUBACK, "expected SUBACK, got packet type {}", first >> 4);
            let (acked, codes) = wire::suback_in(&body, self.v5)?;
            ensure!(acked == pkid, "SUBACK for packet {acked}, expected {pkid}");
            for (filter, code) in chunk.iter().zip(&codes) {
                ensure!(*code < 0x80, "the broker refused the subscription to {filter:?} (code {code:#04x})");
            }
        }
        Ok(())
    }
}

/// Opens connections `0..n` named by `name`, `concurrency` at a time.
pub async fn open_many(
    addr: SocketAddr,
    v5: bool,
    n: usize,
    concurrency: usize,
    name: impl Fn(usize) -> String,
) -> Result<Vec<Conn>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let client_id = name(i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Ok::<_, anyhow::Error>((i, Conn::open_from(addr, source_for(addr, i), v5, &client_id).await?))
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, conn) = joined??;
        conns[i] = Some(conn);
    }
    Ok(conns.into_iter().flatten().collect())
}

/// Keeps an idle connection alive (pings) until told to stop.
pub async fn run_idle(conn: Conn, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut stream = conn.stream;
    // A small buffer: there may be thousands of these, and only PINGRESPs come.
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                if read? == 0 {
                    bail!("the broker closed an idle connection");
                }
            }
            _ = tokio::time::sleep(Duration::from_nanos(PING_EVERY_NS)) => stream.write_all(&[0xC0, 0]).await?,
            _ = stop.changed() => break,
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

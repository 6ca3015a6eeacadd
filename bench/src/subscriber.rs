//! A subscriber task: acknowledges what it receives, recognises each
//! message of this run by its payload header, and counts latency, loss and
//! duplicates; and the watcher of sealmq's checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use sealmq_audit::mqs1;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::client::{Conn, PING_EVERY_NS, fill};
use crate::clock::{at_ns, now_ns};
use crate::scenario::{CHECKPOINT_TOPIC, HEADER, Run};
use crate::stats::{SeqSet, histogram};
use crate::wire;

/// What one subscriber received.
pub struct Received {
    /// Per publisher.
    pub seen: Vec<SeqSet>,
    pub hist: Histogram<u64>,
    pub delivered_in_window: u64,
    pub last_recv_ns: u64,
    /// Payloads that are not this run's (too short, unknown publisher or sequence).
    pub foreign: u64,
}

pub async fn run_subscriber(
    index: usize,
    mut conn: Conn,
    run: Arc<Run>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received> {
    let v5 = run.v5;
    let mut got = Received {
        seen: vec![SeqSet::default(); run.publishers],
        hist: histogram(),
        delivered_in_window: 0,
        last_recv_ns: 0,
        foreign: 0,
    };
    let mut wbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut woff = 0usize;
    let mut need = 0usize;
    // QoS 2: packet ids received and not yet released (PUBREL), as bits.
    let mut awaiting_release = vec![0u64; (1 << 16) / 64];
    let mut ping = tokio::time::interval_at(at_ns(now_ns() + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        let writing = woff < wbuf.len();
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, need) => {
                if read? == 0 {
                    bail!("the broker closed subscriber {index}'s connection");
                }
                // One clock reading per read: these frames arrived together.
                let now = now_ns();
                let mut at = 0;
                need = 0;
                while let Some(h) = wire::header(&conn.rbuf[at..])? {
                    if conn.rbuf.len() - at < h.end {
                        need = h.end - (conn.rbuf.len() - at);
                        break;
                    }
                    let body = &conn.rbuf[at + h.body..at + h.end];
                    at += h.end;
                    match h.first >> 4 {
                        wire::PUBLISH => {
                            let publish = wire::publish_in(h.first, body, v5)?;
                            match publish.qos {
                                1 => wire::ack(&mut wbuf, wire::PUBACK, publish.pkid),
                                2 => {
                                    wire::ack(&mut wbuf, wire::PUBREC, publish.pkid);
                                    // A QoS 2 receiver takes a packet id it has
                                    // not yet seen released as a resend, and
                                    // must not pass it on again.
                                    let (word, bit) = (usize::from(publish.pkid / 64), 1u64 << (publish.pkid % 64));
                                    if awaiting_release[word] & bit != 0 {
                                        continue;
                                    }
                                    awaiting_release[word] |= bit;
                                }
                                _ => {}
                            }
                            on_message(&run, index, &mut got, publish.payload, now);
                        }
                        wire::PUBREL => {
                            let ack = wire::ack_in(body, v5, false)?;
                            awaiting_release[usize::from(ack.pkid / 64)] &= !(1u64 << (ack.pkid % 64));
                            wire::ack(&mut wbuf, wire::PUBCOMP, ack.pkid);
                        }
                        wire::DISCONNECT => {
                            bail!("the broker disconnected subscriber {index}: {}", wire::disconnect_reason(body))
                        }
                        _ => {}
                    }
                }
                conn.rbuf.drain(..at);
            }
            written = wr.write(&wbuf[woff..]), if writing => {
                woff += written?;
                if woff == wbuf.len() {
                    wbuf.clear();
                    woff = 0;
                }
            }
            _ = ping.tick() => wire::pingreq(&mut wbuf),
            _ = stop.changed() => break,
        }
    }
    let _ = wr.shutdown().await;
    Ok(got)
}

fn on_message(run: &Run, index: usize, got: &mut Received, payload: &[u8], now: u64) {
    // Brokers other than sealmq pass an MQS1 envelope through unopened.
    let data = match payload.strip_prefix(mqs1::MAGIC) {
        Some(rest) if rest.len() >= mqs1::SB_LEN + HEADER => &rest[mqs1::SB_LEN..],
        _ => payload,
    };
    let Some(head) = data.get(..HEADER) else {
        got.foreign += 1;
        return;
    };
    let publisher = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_be_bytes(head[4..12].try_into().expect("8 bytes"));
    let sent = u64::from_be_bytes(head[12..20].try_into().expect("8 bytes"));
    if publisher >= run.publishers || seq >= run.next_seq[publisher].load(Ordering::Acquire) {
        got.foreign += 1;
        return;
    }
    if !got.seen[publisher].insert(seq) {
        return;
    }
    run.distinct.fetch_add(1, Ordering::Relaxed);
    if run.qos0_window() {
        run.cell(publisher, index).fetch_max(seq + 1, Ordering::AcqRel);
        run.wake[publisher].notify_one();
    }
    if run.in_window(sent) {
        got.hist.saturating_record(now.saturating_sub(sent).max(1));
    }
    if run.in_window(now) {
        got.delivered_in_window += 1;
    }
    got.last_recv_ns = now;
}

/// Follows `$SYS/sealmq/checkpoint`: each note's second line is its tree size.
pub async fn run_checkpoint_watch(mut conn: Conn, run: Arc<Run>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let v5 = run.v5;
    let Some(wait) = &run.checkpoints else { return Ok(()) };
    let mut wbuf = Vec::new();
    let mut ping = tokio::time::interval_at(at_ns(now_ns() + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, 0) => {
                if read? == 0 {
                    bail!("the broker closed the checkpoint watcher's connection");
                }
                let now = now_ns();
                let mut at = 0;
                while let Some(h) = wire::header(&conn.rbuf[at..])? {
                    if conn.rbuf.len() - at < h.end {
                        break;
                    }
                    let body = &conn.rbuf[at + h.body..at + h.end];
                    at += h.end;
                    if h.first >> 4 != wire::PUBLISH {
                        continue;
                    }
                    let publish = wire::publish_in(h.first, body, v5)?;
                    if publish.topic != CHECKPOINT_TOPIC.as_bytes() {
                        continue;
                    }
                    let size = std::str::from_utf8(publish.payload)
                        .ok()
                        .and_then(|note| note.lines().nth(1))
                        .and_then(|line| line.trim().parse::<u64>().ok());
                    if let Some(size) = size {
                        wait.lock().unwrap_or_else(|p| p.into_inner()).checkpoint(size, now);
                    }
                }
                conn.rbuf.drain(..at);
            }
            _ = ping.tick() => {
                wbuf.clear();
                wire::pingreq(&mut wbuf);
                wr.write_all(&wbuf).await?;
            }
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

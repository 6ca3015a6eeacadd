//! A publisher task: publishes as fast as its window (or on `--rate`'s
//! schedule), signed when asked, and times each acknowledgement.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use hdrhistogram::Histogram;
use sealmq_audit::mqs1;
use tokio::io::AsyncWriteExt;

use crate::client::{Conn, PING_EVERY_NS, fill};
use crate::clock::{at_ns, now_ns};
use crate::scenario::Run;
use crate::stats::histogram;
use crate::wire;

/// Encoded publishes are written once this much is buffered.
const WRITE_BATCH: usize = 64 * 1024;
/// At QoS 0 a publisher whose window has seen no delivery for this long
/// presumes its outstanding messages dropped and carries on.
const QOS0_STALL_NS: u64 = 1_000_000_000;
/// A deadline that never comes (far enough, yet safe to add to an `Instant`).
const FAR: u64 = u64::MAX / 4;

/// One publisher's part of the run.
pub struct Publisher {
    pub id: usize,
    pub device_id: String,
    pub topics: Vec<String>,
    pub payload: Vec<u8>,
    pub signer: Option<SigningKey>,
    pub window: usize,
    /// ns between two messages; 0: no schedule.
    pub interval_ns: u64,
    pub count: Option<u64>,
    pub stop_at: Option<u64>,
    pub drain_ns: u64,
}

/// What one publisher did.
#[derive(Default)]
pub struct Published {
    pub sent: u64,
    pub sent_in_window: u64,
    pub acked: u64,
    pub acked_in_window: u64,
    pub last_ack_ns: u64,
    pub last_send_ns: u64,
    pub rejected: u64,
    pub unacked: u64,
    /// Sequences not expected at subscribers: rejected or never acknowledged.
    pub excluded: Vec<u64>,
    pub ack_hist: Option<Histogram<u64>>,
    pub window_stalls: u64,
}

#[derive(Clone, Copy)]
struct Flight {
    seq: u64,
    sent_ns: u64,
}

pub async fn run_publisher(me: Publisher, mut conn: Conn, run: Arc<Run>) -> Result<Published> {
    let id = me.id;
    let qos = run.qos;
    let v5 = run.v5;
    let window = if qos > 0 { me.window.min(usize::from(conn.receive_max)) } else { me.window }.max(1);
    let want_index = run.checkpoints.is_some();
    let mut flights: Vec<Option<Flight>> = if qos > 0 { vec![None; 1 << 16] } else { Vec::new() };
    let mut in_flight = 0usize;
    let mut next_pkid: u16 = 0;
    let mut out = Published::default();
    let mut ack_hist = histogram();
    let mut payload = me.payload;
    payload[..4].copy_from_slice(&u32::try_from(id).context("too many publishers")?.to_be_bytes());
    let start = now_ns();
    // Publishers on a schedule start spread over one interval, not all at once.
    let offset = me.interval_ns * id as u64 / run.publishers.max(1) as u64;
    let mut seq = 0u64;
    let mut sending = true;
    let mut drain_deadline = u64::MAX;
    // QoS 0 window: sequences below this count as delivered, and when the
    // window last moved.
    let mut qos0_floor = 0u64;
    let mut qos0_moved = start;
    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_BATCH + payload.len() + 256);
    let mut woff = 0usize;
    let mut need = 0usize;
    // One timer, re-armed only when the next deadline changes (schedule,
    // stop, QoS 0 stall, drain), rather than a new timer per loop turn.
    let timer = tokio::time::sleep_until(at_ns(FAR));
    tokio::pin!(timer);
    let mut timer_at = FAR;
    let mut ping = tokio::time::interval_at(at_ns(start + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        let now = now_ns();
        if sending && (me.count.is_some_and(|n| seq >= n) || me.stop_at.is_some_and(|t| now >= t)) {
            sending = false;
            drain_deadline = now + me.drain_ns;
        }
        // Encode as many publishes as the window, the schedule and the batch allow.
        let mut wake_at = if sending { me.stop_at.unwrap_or(FAR) } else { drain_deadline };
        let mut blocked_qos0 = false;
        while sending && wbuf.len() - woff < WRITE_BATCH && me.count.is_none_or(|n| seq < n) {
            if qos > 0 && in_flight >= window {
                break;
            }
            if run.qos0_window() && seq - qos0_floor >= window as u64 {
                let floor = run.delivered_floor(id);
                if floor > qos0_floor {
                    (qos0_floor, qos0_moved) = (floor, now_ns());
                }
                if seq - qos0_floor >= window as u64 {
                    if now_ns() >= qos0_moved + QOS0_STALL_NS {
                        // Nothing delivered for a while: the broker dropped
                        // what is outstanding (QoS 0 may be dropped); go on.
                        (qos0_floor, qos0_moved) = (seq, now_ns());
                        out.window_stalls += 1;
                    } else {
                        blocked_qos0 = true;
                        wake_at = wake_at.min(qos0_moved + QOS0_STALL_NS);
                        break;
                    }
                }
            }
            if me.interval_ns > 0 {
                let due = start + offset + seq * me.interval_ns;
                if due > now_ns() {
                    wake_at = wake_at.min(due);
                    break;
                }
            }
            let topic = &me.topics[(seq % me.topics.len() as u64) as usize];
            let sent = now_ns();
            payload[4..12].copy_from_slice(&seq.to_be_bytes());
            payload[12..20].copy_from_slice(&sent.to_be_bytes());
            let pkid = if qos > 0 {
                // The window is far below 65535, so a free id is near.
                loop {
                    next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                    if flights[usize::from(next_pkid)].is_none() {
                        break next_pkid;
                    }
                }
            } else {
                0
            };
            // Publish the sequence before the bytes leave: a subscriber
            // takes anything at or above it for another run's message.
            run.next_seq[id].store(seq + 1, Ordering::Release);
            match &me.signer {
                Some(key) => {
                    let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    let sb = mqs1::sign(key, &me.device_id, topic, &payload, false, seq + 1, wall_ms)?;
                    if v5 {
                        let value = sb.to_property_value();
                        wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, Some(&value), &[], &payload);
                    } else {
                        let mut head = [0u8; mqs1::ENVELOPE_OVERHEAD];
                        head[..mqs1::MAGIC.len()].copy_from_slice(mqs1::MAGIC);
                        head[mqs1::MAGIC.len()..].copy_from_slice(&sb.to_bytes());
                        wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, None, &head, &payload);
                    }
                }
                None => wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, None, &[], &payload),
            }
            if qos > 0 {
                flights[usize::from(pkid)] = Some(Flight { seq, sent_ns: sent });
                in_flight += 1;
            }
            if run.in_window(sent) {
                out.sent_in_window += 1;
            }
            out.last_send_ns = sent;
            seq += 1;
        }
        if sending && me.count.is_some_and(|n| seq >= n) {
            sending = false;
            drain_deadline = now_ns() + me.drain_ns;
            wake_at = drain_deadline;
        }
        let writing = woff < wbuf.len();
        if !sending && ((!writing && in_flight == 0) || now_ns() >= drain_deadline) {
            break;
        }
        if wake_at != timer_at {
            timer.as_mut().reset(at_ns(wake_at));
            timer_at = wake_at;
        }
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, need) => {
                if read? == 0 {
                    bail!("the broker closed publisher {}'s connection", me.device_id);
                }
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
                    let completes = match h.first >> 4 {
                        wire::PUBACK if qos == 1 => true,
                        wire::PUBREC if qos == 2 => false,
                        wire::PUBCOMP if qos == 2 => true,
                        wire::DISCONNECT => bail!(
                            "the broker disconnected publisher {}: {}", me.device_id, wire::disconnect_reason(body)
                        ),
                        _ => continue,
                    };
                    let ack = wire::ack_in(body, v5, want_index)?;
                    let Some(flight) = flights[usize::from(ack.pkid)] else { continue };
                    if let (Some(index), Some(wait)) = (ack.index, &run.checkpoints)
                        && run.in_window(flight.sent_ns)
                    {
                        wait.lock().unwrap_or_else(|p| p.into_inner()).acked(index, now);
                    }
                    if ack.reason >= 0x80 {
                        flights[usize::from(ack.pkid)] = None;
                        in_flight -= 1;
                        out.rejected += 1;
                        out.excluded.push(flight.seq);
                        continue;
                    }
                    if !completes {
                        wire::ack(&mut wbuf, wire::PUBREL, ack.pkid);
                        continue;
                    }
                    flights[usize::from(ack.pkid)] = None;
                    in_flight -= 1;
                    out.acked += 1;
                    out.last_ack_ns = now;
                    if run.in_window(now) {
                        out.acked_in_window += 1;
                    }
                    if run.in_window(flight.sent_ns) {
                        ack_hist.saturating_record(now.saturating_sub(flight.sent_ns).max(1));
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
            () = &mut timer => {}
            _ = run.wake[id].notified(), if blocked_qos0 => {}
            _ = ping.tick() => wire::pingreq(&mut wbuf),
        }
    }
    out.sent = seq;
    for flight in flights.iter().flatten() {
        out.unacked += 1;
        out.excluded.push(flight.seq);
    }
    out.ack_hist = Some(ack_hist);
    // No DISCONNECT: rumqttd 0.20 frees a connection's slot both on
    // DISCONNECT and on close, which can drop an innocent new connection
    // that took the slot in between (the first sealmq worked around it); a plain
    // close means the same to every broker here, since there is no will.
    let _ = wr.shutdown().await;
    Ok(out)
}

//! What waits for one connection of the external router ([`super`]), and
//! the log read back when memory is not enough.
//!
//! A [`Backlog`] holds the router's publishes in memory up to
//! [`QUEUE_MESSAGES`] and [`QUEUE_BYTES`]. Past them nothing acknowledged
//! is dropped: the backlog switches to the log. From the first index that
//! did not fit, every record of this connection (the publisher's
//! connection, [`super::link_of`]) is read back from the gateway's log
//! ([`LogSource`]) in index order, so in order per publisher, a chunk at a
//! time, until the reader reaches the log's head; then memory takes over
//! again. A message read back carries what the log holds: topic, payload,
//! QoS, retain flag, publisher and MQS1 signature (as the `mqs1`
//! property), not the publisher's other properties, which are not logged.
//!
//! Memory is bounded by the queue and one chunk ([`CHUNK_RECORDS`]).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use sealmq_audit::store::{LogReader, LogStats, StoreError};
use sealmq_audit::{Record, SYSTEM_DEVICE_PREFIX, mqs1};
use tokio::time::Instant;

use super::{QUEUE_BYTES, QUEUE_MESSAGES};
use crate::codec::v5;
use crate::route::Message;

/// Records read back from the log in one query.
pub(super) const CHUNK_RECORDS: u32 = 512;

/// The gateway's log, as the router reads it back.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// Records and payloads.
    pub reader: LogReader,
    /// The head: records below it are committed.
    pub stats: Arc<LogStats>,
}

/// Where a publish offered to a connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Into memory.
    Memory,
    /// Left to the log: it is (or was) read back from there.
    Log,
    /// Nowhere: no room, and not in the log (or no log to read).
    Dropped,
}

/// What waits for one connection (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Backlog {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    /// Reading the log back: (first index of the stretch, next to read).
    /// Every record of this connection from the first on comes from the log.
    refill: Option<(u64, u64)>,
    /// What the last stretch read: a late publish in it was sent from the log.
    covered: Range<u64>,
    /// Set at the first message deferred or dropped, until all was sent.
    pub(super) overflowing: bool,
}

impl Backlog {
    /// Queues a publish; `from_log`: the router can read it back.
    pub(super) fn offer(&mut self, message: Arc<Message>, from_log: bool) -> Queued {
        if let Some(index) = message.index {
            // Indices reach the router nearly, not exactly, in order (many
            // sessions append at once): a late one the reader has passed
            // (or will reach) is already taken care of.
            if self.covered.contains(&index) || self.refill.is_some_and(|(first, _)| index >= first) {
                return Queued::Log;
            }
        }
        let size = queued_size(&message);
        if self.messages.len() < QUEUE_MESSAGES && self.bytes + size <= QUEUE_BYTES {
            self.bytes += size;
            self.messages.push_back(message);
            return Queued::Memory;
        }
        self.overflowing = true;
        match message.index {
            Some(index) if from_log => {
                // The reader starts here, or goes back here: a few records
                // may be read twice (receiving gateways drop duplicates).
                self.refill = Some(match self.refill {
                    Some((first, next)) => (first.min(index), next.min(index)),
                    None => (index, index),
                });
                Queued::Log
            }
            _ => Queued::Dropped,
        }
    }

    /// The oldest message in memory.
    pub(super) fn take(&mut self) -> Option<Arc<Message>> {
        let message = self.messages.pop_front()?;
        self.bytes -= queued_size(&message);
        Some(message)
    }

    /// The next index to read from the log, once memory is empty (what is
    /// there is older than anything the reader reads).
    pub(super) fn to_read(&self) -> Option<u64> {
        if self.messages.is_empty() { self.refill.map(|(_, next)| next) } else { None }
    }

    /// The reader read everything before `next`, having started at `start`,
    /// and the log's head is now `head`: past it, memory takes over (the
    /// caller holds the backlog's lock, so no publish is offered between).
    pub(super) fn advanced(&mut self, start: u64, next: u64, head: u64) {
        let Some((first, current)) = self.refill else { return };
        if current != start {
            // Sent back meanwhile by an overflow: read from there.
            return;
        }
        if next >= head {
            self.refill = None;
            self.covered = first..next;
        } else {
            self.refill = Some((first, next));
        }
    }

    /// The lowest index waiting, in memory or in the log; `u64::MAX`: none.
    pub(super) fn low(&self) -> u64 {
        let memory = self.messages.iter().filter_map(|m| m.index).min().unwrap_or(u64::MAX);
        memory.min(self.refill.map_or(u64::MAX, |(_, next)| next))
    }

    /// From `index` on, everything of this connection comes from the log:
    /// what a gateway restarted had not had acknowledged.
    pub(super) fn resume(&mut self, index: u64) {
        self.refill = Some(match self.refill {
            Some((first, next)) => (first.min(index), next.min(index)),
            None => (index, index),
        });
    }

    /// Whether nothing waits, in memory or in the log.
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.refill.is_none()
    }
}

/// What a queued message counts against [`QUEUE_BYTES`].
pub(super) fn queued_size(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

/// Reads the log from `next` up to the head, at most [`CHUNK_RECORDS`]
/// records: the messages of those that go through connection `n` (`mine`),
/// and the index after the last record read. Records of no publish (the
/// registry's, rules', the log's own) and erased payloads are skipped
/// (`erased` counts the latter).
pub(super) async fn read_back(
    source: &LogSource,
    next: u64,
    mine: impl Fn(&str) -> bool,
    erased: &mut u64,
) -> Result<(Vec<Arc<Message>>, u64), StoreError> {
    let head = source.stats.head();
    if next >= head {
        return Ok((Vec::new(), next));
    }
    let records = source.reader.records_between(next, head, CHUNK_RECORDS).await?;
    let end = records.last().map_or(head, |r| r.index + 1);
    let mut messages = Vec::new();
    for stored in records {
        let Ok(Record::Publish(record)) = Record::decode(&stored.body) else { continue };
        // The log's own records (`$sealmq/…`, erasures) were never routed.
        if record.device_id.starts_with(SYSTEM_DEVICE_PREFIX) || !mine(&record.device_id) {
            continue;
        }
        let Some(payload) = stored.payload else {
            *erased += 1;
            continue;
        };
        let properties = record.signature.map(|sb| v5::PublishProperties {
            user_properties: vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())],
            ..Default::default()
        });
        messages.push(Arc::new(Message {
            topic: Bytes::from(record.topic.into_bytes()),
            payload: Bytes::from(payload),
            properties,
            qos: record.qos,
            retain: record.retain,
            index: Some(stored.index),
            origin: None,
            from: record.device_id.into(),
            at: Instant::now(),
            received_ms: record.received_ms,
        }));
    }
    Ok((messages, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(index: u64) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"p"),
            properties: None,
            qos: 1,
            retain: false,
            index: Some(index),
            origin: None,
            from: "c".into(),
            at: Instant::now(),
            received_ms: 0,
        })
    }

    #[test]
    fn past_memory_the_log_takes_over_until_the_reader_catches_up() {
        let mut backlog = Backlog::default();
        for i in 0..QUEUE_MESSAGES as u64 {
            assert_eq!(backlog.offer(message(i), true), Queued::Memory);
        }
        let full = QUEUE_MESSAGES as u64;
        assert_eq!(backlog.offer(message(full + 1), true), Queued::Log, "past memory: the log");
        // A late, lower index goes back the reader's start.
        assert_eq!(backlog.offer(message(full), true), Queued::Log);
        assert_eq!(backlog.offer(message(full + 5), true), Queued::Log, "the log has it");
        assert_eq!(backlog.to_read(), None, "memory first: it is older");
        while backlog.take().is_some() {}
        assert_eq!(backlog.to_read(), Some(full));
        backlog.advanced(full, full + 10, full + 20);
        assert_eq!(backlog.to_read(), Some(full + 10), "not at the head yet");
        backlog.advanced(full + 10, full + 20, full + 20);
        assert!(backlog.is_empty(), "at the head: memory again");
        assert_eq!(backlog.offer(message(full + 3), true), Queued::Log, "read back already");
        assert_eq!(backlog.offer(message(full + 20), true), Queued::Memory);
        assert_eq!(backlog.offer(message(full + 21), false).clone(), Queued::Memory);
    }

    #[test]
    fn without_a_log_what_does_not_fit_is_dropped() {
        let mut backlog = Backlog::default();
        for i in 0..QUEUE_MESSAGES as u64 {
            backlog.offer(message(i), false);
        }
        assert_eq!(backlog.offer(message(1 << 40), false), Queued::Dropped);
        assert!(backlog.overflowing);
    }
}

//! Writing one scrape: every counter of [`Metrics`], the log's figures and
//! what the scrape gathered ([`Scrape`]), through `prometheus-client`'s
//! encoder (names, escaping, the text format's rules are its own).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use sealmq_audit::store::{DatabaseSize, HistogramSnapshot};

use super::{Dropped, Metrics, Protocol, QOS, Refusal, Rejection, RuleCount, Transport, connection_slot};

/// What only a scrape gathers (reads of the database and the witness
/// store), handed to [`Metrics::render`]; `None` where there is nothing to
/// say (no witnesses) or it could not be read (the series is left out).
#[derive(Debug, Default)]
pub struct Scrape {
    /// The log database's size.
    pub database: Option<DatabaseSize>,
    /// Witnesses, when a witness policy is configured.
    pub witnessing: Option<WitnessingView>,
    /// The names of the active rules: only theirs are written, so removed
    /// rules do not pile up series.
    pub active_rules: Option<Vec<String>>,
    /// The external router's counters (none: routing in process).
    pub router: Option<RouterView>,
}

/// The external router's counters (a cluster in front of the gateways).
#[derive(Debug, Default, Clone, Copy)]
pub struct RouterView {
    /// Connections to the cluster lost.
    pub connection_losses: u64,
    /// Reconnections to another node than the one lost.
    pub failovers: u64,
    /// Publishes not sent upstream (expired, too large, or no log to read back).
    pub dropped: u64,
    /// Publishes read back from the log past the in-memory queue.
    pub refilled: u64,
    /// Publishes sent again after a connection was lost.
    pub resent: u64,
    /// Routed copies a subscription already had, dropped.
    pub duplicates: u64,
}

/// The witnesses as a scrape sees them.
#[derive(Debug, Default)]
pub struct WitnessingView {
    /// The size of the latest checkpoint that meets the quorum.
    pub witnessed_size: Option<u64>,
    /// Each witness of the policy.
    pub witnesses: Vec<WitnessView>,
}

/// One witness.
#[derive(Debug, Default)]
pub struct WitnessView {
    /// Its name in the policy.
    pub name: String,
    /// The largest tree size it cosigned (as stored).
    pub cosigned_size: Option<u64>,
    /// When it last cosigned, Unix milliseconds.
    pub last_success_ms: Option<u64>,
    /// Requests sent to it by this process.
    pub requests: u64,
    /// Of those, the ones that did not end in a cosignature.
    pub failures: u64,
}

/// Writes one scrape: the collector of a registry made for it.
#[derive(Debug)]
pub(super) struct Exposition {
    pub(super) metrics: Arc<Metrics>,
    pub(super) scrape: Scrape,
}

/// Writes one metric family's descriptor and its series.
struct Out<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl Out<'_, '_> {
    fn descriptor<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        kind: MetricType,
    ) -> Result<MetricEncoder<'s>, fmt::Error> {
        self.encoder.encode_descriptor(name, help, None, kind)
    }

    /// A counter, one series per label set.
    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> Result<(), fmt::Error> {
        let mut metric = self.descriptor(name, help, MetricType::Counter)?;
        for (labels, value) in series {
            metric.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
        }
        Ok(())
    }

    /// A gauge, one series per label set.
    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, f64)>,
    ) -> Result<(), fmt::Error> {
        let mut metric = self.descriptor(name, help, MetricType::Gauge)?;
        for (labels, value) in series {
            metric.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), fmt::Error> {
        self.descriptor(name, help, MetricType::Counter)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) -> Result<(), fmt::Error> {
        self.descriptor(name, help, MetricType::Gauge)?.encode_gauge(&value)
    }

    /// A histogram of integer observations, each bound and the sum divided
    /// by `scale` (nanoseconds → seconds: 1e9).
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        snapshot: &HistogramSnapshot,
        scale: f64,
    ) -> Result<(), fmt::Error> {
        let mut buckets: Vec<(f64, u64)> =
            snapshot.buckets.iter().map(|(bound, n)| (*bound as f64 / scale, *n)).collect();
        buckets.push((f64::INFINITY, snapshot.above));
        let sum = snapshot.sum as f64 / scale;
        self.descriptor(name, help, MetricType::Histogram)?.encode_histogram::<NoLabelSet>(
            sum,
            snapshot.count(),
            &buckets,
            None,
        )
    }
}

fn load(counters: &[AtomicU64], n: usize) -> u64 {
    counters[n].load(Ordering::Relaxed)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let m = &*self.metrics;
        let mut out = Out { encoder: &mut encoder };
        let kinds = || Transport::ALL.iter().flat_map(|t| Protocol::ALL.iter().map(move |p| (*t, *p)));
        let kind_labels = |(t, p): (Transport, Protocol)| [("listener", t.label()), ("protocol", p.label())];

        out.gauges(
            "connections_open",
            "Client connections open now, by listener and MQTT version.",
            kinds().map(|k| {
                (kind_labels(k), m.connections_open[connection_slot(k.0, k.1)].load(Ordering::Relaxed) as f64)
            }),
        )?;
        out.counters(
            "connections_accepted",
            "CONNECTs accepted, by listener and MQTT version.",
            kinds().map(|k| (kind_labels(k), load(&m.connections_accepted, connection_slot(k.0, k.1)))),
        )?;
        out.counters(
            "connections_refused",
            "CONNECTs refused, by reason.",
            Refusal::ALL.iter().map(|r| ([("reason", r.label())], load(&m.connections_refused, *r as usize))),
        )?;
        out.counters(
            "messages_received",
            "Publishes from clients (and their wills) logged, by QoS as published.",
            (0..3).map(|q| ([("qos", QOS[q])], load(&m.received, q))),
        )?;
        out.counters(
            "messages_delivered",
            "Messages sent to subscribers, by QoS as delivered.",
            (0..3).map(|q| ([("qos", QOS[q])], load(&m.delivered, q))),
        )?;
        out.counters(
            "messages_dropped",
            "Deliveries dropped, by reason (the log still has every message).",
            Dropped::ALL.iter().map(|d| {
                let value = match d {
                    Dropped::QueueFull => m.queue_full.load(Ordering::Relaxed),
                    other => load(&m.dropped, *other as usize),
                };
                ([("reason", d.label())], value)
            }),
        )?;
        out.counters(
            "publishes_rejected",
            "Publishes refused, by reason: nothing logged, nobody receives them.",
            Rejection::ALL.iter().map(|r| ([("reason", r.label())], load(&m.rejected, *r as usize))),
        )?;
        out.counter(
            "messages_duplicate",
            "MQS1 retransmissions acknowledged without a second record.",
            m.duplicates.load(Ordering::Relaxed),
        )?;
        out.counter(
            "messages_routed",
            "Logged publishes handed to subscribers: clients', wills, rules' actions.",
            m.routed.load(Ordering::Relaxed),
        )?;
        out.counter(
            "payload_erased_bytes",
            "Stored payload bytes erased (retention rules, erasure requests); the records stay.",
            m.payload_erased_bytes.load(Ordering::Relaxed),
        )?;
        out.counter(
            "log_archived_records",
            "Sealed records archived (tlog-tiles) and removed from the database.",
            m.archived_records.load(Ordering::Relaxed),
        )?;
        out.counter(
            "log_archived_bytes",
            "Bytes of records and payloads archived and removed from the database.",
            m.archived_bytes.load(Ordering::Relaxed),
        )?;
        self.encode_log(&mut out)?;
        self.encode_witnesses(&mut out)?;
        self.encode_rules(&mut out)?;
        self.encode_router(&mut out)
    }
}

impl Exposition {
    fn encode_router(&self, out: &mut Out<'_, '_>) -> Result<(), fmt::Error> {
        let Some(r) = self.scrape.router else { return Ok(()) };
        let series = [
            ("router_connection_losses", "Connections to the external broker or cluster lost.", r.connection_losses),
            ("router_failovers", "Reconnections to another of the cluster's nodes than the one lost.", r.failovers),
            ("router_publishes_dropped", "Publishes not routed: expired, too large, or erased.", r.dropped),
            ("router_publishes_refilled", "Publishes read back from the log past the in-memory queue.", r.refilled),
            ("router_publishes_resent", "Publishes sent again after a connection to a node was lost.", r.resent),
            (
                "router_duplicates_dropped",
                "Routed copies a subscription already had (same origin and index).",
                r.duplicates,
            ),
        ];
        for (name, help, value) in series {
            out.counter(name, help, value)?;
        }
        Ok(())
    }

    fn encode_log(&self, out: &mut Out<'_, '_>) -> Result<(), fmt::Error> {
        let log = &self.metrics.log;
        out.counter(
            "log_appended_records",
            "Records appended to the log by this process (rules' actions and registry changes included).",
            log.appended_records(),
        )?;
        out.counter("log_commits", "Group commits (one SQLite transaction each).", log.commits())?;
        out.counter(
            "log_commit_failures",
            "Group commits that failed: their publishes were refused, nothing logged.",
            log.failed_commits(),
        )?;
        out.histogram(
            "log_append_latency_seconds",
            "From an append's submission to its records being durable (fsynced).",
            &log.append_latency(),
            1e9,
        )?;
        out.histogram("log_commit_group_records", "Records per group commit.", &log.group_size(), 1.0)?;
        out.histogram(
            "log_commit_seconds",
            "Time each group commit took to make its records durable (payload files, transaction, fsync); the \
             appends queued behind it wait meanwhile.",
            &log.commit_time(),
            1e9,
        )?;
        out.histogram(
            "log_seal_lag_seconds",
            "From a record being durable (PUBACK) to a signed checkpoint covering it.",
            &log.seal_lag(),
            1e9,
        )?;
        out.histogram(
            "log_seal_seconds",
            "Time the log's sequencer spent sealing each block (its tree hashes, header, signed checkpoint and \
             the search index rows waiting, one transaction); appends wait meanwhile.",
            &log.seal_time(),
            1e9,
        )?;
        out.gauge("log_records", "Records in the log: its head, the index the next record gets.", log.head())?;
        out.gauge("log_sealed_records", "Records covered by the latest signed checkpoint.", log.sealed_size())?;
        if let Some(size) = self.scrape.database {
            out.gauge(
                "log_database_bytes",
                "The log database's size (pages * page size), free pages included.",
                size.bytes,
            )?;
            out.gauge(
                "log_database_free_bytes",
                "Free pages in the log database (erased payloads), reused before the file grows.",
                size.free_bytes,
            )?;
            out.gauge(
                "log_payload_files",
                "Payloads of 64 KiB or more, stored as files beside the log database.",
                size.payload_files,
            )?;
            out.gauge("log_payload_file_bytes", "The bytes of those payload files.", size.payload_file_bytes)?;
        }
        Ok(())
    }

    fn encode_witnesses(&self, out: &mut Out<'_, '_>) -> Result<(), fmt::Error> {
        let Some(witnessing) = &self.scrape.witnessing else { return Ok(()) };
        if let Some(size) = witnessing.witnessed_size {
            out.gauge(
                "log_witnessed_records",
                "Records under the latest checkpoint that meets the witness quorum.",
                size,
            )?;
        }
        let witnesses = &witnessing.witnesses;
        let by_name = |w: &'_ WitnessView| [("witness", w.name.clone())];
        out.gauges(
            "witness_cosigned_records",
            "The largest tree size each witness cosigned.",
            witnesses.iter().filter_map(|w| Some((by_name(w), w.cosigned_size? as f64))),
        )?;
        out.gauges(
            "witness_last_success_timestamp_seconds",
            "When each witness last cosigned (Unix time).",
            witnesses.iter().filter_map(|w| Some((by_name(w), w.last_success_ms? as f64 / 1000.0))),
        )?;
        out.counters(
            "witness_requests",
            "Cosigning requests sent to each witness.",
            witnesses.iter().map(|w| (by_name(w), w.requests)),
        )?;
        out.counters(
            "witness_failures",
            "Requests to each witness that did not end in a cosignature.",
            witnesses.iter().map(|w| (by_name(w), w.failures)),
        )
    }

    fn encode_rules(&self, out: &mut Out<'_, '_>) -> Result<(), fmt::Error> {
        let Some(active) = self.scrape.active_rules.as_ref().filter(|a| !a.is_empty()) else { return Ok(()) };
        let counts: Vec<(&String, RuleCount)> = {
            let rules = self.metrics.rules.lock().unwrap_or_else(|p| p.into_inner());
            active.iter().map(|name| (name, rules.get(name).copied().unwrap_or_default())).collect()
        };
        out.counters(
            "rule_firings",
            "Triggers on which each active rule logged actions.",
            counts.iter().map(|(name, c)| ([("rule", name.as_str())], c.firings)),
        )?;
        out.counters(
            "rule_actions",
            "Actions each active rule logged.",
            counts.iter().map(|(name, c)| ([("rule", name.as_str())], c.actions)),
        )
    }
}

#[cfg(test)]
mod tests {
    use sealmq_audit::store::LogStats;

    use super::super::Metrics;
    use super::*;

    #[test]
    fn witnesses_are_written_one_series_each_and_rules_only_while_active() {
        let metrics = Arc::new(Metrics::new(Arc::new(LogStats::default())));
        metrics.rule_actions([("removed", 1), ("kept", 2), ("kept", 2)]);
        let w1 = WitnessView {
            name: "w1".into(),
            cosigned_size: Some(12),
            last_success_ms: Some(1_500),
            requests: 3,
            failures: 1,
        };
        let w2 = WitnessView { name: "w2".into(), requests: 2, failures: 2, ..WitnessView::default() };
        let scrape = Scrape {
            database: None,
            witnessing: Some(WitnessingView { witnessed_size: Some(12), witnesses: vec![w1, w2] }),
            active_rules: Some(vec!["kept".into(), "idle".into()]),
            router: Some(RouterView { duplicates: 3, failovers: 1, ..RouterView::default() }),
        };
        let text = metrics.render(scrape).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "sealmq_log_witnessed_records 12",
            "sealmq_witness_cosigned_records{witness=\"w1\"} 12.0",
            "sealmq_witness_last_success_timestamp_seconds{witness=\"w1\"} 1.5",
            "sealmq_witness_requests_total{witness=\"w2\"} 2",
            "sealmq_witness_failures_total{witness=\"w1\"} 1",
            "sealmq_rule_firings_total{rule=\"kept\"} 1",
            "sealmq_rule_actions_total{rule=\"kept\"} 2",
            "sealmq_rule_firings_total{rule=\"idle\"} 0",
            "sealmq_router_duplicates_dropped_total 3",
            "sealmq_router_failovers_total 1",
            "sealmq_router_publishes_refilled_total 0",
        ] {
            assert!(lines.contains(&expected), "{expected:?} missing from:\n{text}");
        }
        // A witness that never cosigned has no size or time to show.
        assert!(!text.contains("sealmq_witness_cosigned_records{witness=\"w2\"}"), "{text}");
        assert!(!text.contains("rule=\"removed\""), "a rule no longer active is not written:\n{text}");
        // No database size read: no series rather than a wrong one.
        assert!(!text.contains("sealmq_log_database_bytes"), "{text}");
    }
}

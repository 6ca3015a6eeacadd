//! One run: the connections set up, the publisher, subscriber and watcher
//! tasks started and waited for, the broker's memory and CPU sampled, and
//! what they counted summed up into [`Results`].

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::client::{Conn, open_many, run_idle};
use crate::clock::{at_ns, now_ns, secs_ns};
use crate::process::{CpuMark, cpu_mark, cpu_percent, cpu_secs_between, open_files_limit, rss_kib};
use crate::publisher::{Published, Publisher, run_publisher};
use crate::report::{Checkpoints, Results};
use crate::stats::{CheckpointWait, histogram, tally};
use crate::subscriber::{Received, run_checkpoint_watch, run_subscriber};
use crate::{BenchArgs, EXIT_FAILED_CHECK, Mqtt, Pattern, keys, report};

/// Bytes at the start of every payload: publisher (u32), sequence (u64),
/// send time in ns on this process's monotonic clock (u64), big-endian.
pub const HEADER: usize = 20;
/// During the drain, a delivery is given up once nothing at all arrived for this long.
const DRAIN_STALL: Duration = Duration::from_secs(2);
/// The topic sealmq publishes each signed checkpoint on.
pub const CHECKPOINT_TOPIC: &str = "$SYS/sealmq/checkpoint";
/// Shared subscription group name.
const SHARE_GROUP: &str = "sealmqbench";

/// State shared by the tasks of one run.
pub struct Run {
    pub publishers: usize,
    pub subscribers: usize,
    pub pattern: Pattern,
    pub qos: u8,
    pub v5: bool,
    /// Measured traffic: messages sent at or after `warm_end` and before
    /// `measure_end` (u64::MAX with --count).
    pub warm_end: u64,
    pub measure_end: u64,
    /// Sequence numbers handed out so far, per publisher: a subscriber
    /// treats anything at or above as not this run's.
    pub next_seq: Vec<AtomicU64>,
    /// QoS 0 window: per publisher, per receiving subscriber (one cell for
    /// pairs and shared), the highest sequence delivered + 1.
    pub delivered_upto: Vec<AtomicU64>,
    pub cells_per_publisher: usize,
    /// Wakes a publisher waiting on its QoS 0 window.
    pub wake: Vec<Notify>,
    /// First copies delivered, all subscribers together.
    pub distinct: AtomicU64,
    pub checkpoints: Option<Mutex<CheckpointWait>>,
}

impl Run {
    pub fn qos0_window(&self) -> bool {
        self.qos == 0 && self.subscribers > 0
    }

    /// The subscriber that takes publisher `p`'s topics under `pairs`.
    pub fn pair_of(&self, p: usize) -> usize {
        p % self.subscribers
    }

    pub fn cell(&self, publisher: usize, subscriber: usize) -> &AtomicU64 {
        let slot = if self.cells_per_publisher == 1 { 0 } else { subscriber };
        &self.delivered_upto[publisher * self.cells_per_publisher + slot]
    }

    /// The lowest "delivered up to" over the subscribers publisher `p` waits on.
    pub fn delivered_floor(&self, p: usize) -> u64 {
        let cells = &self.delivered_upto[p * self.cells_per_publisher..(p + 1) * self.cells_per_publisher];
        cells.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(u64::MAX)
    }

    /// How many subscribers should receive each of a publisher's messages.
    pub fn receivers(&self) -> u64 {
        match self.pattern {
            _ if self.subscribers == 0 => 0,
            Pattern::Pairs | Pattern::Shared => 1,
            Pattern::Fanout | Pattern::Wildcard => self.subscribers as u64,
        }
    }

    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.warm_end && ns < self.measure_end
    }
}

/// Runs the load `args` describe against a broker; exit 1 if messages
/// were lost, duplicated or misrouted.
pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    now_ns();
    let duration = args.duration.unwrap_or(10.0);
    ensure!(args.payload >= HEADER, "--payload must be at least {HEADER} bytes");
    ensure!(args.topics >= 1, "--topics must be at least 1");
    ensure!(args.inflight >= 1 && args.inflight < 60_000, "--inflight must be between 1 and 59999");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or positive");
    ensure!(duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0, "durations must be positive");
    ensure!(!args.checkpoints || args.mqtt == Mqtt::V5, "--checkpoints needs --mqtt 5 (PUBACKs carry the log index)");
    ensure!(args.idle == 0 || args.broker_pid.is_some(), "--idle needs --broker-pid to read the broker's memory");
    ensure!(args.publishers > 0 || args.idle > 0, "nothing to do: no publishers and no idle connections");
    // One descriptor per connection, and a few for the runtime and files.
    let needed = (args.idle + args.publishers + args.subscribers + 64) as u64;
    if let Some(limit) = open_files_limit() {
        ensure!(
            needed <= limit,
            "{needed} connections need more open files than this process may have ({limit}): raise `ulimit -n`"
        );
    }
    let addr = resolve(&args.host).await?;
    let sub_addr = match &args.sub_host {
        Some(host) => resolve(host).await?,
        None => addr,
    };
    let v5 = args.mqtt == Mqtt::V5;
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => {
            let mut run_id = [0u8; 4];
            getrandom::fill(&mut run_id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            format!("bench-{}", hex::encode(run_id))
        }
    };
    let (p_count, s_count) = (args.publishers, args.subscribers);
    let topic = |p: usize, t: usize| format!("{prefix}/{p}/{t}");
    let device_ids: Vec<String> = (0..p_count).map(|p| format!("{prefix}-p{p}")).collect();

    let signers = match (&args.register_data, args.signed) {
        (Some(data), true) => {
            eprintln!("registering {p_count} signed devices in {}", data.display());
            keys::register(data, &device_ids).await?
        }
        _ => Vec::new(),
    };

    let stop_tx = watch::channel(false).0;
    let mut background: JoinSet<Result<()>> = JoinSet::new();
    let rss_start = args.broker_pid.and_then(rss_kib);

    // Idle connections: the broker's memory per connection.
    let mut idle_report = Value::Null;
    if args.idle > 0 {
        let pid = args.broker_pid.expect("checked above");
        let before = rss_kib(pid).with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let started = Instant::now();
        let conns = open_many(addr, v5, args.idle, args.connect_concurrency, |i| format!("{prefix}-i{i}"))
            .await
            .context("opening idle connections")?;
        let connect_secs = started.elapsed().as_secs_f64();
        for conn in conns {
            background.spawn(run_idle(conn, stop_tx.subscribe()));
        }
        // Let the broker finish setting up what each connection costs it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid).with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let per_conn = (after.saturating_sub(before) * 1024) as f64 / args.idle as f64;
        idle_report = json!({
            "connections": args.idle,
            "connect_secs": (connect_secs * 100.0).round() / 100.0,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_connection": per_conn.round(),
        });
    }

    // Subscribers first, so that nothing published is missed.
    let filters_of = |s: usize| -> Vec<String> {
        match args.pattern {
            Pattern::Pairs => (0..p_count)
                .filter(|p| p % s_count == s)
                .flat_map(|p| (0..args.topics).map(move |t| (p, t)))
                .map(|(p, t)| topic(p, t))
                .collect(),
            Pattern::Fanout => {
                (0..p_count).flat_map(|p| (0..args.topics).map(move |t| (p, t))).map(|(p, t)| topic(p, t)).collect()
            }
            Pattern::Wildcard => vec![format!("{prefix}/#")],
            Pattern::Shared => vec![format!("$share/{SHARE_GROUP}/{prefix}/#")],
        }
    };
    let mut sub_conns = if p_count > 0 {
        open_many(sub_addr, v5, s_count, args.connect_concurrency, |s| format!("{prefix}-s{s}"))
            .await
            .context("connecting subscribers")?
    } else {
        Vec::new()
    };
    for (s, conn) in sub_conns.iter_mut().enumerate() {
        let filters = filters_of(s);
        if !filters.is_empty() {
            conn.subscribe(&filters, args.qos).await.with_context(|| format!("subscriber {s}"))?;
        }
    }
    let checkpoint_conn = if args.checkpoints {
        let mut conn = Conn::open(addr, v5, &format!("{prefix}-cp")).await.context("checkpoint watcher")?;
        conn.subscribe(&[CHECKPOINT_TOPIC.to_string()], 0).await.context("subscribing to the checkpoints")?;
        Some(conn)
    } else {
        None
    };
    let pub_conns = open_many(addr, v5, p_count, args.connect_concurrency, |p| device_ids[p].clone())
        .await
        .context("connecting publishers")?;

    // Timing starts now.
    let start = now_ns();
    let warm_end = start + secs_ns(args.warmup);
    let measure_end = if args.count.is_some() { u64::MAX } else { warm_end + secs_ns(duration) };
    let cells_per_publisher = match args.pattern {
        Pattern::Fanout | Pattern::Wildcard => s_count.max(1),
        Pattern::Pairs | Pattern::Shared => 1,
    };
    let run = Arc::new(Run {
        publishers: p_count,
        subscribers: s_count,
        pattern: args.pattern,
        qos: args.qos,
        v5,
        warm_end,
        measure_end,
        next_seq: (0..p_count).map(|_| AtomicU64::new(0)).collect(),
        delivered_upto: (0..p_count * cells_per_publisher).map(|_| AtomicU64::new(0)).collect(),
        cells_per_publisher,
        wake: (0..p_count).map(|_| Notify::new()).collect(),
        distinct: AtomicU64::new(0),
        checkpoints: args.checkpoints.then(|| Mutex::new(CheckpointWait::default())),
    });
    let mut sub_tasks = JoinSet::new();
    for (s, conn) in sub_conns.into_iter().enumerate() {
        let (run, stop) = (Arc::clone(&run), stop_tx.subscribe());
        sub_tasks.spawn(async move { (s, run_subscriber(s, conn, run, stop).await) });
    }
    if let Some(conn) = checkpoint_conn {
        background.spawn(run_checkpoint_watch(conn, Arc::clone(&run), stop_tx.subscribe()));
    }
    // Broker memory over the run, sampled.
    let rss_samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    if let Some(pid) = args.broker_pid {
        let (samples, mut stop) = (Arc::clone(&rss_samples), stop_tx.subscribe());
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(kib) = rss_kib(pid) {
                            samples.lock().unwrap_or_else(|p| p.into_inner()).push(kib);
                        }
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        });
    }
    // CPU use over the measured window.
    let marks = Arc::new(Mutex::new((None::<CpuMark>, None::<CpuMark>)));
    {
        let (marks, pid, mut stop) = (Arc::clone(&marks), args.broker_pid, stop_tx.subscribe());
        background.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at_ns(warm_end)) => {}
                _ = stop.changed() => return Ok(()),
            }
            marks.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(cpu_mark(pid));
            if measure_end != u64::MAX {
                tokio::select! {
                    _ = tokio::time::sleep_until(at_ns(measure_end)) => {}
                    _ = stop.changed() => return Ok(()),
                }
                marks.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(cpu_mark(pid));
            }
            Ok(())
        });
    }

    let payload: Vec<u8> = (0..args.payload).map(|i| (i % 251) as u8).collect();
    let interval_ns = if args.rate > 0.0 { (1e9 / args.rate).max(1.0) as u64 } else { 0 };
    let mut pub_tasks = JoinSet::new();
    let mut signers = signers.into_iter();
    for (p, conn) in pub_conns.into_iter().enumerate() {
        let me = Publisher {
            id: p,
            device_id: device_ids[p].clone(),
            topics: (0..args.topics).map(|t| topic(p, t)).collect(),
            payload: payload.clone(),
            signer: signers.next(),
            window: args.inflight,
            interval_ns,
            count: args.count,
            stop_at: (measure_end != u64::MAX).then_some(measure_end),
            drain_ns: secs_ns(args.drain),
        };
        let run = Arc::clone(&run);
        pub_tasks.spawn(async move { (p, run_publisher(me, conn, run).await) });
    }
    let mut published: Vec<Option<Published>> = (0..p_count).map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some(joined) = pub_tasks.join_next().await {
        match joined.context("a publisher task panicked")? {
            (p, Ok(out)) => published[p] = Some(out),
            (p, Err(e)) => failures.push(format!("publisher {p}: {e:#}")),
        }
    }
    // With --count the measured window ends when the last publisher is done.
    let done_mark = cpu_mark(args.broker_pid);
    let published: Vec<Published> = published.into_iter().map(Option::unwrap_or_default).collect();

    // Drain: wait for the deliveries still on their way.
    let expected: u64 = published.iter().map(|o| o.sent - o.excluded.len() as u64).sum::<u64>() * run.receivers();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let (mut last, mut last_change) = (u64::MAX, Instant::now());
    while s_count > 0 && failures.is_empty() {
        let got = run.distinct.load(Ordering::Relaxed);
        if got >= expected || Instant::now() > drain_deadline {
            break;
        }
        if got != last {
            (last, last_change) = (got, Instant::now());
        } else if last_change.elapsed() > DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(wait) = &run.checkpoints {
        // The last records wait for one more block to seal.
        while Instant::now() < drain_deadline && !wait.lock().unwrap_or_else(|p| p.into_inner()).pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rss_end = args.broker_pid.and_then(rss_kib);
    let _ = stop_tx.send(true);
    let mut received: Vec<Option<Received>> = (0..s_count).map(|_| None).collect();
    while let Some(joined) = sub_tasks.join_next().await {
        match joined.context("a subscriber task panicked")? {
            (s, Ok(got)) => received[s] = Some(got),
            (s, Err(e)) => failures.push(format!("subscriber {s}: {e:#}")),
        }
    }
    while let Some(joined) = background.join_next().await {
        if let Err(e) = joined.context("a background task panicked")? {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("the run failed:\n  {}", failures.join("\n  "));
    }
    let received: Vec<Received> = received.into_iter().flatten().collect();

    // Results.
    let t = tally(&run, &published, &received);
    let mut hist = histogram();
    let mut ack_hist = histogram();
    for r in &received {
        hist.add(&r.hist).context("merging latency histograms")?;
    }
    for o in &published {
        if let Some(h) = &o.ack_hist {
            ack_hist.add(h).context("merging ack latency histograms")?;
        }
    }
    let sum = |f: fn(&Published) -> u64| published.iter().map(f).sum::<u64>();
    let (sent, acked, rejected, unacked) = (sum(|o| o.sent), sum(|o| o.acked), sum(|o| o.rejected), sum(|o| o.unacked));
    let sent_in_window = sum(|o| o.sent_in_window);
    let acked_in_window = sum(|o| o.acked_in_window);
    let delivered_in_window: u64 = received.iter().map(|r| r.delivered_in_window).sum();
    let foreign: u64 = received.iter().map(|r| r.foreign).sum();
    let stalls = sum(|o| o.window_stalls);
    // The measured window: fixed with a duration; with a count, from the end
    // of the warm-up to the last event of each kind.
    let window_secs = |last: u64| -> f64 {
        if measure_end != u64::MAX { duration } else { last.saturating_sub(warm_end) as f64 / 1e9 }
    };
    let rate = |n: u64, last: u64| {
        let secs = window_secs(last);
        if secs > 0.0 { (n as f64 / secs).round() } else { 0.0 }
    };
    let last_send = published.iter().map(|o| o.last_send_ns).max().unwrap_or(0);
    let last_ack = published.iter().map(|o| o.last_ack_ns).max().unwrap_or(0);
    let last_recv = received.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
    let published_per_s = rate(sent_in_window, last_send);
    let acked_per_s = rate(acked_in_window, last_ack);
    let delivered_per_s = rate(delivered_in_window, last_recv);
    let cpu_from = marks.lock().unwrap_or_else(|p| p.into_inner()).0;
    let cpu_to = marks.lock().unwrap_or_else(|p| p.into_inner()).1.unwrap_or(done_mark);
    let broker_cpu = cpu_from.and_then(|from| cpu_percent(from, cpu_to, |m| m.broker));
    // The efficiency figure: the broker's CPU time (user + system, all its
    // threads) in the measured window, per message delivered in it.
    let broker_cpu_secs = cpu_from.and_then(|from| cpu_secs_between(from, cpu_to, |m| m.broker));
    let broker_cpu_us_per_delivered =
        broker_cpu_secs.filter(|_| delivered_in_window > 0).map(|secs| secs * 1e6 / delivered_in_window as f64);
    let tool_cpu = cpu_from.and_then(|from| cpu_percent(from, cpu_to, |m| m.tool));
    let rss_max = rss_samples.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().max();
    let checkpoint = run.checkpoints.as_ref().map(|w| {
        let w = w.lock().unwrap_or_else(|p| p.into_inner());
        Checkpoints { hist: w.hist.clone(), uncovered: w.pending.len(), notes: w.notes }
    });
    let failed_qos = args.qos >= 1 && (t.lost > 0 || unacked > 0 || rejected > 0);
    let ok = !failed_qos && t.duplicated == 0 && t.unexpected == 0;
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{p_count}→{s_count} {} QoS {} {} B", args.pattern.name(), args.qos, args.payload));
    let results = Results {
        label,
        addr,
        v5,
        publishers: p_count,
        subscribers: s_count,
        duration,
        window_s: window_secs(last_recv.max(last_ack)),
        sent,
        published_per_s,
        acked,
        acked_per_s,
        tally: t,
        delivered_per_s,
        expected,
        latency: hist,
        ack_latency: ack_hist,
        foreign,
        unacked,
        rejected,
        stalls,
        checkpoint,
        idle: idle_report,
        rss_start,
        rss_end,
        rss_max,
        broker_cpu,
        broker_cpu_secs,
        broker_cpu_us_per_delivered,
        tool_cpu,
        failed_qos,
        ok,
    };
    report::write(&args, &results)?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED_CHECK) })
}

/// The first address `host` resolves to.
async fn resolve(host: &str) -> Result<std::net::SocketAddr> {
    tokio::net::lookup_host(host)
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

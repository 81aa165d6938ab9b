//! Prometheus metrics: upstream's families (contract §5.2) in their Prometheus form plus imc-rs's
//! own `imc_*`, served on `--metrics-listen` with the health endpoints.
//!
//! Budget: recording never takes a lock and never shares a written cache line between cores.
//! Every cell has exactly one writer, its worker thread, which updates it with a plain relaxed
//! load and store (no `lock` prefix); the scraper reads the cells of every worker and merges them.
//! Series handles hang off the per-worker routing objects (channel, subscriber, target), found by
//! a short scan of the status codes seen so far; a series is registered (the only lock) the first
//! time a label set appears. Labels only ever carry configured names and bounded values: no
//! event type, id or client-chosen text (D12).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::channels::Hub;

/// Upstream's buckets for every duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The OpenTelemetry SDK's default explicit buckets, which upstream's body-size histograms use.
pub const SIZE_BUCKETS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// A counter cell with a single writer.
#[derive(Default, Debug)]
pub struct Cell64(AtomicU64);

impl Cell64 {
    /// Single-writer increment: a load and a store, no read-modify-write instruction.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with a single writer. Observations are integers in the family's unit
/// (nanoseconds or bytes); bucket counts are kept per bucket and summed when scraped.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[Cell64]>,
    sum: Cell64,
    count: Cell64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Cell64::default()).collect(),
            sum: Cell64::default(),
            count: Cell64::default(),
        }
    }

    #[inline]
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].add(1);
        self.sum.add(v);
        self.count.add(1);
    }

    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }
}

const fn scaled<const N: usize>(b: [f64; N], scale: f64) -> [u64; N] {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        out[i] = (b[i] * scale) as u64;
        i += 1;
    }
    out
}

static DURATION_NS: [u64; 14] = scaled(DURATION_BUCKETS, 1e9);
static SIZE_BYTES: [u64; 15] = scaled(SIZE_BUCKETS, 1.0);

/// A histogram family's bucket bounds: as exported, as recorded (integers in the recording unit),
/// and the recording units per exported unit.
fn bounds(family: Family) -> (&'static [f64], &'static [u64], f64) {
    match family {
        Family::ServerBodySize => (&SIZE_BUCKETS, &SIZE_BYTES, 1.0),
        _ => (&DURATION_BUCKETS, &DURATION_NS, 1e9),
    }
}

/// The metric families, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    DispatchDuration,
    ServerDuration,
    ServerBodySize,
    ClientDuration,
    EventsReceived,
    Deliveries,
}

impl Family {
    fn meta(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::DispatchDuration => ("kn_eventing_dispatch_duration_seconds", "histogram",
                "Duration of one subscriber's delivery chain (subscriber, reply, dead-letter sink); the status is the last call's"),
            Family::ServerDuration => ("http_server_request_duration_seconds", "histogram",
                "Duration of ingress requests, kubelet probes excluded"),
            Family::ServerBodySize => ("http_server_request_body_size_bytes", "histogram",
                "Size of ingress request bodies"),
            Family::ClientDuration => ("http_client_request_duration_seconds", "histogram",
                "Duration of each outbound attempt to a subscriber, reply target or dead-letter sink, retries included"),
            Family::EventsReceived => ("imc_events_received_total", "counter",
                "Ingress requests by channel and the status code answered"),
            Family::Deliveries => ("imc_deliveries_total", "counter",
                "Subscriber deliveries by outcome: delivered, retried (one per retry), dead_lettered, failed, dropped_overload"),
        }
    }
}

#[derive(Debug)]
enum Cells {
    Counter(Cell64),
    Histogram(Histogram),
}

/// One worker's series and gauges, shared with the scraper. A label set registered again (after
/// a routing table rebuild) gets the same cells back, so counters stay monotonic across reloads.
#[derive(Debug, Default)]
pub struct WorkerRegistry {
    series: Mutex<HashMap<(Family, String), Arc<Cells>>>,
    pub inflight: Cell64,
    pub connections: Cell64,
    pub pool_idle: Cell64,
    pub pool_hits: Cell64,
    pub pool_misses: Cell64,
}

/// Creates series on a worker; each handle is then updated without the lock.
#[derive(Clone)]
pub struct Recorder {
    reg: Arc<WorkerRegistry>,
    pub enabled: bool,
}

impl Recorder {
    pub fn new(reg: Arc<WorkerRegistry>, enabled: bool) -> Recorder {
        Recorder { reg, enabled }
    }

    pub fn registry(&self) -> &WorkerRegistry {
        &self.reg
    }

    fn register(&self, family: Family, labels: String, make: impl FnOnce() -> Cells) -> Arc<Cells> {
        self.reg
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((family, labels))
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }

    pub fn counter(&self, family: Family, labels: String) -> Counter {
        Counter(self.register(family, labels, || Cells::Counter(Cell64::default())))
    }

    pub fn histogram(&self, family: Family, labels: String) -> Hist {
        let recorded = bounds(family).1;
        Hist(self.register(family, labels, || {
            Cells::Histogram(Histogram::new(recorded))
        }))
    }
}

/// A registered counter.
#[derive(Debug, Clone)]
pub struct Counter(Arc<Cells>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        if let Cells::Counter(c) = &*self.0 {
            c.add(1);
        }
    }
}

/// A registered histogram.
#[derive(Debug, Clone)]
pub struct Hist(Arc<Cells>);

impl Hist {
    #[inline]
    pub fn observe(&self, v: u64) {
        if let Cells::Histogram(h) = &*self.0 {
            h.observe(v);
        }
    }

    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        if let Cells::Histogram(h) = &*self.0 {
            h.observe_duration(d);
        }
    }
}

/// Series keyed by a small value (a status code, an outcome), created on first use.
pub struct ByKey<K: Copy + Eq, T> {
    items: RefCell<Vec<(K, T)>>,
}

impl<K: Copy + Eq, T: Clone> Default for ByKey<K, T> {
    fn default() -> Self {
        ByKey {
            items: RefCell::new(Vec::new()),
        }
    }
}

impl<K: Copy + Eq, T: Clone> ByKey<K, T> {
    #[inline]
    pub fn get(&self, key: K, make: impl FnOnce() -> T) -> T {
        if let Some((_, t)) = self.items.borrow().iter().find(|(k, _)| *k == key) {
            return t.clone();
        }
        let t = make();
        self.items.borrow_mut().push((key, t.clone()));
        t
    }
}

/// Escapes a label value for the text format.
pub fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Renders `k="v",…` from pairs (values escaped).
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", label_value(v));
    }
    s
}

/// Process-wide facts the scraper adds to the per-worker series.
pub struct ProcessInfo {
    pub driver: &'static str,
    /// Why `auto` fell back from io_uring to epoll (a short code), if it did.
    pub fallback: Option<&'static str>,
}

/// Renders every family in the Prometheus text format 0.0.4, merging the workers' cells.
pub fn render(workers: &[Arc<WorkerRegistry>], hub: &Hub, info: &ProcessInfo) -> String {
    use std::collections::BTreeMap;
    // (family, labels) -> merged value
    enum Merged {
        Counter(u64),
        Histogram {
            buckets: Vec<u64>,
            sum: u64,
            count: u64,
        },
    }
    let mut merged: BTreeMap<(Family, String), Merged> = BTreeMap::new();
    for w in workers {
        let series = w.series.lock().unwrap_or_else(|e| e.into_inner());
        for ((family, lbl), cells) in series.iter() {
            let key = (*family, lbl.clone());
            match &**cells {
                Cells::Counter(c) => {
                    let e = merged.entry(key).or_insert(Merged::Counter(0));
                    if let Merged::Counter(n) = e {
                        *n += c.get();
                    }
                }
                Cells::Histogram(h) => {
                    let e = merged.entry(key).or_insert_with(|| Merged::Histogram {
                        buckets: vec![0; h.buckets.len()],
                        sum: 0,
                        count: 0,
                    });
                    if let Merged::Histogram {
                        buckets,
                        sum,
                        count,
                        ..
                    } = e
                    {
                        for (m, b) in buckets.iter_mut().zip(h.buckets.iter()) {
                            *m += b.get();
                        }
                        *sum += h.sum.get();
                        *count += h.count.get();
                    }
                }
            }
        }
    }
    let mut out = String::with_capacity(16 << 10);
    let mut last: Option<Family> = None;
    for ((family, lbl), value) in &merged {
        let (name, kind, help) = family.meta();
        if last != Some(*family) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            last = Some(*family);
        }
        let sep = if lbl.is_empty() { "" } else { "," };
        match value {
            Merged::Counter(n) => {
                let _ = writeln!(out, "{name}{{{lbl}}} {n}");
            }
            Merged::Histogram {
                buckets,
                sum,
                count,
            } => {
                let (bounds, _, scale) = bounds(*family);
                let mut cum = 0;
                for (i, b) in bounds.iter().enumerate() {
                    cum += buckets[i];
                    let _ = writeln!(out, "{name}_bucket{{{lbl}{sep}le=\"{b}\"}} {cum}");
                }
                let _ = writeln!(out, "{name}_bucket{{{lbl}{sep}le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{{lbl}}} {}", *sum as f64 / scale);
                let _ = writeln!(out, "{name}_count{{{lbl}}} {count}");
            }
        }
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let sum = |f: fn(&WorkerRegistry) -> &Cell64| workers.iter().map(|w| f(w).get()).sum::<u64>();
    gauge(
        &mut out,
        "imc_inflight_deliveries",
        "Subscriber deliveries in flight (D11 bounds them per worker)",
        sum(|w| &w.inflight),
    );
    gauge(
        &mut out,
        "imc_open_connections",
        "Open ingress client connections",
        sum(|w| &w.connections),
    );
    gauge(
        &mut out,
        "imc_pool_idle_connections",
        "Idle keep-alive connections to subscribers, reply targets and dead-letter sinks",
        sum(|w| &w.pool_idle),
    );
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "imc_pool_hits_total",
        "Outbound requests sent on a pooled keep-alive connection",
        sum(|w| &w.pool_hits),
    );
    counter(
        &mut out,
        "imc_pool_misses_total",
        "Outbound requests that had to open a connection",
        sum(|w| &w.pool_misses),
    );
    gauge(
        &mut out,
        "imc_config_generation",
        "Generation of the channel set in force (increments on every applied change)",
        hub.generation(),
    );
    let (ok, failed) = hub.reload_counts();
    let _ = writeln!(
        out,
        "# HELP imc_config_reloads_total Channel source reads that changed the channel set, by result\n# TYPE imc_config_reloads_total counter\nimc_config_reloads_total{{result=\"success\"}} {ok}\nimc_config_reloads_total{{result=\"error\"}} {failed}"
    );
    gauge(
        &mut out,
        "imc_config_last_reload_success",
        "1 if the last read of the channel source applied without errors, 0 otherwise",
        u64::from(hub.last_reload_ok()),
    );
    gauge(
        &mut out,
        "imc_ready",
        "1 once the first channel set is installed on every worker and while not draining",
        u64::from(hub.is_ready() && !hub.is_draining()),
    );
    let _ = writeln!(
        out,
        "# HELP imc_io_driver_info The I/O driver the workers run, and why io_uring was refused when `auto` fell back to epoll\n# TYPE imc_io_driver_info gauge\nimc_io_driver_info{{driver=\"{}\",fallback=\"{}\"}} 1",
        info.driver,
        info.fallback.unwrap_or("")
    );
    let features = hub.features();
    if !features.is_empty() {
        // One series per flag of `config-features` (the operator's ConfigMap bounds them).
        let _ = writeln!(
            out,
            "# HELP imc_feature_flag_info The config-features flags the dispatcher runs with\n# TYPE imc_feature_flag_info gauge"
        );
        for (flag, value) in features.iter() {
            let _ = writeln!(
                out,
                "imc_feature_flag_info{{{}}} 1",
                labels(&[("flag", flag), ("value", value)])
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP imc_build_info Build of imc-dispatcher\n# TYPE imc_build_info gauge\nimc_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// Serves `GET /metrics`, `/healthz` (liveness) and `/readyz` (readiness: 503 until the first
/// channel set is installed everywhere and while draining) on its own thread: scrapes never run
/// on a worker core.
pub fn serve(
    listener: TcpListener,
    workers: Vec<Arc<WorkerRegistry>>,
    hub: Arc<Hub>,
    info: ProcessInfo,
) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // Drain the head; the requests of this endpoint have no body worth reading.
        let mut h = String::new();
        while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
            h.clear();
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        let (status, ctype, body) = match path {
            "/metrics" => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(&workers, &hub, &info),
            ),
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/readyz" if hub.is_draining() => (
                "503 Service Unavailable",
                "text/plain",
                "shutting down\n".into(),
            ),
            "/readyz" if hub.is_ready() => ("200 OK", "text/plain", "ready\n".into()),
            "/readyz" => (
                "503 Service Unavailable",
                "text/plain",
                "not ready\n".into(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Ingress series of one channel (or of requests that found none), by method, status and port
/// (`true`: the https one). `imc_events_received_total` has no scheme label: both ports share its
/// cell (the registry hands out one cell per family and labels).
#[derive(Default)]
pub struct IngressSeries(ByKey<(u8, u16, bool), IngressCells>);

#[derive(Clone)]
struct IngressCells {
    duration: Hist,
    body: Hist,
    received: Counter,
}

/// The method label: the two methods the ingress serves, everything else as OpenTelemetry's
/// `_OTHER` (a client cannot invent label values).
pub fn method_label(m: u8) -> &'static str {
    match m {
        0 => "POST",
        1 => "OPTIONS",
        _ => "_OTHER",
    }
}

impl IngressSeries {
    /// One answered ingress request (kubelet probes are not recorded, as upstream).
    pub fn record(
        &self,
        rec: &Recorder,
        chan: Option<(&str, &str)>,
        (method, status, tls): (u8, u16, bool),
        body: u64,
        elapsed: Duration,
    ) {
        let cells = self.0.get((method, status, tls), || {
            let code = status.to_string();
            let mut l: Vec<(&str, &str)> = vec![
                ("http_request_method", method_label(method)),
                ("http_response_status_code", &code),
                ("network_protocol_name", "http"),
                ("network_protocol_version", "1.1"),
                ("url_scheme", if tls { "https" } else { "http" }),
            ];
            let mut own: Vec<(&str, &str)> = vec![("code", &code)];
            if let Some((ns, name)) = chan {
                l.push(("kn_channel_name", name));
                l.push(("kn_channel_namespace", ns));
                own.push(("channel", name));
                own.push(("namespace", ns));
            }
            let l = labels(&l);
            IngressCells {
                duration: rec.histogram(Family::ServerDuration, l.clone()),
                body: rec.histogram(Family::ServerBodySize, l),
                received: rec.counter(Family::EventsReceived, labels(&own)),
            }
        });
        cells.duration.observe_duration(elapsed);
        cells.body.observe(body);
        cells.received.inc();
    }
}

/// What happened to one subscriber delivery (`imc_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retried,
    DeadLettered,
    Failed,
    DroppedOverload,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Failed => "failed",
            Outcome::DroppedOverload => "dropped_overload",
        }
    }
}

/// Names a subscriber's series are labelled with: all from configuration.
pub struct SubscriberNames<'a> {
    pub namespace: &'a str,
    pub channel: &'a str,
    /// The Subscription's name (its uid when the manifest has no name).
    pub subscription: &'a str,
}

/// Series of one subscriber: its dispatch chains by final status, its outcomes.
#[derive(Default)]
pub struct SubscriberSeries {
    dispatch: ByKey<u16, Hist>,
    outcomes: ByKey<u8, Counter>,
}

impl SubscriberSeries {
    pub fn dispatched(
        &self,
        rec: &Recorder,
        n: &SubscriberNames<'_>,
        status: u16,
        elapsed: Duration,
    ) {
        self.dispatch
            .get(status, || {
                let dest = format!("subscription:{}.{}", n.subscription, n.namespace);
                let code = status.to_string();
                rec.histogram(
                    Family::DispatchDuration,
                    labels(&[
                        ("messaging_destination_name", &dest),
                        ("messaging_operation_name", "send"),
                        ("messaging_system", "knative"),
                        ("http_response_status_code", &code),
                        ("kn_channel_name", n.channel),
                        ("kn_channel_namespace", n.namespace),
                    ]),
                )
            })
            .observe_duration(elapsed);
    }

    pub fn outcome(&self, rec: &Recorder, n: &SubscriberNames<'_>, o: Outcome) {
        self.outcomes
            .get(o as u8, || {
                rec.counter(
                    Family::Deliveries,
                    labels(&[
                        ("namespace", n.namespace),
                        ("channel", n.channel),
                        ("subscription", n.subscription),
                        ("outcome", o.label()),
                    ]),
                )
            })
            .inc();
    }
}

/// How one outbound attempt ended, for `http_client_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    Status(u16),
    Error(&'static str),
}

/// Series of one target (subscriber, reply target or dead-letter sink): attempts by outcome.
#[derive(Default)]
pub struct TargetSeries(ByKey<AttemptEnd, Hist>);

impl TargetSeries {
    pub fn attempt(
        &self,
        rec: &Recorder,
        (host, port, scheme): (&str, u16, &str),
        chan: (&str, &str),
        end: AttemptEnd,
        elapsed: Duration,
    ) {
        self.0
            .get(end, || {
                let port = port.to_string();
                let code;
                let (k, v) = match end {
                    AttemptEnd::Status(s) => {
                        code = s.to_string();
                        ("http_response_status_code", code.as_str())
                    }
                    AttemptEnd::Error(e) => ("error_type", e),
                };
                rec.histogram(
                    Family::ClientDuration,
                    labels(&[
                        ("http_request_method", "POST"),
                        ("server_address", host),
                        ("server_port", &port),
                        ("url_scheme", scheme),
                        ("network_protocol_name", "http"),
                        ("network_protocol_version", "1.1"),
                        (k, v),
                        ("kn_channel_name", chan.1),
                        ("kn_channel_namespace", chan.0),
                    ]),
                )
            })
            .observe_duration(elapsed);
    }
}

/// Binds the metrics listener; port 0 picks a free port.
pub fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_when_rendered() {
        let reg = Arc::new(WorkerRegistry::default());
        let rec = Recorder::new(reg.clone(), true);
        let h = rec.histogram(Family::DispatchDuration, labels(&[("a", "b")]));
        h.observe_duration(Duration::from_millis(3));
        h.observe_duration(Duration::from_millis(30));
        h.observe_duration(Duration::from_secs(20));
        let c = rec.counter(Family::EventsReceived, labels(&[("code", "202")]));
        c.inc();
        c.inc();
        let hub = Hub::new(1);
        let text = render(
            &[reg],
            &hub,
            &ProcessInfo {
                driver: "epoll",
                fallback: Some("EPERM"),
            },
        );
        assert!(
            text.contains("kn_eventing_dispatch_duration_seconds_bucket{a=\"b\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kn_eventing_dispatch_duration_seconds_bucket{a=\"b\",le=\"0.05\"} 2\n")
        );
        assert!(
            text.contains("kn_eventing_dispatch_duration_seconds_bucket{a=\"b\",le=\"10\"} 2\n")
        );
        assert!(
            text.contains("kn_eventing_dispatch_duration_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("kn_eventing_dispatch_duration_seconds_count{a=\"b\"} 3\n"));
        assert!(text.contains("kn_eventing_dispatch_duration_seconds_sum{a=\"b\"} 20.033\n"));
        assert!(text.contains("imc_events_received_total{code=\"202\"} 2\n"));
        assert!(text.contains("imc_io_driver_info{driver=\"epoll\",fallback=\"EPERM\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("k", "a\"b\\c\nd")]), "k=\"a\\\"b\\\\c\\nd\"");
    }
}

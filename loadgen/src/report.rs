//! What a `send` run measured, in one serializable value: the `--json` output, the summary table
//! and the input of the `--html` page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The percentiles every report quotes.
pub const QUOTED: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `http://host:port/path` the events were posted to.
    pub target: String,
    /// The `Host` header sent (the channel's host when routing by host).
    pub host: String,
    /// `closed` (each connection sends its next event when the previous one is answered) or
    /// `open` (events are due at a fixed rate, whether or not earlier ones were answered).
    pub mode: String,
    /// `binary` or `structured`.
    pub encoding: String,
    /// Bytes of event data per request.
    pub event_size: usize,
    pub connections: usize,
    pub threads: usize,
    /// The open loop's target rate, events/s (None in closed loop).
    pub rate: Option<f64>,
    /// Warm-up excluded from every figure (seconds).
    pub warmup_s: f64,
    /// The measured interval (seconds), warm-up excluded.
    pub duration_s: f64,
    /// The io driver the sender ran on (`io_uring` or `epoll`).
    pub driver: String,
    /// Wall-clock start of the measured interval, RFC 3339 UTC.
    pub started_at: String,
    /// The command line, for reproduction.
    pub command: String,
    /// Requests answered in the measured interval (any status).
    pub requests: u64,
    /// Of those, answered 2xx.
    pub ok: u64,
    /// Answered requests per second (requests / duration_s).
    pub rps: f64,
    /// Request bytes written in the measured interval.
    pub bytes_sent: u64,
    pub errors: Errors,
    /// The event ids sent over the whole run, warm-up included: `[start, end)`. A sink run with
    /// `--expect start..end` checks that each arrived exactly once.
    pub ids: IdRange,
    /// Latency in microseconds. In open loop it is measured from when the event was due, not
    /// from when it was written (coordinated omission corrected).
    pub latency: Latency,
    /// The latency distribution: (percentile, microseconds), for plotting.
    pub percentiles: Vec<(f64, f64)>,
    /// One entry per second of the measured interval.
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    /// Answers that were not 2xx, by status code.
    pub status: BTreeMap<u16, u64>,
    /// Connections that could not be made.
    pub connect: u64,
    /// Connections that failed or closed mid-request (reset, EOF, write error).
    pub io: u64,
    /// Requests unanswered after `--timeout`.
    pub timeout: u64,
    /// Answers that were not valid HTTP/1.1.
    pub protocol: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status.values().sum::<u64>() + self.connect + self.io + self.timeout + self.protocol
    }

    pub fn merge(&mut self, o: &Errors) {
        for (k, v) in &o.status {
            *self.status.entry(*k).or_default() += v;
        }
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct IdRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub min_us: f64,
    pub mean_us: f64,
    pub stdev_us: f64,
    pub max_us: f64,
    /// Name (`p50`, ...) to microseconds, in [`QUOTED`] order.
    pub quoted: Vec<(String, f64)>,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min_us: h.min() as f64,
            mean_us: h.mean(),
            stdev_us: h.stdev(),
            max_us: h.max() as f64,
            quoted: QUOTED
                .iter()
                .map(|(n, q)| (n.to_string(), h.value_at_quantile(q / 100.0) as f64))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start of the measured interval (end of this second).
    pub t: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// The percentile curve of a histogram, at log-spaced points up to the last recorded value:
/// 0, 50, 75, 87.5, ... (halving the remainder each step, 4 points per halving).
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    if h.is_empty() {
        return out;
    }
    let n = h.len() as f64;
    let mut i = 0.0f64;
    loop {
        // Percentile 100 * (1 - 2^(-i/4)).
        let p = 100.0 * (1.0 - (2f64).powf(-i / 4.0));
        out.push((p, h.value_at_quantile(p / 100.0) as f64));
        // Stop once the tail holds less than one sample.
        if (1.0 - p / 100.0) * n < 1.0 {
            break;
        }
        i += 1.0;
    }
    out.push((100.0, h.max() as f64));
    out
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

impl RunReport {
    /// The human summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r:.0}/s (latency from the due time)"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            s,
            "{} {} events of {} B to {} (Host: {}), {} connections on {} thread(s), {}, {}",
            self.requests,
            self.encoding,
            self.event_size,
            self.target,
            self.host,
            self.connections,
            self.threads,
            mode,
            self.driver,
        );
        let _ = writeln!(
            s,
            "  duration    {:.2} s (after {:.1} s warm-up)",
            self.duration_s, self.warmup_s
        );
        let _ = writeln!(
            s,
            "  rate        {:.0} requests/s, {:.0} answered 2xx",
            self.rps, self.ok
        );
        let e = &self.errors;
        let mut errs = format!("{}", e.total());
        if e.total() > 0 {
            let mut parts: Vec<String> = e
                .status
                .iter()
                .map(|(k, v)| format!("{v} answered {k}"))
                .collect();
            for (n, v) in [
                ("connect", e.connect),
                ("io", e.io),
                ("timeout", e.timeout),
                ("protocol", e.protocol),
            ] {
                if v > 0 {
                    parts.push(format!("{v} {n}"));
                }
            }
            errs += &format!(" ({})", parts.join(", "));
        }
        let _ = writeln!(s, "  errors      {errs}");
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency     min {}  mean {}  stdev {}  max {}",
            ms(l.min_us),
            ms(l.mean_us),
            ms(l.stdev_us),
            ms(l.max_us)
        );
        let q: Vec<String> = l
            .quoted
            .iter()
            .map(|(n, v)| format!("{n} {}", ms(*v)))
            .collect();
        let _ = writeln!(s, "              {}", q.join("  "));
        let _ = writeln!(
            s,
            "  ids         {}..{} (sink: --expect {}..{})",
            self.ids.start, self.ids.end, self.ids.start, self.ids.end
        );
        s
    }
}

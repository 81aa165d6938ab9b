//! The `--html` run report: one self-contained page (inline CSS, inline SVG, no script, nothing
//! fetched from the network) with the run's parameters, its summary figures, the latency
//! percentile curve and the per-second rate.

use std::fmt::Write as _;

use crate::report::{RunReport, Second};

/// Chart geometry (SVG user units): size and the margins around the plot area.
const W: f64 = 760.0;
const H: f64 = 300.0;
const ML: f64 = 64.0;
const MR: f64 = 64.0;
const MT: f64 = 14.0;
const MB: f64 = 42.0;
const PW: f64 = W - ML - MR;
const PH: f64 = H - MT - MB;

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;color:#222;max-width:820px;margin:24px auto;padding:0 12px}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:24px 0 6px}\
table{border-collapse:collapse;margin:4px 0}td,th{padding:2px 12px 2px 0;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{font-weight:600;color:#555}\
pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-all;margin:4px 0}\
.bad{color:#b00020;font-weight:600}.cols{display:flex;gap:40px;flex-wrap:wrap}\
.nodata{color:#777;font-style:italic}.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}\
svg{font:11px system-ui,sans-serif;background:#fff;max-width:100%;height:auto}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The whole page for one run.
pub fn render(r: &RunReport) -> String {
    let mut s = String::with_capacity(32 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>imc-loadgen run {}</title><style>{CSS}</style></head><body>\n<h1>imc-loadgen run</h1>\n",
        escape(&r.started_at)
    );

    // Header: what was run, where and how.
    let mode = match r.rate {
        Some(rate) => format!("{} loop at {} events/s", escape(&r.mode), fmt_sig(rate)),
        None => format!("{} loop", escape(&r.mode)),
    };
    s.push_str("<table>\n");
    for (k, v) in [
        ("target", escape(&r.target)),
        ("host", escape(&r.host)),
        ("mode", mode),
        ("encoding", escape(&r.encoding)),
        (
            "event size",
            format!("{} B", fmt_count(r.event_size as u64)),
        ),
        (
            "connections",
            format!("{} on {} thread(s)", r.connections, r.threads),
        ),
        ("driver", escape(&r.driver)),
        ("started at", escape(&r.started_at)),
        (
            "duration",
            format!("{:.2} s (after {:.1} s warm-up)", r.duration_s, r.warmup_s),
        ),
    ] {
        let _ = writeln!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    let _ = writeln!(
        s,
        "</table>\n<pre><code>{}</code></pre>",
        escape(&r.command)
    );

    // Summary: throughput and errors on the left, latency on the right.
    s.push_str("<h2>Summary</h2>\n<div class=\"cols\"><table>\n");
    let ok_pct = match r.requests {
        0 => String::new(),
        n if r.ok >= n => " (100%)".into(),
        // Never round a shortfall up to 100%.
        n => format!(" ({:.2}%)", (100.0 * r.ok as f64 / n as f64).min(99.99)),
    };
    let e = &r.errors;
    let mut rows: Vec<(String, String, bool)> = vec![
        ("requests".into(), fmt_count(r.requests), false),
        (
            "ok (2xx)".into(),
            format!("{}{ok_pct}", fmt_count(r.ok)),
            false,
        ),
        ("requests/s".into(), fmt_sig(r.rps), false),
        ("bytes sent".into(), fmt_bytes(r.bytes_sent), false),
        ("errors".into(), fmt_count(e.total()), e.total() > 0),
    ];
    for (code, n) in &e.status {
        rows.push((format!("&nbsp;&nbsp;status {code}"), fmt_count(*n), *n > 0));
    }
    for (k, n) in [
        ("connect", e.connect),
        ("io", e.io),
        ("timeout", e.timeout),
        ("protocol", e.protocol),
    ] {
        rows.push((format!("&nbsp;&nbsp;{k}"), fmt_count(n), n > 0));
    }
    rows.push((
        "event ids".into(),
        format!(
            "{}..{} ({})",
            r.ids.start,
            r.ids.end,
            fmt_count(r.ids.end.saturating_sub(r.ids.start))
        ),
        false,
    ));
    for (k, v, bad) in rows {
        let class = if bad { "n bad" } else { "n" };
        let _ = writeln!(s, "<tr><th>{k}</th><td class=\"{class}\">{v}</td></tr>");
    }
    s.push_str("</table><table>\n");
    let l = &r.latency;
    let fixed = [
        ("min", l.min_us),
        ("mean", l.mean_us),
        ("stdev", l.stdev_us),
        ("max", l.max_us),
    ];
    let quoted = l.quoted.iter().map(|(k, v)| (k.as_str(), *v));
    for (k, us) in fixed.into_iter().chain(quoted) {
        let _ = writeln!(
            s,
            "<tr><th>latency {}</th><td class=\"n\">{}</td></tr>",
            escape(k),
            fmt_ms(us)
        );
    }
    s.push_str("</table></div>\n");

    s.push_str("<h2>Latency by percentile</h2>\n");
    if r.rate.is_some() {
        s.push_str("<p>Open loop: latency is measured from when each event was due.</p>\n");
    }
    s.push_str(&percentile_svg(&r.percentiles));

    s.push_str("<h2>Rate over time</h2>\n");
    s.push_str(&timeline_svg(&r.timeline));
    s.push_str("</body></html>\n");
    s
}

const NO_DATA: &str = "<p class=\"nodata\">no data</p>\n";

/// The HdrHistogram-style percentile plot: x is log10(1/(1-p)), so 90%, 99%, 99.9%, ... are
/// equally spaced; y is latency in ms.
fn percentile_svg(pts: &[(f64, f64)]) -> String {
    let inv = |p: f64| {
        let tail = 1.0 - p / 100.0;
        if tail > 0.0 {
            1.0 / tail
        } else {
            f64::INFINITY
        }
    };
    let pts: Vec<(f64, f64)> = pts
        .iter()
        .copied()
        .filter(|(p, v)| p.is_finite() && v.is_finite())
        .collect();
    if pts.is_empty() {
        return NO_DATA.into();
    }
    // p = 100 has no finite position: put it on the last finite one.
    let cap = pts
        .iter()
        .map(|&(p, _)| inv(p))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let xs: Vec<f64> = pts
        .iter()
        .map(|&(p, _)| inv(p).clamp(1.0, cap).log10())
        .collect();
    let x_max = cap.log10().max(1.0);
    let max_ms = pts.iter().map(|&(_, v)| v / 1000.0).fold(0.0, f64::max);
    let (ystep, ytop) = nice_axis(max_ms);
    let px = |x: f64| ML + x / x_max * PW;
    let py = |y: f64| MT + PH - y / ytop * PH;

    let mut s = svg_open("latency by percentile");
    y_axis(&mut s, ystep, ytop);
    for d in 0..=((x_max + 1e-9).floor() as u32) {
        let x = px(d as f64);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{MT}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            MT + PH,
            MT + PH + 16.0,
            pct_label(d)
        );
    }
    axis_titles(&mut s, "percentile", "latency (ms)", None);
    s.push_str(
        "<polyline class=\"pct\" fill=\"none\" stroke=\"#1f6fb2\" stroke-width=\"2\" points=\"",
    );
    for (i, (x, &(_, v))) in xs.iter().zip(&pts).enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(s, "{sep}{:.1},{:.1}", px(*x), py(v / 1000.0));
    }
    s.push_str("\"/></svg>\n");
    s
}

/// Requests per second as bars (left axis), errors per second as red bars on the same axis and
/// the per-second p99 as a line (right axis, ms).
fn timeline_svg(tl: &[Second]) -> String {
    if tl.is_empty() {
        return NO_DATA.into();
    }
    let n = tl.len() as f64;
    // Per-second rates: the last entry may cover only part of a second (the run ended inside it).
    let span = |i: usize| {
        let prev = if i == 0 { 0.0 } else { tl[i - 1].t };
        let d = tl[i].t - prev;
        if d.is_finite() && d > 0.05 {
            d.min(1.0)
        } else {
            1.0
        }
    };
    let rate = |i: usize, count: u64| count as f64 / span(i);
    let max_req = (0..tl.len())
        .map(|i| rate(i, tl[i].requests.max(tl[i].errors)))
        .fold(0.0, f64::max);
    let (rstep, rtop) = nice_axis(max_req);
    let max_p99 = tl
        .iter()
        .map(|x| x.p99_us / 1000.0)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (lstep, ltop) = nice_axis(max_p99);
    let slot = PW / n;
    let bw = (slot * 0.8).max(0.5);
    let bottom = MT + PH;

    let mut s = svg_open("requests, errors and p99 latency per second");
    y_axis(&mut s, rstep, rtop);
    // Right axis labels only (the grid lines come from the left axis).
    for k in 0..=(ltop / lstep).round() as u32 {
        let v = k as f64 * lstep;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d9730d\">{}</text>",
            ML + PW + 6.0,
            bottom - v / ltop * PH + 4.0,
            fmt_tick(v)
        );
    }
    let tstep = nice_axis(n).0.max(1.0);
    for k in 0..=(n / tstep + 1e-9).floor() as u32 {
        let t = k as f64 * tstep;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            ML + t * slot,
            bottom + 16.0,
            fmt_tick(t)
        );
    }
    axis_titles(&mut s, "time (s)", "requests/s", Some("p99 (ms)"));
    let mut errs = 0;
    for (i, x) in tl.iter().enumerate() {
        let x0 = ML + i as f64 * slot + (slot - bw) / 2.0;
        let h = rate(i, x.requests) / rtop * PH;
        let _ = write!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"#9cc3e6\">\
             <title>{:.0} s: {} requests, {} errors, p50 {}, p99 {}, max {}</title></rect>",
            bottom - h,
            x.t,
            fmt_count(x.requests),
            fmt_count(x.errors),
            fmt_ms(x.p50_us),
            fmt_ms(x.p99_us),
            fmt_ms(x.max_us)
        );
        if x.errors > 0 {
            errs += 1;
            // Never thinner than 3 units, so a few errors among many requests still show.
            let h = (rate(i, x.errors) / rtop * PH).max(3.0);
            let _ = write!(
                s,
                "<rect class=\"err\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"#d62728\">\
                 <title>{:.0} s: {} errors</title></rect>",
                bottom - h,
                x.t,
                fmt_count(x.errors)
            );
        }
    }
    s.push_str("<polyline fill=\"none\" stroke=\"#d9730d\" stroke-width=\"1.5\" points=\"");
    for (i, x) in tl.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let y = bottom - (x.p99_us / 1000.0).clamp(0.0, ltop) / ltop * PH;
        let _ = write!(s, "{sep}{:.1},{y:.1}", ML + (i as f64 + 0.5) * slot);
    }
    s.push_str(
        "\"/></svg>\n<p><span class=\"key\" style=\"background:#9cc3e6\"></span>requests/s\
        <span class=\"key\" style=\"background:#d62728\"></span>errors/s\
        <span class=\"key\" style=\"background:#d9730d\"></span>p99 latency (ms, right axis)</p>\n",
    );
    if errs > 0 {
        let _ = writeln!(
            s,
            "<p class=\"bad\">errors in {errs} of {} seconds</p>",
            tl.len()
        );
    }
    s
}

fn svg_open(label: &str) -> String {
    let mut s = String::with_capacity(8 * 1024);
    let _ = write!(
        s,
        "<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{label}\">\
         <rect x=\"{ML}\" y=\"{MT}\" width=\"{PW}\" height=\"{PH}\" fill=\"none\" stroke=\"#999\"/>"
    );
    s
}

/// Horizontal grid lines and labels from 0 to `top` every `step`.
fn y_axis(s: &mut String, step: f64, top: f64) {
    for k in 0..=(top / step).round() as u32 {
        let v = k as f64 * step;
        let y = MT + PH - v / top * PH;
        let _ = write!(
            s,
            "<line x1=\"{ML}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ML + PW,
            ML - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
}

fn axis_titles(s: &mut String, x: &str, y: &str, y2: Option<&str>) {
    let cy = MT + PH / 2.0;
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x}</text>\
         <text transform=\"translate(14,{cy:.1}) rotate(-90)\" text-anchor=\"middle\">{y}</text>",
        ML + PW / 2.0,
        H - 6.0
    );
    if let Some(y2) = y2 {
        let _ = write!(
            s,
            "<text transform=\"translate({:.1},{cy:.1}) rotate(90)\" text-anchor=\"middle\" fill=\"#d9730d\">{y2}</text>",
            W - 12.0
        );
    }
}

/// A round step (1, 2, 2.5 or 5 times a power of ten) giving about five ticks, and the axis
/// top (a multiple of the step at or above `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    (step, ((max / step) - 1e-9).ceil().max(1.0) * step)
}

/// The percentile at 1/(1-p) = 10^d: 0%, 90%, 99%, 99.9%, ...
fn pct_label(d: u32) -> String {
    if d == 0 {
        return "0%".into();
    }
    let v = 100.0 - 10f64.powi(2 - d as i32);
    format!("{v:.prec$}%", prec = d.saturating_sub(2) as usize)
}

fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let lead = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut o = digits[..lead].to_string();
    for i in (lead..digits.len()).step_by(3) {
        o.push(',');
        o.push_str(&digits[i..i + 3]);
    }
    o
}

/// Three significant digits below 100, whole numbers with separators above.
fn fmt_sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() >= 99.95 {
        let sign = if x < 0.0 { "-" } else { "" };
        return format!("{sign}{}", fmt_count(x.abs().round() as u64));
    }
    let d = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.d$}")
}

fn fmt_ms(us: f64) -> String {
    format!("{} ms", fmt_sig(us / 1000.0))
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        return fmt_count(v.round() as u64);
    }
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn fmt_bytes(b: u64) -> String {
    let mut v = b as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{} B", fmt_count(b))
    } else {
        format!("{} B ({} {unit})", fmt_count(b), fmt_sig(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Errors, IdRange, Latency, QUOTED};

    fn report() -> RunReport {
        let percentiles = vec![
            (0.0, 180.0),
            (50.0, 420.0),
            (90.0, 900.0),
            (99.0, 2_400.0),
            (99.9, 8_100.0),
            (100.0, 12_500.0),
        ];
        let timeline = (1..=5)
            .map(|t| Second {
                t: t as f64,
                requests: 9_000 + t * 100,
                errors: if t == 3 { 4 } else { 0 },
                p50_us: 400.0,
                p99_us: 2_000.0 + t as f64 * 100.0,
                max_us: 9_000.0,
            })
            .collect();
        let mut errors = Errors {
            io: 4,
            ..Errors::default()
        };
        errors.status.insert(503, 2);
        RunReport {
            target: "http://127.0.0.1:8080/default/ch".into(),
            host: "ch-kn-channel.default.svc.cluster.local".into(),
            mode: "open".into(),
            encoding: "binary".into(),
            event_size: 1024,
            connections: 64,
            threads: 2,
            rate: Some(10_000.0),
            warmup_s: 2.0,
            duration_s: 5.0,
            driver: "io_uring".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            command: "imc-loadgen send --target https://x/ --note <script>&\"'".into(),
            requests: 47_500,
            ok: 47_494,
            rps: 9_500.0,
            bytes_sent: 60_000_000,
            errors,
            ids: IdRange {
                start: 0,
                end: 67_500,
            },
            latency: Latency {
                min_us: 180.0,
                mean_us: 510.0,
                stdev_us: 300.0,
                max_us: 12_500.0,
                quoted: QUOTED
                    .iter()
                    .map(|(n, _)| (n.to_string(), 1_000.0))
                    .collect(),
            },
            percentiles,
            timeline,
        }
    }

    /// A final partial second is drawn as a rate: 500 requests in half a second is as tall a
    /// bar as 1,000 in a whole one.
    #[test]
    fn partial_last_second_is_a_rate() {
        let second = |t: f64, requests: u64| Second {
            t,
            requests,
            ..Second::default()
        };
        let svg = timeline_svg(&[second(1.0, 1000), second(1.5, 500)]);
        let heights: Vec<&str> = svg
            .split("fill=\"#9cc3e6\"")
            .filter_map(|r| r.rsplit("height=\"").next()?.split('"').next())
            .take(2)
            .collect();
        assert_eq!(heights.len(), 2, "{svg}");
        assert_eq!(heights[0], heights[1], "{svg}");
    }

    fn empty() -> RunReport {
        RunReport {
            percentiles: vec![],
            timeline: vec![],
            latency: Latency::default(),
            errors: Errors::default(),
            requests: 0,
            ok: 0,
            rps: 0.0,
            rate: None,
            ..report()
        }
    }

    #[test]
    fn self_contained_page() {
        let r = report();
        let page = render(&r);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(page.matches("<svg").count(), 2);
        for bad in [
            "<script", "<link", "src=", "href=", "@import", "url(", "<img",
        ] {
            assert!(!page.contains(bad), "{bad}");
        }
        // The only URLs are the report's own text.
        let rest = page
            .replace(&escape(&r.target), "")
            .replace(&escape(&r.command), "");
        assert!(!rest.contains("http://") && !rest.contains("https://"));
        assert!(!page.contains("NaN") && !page.contains("inf"));
    }

    #[test]
    fn escapes_report_text() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let page = render(&report());
        assert!(page.contains("--note &lt;script&gt;&amp;&quot;&#39;</code>"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn one_point_per_percentile_and_ticks() {
        let r = report();
        let page = render(&r);
        let start = page.find("class=\"pct\"").expect("percentile polyline");
        let pts = &page[start..];
        let pts = &pts[pts.find("points=\"").expect("points") + 8..];
        let pts = &pts[..pts.find('"').expect("end of points")];
        assert_eq!(pts.split(' ').count(), r.percentiles.len());
        // p100 sits on the last finite x (the p99.9 one), at the plot's right edge.
        let xs: Vec<&str> = pts
            .split(' ')
            .map(|p| p.split(',').next().unwrap_or(""))
            .collect();
        assert_eq!(xs[4], xs[5]);
        assert_eq!(xs[5], format!("{:.1}", ML + PW));
        for t in [">0%<", ">90%<", ">99%<", ">99.9%<"] {
            assert!(page.contains(t), "{t}");
        }
        assert!(!page.contains(">99.99%<"));
        assert!(page.contains("class=\"err\""));
        assert!(page.contains("errors in 1 of 5 seconds"));
        assert!(page.contains("47,494 (99.99%)"));
    }

    #[test]
    fn empty_report() {
        let page = render(&empty());
        assert_eq!(page.matches("no data").count(), 2);
        assert!(!page.contains("<svg"));
        assert!(!page.contains("NaN"));
    }

    #[test]
    fn curve_from_histogram() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("valid bounds");
        for v in 1..=10_000u64 {
            h.record(100 + v % 997).expect("in range");
        }
        let r = RunReport {
            percentiles: crate::report::percentile_curve(&h),
            ..report()
        };
        let page = render(&r);
        assert!(page.contains(">99.9%<") && !page.contains("NaN"));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_ms(1_234.0), "1.23 ms");
        assert_eq!(fmt_ms(123.4), "0.123 ms");
        assert_eq!(fmt_ms(45_600.0), "45.6 ms");
        assert_eq!(fmt_ms(1_234_567.0), "1,235 ms");
        assert_eq!(fmt_bytes(60_000_000), "60,000,000 B (57.2 MiB)");
        assert_eq!(nice_axis(12.5), (2.5, 12.5));
        assert_eq!(nice_axis(13.0), (5.0, 15.0));
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
        assert_eq!(pct_label(5), "99.999%");
        assert_eq!(fmt_tick(0.25), "0.25");
    }
}

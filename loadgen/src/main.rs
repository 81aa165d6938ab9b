//! `imc-loadgen send` and `imc-loadgen sink`: see the crate documentation and `--help`.

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use imc_dispatcher::config::{parse_duration, IoDriver};
use imc_dispatcher::worker::Driver;
use imc_loadgen::event::{Encoding, EventSpec};
use imc_loadgen::report::IdRange;
use imc_loadgen::send::{self, SendOpts};
use imc_loadgen::sink::{self, SinkOpts};

#[derive(Parser)]
#[command(
    name = "imc-loadgen",
    version,
    about = "Load generator and fast sink for CloudEvents channels"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Post CloudEvents to a URL and measure the answers.
    Send(SendArgs),
    /// Receive events, count them per id, and report missing and duplicate ids.
    Sink(SinkArgs),
    /// A minimal sink on an io_uring driven by hand (fixed files, multishot receive, provided
    /// buffers, each of which can be turned off): every request answered with one status, ids
    /// counted as `sink` counts them. The floor that bench/exchange.sh measures `sink` against.
    RingSink(RingSinkArgs),
}

#[derive(Args)]
struct RingSinkArgs {
    /// Address to listen on (port 0: any free port, printed on stderr).
    #[arg(short, long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The status of every answer.
    #[arg(long, default_value_t = 202, value_parser = clap::value_parser!(u16).range(200..600))]
    status: u16,
    /// The id range a `send` run reported (START..END, end exclusive): check, in the report
    /// printed at exit, that each id was accepted exactly once.
    #[arg(long, value_parser = sink::parse_range, value_name = "START..END")]
    expect: Option<IdRange>,
    /// Print the report at exit as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Connections as plain descriptors instead of registered (fixed) files (bench/exchange.sh
    /// turns the ring's features off one at a time to measure each).
    #[arg(long)]
    no_fixed_files: bool,
    /// One receive per read into each connection's own buffer, re-armed on each completion (as
    /// monoio reads), instead of a multishot receive into the provided-buffer ring.
    #[arg(long)]
    single_recv: bool,
    /// The ring without IORING_SETUP_DEFER_TASKRUN (COOP_TASKRUN and SINGLE_ISSUER only).
    #[arg(long)]
    no_defer_taskrun: bool,
}

#[derive(Args)]
struct SendArgs {
    /// Where to post: http://HOST:PORT/PATH (a channel's path, or `/` with --host).
    #[arg(default_value = "http://127.0.0.1:8080/")]
    url: String,
    /// The Host header (the channel's host name when routing by host); default: the URL's.
    #[arg(long)]
    host: Option<String>,
    /// Connections kept open (closed loop: each sends its next event when answered).
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Threads (one monoio runtime each); connections are spread over them.
    #[arg(short, long, default_value_t = 1)]
    threads: usize,
    /// Open loop: events per second over all connections, latency measured from when each
    /// event was due (coordinated-omission corrected).
    #[arg(long)]
    rate: Option<f64>,
    /// How long to measure, after the warm-up (default 10s unless --count is given).
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Events to send in all, warm-up included.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Load sent but not measured before the measured interval.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Bytes of event data.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, value_enum, default_value_t = Encoding::Binary)]
    encoding: Encoding,
    /// The events' type attribute.
    #[arg(long = "type", default_value = "dev.imc-rs.loadgen")]
    ce_type: String,
    /// The events' source attribute.
    #[arg(long = "source", default_value = "https://imc-rs.dev/loadgen")]
    ce_source: String,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The first event id (ids are consecutive; the report gives the range for `sink --expect`).
    #[arg(long, default_value_t = 0)]
    id_start: u64,
    /// A request unanswered after this long counts as a timeout and its connection is redone.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = IoDriver::Auto)]
    io_driver: IoDriver,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a self-contained HTML page with the latency percentiles and the rate over time.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on (port 0: any free port, printed on stderr).
    #[arg(short, long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Threads, each with its own SO_REUSEPORT listener.
    #[arg(short, long, default_value_t = 1)]
    threads: usize,
    #[arg(long, value_enum, default_value_t = IoDriver::Auto)]
    io_driver: IoDriver,
    /// The status of an accepted event.
    #[arg(long, default_value_t = 202, value_parser = clap::value_parser!(u16).range(200..600))]
    status: u16,
    /// Share of events answered --fail-status instead (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    fail_rate: f64,
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(200..600))]
    fail_status: u16,
    /// Wait this long before answering each event.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    delay: Duration,
    /// Share of events answered by resetting the connection (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    reset_rate: f64,
    /// Share of events never answered; the connection is held until the sender closes it.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    stall_rate: f64,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The id range a `send` run reported (START..END, end exclusive): check that each id was
    /// accepted exactly once.
    #[arg(long, value_parser = sink::parse_range, value_name = "START..END")]
    expect: Option<IdRange>,
    /// Stop once every expected id has arrived (and --settle has passed without more).
    #[arg(long, requires = "expect")]
    exit_when_complete: bool,
    /// How long to wait for late duplicates after the last expected id arrives.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    settle: Duration,
    /// Print each event the way Knative's event_display does, on stdout.
    #[arg(long)]
    display: bool,
    /// Print the final report as JSON on stdout instead of the table on stderr.
    #[arg(long)]
    json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `Name: value`"))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("{k:?} is not a header name"));
    }
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err("header values cannot contain line breaks".into());
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: expected a share between 0 and 1")),
    }
}

/// `http://host[:port][/path]` → (address to connect to, authority, path).
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(s) => return Err(format!("{url:?}: only http:// is supported, not {s}://")),
        None => return Err(format!("{url:?}: expected http://HOST:PORT/PATH")),
    }
    let auth = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
    let port = auth.port_u16().unwrap_or(80);
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((addr, auth.as_str().to_owned(), path))
}

/// Ctrl-C or SIGTERM sets the flag; a second one exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(s: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

fn run_send(a: SendArgs) -> Result<ExitCode, String> {
    let (addr, authority, path) = parse_url(&a.url)?;
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if let Some(r) = a.rate {
        if !(r > 0.0 && r.is_finite()) {
            return Err("--rate must be a positive number of events per second".into());
        }
    }
    let duration = match (a.duration, a.count) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let event = EventSpec {
        encoding: a.encoding,
        path,
        host: a.host.unwrap_or(authority),
        ce_type: a.ce_type,
        ce_source: a.ce_source,
        size: a.size,
        headers: a.headers,
    };
    let command = std::env::args()
        .map(|s| {
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\`".contains(c)) {
                format!("'{}'", s.replace('\'', r"'\''"))
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let opts = SendOpts {
        addr,
        target: a.url,
        event,
        connections: a.connections,
        threads: a.threads.max(1),
        rate: a.rate,
        duration,
        count: a.count,
        warmup: a.warmup,
        id_start: a.id_start,
        timeout: a.timeout,
        driver: pick_driver(a.io_driver)?,
        progress: !a.quiet && std::io::stderr().is_terminal(),
        command,
    };
    let report = send::run(opts, stop_flag()).map_err(|e| e.to_string())?;
    if a.json {
        out(&json(&report)?);
    } else {
        out(&report.table());
    }
    if let Some(path) = &a.html {
        std::fs::write(path, imc_loadgen::html::render(&report))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !a.json {
            out(&format!("  report      {}\n", path.display()));
        }
    }
    Ok(if report.requests > 0 && report.errors.total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_sink(a: SinkArgs) -> Result<ExitCode, String> {
    if a.fail_rate + a.reset_rate + a.stall_rate > 1.0 {
        return Err("--fail-rate + --reset-rate + --stall-rate must not exceed 1".into());
    }
    let opts = SinkOpts {
        listen: a.listen,
        threads: a.threads.max(1),
        driver: pick_driver(a.io_driver)?,
        status: a.status,
        fail_rate: a.fail_rate,
        fail_status: a.fail_status,
        delay: a.delay,
        reset_rate: a.reset_rate,
        stall_rate: a.stall_rate,
        seed: a.seed,
        expect: a.expect,
        display: a.display,
    };
    let stop = stop_flag();
    let sink = sink::start(opts).map_err(|e| format!("{}: {e}", a.listen))?;
    eprintln!(
        "sink listening on {} ({} thread(s), {})",
        sink.addr,
        sink.opts().threads,
        sink.opts().driver.name()
    );
    let mut complete_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if a.exit_when_complete && sink.all_arrived() {
            let since = *complete_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= a.settle {
                break;
            }
        }
    }
    finish(&sink.report(), a.json)
}

/// Prints a sink's report (JSON on stdout, or the table on stderr); fails when an expected
/// range was given and is not complete.
fn finish(report: &sink::SinkReport, as_json: bool) -> Result<ExitCode, String> {
    if as_json {
        out(&json(report)?);
    } else {
        eprint!("{}", report.table());
    }
    Ok(if report.expect.is_none() || report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_ring_sink(a: RingSinkArgs) -> Result<ExitCode, String> {
    use imc_loadgen::ring;
    let opts = SinkOpts {
        listen: a.listen,
        threads: 1,
        driver: Driver::IoUring,
        status: a.status,
        fail_rate: 0.0,
        fail_status: a.status,
        delay: Duration::ZERO,
        reset_rate: 0.0,
        stall_rate: 0.0,
        seed: 1,
        expect: a.expect,
        display: false,
    };
    sink::check_expect(&opts).map_err(|e| e.to_string())?;
    let stop = stop_flag();
    let stats = Arc::new(ring::Stats::default());
    let status = sink::answer(a.status);
    let counts = sink::Sink::new(opts, a.listen);
    let mode = ring::Mode {
        fixed_files: !a.no_fixed_files,
        multishot: !a.single_recv,
        defer_taskrun: !a.no_defer_taskrun,
    };
    ring::serve(
        a.listen,
        mode,
        &counts,
        status,
        stop,
        stats.clone(),
        |addr| {
            eprintln!("ring-sink listening on {addr} (io_uring: {mode})");
        },
    )
    .map_err(|e| format!("ring-sink on {}: {e}", a.listen))?;
    eprintln!(
        "ring-sink: {} requests answered on {} connections",
        stats.requests.load(Ordering::Relaxed),
        stats.connections.load(Ordering::Relaxed)
    );
    finish(&counts.report(), a.json)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Send(a) => run_send(a),
        Cmd::Sink(a) => run_sink(a),
        Cmd::RingSink(a) => run_ring_sink(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imc-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--io-driver` resolved as the dispatcher resolves it; a fallback to epoll is said on stderr.
fn pick_driver(wanted: IoDriver) -> Result<Driver, String> {
    let (driver, refusal) = Driver::choose(wanted)?;
    if let Some(why) = refusal {
        eprintln!("io_uring is not available: {}; using epoll", why.detail);
    }
    Ok(driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_authority_and_path() {
        let (addr, auth, path) = parse_url("http://127.0.0.1:8080/default/ch").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(auth, "127.0.0.1:8080");
        assert_eq!(path, "/default/ch");
        assert_eq!(parse_url("http://127.0.0.1:9").unwrap().2, "/");
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("127.0.0.1:80").is_err());
    }

    #[test]
    fn headers_and_shares_are_checked() {
        assert_eq!(
            parse_header("X-A: b c").unwrap(),
            ("X-A".into(), "b c".into())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("X: a\r\nY: b").is_err());
        assert!(parse_share("1.5").is_err());
        assert_eq!(parse_share("0.25"), Ok(0.25));
    }
}

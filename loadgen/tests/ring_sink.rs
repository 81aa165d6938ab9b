//! `imc-loadgen ring-sink` as a process over real sockets: what the hand-driven io_uring does with
//! framing (pipelined requests, heads split over many reads, bodies over many provided buffers),
//! bad input (answered, then closed, the process still serving), connection churn (fixed-file
//! slots reused), and a closed-loop run whose every request is answered exactly once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_imc-loadgen");

struct RingSink {
    child: Child,
    addr: SocketAddr,
    stderr: BufReader<std::process::ChildStderr>,
}

impl RingSink {
    fn start(args: &[&str], mode: &[&str]) -> RingSink {
        let mut child = Command::new(BIN)
            .args(["ring-sink", "--listen", "127.0.0.1:0"])
            .args(args)
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run imc-loadgen ring-sink");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("ring-sink listening on ")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        for (flag, says) in [
            ("--no-fixed-files", "plain descriptors"),
            ("--single-recv", "one receive per read"),
            ("--no-defer-taskrun", "without DEFER_TASKRUN"),
        ] {
            assert_eq!(line.contains(says), mode.contains(&flag), "{line}");
        }
        RingSink {
            child,
            addr,
            stderr,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// SIGTERM, and the "N requests answered on M connections" line.
    fn stop(self) -> (u64, u64) {
        self.stop_with_report().0
    }

    /// SIGTERM; the summary line, and the sink report (the JSON on stdout with `--json`).
    fn stop_with_report(mut self) -> ((u64, u64), serde_json::Value) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "ring-sink exited {status}: {rest}");
        let line = rest
            .lines()
            .find_map(|l| l.strip_prefix("ring-sink: "))
            .unwrap_or_else(|| panic!("no summary in {rest:?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        (
            (words[0].parse().unwrap(), words[4].parse().unwrap()),
            report,
        )
    }
}

impl Drop for RingSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OK: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";

fn request(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST / HTTP/1.1\r\nHost: sink\r\nce-id: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Closes with an RST instead of a FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `linger`, which outlives the call,
    // on this open socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(s);
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    s.read_exact(&mut out).unwrap();
    out
}

/// Reads until the peer closes.
fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn pipelined_split_and_large_requests_are_answered_in_order(mode: &[&str]) {
    let sink = RingSink::start(&[], mode);
    let mut s = sink.connect();
    // Three requests in one write: three answers.
    let three = [request(b"a"), request(b""), request(&[b'x'; 300])].concat();
    s.write_all(&three).unwrap();
    assert_eq!(read_n(&mut s, 3 * OK.len()), OK.repeat(3));
    // One request a byte at a time: the head's start is carried across reads.
    for b in request(b"hello") {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(read_n(&mut s, OK.len()), OK);
    // A 200 KiB body spans many 4 KiB provided buffers; the request behind it is still found.
    let big = [request(&vec![b'y'; 200 << 10]), request(b"z")].concat();
    s.write_all(&big).unwrap();
    assert_eq!(read_n(&mut s, 2 * OK.len()), OK.repeat(2));
    // A request whose head ends exactly where one write ends and whose body comes later.
    let r = request(b"later");
    let head_end = r.len() - 5;
    s.write_all(&r[..head_end]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&r[head_end..]).unwrap();
    assert_eq!(read_n(&mut s, OK.len()), OK);
    drop(s);
    let (requests, connections) = sink.stop();
    assert_eq!((requests, connections), (7, 1));
}

fn bad_input_is_answered_then_closed_and_the_sink_serves_on(mode: &[&str]) {
    let sink = RingSink::start(&["--json"], mode);
    // A chunked body: 411, then close (the ring sink frames bodies by Content-Length only).
    let mut s = sink.connect();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    let got = read_to_eof(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 411 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Not HTTP: the dispatcher's parser's answer (400), then close; what follows is dropped.
    let mut s = sink.connect();
    s.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    s.write_all(&request(b"ignored")).unwrap();
    let got = read_to_eof(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(got.windows(4).filter(|w| w == b"HTTP").count(), 1);
    // A good request answered before the bad one that closes the connection.
    let mut s = sink.connect();
    s.write_all(&[request(b"ok"), b"GARBAGE\r\n\r\n".to_vec()].concat())
        .unwrap();
    let got = read_to_eof(&mut s);
    assert!(got.starts_with(OK), "{}", String::from_utf8_lossy(&got));
    assert!(got[OK.len()..].starts_with(b"HTTP/1.1 400 "));
    // Connection: close is honoured after the answer.
    let mut s = sink.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(read_to_eof(&mut s), OK);
    // Half a head, then a reset (SO_LINGER 0): the receive fails, the slot is closed.
    let s = sink.connect();
    (&s).write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Le")
        .unwrap();
    reset(s);
    // Still serving.
    let mut s = sink.connect();
    s.write_all(&request(b"after")).unwrap();
    assert_eq!(read_n(&mut s, OK.len()), OK);
    drop(s);
    let (counts, report) = sink.stop_with_report();
    assert_eq!(counts, (3, 6));
    // Counted as the sink counts: the chunked, the non-HTTP and the garbage heads as bad.
    assert_eq!(report["bad_requests"], 3, "{report}");
    assert_eq!(report["received"], 3, "{report}");
    assert_eq!(report["accepted"], 3, "{report}");
}

fn slots_are_reused_across_connection_churn(mode: &[&str]) {
    let sink = RingSink::start(&[], mode);
    // 300 connections open at once, each answered, then 5000 more one after another (the
    // fixed-file table has 4096 slots: churn past it works only if closed slots come back; with
    // plain descriptors, only if a reused descriptor gets a fresh connection state).
    let mut held: Vec<TcpStream> = (0..300).map(|_| sink.connect()).collect();
    for s in &mut held {
        s.write_all(&request(b"held")).unwrap();
    }
    for s in &mut held {
        assert_eq!(read_n(s, OK.len()), OK);
    }
    // Fixed files are out of the process's descriptor table; plain descriptors are in it.
    let sockets = std::fs::read_dir(format!("/proc/{}/fd", sink.child.id()))
        .unwrap()
        .filter(|e| {
            std::fs::read_link(e.as_ref().unwrap().path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count();
    if mode.contains(&"--no-fixed-files") {
        assert!(sockets > 300, "{sockets} sockets in the descriptor table");
    } else {
        assert!(sockets < 10, "{sockets} sockets in the descriptor table");
    }
    let start = Instant::now();
    for i in 0..5000 {
        let mut s = sink.connect();
        s.write_all(&request(b"churn")).unwrap();
        assert_eq!(read_n(&mut s, OK.len()), OK, "connection {i}");
        if i % 2 == 0 {
            // Half close first, half leave it to the sink to see EOF after a reset-free close.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(read_to_eof(&mut s).is_empty());
        }
    }
    eprintln!("5000 connections in {:?}", start.elapsed());
    drop(held);
    // Let the sink see the EOFs of the last connections before it is stopped.
    std::thread::sleep(Duration::from_millis(100));
    let (requests, connections) = sink.stop();
    assert_eq!((requests, connections), (5300, 5300));
}

fn closed_loop_load_is_answered_and_counted_exactly_once(mode: &[&str]) {
    let sink = RingSink::start(&["--expect", "0..20000", "--json"], mode);
    let out = Command::new(BIN)
        .args([
            "send",
            &format!("http://{}/", sink.addr),
            "-c",
            "64",
            "-n",
            "20000",
            "--json",
            "-q",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run imc-loadgen send");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 20000, "{report}");
    assert_eq!(report["requests"], 20000, "{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    let (counts, sink_report) = sink.stop_with_report();
    assert_eq!(counts, (20000, 64));
    // Every id of the sender's range accepted once, by the sink's own accounting.
    assert_eq!(sink_report["accepted"], 20000, "{sink_report}");
    assert_eq!(sink_report["missing"], 0, "{sink_report}");
    assert_eq!(sink_report["duplicates"], 0, "{sink_report}");
    assert_eq!(sink_report["complete"], true, "{sink_report}");
}

/// Each test in each of the ring's modes: every feature (the default); none (what monoio uses:
/// plain descriptors, one receive per read into a per-connection buffer, no DEFER_TASKRUN); and
/// multishot and fixed files each alone, which exercise the other halves of each code path.
macro_rules! in_every_mode {
    ($($test:ident),*) => {
        mod all_features {
            $(#[test] fn $test() { super::$test(&[]) })*
        }
        mod monoio_like {
            $(#[test] fn $test() {
                super::$test(&["--no-fixed-files", "--single-recv", "--no-defer-taskrun"])
            })*
        }
        mod multishot_on_plain_descriptors {
            $(#[test] fn $test() { super::$test(&["--no-fixed-files"]) })*
        }
        mod fixed_files_single_recv {
            $(#[test] fn $test() { super::$test(&["--single-recv"]) })*
        }
    };
}

in_every_mode!(
    pipelined_split_and_large_requests_are_answered_in_order,
    bad_input_is_answered_then_closed_and_the_sink_serves_on,
    slots_are_reused_across_connection_churn,
    closed_loop_load_is_answered_and_counted_exactly_once
);

//! Memory a client cannot pin: a body's announced size reserves nothing before its bytes arrive,
//! a body must arrive within `--body-read-timeout`, the bodies being read and held per worker
//! stay within `--max-buffered-body-bytes` (503 past it), and a refusal is read by the client
//! before the close, never lost to a reset.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use imc_e2e::*;

const MIB: u64 = 1024;

/// Connections that announce a large body, send 500 bytes of it, and hold.
const HOLDERS: usize = 40;

/// The most the dispatcher's address space may grow while they hold (KiB).
const VM_GROWTH_LIMIT_KIB: u64 = 256 * MIB;

/// Releases the sink when dropped, so held requests end even when the test panics.
struct ReleaseOnDrop<'a>(&'a Sink);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn c1_to_sink(driver: Driver, workers: usize, args: &[&str], sink: &Sink) -> Dut {
    Dut::builder(driver)
        .workers(workers)
        .channels(&[c1().subscriber(Sub::to(&sink.url()))])
        .args(args)
        .start()
}

/// E1's head (with this id) as raw bytes, with `framing` as its body framing header.
fn octet_head(id: &str, framing: (&str, &str)) -> Vec<u8> {
    e1().id(id)
        .set_header("content-type", "application/octet-stream")
        .header(framing.0, framing.1)
        .body("")
        .to_bytes()
}

/// [`HOLDERS`] connections each write `announce(i)` and hold; the dispatcher's VmSize must grow by
/// less than [`VM_GROWTH_LIMIT_KIB`]. Then they close, and E1 is still served.
///
/// VmSize counts address space reserved whether or not it was ever touched, which is what an
/// announced-size reservation is. The dispatcher's allocator (mimalloc) reserves address space
/// 1 GiB at a time, though, which would hide anything smaller (40 reservations of 8 MiB fit in
/// the first arena): the DUT runs with `MIMALLOC_ARENA_RESERVE=16MiB`, so VmSize follows its
/// reservations to within 16 MiB. The setting changes nothing else (and nothing at all under
/// another allocator).
fn announced_bodies_reserve_nothing(
    driver: Driver,
    what: &str,
    announce: impl Fn(usize) -> Vec<u8>,
) {
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .env("MIMALLOC_ARENA_RESERVE", "16MiB")
        .start();
    dut.send(&e1().id("warm")).assert_status(202);
    let before = dut.vm_size_kib();

    let mut holders = Vec::new();
    for i in 0..HOLDERS {
        let mut conn = dut.connect();
        conn.write_raw(&announce(i))
            .unwrap_or_else(|e| panic!("holder {i}: {e}"));
        holders.push(conn);
    }
    // Give the dispatcher time to read them all, sampling as it does.
    let mut peak = before;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(800) {
        peak = peak.max(dut.vm_size_kib());
        thread::sleep(Duration::from_millis(20));
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{what} ({driver:?}): VmSize {before} KiB before, peak {peak} KiB with {HOLDERS} holders: \
         +{} MiB",
        grown / MIB
    );
    drop(holders);

    assert!(
        grown < VM_GROWTH_LIMIT_KIB,
        "{HOLDERS} connections that {what} and sent 500 bytes grew the dispatcher's VmSize by {} \
         MiB ({before} KiB to {peak} KiB), limit {} MiB",
        grown / MIB,
        VM_GROWTH_LIMIT_KIB / MIB
    );
    dut.send(&e1().id("after")).assert_status(202);
    s1.wait_until(DELIVERY, "E1 after the holders closed", |r| {
        r.iter().any(|r| r.id() == "after")
    });
}

/// Each holder announces a 30 MiB chunk (`1e00000`, under the 32 MiB body limit).
fn announced_chunk_sizes_reserve_no_memory(driver: Driver) {
    announced_bodies_reserve_nothing(driver, "announce a 30 MiB chunk", |i| {
        let mut bytes = octet_head(&format!("chunk-{i}"), ("Transfer-Encoding", "chunked"));
        bytes.extend(b"1e00000\r\n");
        bytes.extend([b'x'; 500]);
        bytes
    });
}

/// Each holder announces `Content-Length: 32000000` (under the 32 MiB body limit).
fn announced_content_lengths_reserve_no_memory(driver: Driver) {
    announced_bodies_reserve_nothing(driver, "announce Content-Length: 32000000", |i| {
        let mut bytes = octet_head(&format!("length-{i}"), ("Content-Length", "32000000"));
        bytes.extend([b'x'; 500]);
        bytes
    });
}

/// `--body-read-timeout 2s`: a body trickled one byte every 400 ms (each read well within the
/// 10 s progress timeout) is cut off with 408 and a close, within 3.5 s of the head.
fn body_trickled_past_the_body_read_timeout_is_408(driver: Driver) {
    let s1 = Sink::ok();
    let dut = c1_to_sink(driver, 2, &["--body-read-timeout", "2s"], &s1);
    let mut conn = dut.connect();

    conn.write_raw(&octet_head("slow", ("Content-Length", "100")))
        .expect("write the head");
    let start = Instant::now();
    let mut written = 0;
    let closed = loop {
        if start.elapsed() > Duration::from_secs(6) {
            break None;
        }
        if conn.write_raw(b"x").is_err() {
            // Closed under our feet: collect what it said before.
            break conn.wait_closed(Duration::from_millis(500));
        }
        written += 1;
        if let Some(closed) = conn.wait_closed(Duration::from_millis(400)) {
            break Some(closed);
        }
    };
    let after = start.elapsed();

    let closed = closed.unwrap_or_else(|| {
        panic!("a body trickled for {after:?} ({written} of 100 bytes) was never cut off")
    });
    let text = String::from_utf8_lossy(&closed.trailing);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a body past the body read timeout gets 408 before the close; got {text:?} after \
         {after:?} ({written} bytes)"
    );
    assert!(
        after < Duration::from_millis(3500) && after > Duration::from_millis(1500),
        "cut off {after:?} after the head ({written} bytes), expected about 2 s"
    );
    s1.assert_untouched();
}

/// `--workers 1 --max-buffered-body-bytes 100000`: two sync events of 40,000 bytes held by their
/// subscriber keep 80,000 bytes; a third of 30,000 would pass the budget: 503 with
/// `Retry-After: 1`, and the connection is closed. Once the subscriber answers, the budget is
/// free again: a 40,000-byte event is accepted.
fn bodies_past_the_buffer_budget_get_503(driver: Driver) {
    let s1 = Sink::start(vec![Reply::stall()]);
    let dut = c1_to_sink(driver, 1, &["--max-buffered-body-bytes", "100000"], &s1);
    let event = |id: &str, len: usize| {
        e1().id(id)
            .set_header("content-type", "application/octet-stream")
            .body(vec![b'x'; len])
    };
    let addr = dut.addr();

    let (held, third, closed) = thread::scope(|scope| {
        // Dropped before the scope joins the held senders, also on a panic.
        let _release = ReleaseOnDrop(&s1);
        let held: Vec<_> = ["held-1", "held-2"]
            .map(|id| {
                let req = event(id, 40_000);
                scope.spawn(move || Conn::open(addr).request(&req))
            })
            .into_iter()
            .collect();
        s1.wait_for(2, DELIVERY);

        let mut conn = dut.connect();
        conn.set_read_timeout(Duration::from_secs(3));
        let third = conn.request(&event("third", 30_000));
        let closed = conn.wait_closed(Duration::from_secs(3));
        s1.release();
        let held: Vec<_> = held
            .into_iter()
            .map(|h| h.join().expect("held sender"))
            .collect();
        (held, third, closed)
    });

    let third = third.unwrap_or_else(|e| {
        panic!("the event past the budget got no answer ({e}); the held ones: {held:?}")
    });
    assert_eq!(
        third.status, 503,
        "80,000 of 100,000 bytes held, a 30,000-byte body must be refused: {third:?}"
    );
    third.assert_header("retry-after", "1");
    assert!(closed.is_some(), "left open after the 503: {third:?}");
    for (i, h) in held.iter().enumerate() {
        let status = h.as_ref().map(|r| r.status).map_err(|e| e.to_string());
        assert_eq!(status, Ok(202), "held event {i}");
    }
    dut.send(&event("after", 40_000)).assert_status(202);
    assert!(
        !s1.requests().iter().any(|r| r.id() == "third"),
        "the refused event was delivered"
    );
}

/// Writes `head` and then `body` (zeros, in 64 KiB writes) on `writer` until done, a write fails
/// or `stop` is set.
fn keep_writing(mut writer: std::net::TcpStream, head: &[u8], body: usize, stop: &AtomicBool) {
    let _ = writer.set_write_timeout(Some(Duration::from_millis(200)));
    if writer.write_all(head).is_err() {
        return;
    }
    let block = vec![0u8; 64 << 10];
    let mut left = body;
    while left > 0 && !stop.load(Ordering::SeqCst) {
        let n = left.min(block.len());
        match writer.write(&block[..n]) {
            Ok(0) => return,
            Ok(k) => left -= k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Ten times: the client writes `head` and then `body` bytes from another thread while it reads
/// the answer; it must read a complete `status` answer every time, and then the end of the
/// stream: an orderly close (FIN), not a reset (a close with unread input sends a reset, which
/// can destroy an answer the client has not read yet, and makes the client's writes fail).
fn refusal_is_read_before_an_orderly_close(dut: &Dut, status: u16, head: &[u8], body: usize) {
    let mut wrong = Vec::new();
    for round in 0..10 {
        let mut conn = dut.connect();
        conn.set_read_timeout(Duration::from_secs(5));
        let writer = conn.writer().expect("clone the socket");
        let stop = AtomicBool::new(false);
        let (answer, closed) = thread::scope(|scope| {
            let stop = &stop;
            scope.spawn(move || keep_writing(writer, head, body, stop));
            let answer = conn.read_response();
            stop.store(true, Ordering::SeqCst);
            (answer, conn.wait_closed(Duration::from_secs(3)))
        });
        let end = match &closed {
            None => "left open 3 s after the answer".to_string(),
            Some(c) if c.reset => format!("then reset after {:?}", c.after),
            Some(c) if !c.trailing.is_empty() => format!(
                "then sent {:?}",
                String::from_utf8_lossy(&c.trailing[..c.trailing.len().min(200)])
            ),
            Some(_) => String::new(),
        };
        match answer {
            Ok(r) if r.status == status && end.is_empty() => {}
            Ok(r) => wrong.push(format!("round {round}: answered {} {end}", r.status)),
            Err(e) => wrong.push(format!("round {round}: no answer ({e}) {end}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "a refused request must be answered {status}, the answer read whole, and the connection \
         then closed in order (FIN), not reset: {wrong:#?}"
    );
}

/// `--max-body-bytes 1000`, `Content-Length: 4194304` with the 4 MiB body on its way: 413, read
/// whole by the client every time.
fn refused_body_is_answered_before_the_close_not_reset(driver: Driver) {
    let s1 = Sink::ok();
    let dut = c1_to_sink(driver, 2, &["--max-body-bytes", "1000"], &s1);
    let head = octet_head("big", ("Content-Length", "4194304"));

    refusal_is_read_before_an_orderly_close(&dut, 413, &head, 4 << 20);
    s1.assert_untouched();
}

/// `--max-header-bytes 4096`, a 200 KB head in one write: 431, read whole by the client every
/// time.
fn refused_head_is_answered_before_the_close_not_reset(driver: Driver) {
    let s1 = Sink::ok();
    let dut = c1_to_sink(driver, 2, &["--max-header-bytes", "4096"], &s1);
    let head = e1()
        .id("wide")
        .header("X-Pad", &"a".repeat(200_000))
        .to_bytes();

    refusal_is_read_before_an_orderly_close(&dut, 431, &head, 0);
    s1.assert_untouched();
}

both_drivers!(
    announced_chunk_sizes_reserve_no_memory,
    announced_content_lengths_reserve_no_memory,
    body_trickled_past_the_body_read_timeout_is_408,
    bodies_past_the_buffer_budget_get_503,
    refused_body_is_answered_before_the_close_not_reset,
    refused_head_is_answered_before_the_close_not_reset,
);

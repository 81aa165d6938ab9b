//! Bad input never takes the dispatcher down or leaks through to a subscriber.

use std::time::Duration;

use imc_e2e::*;

/// Connections per sending thread, and sending threads.
const CONNECTIONS: usize = 24;
const THREADS: usize = 8;

/// One kind of bad input per connection index. Returns whether the ingress answered as it must
/// (only checked where the input is a complete, well-framed HTTP request).
fn misbehave(dut: &Dut, kind: usize, seed: u64) -> Result<(), String> {
    let mut conn = dut.connect();
    conn.set_read_timeout(Duration::from_secs(5));
    let e1_head = |extra: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: {C1_HOST}\r\nce-specversion: 1.0\r\nce-id: bad\r\n\
             ce-source: /src\r\nce-type: t.e1\r\ncontent-type: application/json\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    // Write errors are expected: the server may close first. Only the answers are checked.
    match kind % 8 {
        0 => {
            let _ = conn.write_raw(&noise(seed, 512 + (seed as usize % 4096)));
        }
        1 => {
            let _ =
                conn.write_raw(format!("POST / HTTP/1.1\r\nHost: {C1_HOST}\r\nce-id:").as_bytes());
        }
        2 => {
            let mut bytes = e1_head("Transfer-Encoding: chunked\r\n");
            bytes.extend(b"zz\r\n{\"k\":1}\r\n0\r\n\r\n");
            let _ = conn.write_raw(&bytes);
            let _ = conn.read_response();
        }
        3 => {
            let mut bytes = e1_head("Content-Length: 100\r\n");
            bytes.extend(br#"{"k":1}"#);
            let _ = conn.write_raw(&bytes);
        }
        4 => {
            let invalid = e1().without_header("ce-id");
            let resp = conn
                .request(&invalid)
                .map_err(|e| format!("invalid event: {e}"))?;
            if resp.status != 400 {
                return Err(format!("invalid event answered {resp:?}"));
            }
        }
        5 => {
            let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
            let _ = conn.write_raw(&e1_head(&big));
            let _ = conn.read_response();
        }
        6 => {
            let mut bytes = e1_head("Content-Length: 7\r\n");
            bytes.extend(br#"{"k""#);
            let _ = conn.write_raw(&bytes);
            conn.shutdown_write();
            let _ = conn.read_response();
        }
        _ => {
            let target = format!("/{}", "a".repeat(100 * 1024));
            let _ = conn.write_raw(&e1().target(&target).to_bytes());
            let _ = conn.read_response();
        }
    }
    Ok(())
}

/// Bytes from xorshift64, different per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Random bytes, truncated heads, bad chunk sizes, short bodies, invalid events and 100 KiB lines on
/// many connections at once; afterwards the process is up, E1 is accepted and delivered, and none
/// of the bad input reached the subscriber.
fn barrage_of_bad_input_leaves_dispatcher_serving(driver: Driver) {
    let s1 = Sink::ok();
    let mut dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    let failures: Vec<String> = in_threads(THREADS, |t| {
        (0..CONNECTIONS)
            .filter_map(|i| {
                let n = t * CONNECTIONS + i;
                misbehave(&dut, n, n as u64 + 1).err()
            })
            .collect()
    });

    assert!(
        failures.is_empty(),
        "wrong answers to bad input: {failures:#?}"
    );
    dut.assert_alive();
    dut.send(&e1()).assert_status(202);
    let got = s1.wait_for(1, DELIVERY);
    assert_eq!(got.len(), 1, "bad input reached the subscriber: {got:#?}");
    assert_binary_e1(&got[0]);
}

/// A client that pipelines requests as fast as it can (and reads the answers) never takes the
/// worker from its other connections: with epoll a ready socket's operations complete without
/// yielding, so its task would run as long as the flood lasts.
fn a_pipelining_flood_does_not_starve_other_connections(driver: Driver) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let s1 = Sink::ok();
    let dut = Dut::builder(driver)
        .channels(&[c1().subscriber(Sub::to(&s1.url()))])
        .workers(1)
        .start();
    let flood = dut.connect();
    let mut reader = flood.writer().expect("a second handle");
    let mut writer = flood.writer().expect("a third handle");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let batch: Vec<u8> = kube_probe().to_bytes().repeat(256);
    let stop_w = stop.clone();
    let w = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(4);
        while !stop_w.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            if writer.write_all(&batch).is_err() {
                return;
            }
        }
    });
    let stop_r = stop.clone();
    let r = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
        while !stop_r.load(Ordering::Relaxed) {
            if matches!(reader.read(&mut buf), Ok(0)) {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let t = std::time::Instant::now();
        let mut c = dut.connect();
        c.set_read_timeout(Duration::from_secs(10));
        c.send(&e1().id(&format!("during-{i}"))).assert_status(202);
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = (w.join(), r.join());
    drop(flood);
    assert!(
        worst < Duration::from_millis(1500),
        "an event on another connection took {worst:?} while one connection flooded"
    );
}

both_drivers!(
    barrage_of_bad_input_leaves_dispatcher_serving,
    a_pipelining_flood_does_not_starve_other_connections
);

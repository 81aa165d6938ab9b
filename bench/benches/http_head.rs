//! HTTP/1.1 request head parsing as the ingress does it (httparse into ranges, the facts the
//! server needs). Run: `cargo bench -p imc-bench --bench http_head`. Throughput in bytes of head.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use imc_bench::binary_request;
use imc_dispatcher::http::{parse_request, RequestHead};

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_head");
    let raw = binary_request(0);
    g.throughput(Throughput::Bytes(raw.len() as u64));
    let mut head = RequestHead::new();
    g.bench_function("binary_event_head", |b| {
        b.iter(|| parse_request(black_box(&raw), 64 << 10, 128, &mut head).unwrap())
    });
    let mut many = String::from("POST /bench/ch1 HTTP/1.1\r\nHost: x\r\n");
    for i in 0..32 {
        many.push_str(&format!("x-forwarded-hop-{i}: 10.0.0.{i}\r\n"));
    }
    many.push_str("\r\n");
    g.throughput(Throughput::Bytes(many.len() as u64));
    g.bench_function("32_extra_headers", |b| {
        b.iter(|| parse_request(black_box(many.as_bytes()), 64 << 10, 128, &mut head).unwrap())
    });
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);

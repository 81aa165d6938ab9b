//! CloudEvent validation and the binary-mode head every subscriber gets, for binary and
//! structured input at 0.1, 1, 16 and 256 KiB. Run: `cargo bench -p imc-bench --bench cloudevent`.
//! Throughput in bytes of request (head and body): binary bodies are never touched, so binary
//! throughput grows with size; structured bodies are scanned as JSON.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imc_bench::{binary_request, scratch, split, structured_request, CE_LIMITS};
use imc_dispatcher::cloudevent::write_binary_head;

const SIZES: [usize; 4] = [100, 1 << 10, 16 << 10, 256 << 10];

fn validate(c: &mut Criterion) {
    for (mode, make) in [
        ("binary", binary_request as fn(usize) -> Vec<u8>),
        ("structured", structured_request),
    ] {
        let mut g = c.benchmark_group(format!("cloudevent_{mode}"));
        for size in SIZES {
            let raw = make(size);
            let (head, frozen, body) = split(&raw);
            let ct = head.content_type.clone().map(|r| frozen.slice(r));
            let mut out = scratch();
            g.throughput(Throughput::Bytes(raw.len() as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
                b.iter(|| {
                    out.clear();
                    let r = write_binary_head(
                        black_box(&frozen),
                        &head.headers,
                        ct.as_deref(),
                        body.clone(),
                        &mut out,
                        CE_LIMITS,
                    );
                    black_box(r.unwrap())
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, validate);
criterion_main!(benches);

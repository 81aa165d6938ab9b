//! What one event costs before its requests go out, for 1, 4 and 16 subscribers: the shared
//! event head is written once, then each subscriber's request is its prefix, that head and the
//! body as reference-counted `Bytes` (no copy per subscriber). Run:
//! `cargo bench -p imc-bench --bench fanout_head`. Throughput in subscriber requests.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imc_bench::{binary_request, channel_set, scratch, split, CE_LIMITS};
use imc_dispatcher::cloudevent::write_binary_head;
use imc_dispatcher::delivery::put_content_length;
use imc_dispatcher::routing::{Key, Table};

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_head");
    let raw = binary_request(1 << 10);
    let (head, frozen, body) = split(&raw);
    let ct = head.content_type.clone().map(|r| frozen.slice(r));
    for subs in [1usize, 4, 16] {
        let table = Table::build(&channel_set(1, subs));
        let chan = table
            .route(&Key::Host, Some("ch0-kn-channel.bench.svc.cluster.local"))
            .unwrap()
            .clone();
        let mut out = scratch();
        g.throughput(Throughput::Elements(subs as u64));
        g.bench_with_input(BenchmarkId::from_parameter(subs), &subs, |b, _| {
            b.iter(|| {
                out.clear();
                let (data, _) = write_binary_head(
                    &frozen,
                    &head.headers,
                    ct.as_deref(),
                    body.clone(),
                    &mut out,
                    CE_LIMITS,
                )
                .unwrap();
                put_content_length(&mut out, data.len());
                let event_head = out.split().freeze();
                let mut bytes = 0;
                for sub in chan.subscribers.iter() {
                    let dest = sub.target.as_ref().unwrap();
                    let parts = [dest.prefix.clone(), event_head.clone(), data.clone()];
                    bytes += black_box(&parts).iter().map(|p| p.len()).sum::<usize>();
                }
                bytes
            })
        });
    }
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);

//! Routing lookups (host key and `<ns>/<name>` key) in a worker's table of 10, 1k and 10k
//! channels; the cost of installing a new channel set on a worker core (`routing_table_build`,
//! which includes dropping the table it replaces) and of preparing its channels off the cores
//! (`routing_prepare`, done once per set by the channel source). Run:
//! `cargo bench -p imc-bench --bench routing`. Throughput in lookups, or in channels.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imc_bench::channel_set;
use imc_dispatcher::routing::{key_of, Key, Prepared, Table};

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    for n in [10usize, 1_000, 10_000] {
        let table = Table::build(&channel_set(n, 1));
        let host = format!("ch{}-kn-channel.bench.svc.cluster.local:80", n / 2);
        let path = format!("/bench/ch{}", n / 2);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("host", n), &n, |b, _| {
            b.iter(|| table.route(&Key::Host, Some(black_box(&host))).is_some())
        });
        g.bench_with_input(BenchmarkId::new("path", n), &n, |b, _| {
            b.iter(|| {
                let key = key_of(black_box(&path)).unwrap();
                table.route(&key, None).is_some()
            })
        });
    }
    g.finish();
}

fn table_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_table_build");
    for n in [10usize, 1_000, 10_000] {
        let set = channel_set(n, 1);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| Table::build(black_box(&set)).len())
        });
    }
    g.finish();
}

fn prepare(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_prepare");
    for n in [10usize, 1_000, 10_000] {
        let set = channel_set(n, 1);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (key, e) in &black_box(&set).channels {
                    black_box(Prepared::new(key, &e.config));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookups, table_build, prepare);
criterion_main!(benches);

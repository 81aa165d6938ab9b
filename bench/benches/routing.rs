//! Routing lookups (host key and `<ns>/<name>` key) in a worker's table of 10, 1k and 10k
//! channels; the cost of installing a new channel set on a worker core (`routing_table_build`,
//! which includes dropping the table it replaces) and of preparing its channels off the cores
//! (`routing_prepare`, done once per set by the channel source). `channel_change` is what one
//! changed channel in a 10,000-channel set (2 subscribers each) costs: translating a whole
//! snapshot (`set_build`, imc-control's first one), translating a one-channel delta
//! (`set_apply_one`), finding the changed keys (`diff`, off the cores), and the only part that
//! runs on a worker core, updating its table (`table_apply_one`). Run:
//! `cargo bench -p imc-bench --bench routing`. Throughput in lookups, or in channels.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::Path;

use imc_bench::{channel_manifests, channel_set, OPTIONS};
use imc_dispatcher::channels::{ChannelSet, FileLoad};
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

fn channel_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_change");
    let n = 10_000;
    let imcs = channel_manifests(n, 2);
    let origin: std::sync::Arc<Path> = Path::new("bench.yaml").into();
    let files = [FileLoad {
        path: origin.to_path_buf(),
        result: Ok(imcs.clone()),
    }];
    let set = ChannelSet::build(&ChannelSet::default(), &files, &OPTIONS).0;
    // One channel's subscriber moves to another sink.
    let mut changed = imcs[n / 2].clone();
    changed.spec.subscribers[0].subscriber_uri = Some("http://elsewhere.bench.svc:8080/".into());
    let changed = [changed];
    let next = ChannelSet::apply(&set, &origin, &changed, &[], &OPTIONS).0;
    let keys = next.diff(&set);
    assert_eq!(keys.len(), 1);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("set_build", |b| {
        b.iter(|| {
            ChannelSet::build(&ChannelSet::default(), black_box(&files), &OPTIONS)
                .0
                .len()
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_apply_one", |b| {
        b.iter(|| {
            ChannelSet::apply(&set, &origin, black_box(&changed), &[], &OPTIONS)
                .0
                .len()
        })
    });
    g.bench_function("diff", |b| b.iter(|| black_box(&next).diff(&set).len()));
    let mut table = Table::build(&set);
    let back = set.diff(&next);
    g.bench_function("table_apply_one", |b| {
        // There and back, so that every iteration changes the table the same way.
        b.iter(|| {
            table.apply(black_box(&next), &keys);
            table.apply(black_box(&set), &back);
        })
    });
    g.finish();
}

criterion_group!(benches, lookups, table_build, prepare, channel_change);
criterion_main!(benches);

//! Metrics: recording one observation on the hot path, and rendering a scrape of a registry with
//! 10 channels x 4 subscribers of series merged over 2 workers. Run:
//! `cargo bench -p imc-bench --bench metrics`. Throughput in observations / exposition bytes.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use imc_dispatcher::channels::Hub;
use imc_dispatcher::metrics::{labels, render, Family, ProcessInfo, Recorder, WorkerRegistry};

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics_record");
    let rec = Recorder::new(Arc::new(WorkerRegistry::default()), true);
    let h = rec.histogram(Family::DispatchDuration, labels(&[("a", "b")]));
    let counter = rec.counter(Family::EventsReceived, labels(&[("code", "202")]));
    g.throughput(Throughput::Elements(1));
    g.bench_function("histogram_observe", |b| {
        b.iter(|| h.observe_duration(black_box(Duration::from_micros(850))))
    });
    g.bench_function("counter_inc", |b| b.iter(|| counter.inc()));
    g.finish();
}

fn scrape(c: &mut Criterion) {
    let regs: Vec<_> = (0..2)
        .map(|_| Arc::new(WorkerRegistry::default()))
        .collect();
    for reg in &regs {
        let rec = Recorder::new(reg.clone(), true);
        for ch in 0..10 {
            for sub in 0..4 {
                let l = labels(&[
                    ("channel", &format!("ch{ch}")),
                    ("subscription", &format!("s{sub}")),
                ]);
                rec.histogram(Family::DispatchDuration, l.clone())
                    .observe_duration(Duration::from_millis(3));
                rec.counter(Family::Deliveries, l).inc();
            }
        }
    }
    let hub = Hub::new(2);
    let info = ProcessInfo {
        driver: "io_uring",
        fallback: None,
    };
    let size = render(&regs, &hub, &info).len();
    let mut g = c.benchmark_group("metrics_render");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("80_series_2_workers", |b| {
        b.iter(|| render(black_box(&regs), &hub, &info).len())
    });
    g.finish();
}

criterion_group!(benches, record, scrape);
criterion_main!(benches);

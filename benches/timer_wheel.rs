//! TTL wheel: scheduling deadlines and advancing through them.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringd::ttl::TtlWheel;

fn wheel(c: &mut Criterion) {
    const S: u64 = 1_000_000_000;
    c.bench_function("wheel_schedule_10k_advance_60s", |b| {
        b.iter(|| {
            let mut w = TtlWheel::new(0);
            for i in 0..10_000u64 {
                w.schedule((i % 60 + 1) * S + i);
            }
            let mut due = 0;
            let mut now = 0;
            while let Some(at) = w.next_wake() {
                now = now.max(at);
                due += w.advance(now) as u32;
            }
            black_box(due)
        })
    });
}

criterion_group!(benches, wheel);
criterion_main!(benches);

//! Open-loop schedule: with a total rate R over C connections, the global
//! request slots are k/R seconds after the start; connection c owns the slots
//! k = n*C + c. Latency is measured from a slot's intended time, so a stalled
//! server is charged for the requests that would have been sent meanwhile
//! (coordinated omission corrected).

use std::time::{Duration, Instant};

/// Offset of the n-th request of connection `conn` from the start.
pub fn intended_offset(n: u64, conn: usize, conns: usize, rate: f64) -> Duration {
    let slot = n as f64 * conns as f64 + conn as f64;
    Duration::from_secs_f64(slot / rate)
}

/// Requests that `rate` schedules in `[0, t)` over all connections.
#[cfg(test)]
pub fn expected_count(rate: f64, t: Duration) -> u64 {
    (rate * t.as_secs_f64()).ceil() as u64
}

#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    conn: usize,
    conns: usize,
    rate: f64,
    n: u64,
    next: Instant,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64, conn: usize, conns: usize) -> Schedule {
        let mut s = Schedule {
            start,
            conn,
            conns,
            rate,
            n: 0,
            next: start,
        };
        s.next = s.at(0);
        s
    }

    fn at(&self, n: u64) -> Instant {
        self.start + intended_offset(n, self.conn, self.conns, self.rate)
    }

    /// The intended send time of the next request.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Takes the next slot, returning its intended time.
    pub fn take(&mut self) -> Instant {
        let t = self.next;
        self.n += 1;
        self.next = self.at(self.n);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_interleave_across_connections() {
        // 1000 req/s over 4 connections: each connection every 4 ms, staggered by 1 ms
        assert_eq!(intended_offset(0, 0, 4, 1000.0), Duration::ZERO);
        assert_eq!(intended_offset(0, 3, 4, 1000.0), Duration::from_millis(3));
        assert_eq!(intended_offset(1, 0, 4, 1000.0), Duration::from_millis(4));
        assert_eq!(intended_offset(10, 2, 4, 1000.0), Duration::from_millis(42));
    }

    #[test]
    fn total_rate_is_kept() {
        let start = Instant::now();
        let (rate, conns) = (2500.0, 7);
        let horizon = Duration::from_secs(2);
        let mut total = 0;
        for c in 0..conns {
            let mut s = Schedule::new(start, rate, c, conns);
            let mut last = start;
            while s.next() < start + horizon {
                let t = s.take();
                assert!(t >= last);
                last = t;
                total += 1;
            }
        }
        assert_eq!(total, expected_count(rate, horizon));
        assert_eq!(total, 5000);
    }

    #[test]
    fn all_slots_are_distinct() {
        let start = Instant::now();
        let mut all: Vec<Duration> = Vec::new();
        for c in 0..3 {
            let mut s = Schedule::new(start, 300.0, c, 3);
            for _ in 0..100 {
                all.push(s.take() - start);
            }
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 300);
        assert!(all.last().copied().unwrap_or_default() < Duration::from_secs(1));
    }
}

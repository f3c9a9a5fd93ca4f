//! Percentiles of latency samples.

use std::time::Duration;

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    pub(crate) fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
        self.sorted = false;
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.ns.extend(other.ns);
        self.sorted = false;
    }

    pub(crate) fn len(&self) -> usize {
        self.ns.len()
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest-rank; 0 when empty.
    pub(crate) fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = (q * self.ns.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.ns.len()) - 1;
        self.ns[i] as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::default();
        for ms in 1..=1000u64 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile_ms(0.5), 500.0);
        assert_eq!(s.quantile_ms(0.99), 990.0);
        assert_eq!(s.quantile_ms(0.999), 999.0);
        assert_eq!(s.quantile_ms(1.0), 1000.0);
        assert_eq!(Samples::default().quantile_ms(0.5), 0.0);
    }
}

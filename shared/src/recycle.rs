//! The per-worker recycling limits both sides agree on: the worker counts its own requests
//! against `max_requests`, the supervisor watches lifetime and memory.

/// A worker's share of a jitter of at most `max`, fixed per pid so workers do not all
/// recycle together.
pub fn jitter(pid: u32, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    // Knuth's multiplicative hash spreads consecutive pids.
    u64::from(pid.wrapping_mul(2_654_435_761)) % (max + 1)
}

/// The request count at which the worker `pid` retires (`None`: `max_requests` is off).
pub fn max_requests(config: &genro_config::Server, pid: u32) -> Option<u64> {
    (config.max_requests != 0)
        .then(|| config.max_requests + jitter(pid, config.max_requests_jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_spreads() {
        assert_eq!(jitter(1234, 0), 0);
        let values: std::collections::HashSet<u64> =
            (1000..1100).map(|pid| jitter(pid, 50)).collect();
        assert!(values.iter().all(|&v| v <= 50));
        assert!(values.len() > 20, "consecutive pids spread: {values:?}");
    }
}

//! Pure helpers for the figures the benchmarks print.

/// The `pct`th percentile of sorted `values` (0 when empty).
pub fn percentile(sorted: &[u32], pct: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_samples() {
        let v: Vec<u32> = (1..=100).collect();
        for (pct, want) in [(0, 1), (50, 51), (99, 100), (100, 100)] {
            assert_eq!(percentile(&v, pct), want, "p{pct}");
        }
        assert_eq!(percentile(&[], 99), 0);
    }
}

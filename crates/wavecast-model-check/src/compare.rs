//! Comparing outputs under a tolerance, accumulated over the golden cases: the largest errors,
//! how many elements fell outside, and where the worst one is.

use crate::expectations::Tolerance;
use crate::npy::Array;
use crate::report::{Deviation, MAX_INDEX, OutputResult, finite};

/// One output's comparison, built up case by case.
#[derive(Debug, Clone)]
pub struct Comparison {
    output: String,
    tolerance: Tolerance,
    compared: u64,
    violations: u64,
    max_abs: f64,
    max_rel: f64,
    /// The worst deviation and its score: error over allowed slack for values (above 1 is
    /// outside), or 1 for a row whose classes differ (the first such row is kept).
    worst: Option<(f64, Deviation)>,
}

impl Comparison {
    /// A comparison of `output` under `tolerance`, with nothing compared yet.
    pub fn new(output: &str, tolerance: Tolerance) -> Comparison {
        Comparison {
            output: output.to_owned(),
            tolerance,
            compared: 0,
            violations: 0,
            max_abs: 0.0,
            max_rel: 0.0,
            worst: None,
        }
    }

    /// Compares case `case`'s `actual` output with `expected`. The arrays must have the same
    /// shape (the caller reports a shape mismatch itself).
    pub fn add(&mut self, case: usize, expected: &Array, actual: &Array) {
        let n = expected.data.len().min(actual.data.len());
        for i in 0..n {
            let (e, a) = (expected.data.get_f64(i), actual.data.get_f64(i));
            let (abs, rel) = errors(e, a);
            self.max_abs = self.max_abs.max(abs);
            self.max_rel = self.max_rel.max(rel);
        }
        match self.tolerance {
            Tolerance::Close { abs: slack, rel: rel_slack } => {
                for i in 0..n {
                    let (e, a) = (expected.data.get_f64(i), actual.data.get_f64(i));
                    let (abs, _) = errors(e, a);
                    let allowed = slack + rel_slack * e.abs();
                    // A non-finite disagreement is never within tolerance, whatever the slack
                    // (an infinite expected value would otherwise allow anything).
                    let score = match abs {
                        0.0 => 0.0,
                        _ if abs.is_finite() && allowed > 0.0 => abs / allowed,
                        _ => f64::INFINITY,
                    };
                    self.compared += 1;
                    if score > 1.0 {
                        self.violations += 1;
                    }
                    if self.worst.as_ref().is_none_or(|(w, _)| score > *w) {
                        let index = unravel(i, &expected.shape);
                        self.worst =
                            Some((score, Deviation::Value { case, index, expected: finite(e), actual: finite(a) }));
                    }
                }
            }
            Tolerance::TopK { k } => {
                let classes = expected.shape.last().copied().unwrap_or(1).max(1);
                let rows = expected.shape[..expected.shape.len().saturating_sub(1)].to_vec();
                for row in 0..n / classes {
                    let want = top(expected, row * classes, classes, k as usize);
                    let have = top(actual, row * classes, classes, k as usize);
                    self.compared += 1;
                    let mut same = want.clone();
                    let mut found = have.clone();
                    same.sort_unstable();
                    found.sort_unstable();
                    if same != found {
                        self.violations += 1;
                        if self.worst.is_none() {
                            self.worst = Some((
                                2.0,
                                Deviation::Classes { case, index: unravel(row, &rows), expected: want, actual: have },
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Whether any element fell outside the tolerance.
    pub fn failed(&self) -> bool {
        self.violations > 0
    }

    /// The result for the report.
    pub fn result(&self) -> OutputResult {
        OutputResult {
            output: self.output.clone(),
            tolerance: self.tolerance,
            compared: self.compared,
            violations: self.violations,
            max_abs_error: finite(self.max_abs),
            max_rel_error: finite(self.max_rel),
            worst: self.worst.as_ref().map(|(_, d)| d.clone()),
        }
    }

    /// One line for a failure message: where the worst deviation is, with the reference and
    /// the compared values called `labels` (`("expected", "got")`).
    pub fn describe(&self, (want, got): (&str, &str)) -> String {
        let head =
            format!("output {:?}: {} of {} outside {}", self.output, self.violations, self.compared, self.tolerance);
        match &self.worst {
            Some((_, Deviation::Value { case, index, expected, actual })) => format!(
                "{head}; worst at case {case} index {index:?}: {want} {}, {got} {} (max abs error {})",
                show(*expected),
                show(*actual),
                show(finite(self.max_abs))
            ),
            Some((_, Deviation::Classes { case, index, expected, actual })) => {
                format!("{head}; first at case {case} row {index:?}: top classes {want} {expected:?}, {got} {actual:?}")
            }
            None => head,
        }
    }
}

fn show(x: Option<f64>) -> String {
    x.map_or_else(|| "a non-finite value".to_owned(), |x| format!("{x:.6}"))
}

/// Absolute and relative error of `actual` against `expected`. NaN against NaN, or equal
/// infinities, count as equal; any other non-finite disagreement is an infinite error.
fn errors(expected: f64, actual: f64) -> (f64, f64) {
    if expected == actual || (expected.is_nan() && actual.is_nan()) {
        return (0.0, 0.0);
    }
    let abs = (expected - actual).abs();
    if abs.is_nan() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let rel = if expected == 0.0 { f64::INFINITY } else { abs / expected.abs() };
    (abs, rel)
}

/// The `k` best classes of the row at `start`, best first; ties go to the lower class, NaN
/// scores rank last.
fn top(a: &Array, start: usize, classes: usize, k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..classes).collect();
    let score = |c: usize| {
        let x = a.data.get_f64(start + c);
        if x.is_nan() { f64::NEG_INFINITY } else { x }
    };
    order.sort_by(|&x, &y| score(y).total_cmp(&score(x)).then(x.cmp(&y)));
    order.truncate(k.min(MAX_INDEX));
    order
}

/// The position of flat element `i` in an array of `shape` (row-major), at most
/// [`MAX_INDEX`] axes.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = i % dim;
            i /= dim;
        }
    }
    index.truncate(MAX_INDEX);
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::Data;

    const LABELS: (&str, &str) = ("expected", "got");

    fn f32s(shape: &[usize], v: &[f32]) -> Array {
        Array { shape: shape.to_vec(), data: Data::Float32(v.to_vec()) }
    }

    fn compare(t: Tolerance, expected: &Array, actual: &Array) -> Comparison {
        let mut c = Comparison::new("y", t);
        c.add(0, expected, actual);
        c
    }

    #[test]
    fn close_allows_absolute_plus_relative_slack() {
        let close = |abs, rel| Tolerance::Close { abs, rel };
        let nan = f32::NAN;
        let cases: &[(Tolerance, &[f32], &[f32], u64)] = &[
            (close(0.1, 0.0), &[1.0, 2.0], &[1.05, 1.95], 0),
            (close(0.1, 0.0), &[1.0, 2.0], &[1.2, 2.0], 1),
            (close(0.0, 0.1), &[10.0, 100.0], &[10.5, 111.0], 1),
            (close(0.0, 0.0), &[1.0], &[1.0], 0),
            (close(0.0, 0.0), &[1.0], &[1.000_001], 1),
            (close(1.0, 1.0), &[nan, 1.0], &[nan, 1.0], 0),
            (close(1.0, 1.0), &[1.0], &[nan], 1),
            (close(1.0, 1.0), &[nan], &[1.0], 1),
            (close(1.0, 1.0), &[f32::INFINITY], &[f32::INFINITY], 0),
            (close(1e9, 1.0), &[f32::INFINITY], &[f32::NEG_INFINITY], 1),
        ];
        for (t, e, a, violations) in cases {
            let c = compare(*t, &f32s(&[e.len()], e), &f32s(&[a.len()], a));
            assert_eq!(c.violations, *violations, "{t} {e:?} vs {a:?}");
            assert_eq!(c.compared, e.len() as u64);
        }
    }

    #[test]
    fn the_worst_value_is_located_and_reported() {
        let e = f32s(&[2, 3], &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let a = f32s(&[2, 3], &[0.0, 0.01, 0.0, 0.0, 0.0, 0.5]);
        let c = compare(Tolerance::Close { abs: 0.1, rel: 0.0 }, &e, &a);
        let r = c.result();
        assert_eq!(r.violations, 1);
        assert_eq!(r.max_abs_error, Some(0.5));
        assert_eq!(
            r.worst,
            Some(Deviation::Value { case: 0, index: vec![1, 2], expected: Some(0.0), actual: Some(0.5) })
        );
        assert!(
            c.describe(LABELS).contains("worst at case 0 index [1, 2]: expected 0.000000, got 0.500000"),
            "{}",
            c.describe(LABELS)
        );

        // Everything passing still names the element nearest the edge.
        let c = compare(Tolerance::Close { abs: 1.0, rel: 0.0 }, &e, &a);
        assert!(!c.failed());
        assert!(matches!(c.result().worst, Some(Deviation::Value { ref index, .. }) if *index == [1, 2]));
    }

    #[test]
    fn top_k_compares_the_best_classes_as_sets() {
        let top = |k| Tolerance::TopK { k };
        let cases: &[(u32, &[f32], &[f32], u64)] = &[
            (1, &[0.1, 0.7, 0.2], &[0.0, 0.9, 0.1], 0),
            (1, &[0.1, 0.7, 0.2], &[0.5, 0.4, 0.1], 1),
            (2, &[0.1, 0.7, 0.2], &[0.0, 0.3, 0.7], 0),
            (2, &[0.1, 0.7, 0.2], &[0.5, 0.4, 0.1], 1),
            (1, &[0.5, 0.5, 0.0], &[0.5, 0.5, 0.0], 0),
            (1, &[0.5, 0.5, 0.0], &[0.4, 0.5, 0.0], 1),
            (1, &[f32::NAN, 0.5, 0.0], &[0.0, 0.5, f32::NAN], 0),
        ];
        for (k, e, a, violations) in cases {
            let c = compare(top(*k), &f32s(&[1, 3], e), &f32s(&[1, 3], a));
            assert_eq!((c.compared, c.violations), (1, *violations), "top-{k} {e:?} vs {a:?}");
        }
        let c = compare(top(1), &f32s(&[2, 2], &[1.0, 0.0, 0.0, 1.0]), &f32s(&[2, 2], &[1.0, 0.0, 1.0, 0.0]));
        assert_eq!(
            c.result().worst,
            Some(Deviation::Classes { case: 0, index: vec![1], expected: vec![1], actual: vec![0] })
        );
    }

    #[test]
    fn integer_and_boolean_outputs_compare_as_numbers() {
        let e = Array { shape: vec![3], data: Data::Int64(vec![1, 2, 3]) };
        let a = Array { shape: vec![3], data: Data::Int64(vec![1, 2, 4]) };
        assert_eq!(compare(Tolerance::Close { abs: 0.0, rel: 0.0 }, &e, &a).violations, 1);
        let b = Array { shape: vec![2], data: Data::Bool(vec![true, false]) };
        assert!(!compare(Tolerance::Close { abs: 0.0, rel: 0.0 }, &b, &b).failed());
    }
}

//! The golden set: known inputs and the outputs the publisher expects, as a NumPy `.npz`.
//!
//! Members are named `input/NAME.npy` and `output/NAME.npy` after the model's tensor names (the
//! `input/` or `output/` prefix is cut once, so names may hold `/` or `.`); every array's first
//! axis is the case, so `numpy.savez(f, **{"input/x": np.stack(xs), "output/y": np.stack(ys)})`
//! writes one. Any other member is refused rather than ignored: a misspelt prefix would
//! otherwise make a check that compares nothing.

use crate::npy::{self, Array, NpyError};
use crate::zip::{self, ZipError};

/// Most bytes a golden set may unpack to.
pub const MAX_UNPACKED: u64 = 256 * 1024 * 1024;
/// Most cases in a golden set.
pub const MAX_CASES: usize = 10_000;

/// A golden set, read and checked for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenSet {
    /// How many cases (every array's first dimension).
    pub cases: usize,
    /// Input arrays by the model input they feed, in archive order.
    pub inputs: Vec<(String, Array)>,
    /// Expected output arrays by model output, in archive order.
    pub outputs: Vec<(String, Array)>,
}

/// A golden set that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The archive.
    #[error("reading the golden set's .npz")]
    Zip(#[source] ZipError),
    /// One array.
    #[error("reading golden array {member:?}")]
    Npy {
        /// The member.
        member: String,
        /// Why.
        #[source]
        source: NpyError,
    },
    /// A member that is neither `input/…npy` nor `output/…npy`.
    #[error("golden member {0:?} is not input/NAME.npy or output/NAME.npy")]
    Member(String),
    /// No inputs, or no expected outputs.
    #[error("the golden set has no {0} arrays")]
    Empty(&'static str),
    /// An array with no case axis, or a case count unlike the others.
    #[error("golden array {name:?} has shape {shape:?}: every array's first axis is the case, and all hold {cases}")]
    Cases {
        /// The array.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The case count of the first array.
        cases: usize,
    },
    /// Too many cases, or none.
    #[error("the golden set holds {0} cases: it must hold between 1 and {MAX_CASES}")]
    CaseCount(usize),
}

impl GoldenSet {
    /// Reads a `.npz`.
    pub fn from_npz(bytes: &[u8]) -> Result<GoldenSet, GoldenError> {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for m in zip::read(bytes, MAX_UNPACKED).map_err(GoldenError::Zip)? {
            let Some(stem) = m.name.strip_suffix(".npy") else { return Err(GoldenError::Member(m.name)) };
            let (list, name) = match stem.split_once('/') {
                Some(("input", name)) if !name.is_empty() => (&mut inputs, name),
                Some(("output", name)) if !name.is_empty() => (&mut outputs, name),
                _ => return Err(GoldenError::Member(m.name)),
            };
            let array = npy::read(&m.data).map_err(|source| GoldenError::Npy { member: m.name.clone(), source })?;
            list.push((name.to_owned(), array));
        }
        if inputs.is_empty() {
            return Err(GoldenError::Empty("input/"));
        }
        if outputs.is_empty() {
            return Err(GoldenError::Empty("output/"));
        }
        let cases = inputs[0].1.shape.first().copied().unwrap_or(0);
        for (name, array) in inputs.iter().chain(&outputs) {
            if array.shape.first() != Some(&cases) {
                return Err(GoldenError::Cases { name: name.clone(), shape: array.shape.clone(), cases });
            }
        }
        if cases == 0 || cases > MAX_CASES {
            return Err(GoldenError::CaseCount(cases));
        }
        Ok(GoldenSet { cases, inputs, outputs })
    }

    /// Writes the set as a `.npz` numpy reads (stored members, fixed dates).
    pub fn to_npz(&self) -> Vec<u8> {
        let members = |prefix: &str, arrays: &[(String, Array)]| -> Vec<zip::Member> {
            arrays
                .iter()
                .map(|(name, a)| zip::Member { name: format!("{prefix}/{name}.npy"), data: npy::write(a) })
                .collect()
        };
        let mut all = members("input", &self.inputs);
        all.extend(members("output", &self.outputs));
        zip::write(&all)
    }

    /// The input arrays of case `index`, in archive order.
    pub fn case_inputs(&self, index: usize) -> Vec<(&str, Array)> {
        self.inputs.iter().map(|(name, a)| (name.as_str(), a.case(index))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::Data;

    fn member(name: &str, shape: &[usize], values: Vec<f32>) -> zip::Member {
        zip::Member {
            name: name.into(),
            data: npy::write(&Array { shape: shape.to_vec(), data: Data::Float32(values) }),
        }
    }

    #[test]
    fn a_golden_set_round_trips_and_names_keep_their_slashes() {
        let bytes = zip::write(&[
            member("input/serving_default/x.1.npy", &[2, 1], vec![1.0, 2.0]),
            member("output/y.npy", &[2], vec![3.0, 4.0]),
        ]);
        let set = GoldenSet::from_npz(&bytes).expect("reads");
        assert_eq!(set.cases, 2);
        assert_eq!(set.inputs[0].0, "serving_default/x.1");
        assert_eq!(set.outputs[0].0, "y");
        assert_eq!(set.case_inputs(1)[0].1, Array { shape: vec![1], data: Data::Float32(vec![2.0]) });
        assert_eq!(GoldenSet::from_npz(&set.to_npz()).expect("reads again"), set);
    }

    #[test]
    fn malformed_golden_sets_are_refused_with_the_reason() {
        let x = || member("input/x.npy", &[2, 1], vec![1.0, 2.0]);
        let y = || member("output/y.npy", &[2], vec![3.0, 4.0]);
        let cases: Vec<(&str, Vec<zip::Member>, &str)> = vec![
            ("a misspelt prefix", vec![x(), member("outputs/y.npy", &[2], vec![0.0; 2])], "is not input/NAME.npy"),
            (
                "no .npy suffix",
                vec![x(), zip::Member { name: "output/y".into(), data: vec![] }],
                "is not input/NAME.npy",
            ),
            ("an empty name", vec![x(), member("output/.npy", &[2], vec![0.0; 2])], "is not input/NAME.npy"),
            ("no outputs", vec![x()], "no output/ arrays"),
            ("no inputs", vec![y()], "no input/ arrays"),
            ("case counts differ", vec![x(), member("output/y.npy", &[3], vec![0.0; 3])], "all hold 2"),
            ("a scalar", vec![x(), member("output/y.npy", &[], vec![0.0])], "every array's first axis"),
            (
                "no cases",
                vec![member("input/x.npy", &[0, 1], vec![]), member("output/y.npy", &[0], vec![])],
                "holds 0 cases",
            ),
            (
                "a broken array",
                vec![x(), zip::Member { name: "output/y.npy".into(), data: b"nope".to_vec() }],
                "reading golden array \"output/y.npy\"",
            ),
        ];
        for (what, members, want) in cases {
            let err = GoldenSet::from_npz(&zip::write(&members)).expect_err(what);
            let text = wavecast_os::error::chain(&err);
            assert!(text.contains(want), "{what}: {text}");
        }
        let err = GoldenSet::from_npz(b"not a zip").expect_err("not a zip");
        assert!(wavecast_os::error::chain(&err).contains("not a zip archive"));
    }
}

//! The golden bundle: one file holding `expectations.json` and the publisher's `golden.npz`,
//! whose digest and length are signed into the model's own TUF target (custom metadata,
//! `wavecast-tuf`'s `golden`), and which reaches the check as `WAVECAST_GOLDEN_PATH`.
//!
//! It is a zip of exactly those two stored members, written with fixed dates so the same
//! expectations and golden set always make the same bytes (and so the same signed hash).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::expectations::{Expectations, ExpectationsError};
use crate::golden::{self, GoldenError, GoldenSet};
use crate::zip::{self, Member, ZipError};

/// The expectations member.
pub const EXPECTATIONS: &str = "expectations.json";
/// The golden set member.
pub const GOLDEN: &str = "golden.npz";
/// Largest bundle file read, bytes.
pub const MAX_BUNDLE: u64 = golden::MAX_UNPACKED + MAX_EXPECTATIONS;
/// Largest expectations document, bytes.
const MAX_EXPECTATIONS: u64 = 1024 * 1024;

/// A bundle, read and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The publisher's expectations.
    pub expectations: Expectations,
    /// The golden inputs and outputs.
    pub golden: GoldenSet,
}

/// A bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file cannot be read.
    #[error("reading golden bundle {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any bundle may be.
    #[error("golden bundle {path} is larger than {MAX_BUNDLE} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not a readable zip.
    #[error("reading the golden bundle")]
    Zip(#[source] ZipError),
    /// Not exactly the two members.
    #[error("the golden bundle must hold exactly {EXPECTATIONS} and {GOLDEN}, it holds {0:?}")]
    Members(Vec<String>),
    /// The expectations are not the JSON document.
    #[error("reading the golden bundle's {EXPECTATIONS}")]
    Json(#[source] serde_json::Error),
    /// The expectations are out of range or of another format version.
    #[error("the golden bundle's {EXPECTATIONS} is not usable")]
    Expectations(#[source] ExpectationsError),
    /// The golden set does not read.
    #[error("reading the golden bundle's {GOLDEN}")]
    Golden(#[source] GoldenError),
}

/// Packs `expectations` with the publisher's `.npz` (kept byte for byte).
pub fn pack(expectations: &Expectations, golden_npz: &[u8]) -> Vec<u8> {
    // Serializing a struct of strings and numbers cannot fail; pretty, so a person can read it.
    let json = serde_json::to_vec_pretty(expectations).unwrap_or_default();
    zip::write(&[
        Member { name: EXPECTATIONS.to_owned(), data: json },
        Member { name: GOLDEN.to_owned(), data: golden_npz.to_vec() },
    ])
}

/// Reads a bundle from bytes.
pub fn unpack(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let members = zip::read(bytes, MAX_BUNDLE).map_err(BundleError::Zip)?;
    let find = |name: &str| members.iter().find(|m| m.name == name);
    let (Some(json), Some(npz), 2) = (find(EXPECTATIONS), find(GOLDEN), members.len()) else {
        return Err(BundleError::Members(members.iter().take(8).map(|m| m.name.clone()).collect()));
    };
    if json.data.len() as u64 > MAX_EXPECTATIONS {
        return Err(BundleError::Members(vec![format!("{EXPECTATIONS} over {MAX_EXPECTATIONS} bytes")]));
    }
    let expectations: Expectations = serde_json::from_slice(&json.data).map_err(BundleError::Json)?;
    expectations.validate().map_err(BundleError::Expectations)?;
    let golden = GoldenSet::from_npz(&npz.data).map_err(BundleError::Golden)?;
    Ok(Bundle { expectations, golden })
}

/// Reads a bundle file, refusing one larger than [`MAX_BUNDLE`] before reading it.
pub fn read(path: &Path) -> Result<Bundle, BundleError> {
    let io = |source| BundleError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_BUNDLE {
        return Err(BundleError::TooLarge { path: path.to_owned() });
    }
    unpack(&bytes)
}

//! Validated names: artifacts, groups, devices, and the TUF target names built from them.
//!
//! Names end up in file paths (the blob store, the agent's state dir) and URLs, so they are
//! checked once, here, and carried as newtypes afterwards. A `String` that has not been through
//! [`validate`] never becomes a name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest name we accept, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} name is empty")]
    Empty {
        /// What kind of name (artifact, group, device).
        kind: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{kind} name {name:?} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// What kind of name.
        kind: &'static str,
        /// The refused name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9._-]` (path separators included).
    #[error("{kind} name {name:?} contains {ch:?}; use only letters, digits, '.', '_' and '-' (no path separators)")]
    BadChar {
        /// What kind of name.
        kind: &'static str,
        /// The refused name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// The name does not start with a letter or digit (this also rules out `.` and `..`).
    #[error("{kind} name {name:?} must start with a letter or a digit")]
    BadStart {
        /// What kind of name.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
    /// The version is not semantic versioning.
    #[error("version {version:?} is not a semantic version (like 2.1.0)")]
    BadVersion {
        /// The refused version.
        version: String,
        /// What the semver parser said.
        #[source]
        source: semver::Error,
    },
    /// A target name is not `NAME@VERSION`.
    #[error("target {target:?} is not of the form NAME@VERSION")]
    BadTarget {
        /// The refused target name.
        target: String,
    },
}

/// Checks a name against the shared rules: 1–64 bytes of `[A-Za-z0-9._-]`, starting with a
/// letter or digit. `.`, `..`, `/` and `\` can therefore never appear as a path component.
pub fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, name: name.to_owned(), len: name.len() });
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::BadChar { kind, name: name.to_owned(), ch });
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart { kind, name: name.to_owned() });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of an artifact (a model), such as `yolo-v8n`.
    ArtifactName,
    "artifact"
);
name_type!(
    /// The name of a device group, such as `plant-7`.
    GroupName,
    "group"
);
name_type!(
    /// The name a device enrolled with, such as `cam-001`.
    DeviceName,
    "device"
);

/// An artifact version: semantic versioning, compared as such.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactVersion(semver::Version);

impl ArtifactVersion {
    /// Parses a semantic version.
    pub fn new(version: &str) -> Result<Self, NameError> {
        semver::Version::parse(version)
            .map(Self)
            .map_err(|source| NameError::BadVersion { version: version.to_owned(), source })
    }
}

impl FromStr for ArtifactVersion {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl TryFrom<String> for ArtifactVersion {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(&s)
    }
}

impl From<ArtifactVersion> for String {
    fn from(v: ArtifactVersion) -> String {
        v.0.to_string()
    }
}

impl fmt::Display for ArtifactVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The TUF target name of one artifact version: `NAME@VERSION`.
///
/// Both halves are validated, so a target name never contains a path separator or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetName {
    name: ArtifactName,
    version: ArtifactVersion,
}

impl TargetName {
    /// Builds the target name of `name` at `version`.
    pub fn new(name: ArtifactName, version: ArtifactVersion) -> Self {
        Self { name, version }
    }

    /// Parses `NAME@VERSION`, validating both halves.
    pub fn parse(target: &str) -> Result<Self, NameError> {
        let (name, version) =
            target.split_once('@').ok_or_else(|| NameError::BadTarget { target: target.to_owned() })?;
        Ok(Self { name: ArtifactName::new(name)?, version: ArtifactVersion::new(version)? })
    }

    /// The artifact name.
    pub fn name(&self) -> &ArtifactName {
        &self.name
    }

    /// The artifact version.
    pub fn version(&self) -> &ArtifactVersion {
        &self.version
    }
}

impl TryFrom<String> for TargetName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<TargetName> for String {
    fn from(t: TargetName) -> String {
        t.to_string()
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("yolo-v8n", true),
            ("cam_001.b", true),
            ("a", true),
            ("", false),
            ("..", false),
            (".hidden", false),
            ("../etc", false),
            ("a/b", false),
            ("a\\b", false),
            ("a b", false),
            ("é", false),
            (&long, false),
            (&long[..MAX_NAME_LEN], true),
        ];
        for (name, ok) in cases {
            assert_eq!(ArtifactName::new(*name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn target_names_round_trip_and_refuse_traversal() {
        let t = TargetName::parse("yolo-v8n@2.1.0").unwrap();
        assert_eq!(t.to_string(), "yolo-v8n@2.1.0");
        for bad in ["yolo", "../x@1.0.0", "x@1.0", "x@../1.0.0", "@1.0.0"] {
            assert!(TargetName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = ArtifactName::new("a/b").unwrap_err().to_string();
        assert!(e.contains("no path separators"), "{e}");
    }
}

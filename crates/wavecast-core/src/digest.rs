//! SHA-256 digests as a type, so a hex string from the wire is checked before it is trusted,
//! and the one SHA-256 implementation every wavecast crate computes them with.
//!
//! The implementation is aws-lc's: the TLS stack and tough require it anyway, it has assembly
//! for the CPUs devices run on, and linking a second one (the `sha2` crate) only cost the agent
//! size and the reader a question about which one is used where.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest([u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a SHA-256 digest (64 lowercase hex digits)")]
pub struct DigestError {
    /// The refused value, cut to a readable length.
    pub value: String,
}

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Wraps a slice that must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DigestError { value: hex::encode(&bytes[..bytes.len().min(40)]) })
    }

    /// The digest of `data`, for small in-memory values.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Sha256Hasher::new();
        h.update(data);
        h.finish()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let err = || DigestError { value: s.chars().take(80).collect() };
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, DigestError> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.to_hex()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// A SHA-256 computation fed in pieces: files, streams, and hashes over several fields.
#[derive(Clone)]
pub struct Sha256Hasher(digest::Context);

impl Sha256Hasher {
    /// A computation over no bytes yet.
    pub fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Sha256Digest {
        let mut out = [0u8; 32];
        // SHA-256 output is 32 bytes by definition; the copy cannot mismatch.
        out.copy_from_slice(self.0.finish().as_ref());
        Sha256Digest(out)
    }
}

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lowercase_hex_of_the_right_length() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(Sha256Digest::of(b"abc").to_hex(), abc);
        assert_eq!(abc.parse::<Sha256Digest>().unwrap(), Sha256Digest::of(b"abc"));
        for bad in ["", "abc", &abc.to_uppercase(), &abc[1..], &format!("{abc}00"), &abc.replace('b', "g")] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_in_pieces_equals_hashing_at_once() {
        // FIPS 180-2 test vector: 56 bytes that cross a block boundary when padded.
        let msg = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let want = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
        assert_eq!(Sha256Digest::of(msg).to_hex(), want);
        for cut in [0, 1, 55, 56] {
            let mut h = Sha256Hasher::new();
            h.update(&msg[..cut]);
            h.update(&msg[cut..]);
            assert_eq!(h.finish().to_hex(), want, "cut at {cut}");
        }
    }
}

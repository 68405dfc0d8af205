//! Signed checkpoints of the audit log: a C2SP tlog-checkpoint body inside a C2SP signed note.
//!
//! A checkpoint states "the log ORIGIN has SIZE entries and this root hash", signed with the
//! server's checkpoint key:
//!
//! ```text
//! wavecast/3f9c0a11d2e4b7a8
//! 42
//! 9Qq2l1sQ8ZK5m7oJzq1hQ7f3wQm2mXrX8Yk6vU3e0tA=
//!
//! — wavecast/3f9c0a11d2e4b7a8 q7cAbW…(base64 of 4-byte key hash ‖ 64-byte Ed25519 signature)
//! ```
//!
//! The formats are the ones transparency-log tooling (Go's sumdb/note, transparency-dev) reads,
//! so an auditor is not tied to wavecast's own verifier. Everything here is pure: the signer
//! signs [`Checkpoint::body`] and calls [`format_note`]; a verifier passes [`open_checkpoint`]
//! a function that checks one Ed25519 signature. Keeping that call outside lets this crate stay
//! free of a crypto provider.

use crate::digest::Sha256Hasher;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::Sha256Digest;

/// The C2SP signature type byte of Ed25519 keys.
const ED25519_TYPE: u8 = 0x01;
/// Go's note.Open refuses more signature lines than this; so do we.
const MAX_SIGNATURES: usize = 100;
/// Checkpoints are a few hundred bytes; anything far larger is not one.
const MAX_NOTE_BYTES: usize = 64 * 1024;
/// The signature line prefix: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint or note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a well-formed signed note.
    #[error("parsing the signed note: {detail}")]
    ParseNote {
        /// What is wrong.
        detail: String,
    },
    /// The note text is not a well-formed checkpoint.
    #[error("parsing the checkpoint body: {detail}")]
    ParseBody {
        /// What is wrong.
        detail: String,
    },
    /// No signature line names the expected key.
    #[error("the checkpoint carries no signature by key {key:?} (hash {key_hash})")]
    Unsigned {
        /// The expected key name.
        key: String,
        /// Its key hash, hex.
        key_hash: String,
    },
    /// The expected key's signature line does not verify.
    #[error("the signature by key {key:?} does not verify")]
    VerifySignature {
        /// The key name.
        key: String,
    },
    /// A correctly signed checkpoint of another log.
    #[error("the checkpoint is for log {found:?}, not {expected:?}")]
    WrongOrigin {
        /// The origin in the note.
        found: String,
        /// The origin expected.
        expected: String,
    },
    /// Signed by a checkpoint key a later root replaced, and not vouched for by the current
    /// one: what a retired (perhaps leaked) key signs past the current key's checkpoints counts
    /// for nothing.
    #[error(
        "the checkpoint is signed by a retired checkpoint key, and no checkpoint at least as large is signed by the current one"
    )]
    RetiredKey,
}

fn parse_note_err(detail: impl Into<String>) -> CheckpointError {
    CheckpointError::ParseNote { detail: detail.into() }
}

fn parse_body_err(detail: impl Into<String>) -> CheckpointError {
    CheckpointError::ParseBody { detail: detail.into() }
}

/// The origin line of an installation's log: `wavecast/` and the first 16 hex digits of the
/// SHA-256 of its root.json, so the name is unique per installation and derivable by anyone
/// holding the trust anchor.
pub fn origin_for_root(root_json_sha256: &Sha256Digest) -> String {
    format!("wavecast/{}", &root_json_sha256.to_hex()[..16])
}

/// A checkpoint: a log's size and root hash, named by the log's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name.
    pub origin: String,
    /// Entries in the log.
    pub size: u64,
    /// The RFC 6962 root of those entries.
    pub root: Sha256Digest,
}

impl Checkpoint {
    /// The C2SP tlog-checkpoint body: origin, decimal size, base64 root, each ending in `\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root.as_bytes()))
    }

    /// Parses a checkpoint body. Extension lines after the root are allowed and ignored, as the
    /// C2SP spec lets verifiers do.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let lines = body.strip_suffix('\n').ok_or_else(|| parse_body_err("it does not end in a newline"))?;
        let mut lines = lines.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| parse_body_err("empty origin line"))?;
        let size = lines.next().ok_or_else(|| parse_body_err("no size line"))?;
        // Canonical decimal only, so one checkpoint has exactly one encoding.
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(parse_body_err(format!("size {size:?} is not a decimal number")));
        }
        let size: u64 = size.parse().map_err(|_| parse_body_err(format!("size {size:?} is out of range")))?;
        let root = lines.next().ok_or_else(|| parse_body_err("no root hash line"))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|b| Sha256Digest::from_slice(&b).ok())
            .ok_or_else(|| parse_body_err(format!("root hash {root:?} is not 32 bytes of base64")))?;
        if lines.any(str::is_empty) {
            return Err(parse_body_err("empty extension line"));
        }
        Ok(Self { origin: origin.to_owned(), size, root })
    }
}

/// A note-signing key as verifiers know it: its name and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteKey {
    /// The key name; for checkpoints, the log's origin.
    pub name: String,
    /// The raw Ed25519 public key.
    pub public: [u8; 32],
}

impl NoteKey {
    /// The 4-byte key hash that signature lines carry: the first bytes of
    /// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
    pub fn key_hash(&self) -> [u8; 4] {
        let mut h = Sha256Hasher::new();
        h.update(self.name.as_bytes());
        h.update([b'\n', ED25519_TYPE]);
        h.update(self.public);
        let d = h.finish();
        let d = d.as_bytes();
        [d[0], d[1], d[2], d[3]]
    }

    /// The verifier key string Go's `note.NewVerifier` takes: `name+hash+base64(0x01 ‖ key)`.
    pub fn vkey(&self) -> String {
        let mut typed = vec![ED25519_TYPE];
        typed.extend_from_slice(&self.public);
        format!("{}+{}+{}", self.name, hex::encode(self.key_hash()), B64.encode(typed))
    }
}

/// The checkpoint keys a verifier trusts for one log: the key the newest root names (the
/// current one) and those earlier roots named, oldest first.
///
/// Every key signs under the log's one origin, which stays the first root's for the life of
/// the installation. A checkpoint signed by an earlier key still verifies (it was signed while
/// that key was current), but only the current key's checkpoints can extend what is proven:
/// [`crate::evidence`] accepts an older key's checkpoint only where a current-key checkpoint at
/// least as large vouches for the same events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKeys {
    origin: String,
    /// Raw Ed25519 keys, oldest first; the last is the current one. Never empty.
    keys: Vec<[u8; 32]>,
}

impl From<NoteKey> for CheckpointKeys {
    fn from(key: NoteKey) -> Self {
        Self { origin: key.name, keys: vec![key.public] }
    }
}

impl CheckpointKeys {
    /// The keys of a root chain for the log `origin`, given in root order (the first root's
    /// key first); the last is the current one. A key named again later counts from its last
    /// naming. `None` when no key is given.
    pub fn new(origin: String, chain: impl IntoIterator<Item = [u8; 32]>) -> Option<Self> {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for key in chain {
            keys.retain(|k| *k != key);
            keys.push(key);
        }
        (!keys.is_empty()).then_some(Self { origin, keys })
    }

    /// The log's origin: every checkpoint names it, whichever key signed it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The key the newest root names, which signs new checkpoints.
    pub fn current(&self) -> NoteKey {
        let public = self.keys.last().copied().unwrap_or([0; 32]);
        NoteKey { name: self.origin.clone(), public }
    }

    /// How many keys there are (the current one's rank is this minus one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: there is at least the current key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Opens a checkpoint signed by any of the keys: the checkpoint, and the signing key's rank
    /// (0 for the oldest; `len() - 1` for the current one). When no key signed it, the error
    /// names the current key.
    pub fn open(&self, note: &str, verify: VerifyEd25519) -> Result<(Checkpoint, usize), CheckpointError> {
        for (rank, public) in self.keys.iter().enumerate().rev() {
            let key = NoteKey { name: self.origin.clone(), public: *public };
            match open_checkpoint(note, &key, verify) {
                Err(CheckpointError::Unsigned { .. }) => continue,
                other => return other.map(|c| (c, rank)),
            }
        }
        let current = self.current();
        Err(CheckpointError::Unsigned { key: current.name.clone(), key_hash: hex::encode(current.key_hash()) })
    }

    /// Opens a checkpoint that must be signed by the current key.
    pub fn open_current(&self, note: &str, verify: VerifyEd25519) -> Result<Checkpoint, CheckpointError> {
        match self.open(note, verify)? {
            (c, rank) if rank + 1 == self.keys.len() => Ok(c),
            _ => Err(CheckpointError::RetiredKey),
        }
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key hash.
    pub key_hash: [u8; 4],
    /// The signature bytes after the key hash.
    pub signature: Vec<u8>,
}

/// A parsed signed note; its signatures are not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Its signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// Parses a C2SP signed note: text, a blank line, then `— NAME BASE64` signature lines.
pub fn parse_note(note: &str) -> Result<Note, CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(parse_note_err(format!("it is larger than {MAX_NOTE_BYTES} bytes")));
    }
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(parse_note_err("it contains a control character"));
    }
    // The text cannot contain a blank line, so the last one separates it from the signatures.
    let split = note.rfind("\n\n").ok_or_else(|| parse_note_err("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    let sigs = sigs.strip_suffix('\n').ok_or_else(|| parse_note_err("the last signature line has no newline"))?;
    let mut signatures = Vec::new();
    for line in sigs.split('\n') {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| parse_note_err(format!("signature line {line:?} does not start with an em dash")))?;
        let (name, b64) =
            rest.split_once(' ').ok_or_else(|| parse_note_err(format!("signature line {line:?} has no signature")))?;
        if !valid_key_name(name) {
            return Err(parse_note_err(format!("key name {name:?} is empty or holds a space or '+'")));
        }
        let raw = B64.decode(b64).map_err(|_| parse_note_err(format!("the signature by {name:?} is not base64")))?;
        if raw.len() < 5 {
            return Err(parse_note_err(format!("the signature by {name:?} is too short")));
        }
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_hash: [raw[0], raw[1], raw[2], raw[3]],
            signature: raw[4..].to_vec(),
        });
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(parse_note_err(format!("more than {MAX_SIGNATURES} signatures")));
    }
    Ok(Note { text: text.to_owned(), signatures })
}

/// Formats a note signed once by `key`, `signature` being the Ed25519 signature of `text`.
pub fn format_note(text: &str, key: &NoteKey, signature: &[u8]) -> String {
    let mut raw = key.key_hash().to_vec();
    raw.extend_from_slice(signature);
    format!("{text}\n{SIG_PREFIX}{} {}\n", key.name, B64.encode(raw))
}

/// Checks one Ed25519 signature: `(public key, message, signature) -> valid`. Supplied by the
/// caller (the server and CLI use aws-lc-rs through `wavecast_tuf::keys::verify_ed25519`).
pub type VerifyEd25519 = fn(&[u8; 32], &[u8], &[u8]) -> bool;

/// Returns the note's text if `key` signed it. Other signers' lines are ignored (a witness may
/// cosign); the first line with `key`'s name and hash decides, as in Go's `note.Open`.
pub fn open_note(note: &str, key: &NoteKey, verify: VerifyEd25519) -> Result<String, CheckpointError> {
    let parsed = parse_note(note)?;
    let hash = key.key_hash();
    let sig = parsed
        .signatures
        .iter()
        .find(|s| s.name == key.name && s.key_hash == hash)
        .ok_or_else(|| CheckpointError::Unsigned { key: key.name.clone(), key_hash: hex::encode(hash) })?;
    if !verify(&key.public, parsed.text.as_bytes(), &sig.signature) {
        return Err(CheckpointError::VerifySignature { key: key.name.clone() });
    }
    Ok(parsed.text)
}

/// Verifies a checkpoint note signed by `key`, whose origin must be the key's name.
pub fn open_checkpoint(note: &str, key: &NoteKey, verify: VerifyEd25519) -> Result<Checkpoint, CheckpointError> {
    let checkpoint = Checkpoint::parse_body(&open_note(note, key, verify)?)?;
    if checkpoint.origin != key.name {
        return Err(CheckpointError::WrongOrigin { found: checkpoint.origin, expected: key.name.clone() });
    }
    Ok(checkpoint)
}

/// Parses a checkpoint note without checking any signature: for a server reading back rows it
/// is about to verify anyway, and for messages.
pub fn peek_checkpoint(note: &str) -> Result<Checkpoint, CheckpointError> {
    Checkpoint::parse_body(&parse_note(note)?.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of golang.org/x/mod/sumdb/note (note.go and note_test.go), reproduced by every
    // C2SP signed-note implementation: the verifier key, the text, and its signed note.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str =
        "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

    fn peter() -> NoteKey {
        let typed = B64.decode(PETER_VKEY.rsplit('+').next().unwrap()).unwrap();
        assert_eq!(typed[0], ED25519_TYPE);
        NoteKey { name: "PeterNeumann".into(), public: typed[1..].try_into().unwrap() }
    }

    fn peter_note() -> String {
        format!("{PETER_TEXT}\n\u{2014} PeterNeumann {PETER_SIG}\n")
    }

    #[test]
    fn key_hash_and_note_layout_match_go_sumdb_note() {
        let key = peter();
        assert_eq!(hex::encode(key.key_hash()), "c74f20a3");
        assert_eq!(key.vkey(), PETER_VKEY);
        let note = parse_note(&peter_note()).unwrap();
        assert_eq!(note.text, PETER_TEXT);
        assert_eq!(note.signatures.len(), 1);
        assert_eq!(note.signatures[0].key_hash, key.key_hash());
        assert_eq!(note.signatures[0].signature.len(), 64);
        assert_eq!(format_note(PETER_TEXT, &key, &note.signatures[0].signature), peter_note());
    }

    #[test]
    fn open_note_checks_the_right_signature_line() {
        let key = peter();
        // A stand-in verifier: accepts exactly the Go example's signature over its text.
        fn fake(_: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
            msg == PETER_TEXT.as_bytes() && B64.encode([&[0xc7, 0x4f, 0x20, 0xa3], sig].concat()) == PETER_SIG
        }
        assert_eq!(open_note(&peter_note(), &key, fake).unwrap(), PETER_TEXT);
        let changed = peter_note().replace("cryptography", "cryptographY");
        assert!(matches!(open_note(&changed, &key, fake), Err(CheckpointError::VerifySignature { .. })));
        let other = NoteKey { name: "EnochRoot".into(), public: key.public };
        assert!(matches!(open_note(&peter_note(), &other, fake), Err(CheckpointError::Unsigned { .. })));
        // A cosigner's line before ours does not get in the way.
        let cosigned = peter_note().replace("\n\u{2014} Peter", "\n\u{2014} witness AAAAAAAAAAAAAAA=\n\u{2014} Peter");
        assert_eq!(open_note(&cosigned, &key, fake).unwrap(), PETER_TEXT);
    }

    #[test]
    fn malformed_notes_are_refused() {
        let good = peter_note();
        for bad in [
            good.replace("\n\n", "\n"),
            good.trim_end().to_owned(),
            good.replace('\u{2014}', "-"),
            good.replace("PeterNeumann x08", "Peter+Neumann x08"),
            good.replace("x08go/", "!!!"),
            good.replace(
                "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
                "AAAA",
            ),
            good.replace("problem,", "problem,\t"),
        ] {
            assert!(parse_note(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checkpoint_bodies_round_trip_and_refuse_non_canonical_forms() {
        let c = Checkpoint { origin: "wavecast/0123456789abcdef".into(), size: 42, root: Sha256Digest::of(b"x") };
        let body = c.body();
        assert_eq!(body.lines().count(), 3);
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), c);
        assert_eq!(Checkpoint::parse_body(&format!("{body}ext line\n")).unwrap(), c);
        let root = B64.encode(c.root.as_bytes());
        for bad in [
            format!("wavecast/x\n042\n{root}\n"),
            format!("wavecast/x\n-1\n{root}\n"),
            format!("wavecast/x\n1\n{}\n", B64.encode([0u8; 31])),
            format!("\n1\n{root}\n"),
            format!("wavecast/x\n1\n{root}"),
            "wavecast/x\n1\n".to_owned(),
        ] {
            assert!(Checkpoint::parse_body(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(origin_for_root(&Sha256Digest::of(b"")), "wavecast/e3b0c44298fc1c14");
    }

    #[test]
    fn open_checkpoint_requires_the_origin_to_be_the_key_name() {
        fn any(_: &[u8; 32], _: &[u8], _: &[u8]) -> bool {
            true
        }
        let key = NoteKey { name: "wavecast/aaaa".into(), public: [7; 32] };
        let c = Checkpoint { origin: "wavecast/bbbb".into(), size: 1, root: Sha256Digest::of(b"") };
        let note = format_note(&c.body(), &key, &[0; 64]);
        assert!(matches!(open_checkpoint(&note, &key, any), Err(CheckpointError::WrongOrigin { .. })));
        let ok = Checkpoint { origin: key.name.clone(), ..c };
        let note = format_note(&ok.body(), &key, &[0; 64]);
        assert_eq!(open_checkpoint(&note, &key, any).unwrap(), ok);
        assert_eq!(peek_checkpoint(&note).unwrap(), ok);
    }
}

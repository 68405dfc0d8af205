//! What the fuzz targets share: fixed keys, a trust root and current targets built once per
//! process, a verifier that accepts any signature (to reach the checks behind one), and the
//! generator of the signed seed inputs under `seeds/`.
//!
//! Keys come from fixed seeds, so seeds signed by one build stay valid for the next; nothing
//! here is a secret.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use wavecast_core::checkpoint::{Checkpoint, NoteKey, format_note};
use wavecast_core::evidence::{ConsistencyProof, LeafRow, StoredCheckpoint};
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::tough::editor::signed::SignedRole;
use wavecast_tuf::tough::schema::{KeyHolder, Root, Signed, Targets};

/// When the fixture's targets are checked (fixed, so runs are reproducible).
pub const NOW: &str = "2026-01-01T00:00:00Z";
/// When the fixture's metadata expires.
pub const EXPIRES: &str = "2100-01-01T00:00:00Z";
/// The fixture log's origin, which is also its checkpoint key's name.
pub const ORIGIN: &str = "wavecast/0123456789abcdef";

/// Keys, trust root and current targets, built once.
pub struct Fixture {
    /// Runs tough's async signing.
    pub runtime: tokio::runtime::Runtime,
    /// Signs root.json.
    pub root_key: SigningKey,
    /// Signs targets.
    pub targets_key: SigningKey,
    /// Signs assignment docs.
    pub director_key: SigningKey,
    /// Signs checkpoints.
    pub checkpoint_key: SigningKey,
    /// root.json as written by `wavecast init`.
    pub root_json: Vec<u8>,
    /// The parsed root.
    pub root: Signed<Root>,
    /// The current targets: version 2, holding `yolo@1.0.0`.
    pub current: Signed<Targets>,
    /// Its bytes.
    pub current_json: Vec<u8>,
    /// The checkpoint key as verifiers know it.
    pub note_key: NoteKey,
    /// [`NOW`].
    pub now: jiff::Timestamp,
    /// root.json written to a file, for configs that name it.
    pub trust_root_path: PathBuf,
}

/// The fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: LazyLock<Fixture> = LazyLock::new(build);
    &FIXTURE
}

fn timestamp(s: &str) -> jiff::Timestamp {
    s.parse().expect("a fixed timestamp")
}

/// A signing key from a fixed seed. `SigningKey` loads only from files, so it goes through one.
pub fn fixed_key(n: u8) -> SigningKey {
    let pair = Ed25519KeyPair::from_seed_unchecked(&[n; 32]).expect("a 32-byte seed");
    let pkcs8 = pair.to_pkcs8().expect("PKCS#8 of a valid key");
    let path = std::env::temp_dir().join(format!("wavecast-fuzz-{}-{n}.key", std::process::id()));
    let _ = std::fs::remove_file(&path);
    wavecast_tuf::keys::write_secret_file(&path, pkcs8.as_ref()).expect("writing a temporary key file");
    let key = SigningKey::load(&path).expect("loading the temporary key file");
    let _ = std::fs::remove_file(&path);
    key
}

fn build() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime");
    let [root_key, targets_key, snapshot_key, timestamp_key, director_key, checkpoint_key] =
        [1, 2, 3, 4, 5, 6].map(fixed_key);
    let keys = wavecast_tuf::root::RootKeys {
        root: &root_key,
        targets: &targets_key,
        snapshot: &snapshot_key,
        timestamp: &timestamp_key,
        director: &director_key,
        checkpoint: &checkpoint_key,
    };
    let expires = timestamp(EXPIRES);
    let root_json = runtime.block_on(wavecast_tuf::root::build_root(&keys, expires)).expect("root").buffer().clone();
    let root = wavecast_tuf::root::parse_root(&root_json).expect("the fixture root parses");
    let initial =
        runtime.block_on(wavecast_tuf::repo::initial_targets(&root.signed, &targets_key, expires)).expect("targets");
    let initial: Signed<Targets> = serde_json::from_slice(&initial).expect("initial targets parse");
    let first = wavecast_tuf::publish::NewTarget {
        target: wavecast_core::TargetName::parse("yolo@1.0.0").expect("a valid target name"),
        length: 3,
        sha256: wavecast_core::Sha256Digest::of(b"abc"),
        hardware: None,
    };
    let current_json = runtime
        .block_on(wavecast_tuf::publish::sign_new_targets(&root.signed, &initial, &first, &targets_key, expires))
        .expect("targets v2")
        .buffer()
        .clone();
    let current: Signed<Targets> = serde_json::from_slice(&current_json).expect("targets v2 parse");
    let note_key = NoteKey {
        name: ORIGIN.to_owned(),
        public: checkpoint_key.public_bytes().try_into().expect("an Ed25519 public key is 32 bytes"),
    };
    let trust_root_path = std::env::temp_dir().join(format!("wavecast-fuzz-{}-root.json", std::process::id()));
    std::fs::write(&trust_root_path, &root_json).expect("writing the fixture root.json");
    Fixture {
        runtime,
        root_key,
        targets_key,
        director_key,
        checkpoint_key,
        root_json,
        root,
        current,
        current_json,
        note_key,
        now: timestamp(NOW),
        trust_root_path,
    }
}

impl Fixture {
    /// `targets` signed by the fixture's targets key, as a publisher would submit it; `None`
    /// when tough will not sign it (its canonical JSON refuses some values).
    pub fn sign_targets(&self, targets: Targets) -> Option<Vec<u8>> {
        let holder = KeyHolder::Root(self.root.signed.clone());
        let signed = self.runtime.block_on(SignedRole::new(
            targets,
            &holder,
            &[self.targets_key.source()],
            &SystemRandom::new(),
        ));
        signed.ok().map(|s| s.buffer().clone())
    }

    /// A checkpoint note of the fixture log, signed by its checkpoint key.
    pub fn checkpoint_note(&self, size: u64, root: wavecast_core::Sha256Digest) -> String {
        let body = Checkpoint { origin: ORIGIN.to_owned(), size, root }.body();
        format_note(&body, &self.note_key, &self.checkpoint_key.sign_bytes(body.as_bytes()))
    }
}

/// A verifier that accepts every signature: lets the fuzzer past a check it cannot forge.
pub fn accept_any(_public: &[u8; 32], _msg: &[u8], _signature: &[u8]) -> bool {
    true
}

/// Whether a JSON value holds a floating-point number anywhere. serde_json's default float
/// parsing is best-effort (its `float_roundtrip` feature is off), so a float may not survive
/// print → parse bit for bit; round-trip checks skip values that hold one.
pub fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// The input of the `audit_log` target: what `wavecast audit verify` (without FILE) fetches
/// from a server it does not trust.
#[derive(Debug, Serialize, Deserialize)]
pub struct LiveLog {
    /// `/api/v1/audit/leaves`.
    pub leaves: Vec<LeafRow>,
    /// `/api/v1/audit/checkpoints`.
    pub checkpoints: Vec<StoredCheckpoint>,
    /// `--since-checkpoint`.
    #[serde(default)]
    pub old_note: Option<String>,
    /// `/api/v1/audit/consistency`.
    #[serde(default)]
    pub proof: Option<ConsistencyProof>,
}

/// Writes the seed inputs of every target under `dir/<target>/`.
pub fn write_seeds(dir: &Path) -> std::io::Result<()> {
    seeds::write(fixture(), dir)
}

mod seeds;

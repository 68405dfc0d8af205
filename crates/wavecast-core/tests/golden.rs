//! Golden bytes: what wavecast signs and hashes, pinned byte for byte.
//!
//! Devices verify the director's signature over the canonical JSON they rebuild from the doc
//! they received, and `wavecast audit verify` rebuilds each audit leaf from its event; an
//! accidental change to the encoder, a renamed field or a reordered enum would make every
//! deployed agent refuse its assignments and every exported log fail to verify. So each
//! signed type has scenarios here, built from the typed value, whose bytes and digests live in
//! `testdata/canonical/<scenario>/`, one directory per scenario:
//!
//! - `canonical.json` (or `body.txt` for checkpoint bodies and `note.txt` for signed notes):
//!   the exact bytes, no trailing newline added;
//! - `sha256`: their SHA-256 in hex, and for audit leaves `leaf-hash`: the RFC 6962 leaf hash
//!   the Merkle tree holds;
//! - for the encoder's own scenarios, `input.json`: any JSON, formatted freely.
//!
//! A deliberate change is a protocol change: regenerate with `WAVECAST_BLESS_CANONICAL=1 cargo
//! test -p wavecast-core --test golden`, and say in the commit what breaks for devices and logs.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wavecast_core::assignment::{Action, Assignment, AssignmentDoc};
use wavecast_core::audit::{Actor, AuditAction, AuditEvent, NewAuditEvent, leaf_hash};
use wavecast_core::checkpoint::{Checkpoint, NoteKey, format_note, origin_for_root};
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, Sha256Digest};

/// One scenario's files, name to bytes.
type Files = BTreeMap<&'static str, Vec<u8>>;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/canonical")
}

fn hex_line(d: &Sha256Digest) -> Vec<u8> {
    d.to_hex().into_bytes()
}

fn canonical(bytes: Vec<u8>) -> Files {
    let sha = Sha256Digest::of(&bytes);
    Files::from([("canonical.json", bytes), ("sha256", hex_line(&sha))])
}

fn assignment(action: Action, version: &str, body: &[u8], kind: ProbeKind) -> Assignment {
    Assignment {
        rollout_id: "r-5f0c1d2e".into(),
        action,
        artifact: ArtifactName::new("yolo-v8n").unwrap(),
        version: ArtifactVersion::new(version).unwrap(),
        length: body.len() as u64,
        sha256: Sha256Digest::of(body),
        probe: ProbeSpec::new(kind),
    }
}

fn doc(assignments: Vec<Assignment>) -> Files {
    let doc = AssignmentDoc { device_id: "0a1b2c3d4e5f6071".into(), counter: 42, expires: 1_800_003_600, assignments };
    canonical(doc.signing_bytes().unwrap())
}

fn event(seq: u64, actor: Actor, action: AuditAction, subject: &str, detail: serde_json::Value) -> Files {
    let new = NewAuditEvent { actor, action, subject: subject.into(), detail };
    let e = AuditEvent::place(new, seq, "2026-11-28T10:00:00.000Z".into());
    let bytes = e.canonical_bytes().unwrap();
    assert_eq!(AuditEvent::from_bytes(&bytes).unwrap(), e, "an audit leaf parses back into its event");
    let mut files = canonical(bytes);
    files.insert("leaf-hash", hex_line(&e.leaf_hash().unwrap()));
    files
}

fn encoded(input: &str) -> Files {
    let value: serde_json::Value = serde_json::from_str(input).unwrap();
    let mut files = canonical(wavecast_core::canonical::to_vec(&value).unwrap());
    files.insert("input.json", input.as_bytes().to_vec());
    files
}

fn scenarios() -> Vec<(&'static str, Files)> {
    let device = || DeviceName::new("cam-001").unwrap();
    let checkpoint = Checkpoint {
        origin: origin_for_root(&Sha256Digest::of(b"root.json")),
        size: 1_234_567,
        root: Sha256Digest::of(b"tree"),
    };
    let body = checkpoint.body();
    let key = NoteKey { name: checkpoint.origin.clone(), public: [7; 32] };
    vec![
        // The encoder itself: key order, escaping, integers. The last three keys are where we
        // part from RFC 8785, which orders by UTF-16 code units and so puts U+1F600 before
        // U+FF5E; byte order puts it after.
        (
            "encoder-key-order",
            encoded(
                "{\"b\": 1, \"a\": {\"z\": [], \"\": {}, \"A\": 2, \"aa\": 3, \"a\": 4},\n \"\u{e9}\": 5, \"Z\": 6, \"\u{1f600}\": 7, \"\u{ff5e}\": 8}",
            ),
        ),
        (
            "encoder-strings",
            encoded(
                r#"["quote \" backslash \\ slash /", "\b\f\n\r\t", "\u0000\u0001\u001f\u007f", "caf\u00e9 \u65e5\u672c \ud83d\ude00", "\u2028\u2029", ""]"#,
            ),
        ),
        (
            "encoder-integers",
            encoded("[0, 1, -1, 9007199254740993, -9223372036854775808, 18446744073709551615, true, false, null]"),
        ),
        // Director assignment docs: what every device verifies.
        ("assignment-empty", doc(vec![])),
        (
            "assignment-install-exec-probe",
            doc(vec![assignment(
                Action::Install,
                "2.1.0",
                b"model v2.1.0",
                ProbeKind::Exec { name: "check-camera".into(), args: vec!["--quick".into(), "".into()] },
            )]),
        ),
        (
            "assignment-install-http-and-revert-file",
            doc(vec![
                assignment(
                    Action::Install,
                    "3.0.0-rc.1+build.7",
                    b"model v3",
                    ProbeKind::Http { url: "http://127.0.0.1:8080/healthz?deep=1".into() },
                ),
                assignment(Action::Revert, "1.0.0", b"model v1", ProbeKind::File { name: "ready".into() }),
            ]),
        ),
        // Audit leaves: one per kind of actor, details as the server writes them.
        (
            "audit-installation-initialized",
            event(
                0,
                Actor::Init,
                AuditAction::InstallationInitialized,
                "installation",
                serde_json::json!({ "root_sha256": Sha256Digest::of(b"root.json").to_hex(), "initialized_at": "2026-11-28T09:59:59Z" }),
            ),
        ),
        (
            "audit-operator-rollout-created",
            event(
                17,
                Actor::Operator("ci-publisher".into()),
                AuditAction::RolloutCreated,
                "r-5f0c1d2e",
                serde_json::json!({
                    "artifact": "yolo-v8n@2.1.0",
                    "group": "plant-7",
                    "waves": [{ "percent": 10, "soak_ms": 600_000 }, { "percent": 100, "soak_ms": 0 }],
                    "gate": null,
                }),
            ),
        ),
        (
            "audit-device-failed",
            event(
                18,
                Actor::Device(device()),
                AuditAction::DeviceFailed,
                "cam-001",
                serde_json::json!({
                    "rollout": "r-5f0c1d2e",
                    "reason": "probe \"check-camera\" exited 3: stderr \u{2018}no frames\u{2019}\n\ttimeout",
                }),
            ),
        ),
        (
            "audit-system-device-timed-out",
            event(
                u64::from(u32::MAX) + 1,
                Actor::System,
                AuditAction::DeviceUpdated,
                "cam-001",
                serde_json::json!({ "rollout": "r-5f0c1d2e", "state": "timed_out", "silent_ms": -1 }),
            ),
        ),
        // Checkpoints: the C2SP body the checkpoint key signs, and the note around the signature.
        (
            "checkpoint-body",
            Files::from([
                ("sha256", hex_line(&Sha256Digest::of(body.as_bytes()))),
                ("body.txt", body.clone().into_bytes()),
            ]),
        ),
        (
            "checkpoint-note",
            Files::from([
                ("note.txt", format_note(&body, &key, &[0xa5; 64]).into_bytes()),
                ("vkey", key.vkey().into_bytes()),
            ]),
        ),
    ]
}

/// Whether this run writes the fixtures instead of checking them.
fn blessing() -> bool {
    std::env::var_os("WAVECAST_BLESS_CANONICAL").is_some()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn signed_bytes_match_their_pinned_fixtures() {
    let bless = blessing();
    let mut wrong = Vec::new();
    for (name, files) in scenarios() {
        let at = dir().join(name);
        for (file, bytes) in files {
            let path = at.join(file);
            if bless {
                std::fs::create_dir_all(&at).unwrap();
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            let pinned = read(&path);
            if pinned != bytes {
                wrong.push(format!(
                    "{name}/{file}:\n  pinned: {}\n  now:    {}",
                    String::from_utf8_lossy(&pinned).escape_debug(),
                    String::from_utf8_lossy(&bytes).escape_debug()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "signed bytes changed; devices and audit verifiers would refuse them:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_fixture_directory_is_a_scenario() {
    // A scenario dropped from the table would leave its pinned bytes checked by nothing.
    if blessing() {
        return;
    }
    let known: Vec<&str> = scenarios().into_iter().map(|(name, _)| name).collect();
    let mut found: Vec<String> =
        std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut known_sorted: Vec<String> = known.iter().map(|s| (*s).to_owned()).collect();
    known_sorted.sort();
    assert_eq!(found, known_sorted);
}

#[test]
fn the_pinned_digests_are_of_the_pinned_bytes() {
    // So a fixture edited by hand cannot agree with the code and disagree with itself.
    if blessing() {
        return;
    }
    for (name, files) in scenarios() {
        let at = dir().join(name);
        let Some(data) = ["canonical.json", "body.txt"].into_iter().find(|f| files.contains_key(f)) else {
            continue;
        };
        let bytes = read(&at.join(data));
        let sha = String::from_utf8(read(&at.join("sha256"))).unwrap();
        assert_eq!(Sha256Digest::of(&bytes).to_hex(), sha, "{name}");
        if files.contains_key("leaf-hash") {
            let leaf = String::from_utf8(read(&at.join("leaf-hash"))).unwrap();
            assert_eq!(leaf_hash(&bytes).to_hex(), leaf, "{name}");
        }
    }
}

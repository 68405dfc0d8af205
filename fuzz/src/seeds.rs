//! The seed inputs: one or two valid examples per target, so the fuzzer starts from inputs
//! that get past the first checks. Regenerate with
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds -- fuzz/seeds`.

use std::path::Path;

use wavecast_core::assignment::{
    Action, ActiveArtifact, Assignment, AssignmentDoc, DeviceState, Report, ReportBatch, SignedAssignments,
};
use wavecast_core::audit::{Actor, AuditAction, AuditEvent, NewAuditEvent};
use wavecast_core::evidence::{ConsistencyProof, EXPORT_FORMAT, Export, ExportedEvent, LeafRow, StoredCheckpoint};
use wavecast_core::merkle::Tree;
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest, TargetName};
use wavecast_tuf::publish::{NewTarget, sign_new_targets};

use crate::{Fixture, LiveLog};

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("seeds serialize")
}

pub(crate) fn write(f: &Fixture, dir: &Path) -> std::io::Result<()> {
    let version = |v: &str| ArtifactVersion::new(v).expect("a valid version");
    let yolo = || ArtifactName::new("yolo").expect("a valid name");

    // Device reports.
    let batch = ReportBatch {
        reports: vec![Report {
            id: "a1b2-c3".into(),
            rollout_id: "r-1".into(),
            artifact: "yolo".into(),
            version: "2.1.0".into(),
            state: DeviceState::Failed,
            reason: Some("probe failed".into()),
            at_ms: 1_767_225_600_000,
        }],
        active: vec![ActiveArtifact { name: yolo(), version: version("2.0.0"), sha256: Sha256Digest::of(b"abc") }],
    };
    put(dir, "report_batch", "batch.json", &json(&batch))?;

    // A signed assignment doc.
    let doc = AssignmentDoc {
        device_id: "d-1".into(),
        counter: 7,
        expires: 4_102_444_800,
        assignments: vec![
            Assignment {
                rollout_id: "r-1".into(),
                action: Action::Install,
                artifact: yolo(),
                version: version("2.1.0"),
                length: 3,
                sha256: Sha256Digest::of(b"abc"),
                probe: ProbeSpec::new(ProbeKind::Exec { name: "check".into(), args: vec!["--fast".into()] }),
            },
            Assignment {
                rollout_id: "r-2".into(),
                action: Action::Revert,
                artifact: ArtifactName::new("seg").expect("a valid name"),
                version: version("1.0.0-rc.1"),
                length: 0,
                sha256: Sha256Digest::of(b""),
                probe: ProbeSpec::new(ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into() }),
            },
        ],
    };
    let signature = hex_encode(&f.director_key.sign_bytes(&doc.signing_bytes()));
    put(dir, "assignment_doc", "doc.json", &json(&SignedAssignments { signed: doc, signature }))?;

    // TUF: the root, the current targets (refused: not the next version) and a valid next one.
    put(dir, "tuf_root", "root.json", &f.root_json)?;
    put(dir, "tuf_accept_targets", "current.json", &f.current_json)?;
    let next = NewTarget {
        target: TargetName::parse("yolo@1.1.0").expect("a valid target"),
        length: 4,
        sha256: Sha256Digest::of(b"abcd"),
        hardware: Some("jetson".into()),
    };
    let expires = EXPIRES_TS.parse().expect("a fixed timestamp");
    let next = f
        .runtime
        .block_on(sign_new_targets(&f.root.signed, &f.current, &next, &f.targets_key, expires))
        .expect("signing the next targets");
    let next_bytes = next.buffer().clone();
    put(dir, "tuf_accept_targets", "next.json", &next_bytes)?;

    // An audit log of four events, its checkpoints, an export of it and of one rollout.
    let events: Vec<AuditEvent> = [
        (AuditAction::RolloutCreated, "r-1", serde_json::json!({"artifact": "yolo@2.1.0"})),
        (AuditAction::GroupCreated, "plant-7", serde_json::json!({})),
        (
            AuditAction::DeviceUpdated,
            "cam-001",
            serde_json::json!({"rollout": "r-1", "artifact": "yolo@2.1.0", "from": "probing", "reason": null}),
        ),
        (AuditAction::RolloutCompleted, "r-1", serde_json::json!({"waves": [1, 2]})),
    ]
    .into_iter()
    .zip(0u64..)
    .map(|((action, subject, detail), seq)| {
        let new = NewAuditEvent { actor: Actor::Operator("admin".into()), action, subject: subject.into(), detail };
        AuditEvent::place(new, seq, format!("2026-01-01T00:00:0{seq}Z"))
    })
    .collect();
    put(dir, "audit_event", "event.json", &events[2].canonical_bytes())?;
    let mut tree = Tree::new();
    for e in &events {
        tree.push(e.leaf_hash());
    }
    let root = |size| tree.root(size).expect("a size the tree holds");
    let (note2, note4) = (f.checkpoint_note(2, root(2)), f.checkpoint_note(4, root(4)));
    put(dir, "checkpoint_note", "checkpoint.txt", note4.as_bytes())?;
    let cosigned = note4.replacen("\n\u{2014} ", "\n\u{2014} witness AAAAAAAAAAAAAAA=\n\u{2014} ", 1);
    put(dir, "checkpoint_note", "cosigned.txt", cosigned.as_bytes())?;

    let exported = |e: &AuditEvent| ExportedEvent {
        seq: e.seq,
        body: String::from_utf8(e.canonical_bytes()).expect("canonical bytes are UTF-8"),
        inclusion_proof: tree.inclusion_proof(e.seq, 4).expect("an event of the tree"),
    };
    let whole = Export {
        format: EXPORT_FORMAT.into(),
        checkpoint: note4.clone(),
        rollout: None,
        events: events.iter().map(exported).collect(),
        roots: vec![],
    };
    put(dir, "audit_export", "whole.json", &json(&whole))?;
    let rollout = Export {
        rollout: Some("r-1".into()),
        events: events.iter().filter(|e| wavecast_core::evidence::concerns_rollout(e, "r-1")).map(exported).collect(),
        ..whole.clone()
    };
    put(dir, "audit_export", "rollout.json", &json(&rollout))?;

    let live = LiveLog {
        leaves: events
            .iter()
            .map(|e| LeafRow {
                seq: e.seq,
                body: String::from_utf8(e.canonical_bytes()).expect("canonical bytes are UTF-8"),
            })
            .collect(),
        checkpoints: vec![
            StoredCheckpoint { size: 2, note: note2.clone(), created_at: 1_767_225_601_000 },
            StoredCheckpoint { size: 4, note: note4.clone(), created_at: 1_767_225_603_000 },
        ],
        old_note: Some(note2),
        proof: Some(ConsistencyProof {
            from: 2,
            to: 4,
            checkpoint: note4,
            proof: tree.consistency_proof(2, 4).expect("sizes the tree holds"),
        }),
    };
    put(dir, "audit_log", "log.json", &json(&live))?;
    check_signed_seeds(f, &next_bytes, &[&whole, &rollout], &live);

    // agent.toml (the target points trust_root at the fixture's root.json).
    put(
        dir,
        "agent_config",
        "agent.toml",
        b"server = \"https://wavecast.example:7700\"\nstate_dir = \"/var/lib/wavecast\"\n\
          trust_root = \"/etc/wavecast/root.json\"\ndevice_name = \"cam-001\"\nhardware = \"jetson\"\n\
          poll_interval = \"30s\"\nenrollment_token = \"wce_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n\
          [download]\nmin_bytes_per_sec = 1024\nstall_timeout = \"60s\"\n\
          [[artifacts]]\nname = \"yolo\"\npath = \"/opt/models/yolo.onnx\"\n\
          [probes]\ncheck = \"/usr/bin/check-model\"\n",
    )?;

    // Names, digests, probes, durations.
    for (i, s) in [
        "yolo-v8n@2.1.0-rc.1+build.5",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "exec:check-model --fast -n 3",
        "https://infer.local/ready",
        "file:/run/app/ready",
        "250ms",
    ]
    .into_iter()
    .enumerate()
    {
        put(dir, "names", &format!("{i}.txt"), s.as_bytes())?;
    }
    Ok(())
}

const EXPIRES_TS: &str = crate::EXPIRES;

/// The signed seeds get past their signature checks, so the fuzzer starts beyond them.
fn check_signed_seeds(f: &Fixture, next_targets: &[u8], exports: &[&Export], live: &LiveLog) {
    use wavecast_tuf::keys::verify_ed25519;
    let accepted = wavecast_tuf::repo::accept_targets(&f.root.signed, &f.current.signed, next_targets, f.now);
    assert!(accepted.is_ok(), "the next targets seed is refused: {accepted:?}");
    for export in exports {
        let verified = wavecast_core::evidence::verify_export(export, &f.note_key.clone().into(), verify_ed25519);
        assert!(verified.is_ok(), "an export seed does not verify: {verified:?}");
    }
    let verified = wavecast_core::evidence::verify_log(
        &live.leaves,
        &live.checkpoints,
        &f.note_key.clone().into(),
        verify_ed25519,
    );
    assert!(verified.is_ok(), "the live log seed does not verify: {verified:?}");
    if let (Some(old), Some(proof)) = (&live.old_note, &live.proof) {
        let growth = wavecast_core::evidence::verify_growth(old, proof, &f.note_key.clone().into(), verify_ed25519);
        assert!(growth.is_ok(), "the growth seed does not verify: {growth:?}");
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

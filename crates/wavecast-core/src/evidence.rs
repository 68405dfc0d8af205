//! Audit evidence and its verification: export files, the live log against its checkpoints,
//! and proof that the log only grew.
//!
//! The server produces the wire types here and `wavecast audit verify` (and the tests) check
//! them with the functions here, so both sides agree on one definition. Verification trusts
//! nothing but the checkpoint keys named by the trust anchor's root chain ([`CheckpointKeys`]):
//! stored rows, proofs and checkpoint rows all come from a database an attacker may have
//! rewritten. A failure names the first event (by sequence number) that the evidence cannot
//! vouch for, and why.
//!
//! Across a rotation of the checkpoint key, the newest evidence must be signed by the current
//! key; a retired key's checkpoint counts only where a current-key checkpoint at least as large
//! vouches for the same events, so a retired key that leaked can never extend the log.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;
use crate::audit::{AuditEvent, leaf_hash};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointKeys, VerifyEd25519};
use crate::merkle::{CompactRange, MerkleError, verify_consistency, verify_inclusion};

/// The `format` of export files this version writes and reads.
pub const EXPORT_FORMAT: &str = "wavecast-audit-export/1";

/// A self-contained export: events with their inclusion proofs and the signed checkpoint the
/// proofs lead to. Verifiable offline with the trust anchor alone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The signed checkpoint note every proof leads to.
    pub checkpoint: String,
    /// The rollout the events were selected for; `None` for the whole log.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub rollout: Option<String>,
    /// The events, by sequence number.
    pub events: Vec<ExportedEvent>,
    /// Every root.json version from the first to the one whose checkpoint key signed
    /// `checkpoint`, exactly as signed, once the installation has more than one; absent
    /// before its first rotation. A verifier walks them from the root it trusts to find the
    /// checkpoint key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<String>,
}

/// One event of an export.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedEvent {
    /// The leaf index.
    pub seq: u64,
    /// The canonical event bytes exactly as logged (they are UTF-8 JSON).
    pub body: String,
    /// The audit path from this leaf to the checkpoint's root.
    pub inclusion_proof: Vec<Sha256Digest>,
}

/// One stored row of the log as the server holds it, unparsed, so damage shows as it is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRow {
    /// The row's sequence number.
    pub seq: u64,
    /// The stored bytes.
    pub body: String,
}

/// One stored checkpoint row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// The size the row claims (the note inside is what counts).
    pub size: u64,
    /// The signed note.
    pub note: String,
    /// When it was signed, Unix milliseconds.
    pub created_at: i64,
}

/// A consistency proof between two sizes, with the signed checkpoint of the newer one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The signed checkpoint at `to`.
    pub checkpoint: String,
    /// RFC 6962 consistency proof from `from` to `to`.
    pub proof: Vec<Sha256Digest>,
}

/// Whether an event belongs to a rollout's story: the rollout itself is the subject, or the
/// event names the rollout in its detail (device outcomes do).
pub fn concerns_rollout(event: &AuditEvent, rollout: &str) -> bool {
    event.subject == rollout || event.detail.get("rollout").and_then(|r| r.as_str()) == Some(rollout)
}

/// What is wrong with an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The bytes differ from those the signed checkpoint covers.
    ChangedBytes {
        /// Why we know.
        detail: String,
    },
    /// The event is gone, though a signed checkpoint covers its position.
    Missing {
        /// Why we know.
        detail: String,
    },
    /// The position holds another position's event.
    OutOfOrder {
        /// The sequence number the stored event carries.
        holds: u64,
    },
    /// No validly signed checkpoint vouches for the event.
    NotCovered {
        /// Why not.
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ChangedBytes { detail } => write!(f, "changed bytes: {detail}"),
            Problem::Missing { detail } => write!(f, "missing: {detail}"),
            Problem::OutOfOrder { holds } => {
                write!(f, "out of order: its place holds event {holds}, so events were moved or reordered")
            }
            Problem::NotCovered { detail } => write!(f, "not covered by a validly signed checkpoint: {detail}"),
        }
    }
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The first event that does not verify.
    #[error("event {seq} does not verify: {problem}")]
    Event {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        problem: Problem,
    },
    /// A stored checkpoint that is not signed by the trusted key, while every event is
    /// covered by valid ones: the events are intact, the checkpoint table is not.
    #[error("the stored checkpoint of size {size} is not valid: {source}")]
    Checkpoint {
        /// The size its row claims.
        size: u64,
        /// What is wrong.
        #[source]
        source: CheckpointError,
    },
    /// An export file this version cannot read.
    #[error("reading the export file: {detail}")]
    Format {
        /// What is wrong.
        detail: String,
    },
    /// An older checkpoint that is not a prefix of the current log.
    #[error("proving the log only grew since the checkpoint of size {old}: {detail}")]
    Growth {
        /// The older checkpoint's size.
        old: u64,
        /// What is wrong.
        detail: String,
    },
}

impl VerifyError {
    /// The sequence number of the event named, if one is.
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyError::Event { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

fn event(seq: u64, problem: Problem) -> VerifyError {
    VerifyError::Event { seq, problem }
}

/// What a verified export proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportVerified {
    /// The log's origin.
    pub origin: String,
    /// The checkpoint's size.
    pub tree_size: u64,
    /// The checkpoint's root.
    pub root: Sha256Digest,
    /// Events proven included.
    pub events: usize,
    /// The rollout selected, if any.
    pub rollout: Option<String>,
}

/// Verifies an export file against the checkpoint keys `keys`: its checkpoint must be signed by
/// the current one.
///
/// A whole-log export must hold every event of the checkpoint, in order; a rollout export
/// proves each of its events is in the log, but cannot prove none was left out.
pub fn verify_export(
    export: &Export,
    keys: &CheckpointKeys,
    verify: VerifyEd25519,
) -> Result<ExportVerified, VerifyError> {
    if export.format != EXPORT_FORMAT {
        return Err(VerifyError::Format { detail: format!("format {:?} is not {EXPORT_FORMAT:?}", export.format) });
    }
    let checkpoint = match keys.open_current(&export.checkpoint, verify) {
        Ok(c) => c,
        Err(e) => {
            let Some(first) = export.events.first() else {
                return Err(VerifyError::Checkpoint { size: 0, source: e });
            };
            return Err(event(first.seq, Problem::NotCovered { detail: format!("the export's checkpoint: {e}") }));
        }
    };
    let whole_log = export.rollout.is_none();
    let mut expected = 0u64;
    for e in &export.events {
        if e.seq < expected {
            return Err(event(e.seq, Problem::OutOfOrder { holds: e.seq }));
        }
        if whole_log && e.seq > expected {
            return Err(event(
                expected,
                Problem::Missing { detail: format!("the export skips from event {} to {}", expected, e.seq) },
            ));
        }
        if e.seq >= checkpoint.size {
            return Err(event(
                e.seq,
                Problem::NotCovered { detail: format!("the checkpoint covers only {} events", checkpoint.size) },
            ));
        }
        // Below the checkpoint's size, so this cannot overflow (a seq of u64::MAX did).
        expected = e.seq + 1;
        let leaf = leaf_hash(e.body.as_bytes());
        if let Err(err) = verify_inclusion(e.seq, checkpoint.size, &leaf, &e.inclusion_proof, &checkpoint.root) {
            return Err(event(
                e.seq,
                Problem::ChangedBytes { detail: format!("{err}; the bytes or the proof were altered") },
            ));
        }
        // Proven included; an honest server never signs a leaf that is not its own event.
        match AuditEvent::from_bytes(e.body.as_bytes()) {
            Ok(parsed) if parsed.seq == e.seq => {}
            Ok(parsed) => return Err(event(e.seq, Problem::OutOfOrder { holds: parsed.seq })),
            Err(err) => return Err(event(e.seq, Problem::ChangedBytes { detail: err.to_string() })),
        }
    }
    if whole_log && expected < checkpoint.size {
        return Err(event(
            expected,
            Problem::Missing {
                detail: format!("the export ends after {expected} events; its checkpoint covers {}", checkpoint.size),
            },
        ));
    }
    Ok(ExportVerified {
        origin: checkpoint.origin,
        tree_size: checkpoint.size,
        root: checkpoint.root,
        events: export.events.len(),
        rollout: export.rollout.clone(),
    })
}

/// What a verified live log proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogVerified {
    /// The log's origin.
    pub origin: String,
    /// Events covered by validly signed checkpoints (all of them matched).
    pub tree_size: u64,
    /// The root at `tree_size`.
    pub root: Sha256Digest,
    /// Valid checkpoints checked against the events.
    pub checkpoints: usize,
    /// Events newer than the newest stored checkpoint: not yet signed, so not yet evidence.
    pub pending: u64,
}

/// A row's own defects: a gap before it, bytes that are no event, or another position's event.
fn row_problem(position: u64, row: &LeafRow) -> Option<Problem> {
    if row.seq != position {
        return Some(if row.seq > position {
            Problem::Missing { detail: format!("the stored log jumps from event {} to {}", position, row.seq) }
        } else {
            Problem::OutOfOrder { holds: row.seq }
        });
    }
    match AuditEvent::from_bytes(row.body.as_bytes()) {
        Err(e) => Some(Problem::ChangedBytes { detail: format!("the stored bytes are no audit event ({e})") }),
        Ok(parsed) if parsed.seq != position => Some(Problem::OutOfOrder { holds: parsed.seq }),
        Ok(_) => None,
    }
}

/// Verifies the whole stored log: recomputes the tree from `leaves` (all rows, by seq) and
/// checks every stored checkpoint against it.
///
/// Checkpoints are signed after each write burst, so their sizes cut the log into bursts.
/// The first checkpoint whose root does not match marks the burst holding the first changed
/// event; the events before it are proven by the last matching checkpoint. A row that is
/// itself damaged (a gap, bytes that are not an event, an event at the wrong place) is named
/// exactly. A change that leaves a well-formed event in place can be localised only to its
/// burst: every event of that burst is then unproven and the first of them is named.
///
/// `checkpoints` must be read before `leaves`, so every row a checkpoint covers was committed
/// before the leaves were read; rows past the newest stored checkpoint are `pending`.
///
/// A checkpoint signed by a retired key of `keys` is valid only when one signed by the current
/// key is at least as large: the newest evidence is always the current key's.
pub fn verify_log(
    leaves: &[LeafRow],
    checkpoints: &[StoredCheckpoint],
    keys: &CheckpointKeys,
    verify: VerifyEd25519,
) -> Result<LogVerified, VerifyError> {
    let mut opened: Vec<(Checkpoint, usize)> = Vec::new();
    let mut invalid: Vec<(u64, CheckpointError)> = Vec::new();
    for stored in checkpoints {
        match keys.open(&stored.note, verify) {
            Ok(c) => opened.push(c),
            Err(e) => invalid.push((stored.size, e)),
        }
    }
    let current = keys.len() - 1;
    let current_reach = opened.iter().filter(|(_, rank)| *rank == current).map(|(c, _)| c.size).max();
    let mut valid: Vec<Checkpoint> = Vec::new();
    for (c, rank) in opened {
        if rank == current || current_reach.is_some_and(|reach| reach >= c.size) {
            valid.push(c);
        } else {
            invalid.push((c.size, CheckpointError::RetiredKey));
        }
    }
    valid.sort_by_key(|c| c.size);
    invalid.sort_by_key(|(size, _)| *size);
    let claimed = checkpoints.iter().map(|c| c.size).chain(valid.iter().map(|c| c.size)).max().unwrap_or(0);
    let covered = valid.last().map_or(0, |c| c.size);

    let mut range = CompactRange::new();
    let mut next = valid.iter().peekable();
    let mut proven = 0u64;
    for (position, row) in (0u64..).zip(leaves) {
        if let Some(problem) = row_problem(position, row) {
            return Err(event(position, problem));
        }
        range.push(leaf_hash(row.body.as_bytes()));
        while let Some(c) = next.next_if(|c| c.size == range.size()) {
            if c.root != range.root() {
                let detail = format!(
                    "events {proven}..={} do not hash to the checkpoint signed at size {} (the last matching \
                     checkpoint proves events before {proven}); the first changed event is among them",
                    c.size - 1,
                    c.size
                );
                return Err(event(proven, Problem::ChangedBytes { detail }));
            }
            proven = c.size;
        }
    }
    let held = leaves.len() as u64;
    if covered > held {
        return Err(event(
            held,
            Problem::Missing {
                detail: format!("the log holds {held} events, but a checkpoint signed at size {covered} covers more"),
            },
        ));
    }
    if claimed > covered {
        let why = invalid
            .iter()
            .find(|(size, _)| *size > covered)
            .map_or_else(|| "its checkpoint is not signed".to_owned(), |(size, e)| format!("checkpoint {size}: {e}"));
        return Err(event(covered, Problem::NotCovered { detail: why }));
    }
    if held > 0 && checkpoints.is_empty() {
        return Err(event(
            0,
            Problem::NotCovered {
                detail: "no checkpoint is stored at all (the server signs one within seconds of a write)".into(),
            },
        ));
    }
    if let Some((size, source)) = invalid.into_iter().next() {
        return Err(VerifyError::Checkpoint { size, source });
    }
    Ok(LogVerified {
        origin: keys.origin().to_owned(),
        tree_size: covered,
        // Every valid checkpoint matched, so the newest one's root is the log's root at its size.
        root: valid.last().map_or_else(crate::merkle::empty_root, |c| c.root),
        checkpoints: valid.len(),
        pending: held - covered,
    })
}

/// What a verified consistency proof proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Growth {
    /// The older checkpoint.
    pub old_size: u64,
    /// The newer checkpoint.
    pub new_size: u64,
    /// The newer root.
    pub new_root: Sha256Digest,
}

/// Proves that the log of `old_note` is a prefix of the log of `proof.checkpoint`: the older
/// note signed by any of `keys` (it may predate a rotation), the newer by the current key, and
/// the proof connecting their roots.
pub fn verify_growth(
    old_note: &str,
    proof: &ConsistencyProof,
    keys: &CheckpointKeys,
    verify: VerifyEd25519,
) -> Result<Growth, VerifyError> {
    let (old, _) = keys
        .open(old_note, verify)
        .map_err(|e| VerifyError::Growth { old: 0, detail: format!("the older checkpoint: {e}") })?;
    let growth = |detail: String| VerifyError::Growth { old: old.size, detail };
    let new =
        keys.open_current(&proof.checkpoint, verify).map_err(|e| growth(format!("the current checkpoint: {e}")))?;
    if old.size > new.size {
        return Err(growth(format!("the current checkpoint has only {} events: the log shrank", new.size)));
    }
    if proof.from != old.size || proof.to != new.size {
        return Err(growth(format!(
            "the proof is for sizes {}..{}, not {}..{}",
            proof.from, proof.to, old.size, new.size
        )));
    }
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof.proof).map_err(|e: MerkleError| {
        growth(format!("{e}: events before {} were changed, removed or reordered since", old.size))
    })?;
    Ok(Growth { old_size: old.size, new_size: new.size, new_root: new.root })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NewAuditEvent;
    use crate::checkpoint::{NoteKey, format_note};
    use crate::merkle::Tree;

    // A stand-in for Ed25519 so these tests need no crypto provider: the "signature" is the
    // SHA-256 of public key ‖ message. The real signer is exercised in the server's tests.
    fn sign(public: &[u8; 32], msg: &[u8]) -> Vec<u8> {
        Sha256Digest::of(&[public.as_slice(), msg].concat()).as_bytes().to_vec()
    }
    fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
        sign(public, msg) == sig
    }

    fn keys() -> CheckpointKeys {
        key().into()
    }

    fn key() -> NoteKey {
        NoteKey { name: "wavecast/0011223344556677".into(), public: [9; 32] }
    }

    fn note(key: &NoteKey, size: u64, root: Sha256Digest) -> String {
        let body = Checkpoint { origin: key.name.clone(), size, root }.body();
        format_note(&body, key, &sign(&key.public, body.as_bytes()))
    }

    fn rows(n: u64) -> Vec<LeafRow> {
        (0..n)
            .map(|seq| {
                let e = AuditEvent::place(
                    NewAuditEvent {
                        actor: crate::audit::Actor::Operator("admin".into()),
                        action: crate::audit::AuditAction::GroupCreated,
                        subject: format!("g{seq}"),
                        detail: serde_json::json!({ "rollout": if seq % 3 == 0 { "r-1" } else { "r-2" } }),
                    },
                    seq,
                    "2026-01-01T00:00:00Z".into(),
                );
                LeafRow { seq, body: String::from_utf8(e.canonical_bytes().unwrap()).unwrap() }
            })
            .collect()
    }

    fn tree(rows: &[LeafRow]) -> Tree {
        let mut t = Tree::new();
        for r in rows {
            t.push(leaf_hash(r.body.as_bytes()));
        }
        t
    }

    /// Checkpoints at the given sizes over `rows`.
    fn checkpoints(rows: &[LeafRow], sizes: &[u64]) -> Vec<StoredCheckpoint> {
        let t = tree(rows);
        sizes
            .iter()
            .map(|&s| StoredCheckpoint { size: s, note: note(&key(), s, t.root(s).unwrap()), created_at: 0 })
            .collect()
    }

    const BURSTS: [u64; 4] = [1, 3, 6, 8];

    #[test]
    fn an_untouched_log_verifies() {
        let log = rows(9);
        let ok = verify_log(&log, &checkpoints(&log, &BURSTS), &keys(), verify).unwrap();
        assert_eq!((ok.tree_size, ok.checkpoints, ok.pending), (8, 4, 1));
        assert_eq!(ok.root, tree(&log).root(8).unwrap());
    }

    #[test]
    fn tampering_names_the_first_bad_event() {
        let log = rows(8);
        let cps = checkpoints(&log, &BURSTS);
        let check = |log: &[LeafRow], cps: &[StoredCheckpoint]| verify_log(log, cps, &keys(), verify).unwrap_err();

        // A changed event that is still well-formed: localised to its burst (3..=5).
        let mut changed = log.clone();
        changed[4].body = changed[4].body.replace("g4", "g5");
        let e = check(&changed, &cps);
        assert_eq!(e.seq(), Some(3), "{e}");
        assert!(e.to_string().contains("events 3..=5"), "{e}");
        // At the start of a burst it is named exactly.
        let mut changed = log.clone();
        changed[6].body = changed[6].body.replace("g6", "g7");
        assert_eq!(check(&changed, &cps).seq(), Some(6));
        // Bytes that are no longer an event are named exactly.
        let mut broken = log.clone();
        broken[5].body.pop();
        assert!(matches!(check(&broken, &cps), VerifyError::Event { seq: 5, problem: Problem::ChangedBytes { .. } }));

        let last_deleted = &log[..7];
        assert!(matches!(check(last_deleted, &cps), VerifyError::Event { seq: 7, problem: Problem::Missing { .. } }));
        let middle_deleted: Vec<_> = log.iter().filter(|r| r.seq != 4).cloned().collect();
        assert!(matches!(
            check(&middle_deleted, &cps),
            VerifyError::Event { seq: 4, problem: Problem::Missing { .. } }
        ));
        let mut swapped = log.clone();
        let (a, b) = (swapped[2].body.clone(), swapped[5].body.clone());
        (swapped[2].body, swapped[5].body) = (b, a);
        assert_eq!(
            check(&swapped, &cps),
            VerifyError::Event { seq: 2, problem: Problem::OutOfOrder { holds: 5 } },
            "the first of the two swapped rows"
        );

        // A consistent forgery under another key: nothing is covered.
        let mut forged = log.clone();
        forged[3].body = forged[3].body.replace("admin", "mallo");
        let mallory = NoteKey { name: key().name, public: [6; 32] };
        let forged_cps =
            vec![StoredCheckpoint { size: 8, note: note(&mallory, 8, tree(&forged).root(8).unwrap()), created_at: 0 }];
        let e = check(&forged, &forged_cps);
        assert!(matches!(e, VerifyError::Event { seq: 0, problem: Problem::NotCovered { .. } }), "{e}");
        // Forged checkpoints next to genuine ones leave the forged events uncovered.
        let mut mixed = cps[..2].to_vec();
        mixed.extend(forged_cps);
        assert_eq!(check(&forged, &mixed).seq(), Some(3));
        // And a log whose checkpoints were all removed proves nothing.
        assert_eq!(check(&log, &[]).seq(), Some(0));
    }

    fn export(log: &[LeafRow], size: u64, rollout: Option<&str>) -> Export {
        let t = tree(log);
        let events = log[..size as usize]
            .iter()
            .filter(|r| {
                rollout.is_none_or(|id| concerns_rollout(&AuditEvent::from_bytes(r.body.as_bytes()).unwrap(), id))
            })
            .map(|r| ExportedEvent {
                seq: r.seq,
                body: r.body.clone(),
                inclusion_proof: t.inclusion_proof(r.seq, size).unwrap(),
            })
            .collect();
        Export {
            format: EXPORT_FORMAT.into(),
            checkpoint: note(&key(), size, t.root(size).unwrap()),
            rollout: rollout.map(str::to_owned),
            events,
            roots: vec![],
        }
    }

    #[test]
    fn exports_verify_and_name_the_changed_event() {
        let log = rows(8);
        let whole = export(&log, 8, None);
        assert_eq!(verify_export(&whole, &keys(), verify).unwrap().events, 8);
        let r1 = export(&log, 8, Some("r-1"));
        assert_eq!(r1.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 3, 6]);
        verify_export(&r1, &keys(), verify).unwrap();

        let mut flipped = r1.clone();
        flipped.events[1].body = flipped.events[1].body.replace("admin", "admiN");
        let e = verify_export(&flipped, &keys(), verify).unwrap_err();
        assert!(matches!(e, VerifyError::Event { seq: 3, problem: Problem::ChangedBytes { .. } }), "{e}");
        let mut dropped = whole.clone();
        dropped.events.remove(5);
        assert_eq!(verify_export(&dropped, &keys(), verify).unwrap_err().seq(), Some(5));
        let mut resigned = whole.clone();
        resigned.checkpoint = note(&NoteKey { name: key().name, public: [1; 32] }, 8, tree(&log).root(8).unwrap());
        let e = verify_export(&resigned, &keys(), verify).unwrap_err();
        assert!(matches!(e, VerifyError::Event { seq: 0, problem: Problem::NotCovered { .. } }), "{e}");
    }

    #[test]
    fn growth_is_proven_by_consistency() {
        let log = rows(8);
        let t = tree(&log);
        let old = note(&key(), 3, t.root(3).unwrap());
        let proof = ConsistencyProof {
            from: 3,
            to: 8,
            checkpoint: note(&key(), 8, t.root(8).unwrap()),
            proof: t.consistency_proof(3, 8).unwrap(),
        };
        assert_eq!(verify_growth(&old, &proof, &keys(), verify).unwrap().new_size, 8);
        // A history rewritten before the old checkpoint cannot be connected to it.
        let mut rewritten = log.clone();
        rewritten[1].body = rewritten[1].body.replace("g1", "gX");
        let t2 = tree(&rewritten);
        let bad = ConsistencyProof {
            checkpoint: note(&key(), 8, t2.root(8).unwrap()),
            proof: t2.consistency_proof(3, 8).unwrap(),
            ..proof.clone()
        };
        assert!(matches!(verify_growth(&old, &bad, &keys(), verify), Err(VerifyError::Growth { old: 3, .. })));
        let shrunk =
            ConsistencyProof { from: 3, to: 2, checkpoint: note(&key(), 2, t.root(2).unwrap()), proof: vec![] };
        assert!(verify_growth(&old, &shrunk, &keys(), verify).unwrap_err().to_string().contains("shrank"));
    }

    #[test]
    fn an_export_event_at_the_largest_seq_is_not_covered() {
        // Computing the position after it overflowed (fuzz target audit_export).
        let mut r1 = export(&rows(8), 8, Some("r-1"));
        r1.events.last_mut().unwrap().seq = u64::MAX;
        let e = verify_export(&r1, &keys(), verify).unwrap_err();
        assert!(matches!(e, VerifyError::Event { seq: u64::MAX, problem: Problem::NotCovered { .. } }), "{e}");
    }

    #[test]
    fn checkpoints_verify_across_a_rotation_of_the_checkpoint_key() {
        let log = rows(9);
        let t = tree(&log);
        let old = key();
        let new = NoteKey { name: old.name.clone(), public: [4; 32] };
        let both = CheckpointKeys::new(old.name.clone(), [old.public, new.public]).unwrap();
        let by = |k: &NoteKey, size: u64| StoredCheckpoint {
            size,
            note: note(k, size, t.root(size).unwrap()),
            created_at: 0,
        };

        // Signed by the old key before the rotation, by the new one after: all of it verifies.
        let rotated = vec![by(&old, 1), by(&old, 3), by(&new, 6), by(&new, 8)];
        let ok = verify_log(&log, &rotated, &both, verify).unwrap();
        assert_eq!((ok.tree_size, ok.checkpoints, ok.pending), (8, 4, 1));

        // The retired key signing past the current key's newest checkpoint (it leaked, say) is
        // not evidence: the event it alone covers is named as not covered.
        let mut leaked = rotated.clone();
        leaked.push(by(&old, 9));
        let e = verify_log(&log, &leaked, &both, verify).unwrap_err();
        assert!(
            matches!(&e, VerifyError::Event { seq: 8, problem: Problem::NotCovered { detail } } if detail.contains("retired")),
            "{e}"
        );
        // Nor is a log whose current key signed nothing: the newest evidence must be current.
        let e = verify_log(&log, &rotated[..2], &both, verify).unwrap_err();
        assert!(matches!(e, VerifyError::Event { seq: 0, problem: Problem::NotCovered { .. } }), "{e}");
        // A verifier that knows only the old root sees the new key's checkpoints as unsigned.
        let e = verify_log(&log, &rotated, &keys(), verify).unwrap_err();
        assert!(matches!(e, VerifyError::Event { seq: 3, problem: Problem::NotCovered { .. } }), "{e}");

        // An export's checkpoint is the newest: it must be the current key's.
        let mut export = export(&log, 8, None);
        export.checkpoint = note(&new, 8, t.root(8).unwrap());
        assert_eq!(verify_export(&export, &both, verify).unwrap().tree_size, 8);
        export.checkpoint = note(&old, 8, t.root(8).unwrap());
        let e = verify_export(&export, &both, verify).unwrap_err();
        assert!(e.to_string().contains("retired"), "{e}");

        // Growth from a note kept before the rotation to the current key's checkpoint.
        let proof = |k: &NoteKey| ConsistencyProof {
            from: 3,
            to: 8,
            checkpoint: note(k, 8, t.root(8).unwrap()),
            proof: t.consistency_proof(3, 8).unwrap(),
        };
        let kept = note(&old, 3, t.root(3).unwrap());
        assert_eq!(verify_growth(&kept, &proof(&new), &both, verify).unwrap().new_size, 8);
        assert!(matches!(verify_growth(&kept, &proof(&old), &both, verify), Err(VerifyError::Growth { old: 3, .. })));

        // A key named again later counts from its last naming; the last one given is current.
        let back = CheckpointKeys::new(old.name.clone(), [old.public, new.public, old.public]).unwrap();
        assert_eq!((back.len(), back.current().public), (2, old.public));
    }
}

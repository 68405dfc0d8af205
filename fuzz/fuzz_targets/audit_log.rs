//! `wavecast audit verify` without FILE: the live log's rows and stored checkpoints, and a
//! consistency proof, all from a server the auditor does not trust (`verify_log`,
//! `verify_growth`).
//!
//! With the real Ed25519 check and with one that accepts any signature, as for exports.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::checkpoint::VerifyEd25519;
use wavecast_core::evidence::{verify_growth, verify_log};
use wavecast_fuzz::LiveLog;
use wavecast_tuf::keys::verify_ed25519;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = serde_json::from_slice::<LiveLog>(data) else { return };
    let f = wavecast_fuzz::fixture();
    let verifiers: [VerifyEd25519; 2] = [verify_ed25519, wavecast_fuzz::accept_any];
    for verify in verifiers {
        match verify_log(&log.leaves, &log.checkpoints, &f.note_key.clone().into(), verify) {
            Ok(v) => {
                assert!(v.tree_size <= log.leaves.len() as u64);
                assert_eq!(v.tree_size + v.pending, log.leaves.len() as u64);
                let _ = serde_json::to_string(&v).expect("a verdict serializes");
            }
            Err(e) => {
                let _ = (e.to_string(), e.seq());
            }
        }
        if let (Some(old), Some(proof)) = (&log.old_note, &log.proof) {
            match verify_growth(old, proof, &f.note_key.clone().into(), verify) {
                Ok(g) => assert!(g.old_size <= g.new_size),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
});

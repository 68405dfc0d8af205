//! `wavecast audit verify FILE`: the export file parsed as the CLI does and verified against
//! the trust root's checkpoint key, then reported as the CLI reports it.
//!
//! Verified twice: with the real Ed25519 check, and with one that accepts any signature, so the
//! event and proof checks behind the checkpoint's signature see fuzzed content.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::evidence::{Export, VerifyError, verify_export};
use wavecast_tuf::keys::verify_ed25519;

fuzz_target!(|data: &[u8]| {
    let Ok(export) = serde_json::from_slice::<Export>(data) else { return };
    let f = wavecast_fuzz::fixture();
    let real = verify_export(&export, &f.note_key.clone().into(), verify_ed25519);
    let any = verify_export(&export, &f.note_key.clone().into(), wavecast_fuzz::accept_any);
    if let Ok(v) = &real {
        assert_eq!(any.as_ref().ok(), Some(v), "accepting any signature accepted less");
        assert_eq!(v.events, export.events.len());
        assert!(export.events.iter().all(|e| e.seq < v.tree_size));
    }
    for verdict in [real, any] {
        match verdict {
            Ok(v) => {
                let _ = serde_json::to_string(&v).expect("a verdict serializes");
            }
            Err(e) => report(&e),
        }
    }
});

/// What the CLI prints for a failure (`--json` and not).
fn report(e: &VerifyError) {
    let problem = match e {
        VerifyError::Event { problem, .. } => serde_json::to_value(problem).expect("a problem serializes"),
        _ => serde_json::Value::Null,
    };
    let _ = serde_json::json!({ "ok": false, "seq": e.seq(), "problem": problem, "error": e.to_string() });
}

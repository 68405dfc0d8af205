//! A publisher's targets file as the server checks it (`repo::accept_targets`).
//!
//! Twice per input: as submitted (parse and signature check against the root), and, when it
//! parses, re-signed by the targets key, so the checks behind the signature (expiry, version,
//! removed or changed targets, target names, delegations) see fuzzed content too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_tuf::repo::{AcceptError, accept_targets};
use wavecast_tuf::tough::schema::{Signed, Targets};

fuzz_target!(|data: &[u8]| {
    let f = wavecast_fuzz::fixture();
    let current = &f.current.signed;
    check(accept_targets(&f.root.signed, current, data, f.now), current);

    let Ok(submitted) = serde_json::from_slice::<Signed<Targets>>(data) else { return };
    let Some(resigned) = f.sign_targets(submitted.signed) else { return };
    let result = accept_targets(&f.root.signed, current, &resigned, f.now);
    if let Err(e @ (AcceptError::Parse(_) | AcceptError::Signature(_))) = &result {
        panic!("targets signed by the targets key were refused: {e}");
    }
    check(result, current);
});

fn check(result: Result<wavecast_tuf::repo::Accepted, AcceptError>, current: &Targets) {
    match result {
        Ok(accepted) => {
            assert!(!accepted.added.is_empty());
            assert_eq!(accepted.targets.signed.version.get(), current.version.get() + 1);
            for t in &accepted.added {
                let name = t.target.to_string();
                assert!(!current.targets.keys().any(|k| k.raw() == name), "{name} was already published");
            }
            for name in current.targets.keys() {
                assert!(accepted.targets.signed.targets.contains_key(name), "{} was removed", name.raw());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

//! Stored audit event bytes (`AuditEvent::from_bytes`): the leaves of the log, read back by
//! the server, exports and the live verifier.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::audit::AuditEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = AuditEvent::from_bytes(data) else { return };
    let _ = (event.action.to_string(), event.leaf_hash());
    let bytes = event.canonical_bytes();
    let again = AuditEvent::from_bytes(&bytes).expect("canonical bytes parse");
    if !wavecast_fuzz::has_float(&event.detail) {
        assert_eq!(again, event);
        assert_eq!(again.canonical_bytes(), bytes, "canonical bytes are not stable");
    }
});

//! The director's assignment doc as the agent reads it (`Agent::accept`): JSON → Value →
//! canonical bytes (what the signature covers) → each item as a typed `Assignment`.
//!
//! The signature check itself is left out: the fuzzer cannot forge one, and everything here
//! is what the agent computes before and after it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_agent::director::{parse_doc, parse_item};
use wavecast_core::assignment::AssignmentDoc;
use wavecast_core::canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = parse_doc(data) else { return };

    // The signed message is JSON, and canonical: canonicalising it again changes nothing.
    let message: serde_json::Value = serde_json::from_slice(&doc.message).expect("canonical bytes are JSON");
    if !wavecast_fuzz::has_float(&message) {
        assert_eq!(canonical::to_vec(&message), doc.message, "canonical form is not stable");
    }

    for item in &doc.items {
        let Ok(a) = parse_item(item) else { continue };
        let _ = (a.target().to_string(), a.probe.validate(), a.probe.kind.to_string());
        let value = serde_json::to_value(&a).expect("an assignment serializes");
        assert_eq!(parse_item(&value).expect("a serialized assignment parses"), a);
    }

    // Where the whole doc is well typed, the lenient reading agrees with it.
    let value: serde_json::Value = serde_json::from_slice(data).expect("parse_doc accepted it");
    if let Ok(typed) = serde_json::from_value::<AssignmentDoc>(value["signed"].clone()) {
        assert_eq!(typed.device_id, doc.device_id);
        assert_eq!(typed.counter, doc.counter);
        assert_eq!(typed.expires, doc.expires);
        assert_eq!(typed.assignments.len(), doc.items.len());
    }
});

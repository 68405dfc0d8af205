//! Signed checkpoint notes: `--since-checkpoint FILE`, the export's checkpoint, the server's.
//!
//! Parsed and opened with the real Ed25519 check and with one that accepts any signature, so
//! the body parsing behind the signature is reached.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::checkpoint::{Checkpoint, open_checkpoint, open_note, parse_note, peek_checkpoint};
use wavecast_tuf::keys::verify_ed25519;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let f = wavecast_fuzz::fixture();

    if let Ok(note) = parse_note(text) {
        assert!(note.text.ends_with('\n') && !note.signatures.is_empty() && note.signatures.len() <= 100);
    }
    if let Ok(c) = Checkpoint::parse_body(text) {
        assert_eq!(Checkpoint::parse_body(&c.body()).expect("a body we format parses"), c);
    }
    let _ = peek_checkpoint(text);
    let _ = open_note(text, &f.note_key, verify_ed25519);
    let real = open_checkpoint(text, &f.note_key, verify_ed25519);
    let any = open_checkpoint(text, &f.note_key, wavecast_fuzz::accept_any);
    if let Ok(c) = &real {
        assert_eq!(any.as_ref().ok(), Some(c), "accepting any signature accepted less");
    }
    for r in [real, any] {
        if let Err(e) = r {
            let _ = e.to_string();
        }
    }
});

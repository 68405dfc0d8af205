//! root.json as the agent and `wavecast audit verify` read it (`root::parse_root`), and the
//! wavecast keys taken from it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_tuf::root::{checkpoint_key, director_key, parse_root};
use wavecast_tuf::tough::schema::{Root, Signed};

fuzz_target!(|data: &[u8]| {
    match parse_root(data) {
        Ok(root) => {
            let _ = (director_key(&root.signed), checkpoint_key(&root.signed));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The key lookups on any root that parses, signed or not.
    if let Ok(root) = serde_json::from_slice::<Signed<Root>>(data) {
        let _ = (director_key(&root.signed), checkpoint_key(&root.signed));
    }
});

//! `agent.toml` (`AgentConfig::parse`).
//!
//! `parse` reads the file its `trust_root` names. Letting the fuzzer pick that path would have
//! it read whatever it names (`/dev/zero` never ends), so: text that is not a TOML document goes
//! to `parse` as it is (it fails before any file is read); a document has its `trust_root` set
//! to the fixture's real root.json and goes to `parse` re-serialized, so every check after the
//! root is read sees the fuzzed values.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wavecast_agent::AgentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/wavecast/agent.toml");
    let Ok(mut table) = text.parse::<toml::Table>() else {
        let err = AgentConfig::parse(path, text).expect_err("not TOML, yet parsed");
        let _ = err.to_string();
        return;
    };
    let f = wavecast_fuzz::fixture();
    let root = f.trust_root_path.to_str().expect("a UTF-8 temp path").to_owned();
    table.insert("trust_root".into(), toml::Value::String(root));
    let Ok(text) = toml::to_string(&table) else { return };
    match AgentConfig::parse(path, &text) {
        Ok(cfg) => {
            assert_eq!(cfg.trust_root, f.root_json);
            assert!(!cfg.artifacts.is_empty());
            assert!(cfg.poll_interval.as_millis() >= 100);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

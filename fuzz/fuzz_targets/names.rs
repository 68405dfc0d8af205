//! Names, digests, probes, durations and secrets: every `FromStr`-like parser of the domain,
//! each checked to read back what it writes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::duration::parse_duration;
use wavecast_core::probe::ProbeKind;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName, Sha256Digest, TargetName};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    if let Ok(t) = TargetName::parse(s) {
        assert_eq!(TargetName::parse(&t.to_string()).expect("a target name we print parses"), t);
        assert!(!t.to_string().contains(['/', '\\']) && !t.name().as_str().starts_with('.'));
    }
    if let Ok(n) = ArtifactName::new(s) {
        assert_eq!(n.as_str(), s);
    }
    let _ = (DeviceName::new(s), GroupName::new(s));
    if let Ok(v) = ArtifactVersion::new(s) {
        assert_eq!(ArtifactVersion::new(&v.to_string()).expect("a version we print parses"), v);
    }
    if let Ok(d) = s.parse::<Sha256Digest>() {
        assert_eq!(d.to_hex(), s);
    }
    if let Ok(k) = s.parse::<ProbeKind>() {
        assert_eq!(k.to_string().parse::<ProbeKind>().expect("a probe we print parses"), k);
    }
    if let Ok(d) = parse_duration(s) {
        let _ = d.as_millis();
    }
    for kind in [SecretKind::ApiToken, SecretKind::DeviceCredential, SecretKind::EnrollmentToken] {
        if let Ok(secret) = Secret::parse(kind, s) {
            assert_eq!(Secret::parse(kind, secret.expose()).expect("a secret parses again").hash(), secret.hash());
        }
    }
});

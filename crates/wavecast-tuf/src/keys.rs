//! Ed25519 signing keys: generation, secret files, and use as a `tough` key source.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::sign::{Sign, parse_keypair};

/// Errors making, saving or loading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system random source failed.
    #[error("generating an Ed25519 key failed")]
    Generate,
    /// A key file could not be written.
    #[error("writing key file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("reading key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a PKCS#8 Ed25519 key.
    #[error("{path} is not a PKCS#8 Ed25519 private key")]
    Parse {
        /// The file.
        path: PathBuf,
    },
    /// A key file is readable by other users.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key id could not be computed.
    #[error("computing the key id")]
    KeyId(#[source] tough::schema::Error),
}

/// An Ed25519 private key held in memory as PKCS#8 DER.
#[derive(Clone)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: std::sync::Arc<Ed25519KeyPair>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(ed25519 public {})", hex::encode(self.public_bytes()))
    }
}

impl SigningKey {
    /// Makes a new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref().to_vec()).ok_or(KeyError::Generate)
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).ok()?;
        Some(Self { pkcs8, pair: std::sync::Arc::new(pair) })
    }

    /// Loads a key file written by [`SigningKey::save`], refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.into(), mode });
        }
        let pkcs8 = std::fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        Self::from_pkcs8(pkcs8).ok_or_else(|| KeyError::Parse { path: path.into() })
    }

    /// Writes the key to a new file with mode 0600; never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.pkcs8).map_err(|source| KeyError::Write { path: path.into(), source })
    }

    /// The raw 32-byte public key.
    pub fn public_bytes(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs `msg` (Ed25519 is deterministic; no randomness needed).
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The public key in TUF form.
    pub fn tuf_key(&self) -> Key {
        // parse_keypair accepts any key from_pkcs8 accepted.
        match parse_keypair(&self.pkcs8) {
            Ok(pair) => pair.tuf_key(),
            Err(_) => {
                unreachable!("an Ed25519 PKCS#8 key that aws-lc-rs parsed is parsed by tough too")
            }
        }
    }

    /// The TUF key id of the public key.
    pub fn key_id(&self) -> Result<Decoded<Hex>, KeyError> {
        self.tuf_key().key_id().map_err(KeyError::KeyId)
    }

    /// This key as a `tough` key source, for signing roles.
    pub fn source(&self) -> Box<dyn KeySource> {
        Box::new(self.clone())
    }
}

#[tough::async_trait]
impl KeySource for SigningKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(parse_keypair(&self.pkcs8)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("wavecast keys are written with SigningKey::save, not through tough".into())
    }
}

/// Checks an Ed25519 signature by the raw 32-byte `public` key over `msg`.
///
/// The shape of `wavecast_core::checkpoint::VerifyEd25519`, so verifiers hand it to the pure
/// checkpoint code without depending on a crypto library themselves.
pub fn verify_ed25519(public: &[u8; 32], msg: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
    UnparsedPublicKey::new(&ED25519, public).verify(msg, signature).is_ok()
}

/// Creates `path` with mode 0600 and writes `data`, fsynced; fails if the file exists.
pub fn write_secret_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_ed25519_checks_go_sumdb_notes_and_our_own_signatures() {
        use wavecast_core::checkpoint::{NoteKey, format_note, open_note};
        // The example of golang.org/x/mod/sumdb/note: a real Ed25519 signature in a C2SP note.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let text =
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let note = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        let typed = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(vkey.rsplit('+').next().unwrap()).unwrap()
        };
        let peter = NoteKey { name: "PeterNeumann".into(), public: typed[1..].try_into().unwrap() };
        assert_eq!(open_note(&note, &peter, verify_ed25519).unwrap(), text);
        assert!(open_note(&note.replace("answer", "Answer"), &peter, verify_ed25519).is_err());

        let key = SigningKey::generate().unwrap();
        let ours = NoteKey { name: "wavecast/test".into(), public: key.public_bytes().try_into().unwrap() };
        let signed = format_note("hello\n", &ours, &key.sign_bytes(b"hello\n"));
        assert_eq!(open_note(&signed, &ours, verify_ed25519).unwrap(), "hello\n");
        assert!(!verify_ed25519(&[0; 32], b"hello\n", &key.sign_bytes(b"hello\n")));
    }

    #[test]
    fn keys_save_with_0600_and_refuse_loose_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = SigningKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.public_bytes(), key.public_bytes());
        assert!(key.save(&path).is_err(), "save must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SigningKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}

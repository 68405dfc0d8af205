//! Putting a verified file in place atomically, keeping the previous one beside it.
//!
//! All files live in the directory of the application's `path`, so every rename stays on one
//! filesystem and is atomic:
//!
//! ```text
//! yolo.onnx                          what the application reads: always a whole file
//! .yolo.onnx.wavecast-previous       the version before it (a hard link), for rollback
//! .yolo.onnx.wavecast-<sha>.partial  a download in progress, then the verified new version
//! ```
//!
//! The swap links the current file to the previous slot *before* renaming the new one over
//! it, so at every instant `path` names either the old or the new bytes, and the old bytes are
//! on disk under the previous slot before they leave `path`.

use std::path::{Path, PathBuf};

use wavecast_core::Sha256Digest;

use crate::state::{StateError, io, sync_dir};

/// The files of one artifact.
#[derive(Debug, Clone)]
pub struct Slots {
    path: PathBuf,
    dir: PathBuf,
    file: String,
}

impl Slots {
    /// The slots for the application's `path`.
    pub fn new(path: &Path) -> Self {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact").to_owned();
        Self { path: path.to_path_buf(), dir, file }
    }

    /// The application's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a download of the version with this digest goes.
    pub fn partial(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join(format!(".{}.wavecast-{}.partial", self.file, &sha256.to_hex()[..16]))
    }

    /// The previous version.
    pub fn previous(&self) -> PathBuf {
        self.dir.join(format!(".{}.wavecast-previous", self.file))
    }

    fn link_tmp(&self) -> PathBuf {
        self.dir.join(format!(".{}.wavecast-link.tmp", self.file))
    }

    /// Makes sure the application's directory exists.
    pub fn prepare(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))
    }

    /// Deletes downloads of other versions (left by refused or superseded installs).
    pub fn remove_stale_partials(&self, keep: Option<&Path>) {
        let prefix = format!(".{}.wavecast-", self.file);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".partial") && Some(p.as_path()) != keep {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }

    /// Replaces `previous` with a hard link to `from`, atomically.
    fn link_into(&self, from: &Path, to: &Path) -> Result<(), StateError> {
        let tmp = self.link_tmp();
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(from, &tmp).map_err(io("linking", from))?;
        std::fs::rename(&tmp, to).map_err(io("renaming into place", to))
    }

    /// Keeps the current file as the previous version, then renames `staged` over `path`.
    /// `between` runs after the first rename and before the second (a test hook).
    pub fn swap_in(&self, staged: &Path, between: impl FnOnce()) -> Result<(), StateError> {
        if self.path.exists() {
            self.link_into(&self.path, &self.previous())?;
            sync_dir(&self.dir)?;
        }
        between();
        std::fs::rename(staged, &self.path).map_err(io("renaming into place", &self.path))?;
        sync_dir(&self.dir)
    }

    /// Puts the previous version back at `path` (keeping it in the previous slot too). With no
    /// previous version, removes `path`: the device had no model before the first install.
    pub fn restore_previous(&self) -> Result<(), StateError> {
        let prev = self.previous();
        if prev.exists() {
            self.link_into(&prev, &self.path)?;
        } else if self.path.exists() {
            std::fs::remove_file(&self.path).map_err(io("removing", &self.path))?;
        }
        sync_dir(&self.dir)
    }
}

/// SHA-256 of a file, streaming (for recovery checks only; downloads hash as they arrive).
pub fn sha256_file(path: &Path) -> Option<Sha256Digest> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(Sha256Digest::from_bytes(h.finalize().into()))
}

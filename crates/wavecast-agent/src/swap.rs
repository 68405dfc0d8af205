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
//!
//! Those names are predictable, so the agent never follows a link at them: it opens its own
//! files with `O_NOFOLLOW`, creates them with `O_EXCL`, keeps only regular files, re-checks the
//! digest of the bytes it puts back, and by default refuses a directory other users can write
//! to ([`Slots::check_dir`]).

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use wavecast_core::Sha256Digest;

use crate::config::SharedDirs;
use crate::state::{Installed, Kept, Previous, StateError, io, sync_dir};

/// `O_NOFOLLOW`: opening a symbolic link fails instead of opening what it points to.
fn no_follow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Opens `path` for reading without following a link, and only if it is a regular file (a
/// FIFO or device planted there could block or never end).
pub fn open_file(path: &Path) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow() | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

/// Opens a download's partial file for reading and writing: the one there, or a new one
/// created with `O_EXCL`. Never through a link: a link at the name is removed (the link itself,
/// not what it points to) and the file created afresh.
pub fn open_partial(path: &Path) -> Result<File, StateError> {
    let open = |create: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).custom_flags(no_follow()).mode(0o644);
        if create {
            o.create_new(true);
        }
        o.open(path)
    };
    match open(false) {
        Ok(f) if f.metadata().map_err(io("reading", path))?.is_file() => Ok(f),
        Ok(_) => Err(io("opening", path)(not_a_file())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(true).map_err(io("creating", path)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            tracing::warn!(path = %path.display(), "a symbolic link sits where the agent keeps its download; removing the link");
            std::fs::remove_file(path).map_err(io("removing a link at", path))?;
            open(true).map_err(io("creating", path))
        }
        Err(e) => Err(io("opening", path)(e)),
    }
}

fn not_a_file() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file; the agent does not follow links")
}

/// SHA-256 of a regular file, streaming, never through a link.
pub fn hash_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut f = open_file(path)?;
    let mut h = wavecast_core::Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// SHA-256 of a file, or none when it is missing, unreadable or not a regular file (for
/// recovery checks; downloads hash as they arrive).
pub fn sha256_file(path: &Path) -> Option<Sha256Digest> {
    hash_file(path).ok()
}

/// Why the agent will not write into an artifact directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is writable by {who} (mode {mode:o}, owner uid {owner}); the agent does not write where other users can plant links \
     (fix its permissions, or set artifact_dirs_writable_by_others = \"allow\" in agent.toml)",
    .dir.display()
)]
pub struct UnsafeDir {
    /// The directory.
    pub dir: PathBuf,
    /// Who else can write there.
    pub who: &'static str,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub owner: u32,
}

/// Who besides `me` (and root, who can write anywhere) may write to a directory with this
/// owner and mode; none when nobody may.
pub fn other_writers(owner: u32, mode: u32, me: u32) -> Option<&'static str> {
    if mode & 0o002 != 0 {
        Some("every user")
    } else if mode & 0o020 != 0 {
        Some("its group")
    } else if owner != me && owner != 0 && mode & 0o200 != 0 {
        Some("its owner, another user")
    } else {
        None
    }
}

/// What a restore found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The expected bytes are back at `path`.
    Done,
    /// Nothing was to be restored, so `path` was removed (a first install onto nothing).
    Removed,
    /// The previous-version file is missing, or not a regular file: nothing was changed.
    Missing,
    /// The previous-version file holds other bytes than recorded: nothing was changed.
    Wrong {
        /// What it holds.
        found: Sha256Digest,
    },
}

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

    /// The directory all the slots live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a download of the version with this digest goes.
    pub fn partial(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join(format!(".{}.wavecast-{}.partial", self.file, &sha256.to_hex()[..16]))
    }

    /// Where the verified golden set with this digest is kept for the model check.
    pub fn golden(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join(format!(".{}.wavecast-golden-{}", self.file, &sha256.to_hex()[..16]))
    }

    /// Deletes the golden sets kept for other versions than `keep`.
    pub fn remove_goldens(&self, keep: Option<&Path>) {
        let prefix = format!(".{}.wavecast-golden-", self.file);
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if e.file_name().to_string_lossy().starts_with(&prefix) && Some(p.as_path()) != keep {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
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

    /// Refuses the directory when users other than the agent's can write to it, unless
    /// `policy` allows it.
    pub fn check_dir(&self, policy: SharedDirs) -> Result<(), UnsafeDir> {
        if policy == SharedDirs::Allow {
            return Ok(());
        }
        // An unreadable directory fails later with its own error; this check is about others.
        let Ok(meta) = std::fs::metadata(&self.dir) else { return Ok(()) };
        let me = rustix::process::geteuid().as_raw();
        match other_writers(meta.uid(), meta.mode(), me) {
            None => Ok(()),
            Some(who) => Err(UnsafeDir { dir: self.dir.clone(), who, mode: meta.mode() & 0o7777, owner: meta.uid() }),
        }
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

    /// What the previous slot holds after a swap, given the version wavecast last put at
    /// `path` (`active`): that version, or (before wavecast's first install there) the file
    /// that was at the path, hashed now; nothing when the swap kept nothing (no file was there,
    /// or a link, which is not kept).
    pub fn kept(&self, active: Option<&Installed>) -> Result<Option<Previous>, StateError> {
        let prev = self.previous();
        match std::fs::symlink_metadata(&prev) {
            Ok(m) if m.is_file() => match active {
                Some(a) => Ok(Some(Previous::from(a.clone()))),
                None => {
                    let sha256 = hash_file(&prev).map_err(io("reading", &prev))?;
                    Ok(Some(Previous { version: Kept::Unmanaged, sha256 }))
                }
            },
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &prev)(e)),
        }
    }

    /// Replaces the previous slot with a hard link to `from`, atomically (`link` fails rather
    /// than replace anything at the temporary name, as `O_EXCL` would).
    fn link_into(&self, from: &Path, to: &Path) -> Result<(), StateError> {
        let tmp = self.link_tmp();
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(from, &tmp).map_err(io("linking", from))?;
        std::fs::rename(&tmp, to).map_err(io("renaming into place", to))
    }

    /// Keeps the current file as the previous version (a regular file only; the slot is
    /// emptied otherwise, so it never holds something older than what `path` held), then
    /// renames `staged` over `path`. `between` runs after the first rename and before the
    /// second (a test hook).
    pub fn swap_in(&self, staged: &Path, between: impl FnOnce()) -> Result<(), StateError> {
        let current = std::fs::symlink_metadata(&self.path);
        if current.as_ref().is_ok_and(|m| m.is_file()) {
            self.link_into(&self.path, &self.previous())?;
            sync_dir(&self.dir)?;
        } else if let Err(e) = std::fs::remove_file(self.previous())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io("removing", &self.previous())(e));
        }
        between();
        // The staged file is the agent's own download; a link put in its place is not.
        match std::fs::symlink_metadata(staged) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(io("renaming into place", staged)(not_a_file())),
            Err(e) => return Err(io("reading", staged)(e)),
        }
        std::fs::rename(staged, &self.path).map_err(io("renaming into place", &self.path))?;
        sync_dir(&self.dir)
    }

    /// Puts `expected` back at `path` from the previous slot, after checking that the slot
    /// holds exactly those bytes (checked on a link the agent just made to it, so what was
    /// hashed is what is renamed in). With nothing expected, removes `path`: the device had no
    /// file before the first install.
    pub fn restore(&self, expected: Option<&Previous>) -> Result<Restore, StateError> {
        let Some(expected) = expected else {
            if let Err(e) = std::fs::remove_file(&self.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io("removing", &self.path)(e));
            }
            sync_dir(&self.dir)?;
            return Ok(Restore::Removed);
        };
        let prev = self.previous();
        let tmp = self.link_tmp();
        let _ = std::fs::remove_file(&tmp);
        match std::fs::hard_link(&prev, &tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restore::Missing),
            Err(e) => return Err(io("linking", &prev)(e)),
        }
        let found = match hash_file(&tmp) {
            Ok(d) => d,
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidInput
                    || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
            {
                let _ = std::fs::remove_file(&tmp);
                return Ok(Restore::Missing);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("reading", &prev)(e));
            }
        };
        if found != expected.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Restore::Wrong { found });
        }
        std::fs::rename(&tmp, &self.path).map_err(io("renaming into place", &self.path))?;
        sync_dir(&self.dir)?;
        Ok(Restore::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest::of(bytes)
    }

    fn kept(bytes: &[u8]) -> Previous {
        Previous { version: Kept::Unmanaged, sha256: sha(bytes) }
    }

    #[test]
    fn others_who_can_write_are_named() {
        // (owner, mode, me, who else writes)
        let cases = [
            (1000, 0o755, 1000, None),
            (0, 0o755, 1000, None),
            (0, 0o700, 0, None),
            (1000, 0o700, 0, Some("its owner, another user")),
            (1000, 0o755, 0, Some("its owner, another user")),
            (1000, 0o555, 0, None),
            (1000, 0o775, 1000, Some("its group")),
            (1000, 0o757, 1000, Some("every user")),
            (0, 0o1777, 1000, Some("every user")),
        ];
        for (owner, mode, me, want) in cases {
            assert_eq!(other_writers(owner, mode, me), want, "owner {owner} mode {mode:o} me {me}");
        }
    }

    #[test]
    fn a_shared_directory_is_refused_unless_allowed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let slots = Slots::new(&dir.path().join("app/model.bin"));
        slots.prepare().unwrap();
        std::fs::set_permissions(slots.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(slots.check_dir(SharedDirs::Refuse), Ok(()));
        std::fs::set_permissions(slots.dir(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = slots.check_dir(SharedDirs::Refuse).unwrap_err();
        assert_eq!(err.who, "every user");
        assert!(err.to_string().contains("artifact_dirs_writable_by_others"), "{err}");
        assert_eq!(slots.check_dir(SharedDirs::Allow), Ok(()));
    }

    #[test]
    fn links_at_the_agents_names_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let slots = Slots::new(&dir.path().join("app/model.bin"));
        slots.prepare().unwrap();

        // A link where the download goes: replaced by a file of the agent's own.
        let partial = slots.partial(&sha(b"x"));
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        let mut f = open_partial(&partial).unwrap();
        std::io::Write::write_all(&mut f, b"download").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the download was written through a link");
        assert!(std::fs::symlink_metadata(&partial).unwrap().is_file());

        // A link in the previous slot: not hashed through, not restored.
        std::os::unix::fs::symlink(&victim, slots.previous()).unwrap();
        assert!(hash_file(&slots.previous()).is_err());
        std::fs::write(slots.path(), b"current").unwrap();
        assert_eq!(slots.restore(Some(&kept(b"precious"))).unwrap(), Restore::Missing);
        assert_eq!(std::fs::read(slots.path()).unwrap(), b"current", "nothing changed");
        assert!(std::fs::symlink_metadata(slots.path()).unwrap().is_file());

        // A link planted as the staged file is not renamed in.
        let staged = slots.partial(&sha(b"y"));
        std::os::unix::fs::symlink(&victim, &staged).unwrap();
        assert!(slots.swap_in(&staged, || {}).is_err());
        assert!(std::fs::symlink_metadata(slots.path()).unwrap().is_file());
    }

    #[test]
    fn the_swap_keeps_files_and_a_restore_checks_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let slots = Slots::new(&dir.path().join("app/model.bin"));
        slots.prepare().unwrap();

        // Nothing at the path: nothing kept (a stale slot is emptied); rolling back removes the
        // new file.
        std::fs::write(slots.previous(), b"stale").unwrap();
        let staged = slots.partial(&sha(b"v1"));
        std::fs::write(&staged, b"v1").unwrap();
        slots.swap_in(&staged, || {}).unwrap();
        assert!(!slots.previous().exists());
        assert_eq!(slots.kept(None).unwrap(), None);
        assert_eq!(slots.restore(None).unwrap(), Restore::Removed);
        assert!(!slots.path().exists());

        // A factory file: kept as unmanaged, and put back when its bytes are intact.
        std::fs::write(slots.path(), b"factory").unwrap();
        let staged = slots.partial(&sha(b"v2"));
        std::fs::write(&staged, b"v2").unwrap();
        slots.swap_in(&staged, || {}).unwrap();
        assert_eq!(std::fs::read(slots.path()).unwrap(), b"v2");
        let before = slots.kept(None).unwrap();
        assert_eq!(before, Some(kept(b"factory")));
        assert_eq!(slots.restore(before.as_ref()).unwrap(), Restore::Done);
        assert_eq!(std::fs::read(slots.path()).unwrap(), b"factory");
        assert_eq!(std::fs::read(slots.previous()).unwrap(), b"factory", "the previous slot keeps its copy");

        // Bytes that changed in the previous slot are refused, and nothing moves.
        std::fs::write(slots.path(), b"running").unwrap();
        std::fs::remove_file(slots.previous()).unwrap();
        std::fs::write(slots.previous(), b"tampered").unwrap();
        assert_eq!(slots.restore(before.as_ref()).unwrap(), Restore::Wrong { found: sha(b"tampered") });
        assert_eq!(std::fs::read(slots.path()).unwrap(), b"running");
        std::fs::remove_file(slots.previous()).unwrap();
        assert_eq!(slots.restore(before.as_ref()).unwrap(), Restore::Missing);
        let leftovers: Vec<_> = std::fs::read_dir(slots.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("model.bin")], "no temporary link is left");

        // A managed version is described by the journal, not hashed again.
        std::fs::write(slots.previous(), b"whatever").unwrap();
        let active = Installed { version: wavecast_core::ArtifactVersion::new("1.2.3").unwrap(), sha256: sha(b"x") };
        assert_eq!(slots.kept(Some(&active)).unwrap(), Some(Previous::from(active)));
    }
}

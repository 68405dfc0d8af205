//! One server per SQLite installation: an advisory lock on a file in the data dir.
//!
//! Two servers on one SQLite file would each keep rollouts and audit heads of their own in
//! flight, and the second would only find out through "database is locked" errors under load.
//! So a server that serves an installation from its SQLite file first takes an exclusive
//! `flock` on `DATA_DIR/server.lock` and writes its process id there; a second one finds the
//! lock held and refuses to start, naming that process. The lock is the kernel's, not the
//! file's existence: a server that was killed leaves the file behind, and the next start takes
//! it over. Replicas on PostgreSQL share a data dir on purpose and take no lock.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::ServerConfig;
use crate::install::Layout;
use crate::store::DatabaseConfig;

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "server.lock";

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the lock.
    #[error(
        "another wavecast server{} is serving {dir} from its SQLite database (it holds the lock on {}); \
         stop it first, or run replicas on PostgreSQL with --database-url",
        holder.map_or_else(String::new, |pid| format!(" (process {pid})")),
        path.display()
    )]
    Held {
        /// The data dir.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// The process id the holder wrote, if it could be read.
        holder: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("locking {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The data dir's lock, held until this is dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `config`'s data dir when it is an installation served from SQLite; `None` on
/// PostgreSQL, and for a directory that is no installation (starting says why).
pub fn lock_for(config: &ServerConfig) -> Result<Option<DirLock>, DirLockError> {
    let installed = Layout::new(&config.data_dir).root_json().exists();
    match config.database {
        DatabaseConfig::Sqlite(_) if installed => lock(&config.data_dir).map(Some),
        DatabaseConfig::Sqlite(_) | DatabaseConfig::Postgres(_) => Ok(None),
    }
}

/// Takes the exclusive lock on `dir`'s lock file without waiting, and writes our process id
/// into it.
pub fn lock(dir: &Path) -> Result<DirLock, DirLockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| DirLockError::Io { path: path.clone(), source };
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut text = String::new();
            let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
            return Err(DirLockError::Held { dir: dir.to_path_buf(), path, holder });
        }
        Err(e) => return Err(io(e.into())),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        // flock locks belong to the open file, so a second open in this process contends too.
        match lock(dir.path()) {
            Err(DirLockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("a second lock was not refused: {other:?}"),
        }
        drop(first);
        // A file left behind is not a lock: the next server takes it over.
        lock(dir.path()).unwrap();
    }
}

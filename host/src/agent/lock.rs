//! One writer per run: an OS file lock held while a process drives the run.
//! The OS drops it when the process dies, however it dies, so a run whose
//! owner was killed can be taken over at once, and two resumers racing for
//! the same run cannot both win.

use super::RunError;
use crate::config::Config;
use crate::journal::Journal;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// The directory holding the lock files of a state store.
    pub fn dir(config: &Config) -> PathBuf {
        let mut p = config.state_path.clone().into_os_string();
        p.push(".locks");
        PathBuf::from(p)
    }

    pub fn acquire(config: &Config, run: &str, journal: &dyn Journal) -> Result<RunLock, RunError> {
        let dir = Self::dir(config);
        let fail = |message: String| RunError::Lock {
            run: run.to_owned(),
            message,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{run}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                let pid = journal.run(run).ok().and_then(|r| r.owner_pid);
                Err(RunError::Busy {
                    run: run.to_owned(),
                    pid,
                })
            }
            Err(TryLockError::Error(e)) => {
                Err(fail(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }
}

//! One writer per run: an OS file lock held while a process drives the run.
//! The OS drops it when the process dies, however it dies, so a run whose
//! owner was killed can be taken over at once, and two resumers racing for
//! the same run cannot both win. A store shared by many hosts (PostgreSQL)
//! holds a lease on the run instead (`Journal::take_lease`), which fences
//! every write of the run: no file lock is taken then, since a process
//! paused on this machine must not keep its run from a host elsewhere.
//!
//! The lock file holds its owner's pid (so a refusal names the process
//! really holding the run, never a dead earlier owner) and is removed
//! when the lock is released: a finished run leaves no file behind.
//! Removing a lock file races with a process that opened it just before:
//! that process would lock a file no longer in the directory while a third
//! locks a new one. So a lock counts only when, once held, the path still
//! names the file locked; otherwise the taker tries again.

use super::RunError;
use crate::config::Config;
use crate::store::{Journal, Store, StoreError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub enum RunLock {
    File {
        file: File,
        path: PathBuf,
    },
    /// The store's lease, given back on drop.
    Lease {
        store: std::sync::Arc<dyn Store>,
        run: String,
    },
}

impl RunLock {
    /// The directory holding the lock files of a state store.
    pub fn dir(config: &Config) -> PathBuf {
        config.locks_dir.clone()
    }

    pub async fn acquire(
        config: &Config,
        run: &str,
        store: &std::sync::Arc<dyn Store>,
    ) -> Result<RunLock, RunError> {
        match store.take_lease(run).await {
            Ok(true) => {
                return Ok(RunLock::Lease {
                    store: store.clone(),
                    run: run.to_owned(),
                })
            }
            Ok(false) => {}
            Err(StoreError::Held {
                run, holder, pid, ..
            }) => {
                return Err(RunError::Busy {
                    run,
                    pid,
                    holder: Some(holder),
                })
            }
            Err(e) => return Err(e.into()),
        }
        Self::file(config, run, store.as_ref()).await
    }

    async fn file(config: &Config, run: &str, journal: &dyn Journal) -> Result<RunLock, RunError> {
        let dir = Self::dir(config);
        let fail = |message: String| RunError::Lock {
            run: run.to_owned(),
            message,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{run}.lock"));
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let pid = match holder(&mut file) {
                        Some(pid) => Some(pid),
                        None => journal
                            .run(run)
                            .await
                            .ok()
                            .and_then(|r| r.owner_pid)
                            .filter(|p| alive(*p)),
                    };
                    return Err(RunError::Busy {
                        run: run.to_owned(),
                        pid,
                        holder: None,
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(fail(format!("cannot lock {}: {e}", path.display())))
                }
            }
            let same = match (std::fs::metadata(&path), file.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                // Released and removed between our open and our lock.
                continue;
            }
            let pid = std::process::id().to_string();
            let written = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(pid.as_bytes()));
            if let Err(e) = written {
                return Err(fail(format!("cannot write {}: {e}", path.display())));
            }
            return Ok(RunLock::File { file, path });
        }
        Err(fail(format!(
            "{} kept changing under us (another process taking and releasing the run?)",
            path.display()
        )))
    }
}

/// The pid a held lock file names, if that process is alive.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| alive(*p))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for RunLock {
    fn drop(&mut self) {
        match self {
            RunLock::File { file, path } => {
                // Removed while still held, so nobody can lock it between
                // the removal and the release; a process that opened it
                // before finds, once it holds it, that the path no longer
                // names it.
                let _ = std::fs::remove_file(path);
                let _ = file.unlock();
            }
            RunLock::Lease { store, run } => store.drop_lease(run),
        }
    }
}

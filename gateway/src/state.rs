//! What outlives one gateway process in its pod: how many processes came before this one, and
//! how many sessions they had open when they ended without a drain.
//!
//! A gateway that crashes (or is killed) takes its open sessions with it, and no report says
//! so: the next process starts at zero. So the running process keeps a small file in the
//! pod's shared directory (an emptyDir, which survives container restarts) with its open
//! sessions, rewritten at most once a second when they change, and marked clean when the
//! process ends after a drain. A new process reads it at start: an unclean end means the
//! sessions it shows were lost. The totals go into every drain report (`restarts`,
//! `lostToRestarts`), so the operator counts them exactly, whichever operator process reads
//! them and whenever. A crash loses at most the sessions opened in the last second before it
//! from the count.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    drain::Drain,
    error::{Error, Result},
};

/// File name of the state beside the installed binary.
pub const STATE_NAME: &str = "longconn-gateway.state";
/// How often the open sessions are saved when they changed.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The file's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    /// Processes before the one that wrote this.
    pub restarts: u64,
    /// Sessions those processes had open when they ended without a drain.
    pub lost_to_restarts: u64,
    /// Sessions open in the writing process, as last saved.
    pub active: u64,
    /// The writing process ended after its drain: nothing it had was lost.
    pub clean: bool,
}

impl Saved {
    /// What a process that starts after this state knows of its predecessors.
    pub fn next(self) -> Saved {
        let lost = if self.clean { 0 } else { self.active };
        Saved {
            restarts: self.restarts + 1,
            lost_to_restarts: self.lost_to_restarts.saturating_add(lost),
            active: 0,
            clean: false,
        }
    }
}

/// The state file of this process, or none (`--state-file` unset: nothing outlives it).
#[derive(Debug)]
pub struct Ledger {
    path: Option<PathBuf>,
    history: Saved,
}

impl Ledger {
    /// Reads what the previous process left (none on a pod's first start) and records that
    /// this process has started. An unreadable file is taken as no history, and said so.
    pub fn open(path: Option<&Path>) -> Result<Ledger> {
        let Some(path) = path else {
            return Ok(Ledger {
                path: None,
                history: Saved::default(),
            });
        };
        let history = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => saved.next(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable state file: starting without history");
                    Saved::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(source) => {
                return Err(Error::State {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let ledger = Ledger {
            path: Some(path.to_owned()),
            history,
        };
        ledger.save(0, false)?;
        if history.restarts > 0 {
            tracing::warn!(
                restarts = history.restarts,
                lost_to_restarts = history.lost_to_restarts,
                "the previous gateway process of this pod ended; its open sessions count as lost"
            );
        }
        Ok(ledger)
    }

    /// Earlier processes and what they lost.
    pub fn history(&self) -> Saved {
        self.history
    }

    /// Saves the open sessions of this process (atomically: a crash mid-write leaves the old
    /// file).
    pub fn save(&self, active: u64, clean: bool) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let saved = Saved {
            active,
            clean,
            ..self.history
        };
        let err = |source| Error::State {
            path: path.clone(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(err)?;
        file.write_all(&serde_json::to_vec(&saved).unwrap_or_default())
            .map_err(err)?;
        fs::rename(&tmp, path).map_err(err)
    }

    /// Saves the open sessions once a second while they change; runs until the task is
    /// dropped.
    pub async fn keep(self: Arc<Self>, drain: Arc<Drain>) {
        let mut saved = 0;
        let mut every = tokio::time::interval(SAVE_EVERY);
        loop {
            every.tick().await;
            let active = drain.active();
            if active != saved {
                match self.save(active, false) {
                    Ok(()) => saved = active,
                    Err(e) => tracing::warn!(error = %e, "cannot save the gateway state"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclean_end_counts_the_open_sessions_as_lost_and_a_clean_one_does_not() {
        let crashed = Saved {
            restarts: 1,
            lost_to_restarts: 4,
            active: 7,
            clean: false,
        };
        assert_eq!(
            crashed.next(),
            Saved {
                restarts: 2,
                lost_to_restarts: 11,
                active: 0,
                clean: false
            }
        );
        let drained = Saved {
            clean: true,
            ..crashed
        };
        assert_eq!(drained.next().lost_to_restarts, 4);
        assert_eq!(drained.next().restarts, 2);
    }

    #[test]
    fn a_new_process_reads_what_the_last_one_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_NAME);
        let first = Ledger::open(Some(&path)).expect("first start");
        assert_eq!(first.history(), Saved::default());
        first.save(9, false).expect("save");
        // The process dies here; the next one starts.
        let second = Ledger::open(Some(&path)).expect("second start");
        assert_eq!(second.history().restarts, 1);
        assert_eq!(second.history().lost_to_restarts, 9);
        second.save(3, true).expect("clean end");
        let third = Ledger::open(Some(&path)).expect("third start");
        assert_eq!(third.history().restarts, 2);
        assert_eq!(
            third.history().lost_to_restarts,
            9,
            "a clean end loses nothing"
        );
    }

    #[test]
    fn without_a_state_file_there_is_no_history() {
        let ledger = Ledger::open(None).expect("no file");
        assert_eq!(ledger.history(), Saved::default());
        ledger.save(5, false).expect("nothing to write");
    }
}

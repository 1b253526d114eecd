//! Component processes: starting each in its own process group with its output in a log file,
//! recording them so another process (`longconn-e2e cluster down`) can find them, and stopping
//! them with SIGTERM, a grace period and SIGKILL until no member of their groups is left.
//!
//! A record names a process by PID *and* start time, so a PID reused by an unrelated process after
//! a crash is never signalled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How often stopping and waiting look at the processes again.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for processes to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What identifies a started process across processes: its name, PID (also its process group)
/// and start time in clock ticks since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub pid: i32,
    pub start_time: u64,
    pub log: PathBuf,
}

/// A process this process started; dropping it does not stop it (see [`stop_all`]).
#[derive(Debug)]
pub struct Spawned {
    pub record: Record,
    child: Option<Child>,
    exit: Option<std::process::ExitStatus>,
}

impl Spawned {
    /// Starts `binary args` in a new process group, stdin closed, stdout and stderr appended to
    /// `log`.
    pub fn start(name: &str, binary: &Path, args: &[String], log: &Path) -> Result<Self> {
        let mut command = Command::new(binary);
        command.args(args);
        Self::start_command(name, command, log)
    }

    /// Starts a prepared command (environment, working directory already set) in a new process
    /// group, stdin closed, stdout and stderr appended to `log`.
    pub fn start_command(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let binary = PathBuf::from(command.get_program());
        let spawn_error = |source| Error::Spawn {
            component: name.to_string(),
            binary: binary.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io("open log", log))?;
        let err = out.try_clone().map_err(Error::io("open log", log))?;
        let child = {
            use std::os::unix::process::CommandExt as _;
            command
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(spawn_error)?
        };
        let pid = i32::try_from(child.id()).map_err(|_| {
            spawn_error(std::io::Error::other(format!(
                "pid {} out of range",
                child.id()
            )))
        })?;
        let start_time = proc_stat(pid).map(|stat| stat.start_time).unwrap_or(0);
        tracing::debug!(component = name, pid, log = %log.display(), "started");
        Ok(Self {
            record: Record {
                name: name.to_string(),
                pid,
                start_time,
                log: log.to_path_buf(),
            },
            child: Some(child),
            exit: None,
        })
    }

    /// The exit status, once the process has exited (reaping it); `None` while it runs or when
    /// this process did not start it.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.reap();
        self.exit
    }

    /// Sends `signal` to the process's group, if any member of it is left.
    pub fn signal(&self, signal: Signal) {
        signal_group(&self.record, signal);
    }

    /// True while any member of the process's group is alive.
    pub fn group_alive(&mut self) -> bool {
        self.reap();
        group_alive(&self.record)
    }

    /// Fails with [`Error::Exited`] if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.try_exit() {
            Some(status) => Err(Error::Exited {
                component: self.record.name.clone(),
                status: status.to_string(),
                log: self.record.log.clone(),
                tail: tail(&self.record.log, 30),
            }),
            None => Ok(()),
        }
    }

    /// Forgets the child handle: the process keeps running after this process exits.
    pub fn detach(&mut self) {
        self.child = None;
    }

    fn reap(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
            self.child = None;
        }
    }
}

/// The fields of `/proc/PID/stat` this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `pid (comm) state ppid pgrp ... starttime ...`; comm may hold spaces and parentheses,
/// so fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True if the recorded process is the one still running (not a zombie, not a reused PID).
pub fn is_running(record: &Record) -> bool {
    match proc_stat(record.pid) {
        Some(stat) => {
            stat.state != 'Z' && (record.start_time == 0 || stat.start_time == record.start_time)
        }
        None => false,
    }
}

/// Live (non-zombie) members of process group `pgrp`.
pub fn group_members(pgrp: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|stat| stat.pgrp == pgrp && stat.state != 'Z'))
        .collect()
}

/// A group is ours to signal if its leader is the recorded process, or the leader is gone but
/// members remain (they can only be its descendants: a group never outlives its members).
fn group_alive(record: &Record) -> bool {
    match proc_stat(record.pid) {
        Some(stat) if record.start_time != 0 && stat.start_time != record.start_time => false,
        _ => !group_members(record.pid).is_empty(),
    }
}

fn signal_group(record: &Record, signal: Signal) {
    if group_alive(record) {
        match killpg(Pid::from_raw(record.pid), signal) {
            Ok(()) => {
                tracing::debug!(component = %record.name, pid = record.pid, ?signal, "signalled")
            }
            Err(errno) => {
                tracing::debug!(component = %record.name, pid = record.pid, ?signal, %errno, "signal failed")
            }
        }
    }
}

/// Stops the processes in order, each with SIGTERM to its group, up to `grace` to exit, then
/// SIGKILL. Own children are reaped. Fails if any group member survives SIGKILL.
pub fn stop_all(processes: &mut [Spawned], grace: Duration) -> Result<()> {
    for process in processes.iter_mut() {
        signal_group(&process.record, Signal::SIGTERM);
        if !wait_gone(std::slice::from_mut(process), grace) {
            tracing::warn!(component = %process.record.name, ?grace, "did not exit after SIGTERM; sending SIGKILL");
            signal_group(&process.record, Signal::SIGKILL);
        }
    }
    if wait_gone(processes, KILL_WAIT) {
        return Ok(());
    }
    for process in processes.iter() {
        signal_group(&process.record, Signal::SIGKILL);
    }
    if wait_gone(processes, KILL_WAIT) {
        Ok(())
    } else {
        let survivors: Vec<String> = processes
            .iter()
            .filter(|process| group_alive(&process.record))
            .map(|process| format!("{} (pgid {})", process.record.name, process.record.pid))
            .collect();
        Err(Error::Survivors(survivors.join(", ")))
    }
}

/// Stops recorded processes that this process did not start (see [`stop_all`]).
pub fn stop_records(records: &[Record], grace: Duration) -> Result<()> {
    let mut processes: Vec<Spawned> = records
        .iter()
        .map(|record| Spawned {
            record: record.clone(),
            child: None,
            exit: None,
        })
        .collect();
    stop_all(&mut processes, grace)
}

fn wait_gone(processes: &mut [Spawned], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        for process in processes.iter_mut() {
            process.reap();
        }
        if processes
            .iter()
            .all(|process| !group_alive(&process.record))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parentheses_in_the_command_name() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).expect("parse");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
    }

    #[test]
    fn stop_all_terminates_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        // The shell starts a grandchild in the same group, then waits.
        let args = vec!["-c".to_string(), "sleep 300 & wait".to_string()];
        let mut processes =
            vec![Spawned::start("sh", Path::new("/bin/sh"), &args, &log).expect("start")];
        let pgid = processes[0].record.pid;
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_members(pgid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert_eq!(group_members(pgid).len(), 2, "shell and sleep");
        stop_all(&mut processes, Duration::from_secs(5)).expect("stop");
        assert!(group_members(pgid).is_empty());
        assert!(!is_running(&processes[0].record));
    }

    #[test]
    fn stop_all_kills_what_ignores_sigterm_after_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stubborn.log");
        let args = vec![
            "-c".to_string(),
            "trap '' TERM; while true; do sleep 0.05; done".to_string(),
        ];
        let mut processes =
            vec![Spawned::start("stubborn", Path::new("/bin/sh"), &args, &log).expect("start")];
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        stop_all(&mut processes, Duration::from_millis(300)).expect("stop");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(group_members(processes[0].record.pid).is_empty());
    }
}

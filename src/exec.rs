//! `ferry exec`: runs the tool's command as a child, passes stdio through untouched, forwards
//! SIGTERM/SIGINT/SIGHUP/SIGQUIT, and records the exit code (128 + signal when killed) in a file
//! atomically. For images without a shell and jobs that write no exit-code file of their own.

use crate::error::{Error, Result};
use crate::transfer::write_atomic;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use tokio::signal::unix::{SignalKind, signal};

/// The conventional exit code of a process: its status, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Runs `argv`, forwards signals, writes the exit code to `ec`, and returns it.
pub async fn run(ec: &Path, argv: &[String]) -> Result<i32> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Config("exec needs a command after `--`".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| Error::io(program, "start the command", e))?;
    let pid = Pid::from_raw(child.id().map(|p| p as i32).unwrap_or(0));
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("/", "install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("/", "install SIGINT handler", e))?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Error::io("/", "install SIGHUP handler", e))?;
    let mut quit =
        signal(SignalKind::quit()).map_err(|e| Error::io("/", "install SIGQUIT handler", e))?;
    let status = loop {
        let sig = tokio::select! {
            s = child.wait() => break s.map_err(|e| Error::io(program, "wait for the command", e))?,
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
            _ = hup.recv() => Signal::SIGHUP,
            _ = quit.recv() => Signal::SIGQUIT,
        };
        // The child may have just exited; a failed kill is then harmless.
        let _ = kill(pid, sig);
    };
    let code = exit_code(status);
    write_atomic(ec, format!("{code}\n").as_bytes(), 0o644)?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn the_exit_code_is_recorded_and_returned() {
        let d = tempfile::tempdir().unwrap();
        let ec = d.path().join("sub/job.ec");
        assert_eq!(
            run(&ec, &argv(&["/bin/sh", "-c", "exit 7"])).await.unwrap(),
            7
        );
        assert_eq!(std::fs::read_to_string(&ec).unwrap(), "7\n");
    }

    #[tokio::test]
    async fn a_child_killed_by_a_signal_records_128_plus_the_signal() {
        let d = tempfile::tempdir().unwrap();
        let ec = d.path().join("job.ec");
        assert_eq!(
            run(&ec, &argv(&["/bin/sh", "-c", "kill -9 $$"]))
                .await
                .unwrap(),
            137
        );
        assert_eq!(std::fs::read_to_string(&ec).unwrap(), "137\n");
    }

    #[tokio::test]
    async fn a_missing_command_is_an_error_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let e = run(&d.path().join("x.ec"), &argv(&["/no/such/tool"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/no/such/tool"), "{e}");
        assert!(
            !d.path().join("x.ec").exists(),
            "no exit code is invented for a command that never ran"
        );
    }
}

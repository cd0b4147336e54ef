//! `ferry exec` as a tool container's entrypoint: stdio untouched, signals forwarded, exit code recorded.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn exec_passes_stdio_through_and_exits_with_the_commands_code() {
    let d = tempfile::tempdir().unwrap();
    let ec = d.path().join("exit.code");
    let out = Command::new(support::ferry_bin())
        .args([
            "exec",
            "--exit-code-file",
            ec.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "read x; echo out:$x; echo err >&2; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"in\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out:in\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(std::fs::read_to_string(&ec).unwrap(), "3\n");
}

#[test]
fn exec_forwards_sigterm_and_records_143() {
    let d = tempfile::tempdir().unwrap();
    let ec = d.path().join("exit.code");
    let child = Command::new(support::ferry_bin())
        .args([
            "exec",
            "--exit-code-file",
            ec.to_str().unwrap(),
            "--",
            "/bin/sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(
        status.code(),
        Some(143),
        "sleep died of the forwarded SIGTERM"
    );
    assert_eq!(std::fs::read_to_string(&ec).unwrap(), "143\n");
}

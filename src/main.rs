use clap::Parser;
use ferry::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    // Before anything else: with a shared PID namespace the tool runs as ferry's UID, and could
    // otherwise read ferry's credentials in /proc/<pid>/environ (and its memory, open files and
    // mounts via /proc/<pid>/{mem,fd,root}). A non-dumpable process's /proc entries need
    // CAP_SYS_PTRACE, which no container of the pod has. `execve` resets the flag, so the command
    // `ferry exec` runs is unaffected.
    let protected = nix::sys::prctl::set_dumpable(false);
    let cli = Cli::parse();
    ferry::init_logging(cli.log_format);
    let in_pod = matches!(cli.command, Command::Init(_) | Command::Sidecar(_));
    if let Err(e) = protected {
        tracing::warn!("could not mark the process non-dumpable: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ferry::error::ExitCode::Io.code());
        }
    };
    match runtime.block_on(ferry::run(cli)) {
        Ok(out) => {
            if let Some(line) = out.stdout {
                println!("{line}");
            }
            std::process::ExitCode::from(out.code)
        }
        Err(e) => {
            tracing::error!("{e}");
            if in_pod {
                termination_message(&e.to_string());
            }
            std::process::ExitCode::from(e.exit_code().code())
        }
    }
}

/// Kubernetes' termination message of ferry's containers (`terminationMessagePath`, a file the
/// kubelet mounts): the error as one line, which the container's status then carries. Absent
/// outside Kubernetes; nothing is written then.
fn termination_message(line: &str) {
    const PATH: &str = "/dev/termination-log";
    if std::path::Path::new(PATH).is_file() {
        let line: String = line.lines().collect::<Vec<_>>().join(" ");
        let _ = std::fs::write(PATH, format!("ferry: {line}\n"));
    }
}

//! ferry: stage a batch job's files through S3 instead of NFS.
//!
//! Roles: `stage` and `collect` on the head node, `init` and `sidecar` in the job pod,
//! `inject` for the pod YAML. See ARCHITECTURE.md for the contract and README.md for usage.

pub mod attempt;
pub mod cache;
pub mod checksum;
pub mod cli;
pub mod collect;
pub mod config;
pub mod done;
pub mod env;
pub mod error;
pub mod exec;
pub mod init;
pub mod inject;
pub mod job;
pub mod manifest;
pub mod output;
pub mod pack;
pub mod progress;
pub mod sidecar;
pub mod stage;
pub mod status;
pub mod store;
pub mod sumcache;
pub mod transfer;
pub mod tree;

use cli::{Cli, Command, LogFormat};
use error::{Error, Result};
use std::future::Future;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Logs to stderr, filtered by `FERRY_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| {
        // The SDK's own warnings are Debug dumps of what ferry's error line then says in words.
        tracing_subscriber::EnvFilter::new("info,aws_config=error,aws_smithy_runtime=error")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let builder = builder.with_ansi(
        std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none(),
    );
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs `work`, turning SIGINT/SIGTERM into `Error::Interrupted` (futures are dropped, so no
/// temporary file is renamed into place; open multipart uploads are aborted by the caller).
async fn interruptible<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("/", "install SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("/", "install SIGINT handler", e))?;
    tokio::select! {
        r = work => r,
        _ = term.recv() => Err(Error::Interrupted("SIGTERM")),
        _ = int.recv() => Err(Error::Interrupted("SIGINT")),
    }
}

/// What a command leaves for `main`: a line for stdout, and the process exit code.
pub struct Outcome {
    pub stdout: Option<String>,
    pub code: u8,
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<Outcome> {
    let cfg = config::Transfer {
        concurrency: cli.transfer.concurrency,
        part_size: cli.transfer.part_size,
    };
    let print = |line: String| Outcome {
        stdout: Some(line),
        code: 0,
    };
    let done = Outcome {
        stdout: None,
        code: 0,
    };
    match cli.command {
        Command::Exec(a) => {
            let code = exec::run(&a.exit_code_file, &a.command).await?;
            Ok(Outcome {
                stdout: None,
                code: (code & 0xff) as u8,
            })
        }
        Command::Stage(a) => {
            let store = std::sync::Arc::new(store::Store::connect(&a.url.bucket).await?);
            let r = interruptible(stage::run(&a, &store, cfg)).await;
            if matches!(r, Err(Error::Interrupted(_))) {
                store.abort_after_interrupt().await;
            }
            r.map(print)
        }
        Command::Init(a) => {
            if let Some(dir) = &a.install_self {
                init::install_self(dir)?;
            }
            let job = job::Job::load(&a.manifest.manifest, a.root).await?;
            let cache = match &a.cache_dir {
                Some(dir) => Some(cache::Cache::open(dir, a.cache_max_bytes.map(|b| b.0))?),
                None => None,
            };
            interruptible(init::run(&job, cache.as_ref(), cfg))
                .await
                .map(|_| done)
        }
        Command::Sidecar(a) => {
            let job = interruptible(job::Job::load(&a.manifest.manifest, a.root)).await?;
            let wait = sidecar::Wait {
                mode: a.mode,
                timeout: (a.timeout > 0).then(|| Duration::from_secs(a.timeout)),
                quiet: Duration::from_millis(a.quiet_ms),
                start_grace: Duration::from_secs(a.start_grace),
            };
            let r = sidecar::run(&job, &wait, cfg).await;
            if matches!(r, Err(Error::Interrupted(_))) {
                job.store.abort_after_interrupt().await;
            }
            r.map(|_| done)
        }
        Command::Collect(a) => {
            let job = job::Job::load(&a.manifest.manifest, a.root).await?;
            let wait = Duration::from_secs(a.wait);
            interruptible(collect::run(
                &job,
                wait,
                a.link_outputs_under.as_deref(),
                cfg,
            ))
            .await
            .map(|_| done)
        }
        Command::Inject(a) => inject::run(&a).await.map(print),
        Command::Status(a) => match job::Job::load(&a.manifest, None).await {
            Ok(job) => status::line(&job).await.map(print),
            Err(e @ Error::Missing { .. }) => {
                println!("missing {}", a.manifest);
                Err(e)
            }
            Err(e) => Err(e),
        },
    }
}

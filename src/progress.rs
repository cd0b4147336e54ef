//! Progress lines for long transfers (readable in `kubectl logs`) and the closing summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total_bytes: u64,
    total_files: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    start: Instant,
}

const MIB: f64 = 1048576.0;

impl Progress {
    /// Starts counting; logs a progress line every few seconds while the returned guard lives.
    pub fn start(
        label: &'static str,
        total_files: u64,
        total_bytes: u64,
    ) -> (Arc<Progress>, Reporter) {
        let p = Arc::new(Progress {
            label,
            total_bytes,
            total_files,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            start: Instant::now(),
        });
        let q = p.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(2),
                Duration::from_secs(3),
            );
            loop {
                tick.tick().await;
                q.log_line();
            }
        });
        (p, Reporter(task))
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn log_line(&self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let files = self.files.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64();
        let rate = bytes as f64 / secs.max(1e-3);
        let eta = if rate > 0.0 {
            format!(
                "{:.0}s",
                self.total_bytes.saturating_sub(bytes) as f64 / rate
            )
        } else {
            "?".into()
        };
        tracing::info!(
            "{} progress: {}/{} files, {:.1}/{:.1} MiB, {:.1} MiB/s, eta {eta}",
            self.label,
            files,
            self.total_files,
            bytes as f64 / MIB,
            self.total_bytes as f64 / MIB,
            rate / MIB
        );
    }
}

/// Stops the progress lines when dropped.
pub struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// "12 files, 3.4 MiB in 0.52 s (6.5 MiB/s)".
pub fn summary(files: u64, bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    format!(
        "{files} files, {:.1} MiB in {secs:.2} s ({:.1} MiB/s)",
        bytes as f64 / MIB,
        bytes as f64 / MIB / secs.max(1e-3)
    )
}

//! One error type for every role, and the process exit codes it maps to.

use std::path::{Path, PathBuf};

/// Process exit codes. Stable: scripts and the Galaxy runner branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything was done.
    Ok = 0,
    /// A flag or environment variable is missing or malformed (clap also uses 2).
    Usage = 2,
    /// The manifest or `done.json` is malformed, of an unknown version, or unsafe.
    Manifest = 3,
    /// An S3 request failed after the retries (throttling, 5xx, network).
    S3 = 4,
    /// An object the manifest names is not in S3.
    Missing = 5,
    /// S3 refused the credentials or the permission.
    Credentials = 6,
    /// A local file could not be read or written (permissions, disk full).
    Io = 7,
    /// Bytes did not match the size or checksum the manifest records.
    Checksum = 8,
    /// The job ended without a real exit code (crash, OOM, eviction, no `done.json`).
    JobFailed = 9,
    /// A wait (`--timeout`, `--wait`) ran out.
    Timeout = 10,
    /// The Kubernetes YAML given to `inject` cannot be used.
    Yaml = 11,
    /// The TLS handshake with the S3 endpoint failed: its certificate is not trusted (private CA:
    /// set `AWS_CA_BUNDLE`), or it does not speak TLS.
    Tls = 12,
    /// SIGINT or SIGTERM arrived before the work was done; re-run to finish.
    Interrupted = 130,
}

impl ExitCode {
    pub const ALL: [ExitCode; 13] = [
        ExitCode::Ok,
        ExitCode::Usage,
        ExitCode::Manifest,
        ExitCode::S3,
        ExitCode::Missing,
        ExitCode::Credentials,
        ExitCode::Io,
        ExitCode::Checksum,
        ExitCode::JobFailed,
        ExitCode::Timeout,
        ExitCode::Yaml,
        ExitCode::Tls,
        ExitCode::Interrupted,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Ok => "done",
            ExitCode::Usage => "bad flag or environment variable",
            ExitCode::Manifest => {
                "manifest or done.json malformed, unknown version, or unsafe key/path"
            }
            ExitCode::S3 => "S3 request failed after retries (throttling, 5xx, network)",
            ExitCode::Missing => "an object named by the manifest is missing from S3",
            ExitCode::Credentials => {
                "S3 refused the credentials or permission, or no credentials could be had (STS)"
            }
            ExitCode::Io => "local file error (permission, disk full, not a directory)",
            ExitCode::Checksum => "size or checksum mismatch",
            ExitCode::JobFailed => "the job ended without an exit code (crash, OOM, eviction)",
            ExitCode::Timeout => "a wait ran out (--timeout / --wait)",
            ExitCode::Yaml => "Kubernetes YAML unusable by inject",
            ExitCode::Tls => {
                "TLS handshake with the S3 (or STS) endpoint failed: certificate not trusted (private CA: set AWS_CA_BUNDLE), or not HTTPS"
            }
            ExitCode::Interrupted => "interrupted by SIGINT/SIGTERM; re-run to finish",
        }
    }

    /// The table printed by `ferry --help` and copied into the README.
    pub fn table() -> String {
        let mut out = String::from("Exit codes:\n");
        for c in ExitCode::ALL {
            out.push_str(&format!("  {:>3}  {}\n", c.code(), c.meaning()));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid setting: {0}")]
    Config(String),

    #[error("manifest {url}: {reason}")]
    Manifest { url: String, reason: String },

    #[error("s3 {op} s3://{bucket}/{key}: {message}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },

    #[error("s3 {op} s3://{bucket}/{key}: object not found{hint}")]
    Missing {
        op: &'static str,
        bucket: String,
        key: String,
        hint: String,
    },

    #[error(
        "s3 {op} s3://{bucket}/{key}: credentials or permission refused: {message} (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the role, and the bucket policy)"
    )]
    Credentials {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },

    #[error("{path}: {what}: {}", describe_io(source))]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {reason}")]
    Unsafe { path: String, reason: String },

    #[error("{what}: expected {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("job {job_id}: {reason}")]
    JobFailed { job_id: String, reason: String },

    #[error("{0}")]
    Timeout(String),

    #[error("yaml: {0}")]
    Yaml(String),

    #[error("no S3 credentials from {from}: {reason}")]
    NoCredentials { from: String, reason: String },

    #[error("{endpoint}: {reason} (not retried)")]
    Tls { endpoint: String, reason: String },

    #[error(
        "interrupted by {0}; nothing partial is at a final path, re-run the same command to finish"
    )]
    Interrupted(&'static str),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Usage,
            Error::Manifest { .. } | Error::Unsafe { .. } => ExitCode::Manifest,
            Error::S3 { .. } => ExitCode::S3,
            Error::Missing { .. } => ExitCode::Missing,
            Error::Credentials { .. } | Error::NoCredentials { .. } => ExitCode::Credentials,
            Error::Io { .. } => ExitCode::Io,
            Error::Checksum { .. } => ExitCode::Checksum,
            Error::JobFailed { .. } => ExitCode::JobFailed,
            Error::Timeout(_) => ExitCode::Timeout,
            Error::Yaml(_) => ExitCode::Yaml,
            Error::Tls { .. } => ExitCode::Tls,
            Error::Interrupted(_) => ExitCode::Interrupted,
        }
    }

    pub fn io(path: impl AsRef<Path>, what: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            what,
            source,
        }
    }

    pub fn manifest(url: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Manifest {
            url: url.into(),
            reason: reason.into(),
        }
    }

    pub fn unsafe_path(path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Unsafe {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `std::io::Error` says "No space left on device (os error 28)"; make the fix obvious.
pub fn describe_io(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(28) => format!("{e}: free space or raise the emptyDir sizeLimit"),
        Some(13) => format!("{e}: check the owner and mode (runAsUser/fsGroup)"),
        _ => e.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources as words on one line, joined by `: ` (a message its predecessor
/// already holds is left out): no Debug output and no line break in an error line.
pub fn in_words(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let table = ExitCode::table();
        let mut codes: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 13);
        for c in ExitCode::ALL {
            assert!(table.contains(c.meaning()), "{c:?} missing from the table");
        }
    }

    #[test]
    fn every_error_maps_to_its_documented_exit_code() {
        let e = Error::io("/x", "write", std::io::Error::from_raw_os_error(28));
        assert_eq!(e.exit_code(), ExitCode::Io);
        assert_eq!(Error::Interrupted("SIGTERM").exit_code().code(), 130);
        assert_eq!(Error::manifest("u", "r").exit_code().code(), 3);
    }
}

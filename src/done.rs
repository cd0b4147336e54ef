//! `done.json`: the completion record the sidecar writes last. Pure data.

use crate::manifest::{Dataset, Entry};
use crate::store::Requests;
use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

/// Why the tool ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The tool wrote its exit-code file.
    Exited,
    /// The tool's processes ended without an exit-code file (killed, segfault).
    Crashed,
    /// The container was killed for memory.
    Oom,
    /// The pod was told to stop (SIGTERM) before the tool ended.
    Evicted,
    /// The sidecar's `--timeout` ran out before the tool ended.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub version: u32,
    pub job_id: String,
    /// The tool's exit code; `null` when it ended without one.
    pub exit_code: Option<i32>,
    pub reason: Reason,
    /// Workdir files new or changed by the job (uploaded under the workdir key), and removed ones.
    pub changed: Vec<Entry>,
    pub deleted: Vec<String>,
    /// Outputs found and uploaded (file, or directory with its files).
    pub outputs: Vec<Dataset>,
    /// Declared outputs the job did not write.
    pub missing_outputs: Vec<String>,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub requests: Requests,
    /// Seconds from sidecar start to the tool's end, and spent uploading.
    pub wait_seconds: f64,
    pub upload_seconds: f64,
    /// Unix time when the record was written.
    pub finished_at: u64,
}

impl Done {
    pub fn from_json(bytes: &[u8]) -> Result<Done, String> {
        let d: Done = serde_json::from_slice(bytes)
            .map_err(|e| format!("done.json is not a v{VERSION} record: {e}"))?;
        if d.version != VERSION {
            return Err(format!(
                "done.json version {} is not supported (expected {VERSION})",
                d.version
            ));
        }
        Ok(d)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a done record always serialises");
        v.push(b'\n');
        v
    }

    /// The code the head node's exit-code file gets: the tool's, or a non-zero stand-in
    /// (Galaxy reads a missing `.ec` as success, so a crash must never look like 0).
    pub fn exit_code_for_head(&self) -> i32 {
        match (self.exit_code, self.reason) {
            (Some(c), _) => c,
            (None, Reason::Oom) => 137,
            (None, Reason::Evicted) => 143,
            (None, _) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(exit_code: Option<i32>, reason: Reason) -> Done {
        Done {
            version: VERSION,
            job_id: "1".into(),
            exit_code,
            reason,
            changed: vec![],
            deleted: vec![],
            outputs: vec![],
            missing_outputs: vec![],
            files_uploaded: 0,
            bytes_uploaded: 0,
            requests: Requests::default(),
            wait_seconds: 0.0,
            upload_seconds: 0.0,
            finished_at: 0,
        }
    }

    #[test]
    fn a_job_without_an_exit_code_never_looks_successful() {
        for r in [
            Reason::Crashed,
            Reason::Oom,
            Reason::Evicted,
            Reason::Timeout,
        ] {
            assert_ne!(sample(None, r).exit_code_for_head(), 0, "{r:?}");
        }
        assert_eq!(sample(Some(0), Reason::Exited).exit_code_for_head(), 0);
        assert_eq!(sample(Some(3), Reason::Exited).exit_code_for_head(), 3);
    }

    #[test]
    fn done_round_trips_and_refuses_other_versions() {
        let d = sample(Some(0), Reason::Exited);
        assert_eq!(Done::from_json(&d.to_json()).unwrap(), d);
        let mut v = d.clone();
        v.version = 9;
        assert!(
            Done::from_json(&v.to_json())
                .unwrap_err()
                .contains("version 9")
        );
    }
}

//! `done.json`: the completion record the sidecar writes last. Pure data.

use crate::manifest::{Dataset, Entry, Pack};
use crate::store::Requests;
use serde::{Deserialize, Serialize};

/// 2: per-attempt records (`jobs/<id>/attempts/<n>/done.json`), `attempt`, `mode_changes`,
/// `failed_outputs`, reason `init-failed`. 3: each pod's outputs under its own keys
/// (`outputs/<id>/<n>-<claim>/…`) instead of the shared `data/…`; `claim`.
pub const VERSION: u32 = 3;

/// Why the tool ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The tool wrote its exit-code file.
    Exited,
    /// The tool ended without an exit-code file: killed (OOM, signal), crashed, or it never
    /// started (no process was ever seen, or none left when the sidecar first looked).
    Crashed,
    /// The pod was told to stop (SIGTERM) before the tool ended.
    Evicted,
    /// The sidecar's `--timeout` ran out before the tool ended.
    Timeout,
    /// `ferry init` never completed in this pod: nothing the pod saw is recorded.
    InitFailed,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Exited => "exited",
            Reason::Crashed => "crashed",
            Reason::Evicted => "evicted",
            Reason::Timeout => "timeout",
            Reason::InitFailed => "init-failed",
        })
    }
}

/// A workdir entry whose mode alone changed (its bytes did not: nothing was uploaded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeChange {
    pub path: String,
    pub mode: u32,
}

/// A declared output that exists but could not be read (dangling symlink, a link out of the
/// pod's roots, permission): the job fails visibly instead of coming back empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedOutput {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub version: u32,
    pub job_id: String,
    /// The attempt (pod) this record belongs to.
    pub attempt: u32,
    /// The random name under which that pod claimed the attempt (`claim.json`); its outputs are
    /// under `outputs/<id>/<attempt>-<claim>/`.
    pub claim: String,
    /// The tool's exit code; `null` when it ended without one.
    pub exit_code: Option<i32>,
    pub reason: Reason,
    /// Workdir files new or changed by the job (uploaded under the workdir key), and removed ones.
    pub changed: Vec<Entry>,
    /// Changed small files travel packed (see `crate::pack`): objects under
    /// `<attempt key>/packs/`, each member a file of `changed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<Pack>,
    pub deleted: Vec<String>,
    pub mode_changes: Vec<ModeChange>,
    /// Outputs found and uploaded (file, or directory with its files), each under the attempt's
    /// own key `outputs/<id>/<n>/<path>`.
    pub outputs: Vec<Dataset>,
    /// Declared outputs the job did not write.
    pub missing_outputs: Vec<String>,
    pub failed_outputs: Vec<FailedOutput>,
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
    /// A record with nothing uploaded yet.
    pub fn empty(job_id: &str, attempt: u32, exit_code: Option<i32>, reason: Reason) -> Done {
        Done {
            version: VERSION,
            job_id: job_id.to_string(),
            attempt,
            claim: String::new(),
            exit_code,
            reason,
            changed: vec![],
            packs: vec![],
            deleted: vec![],
            mode_changes: vec![],
            outputs: vec![],
            missing_outputs: vec![],
            failed_outputs: vec![],
            files_uploaded: 0,
            bytes_uploaded: 0,
            requests: Requests::default(),
            wait_seconds: 0.0,
            upload_seconds: 0.0,
            finished_at: 0,
        }
    }

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
    /// (Galaxy reads a missing `.ec` as success, so a crash must never look like 0). An output
    /// that could not be read turns a 0 into 1.
    pub fn exit_code_for_head(&self) -> i32 {
        match (self.exit_code, self.reason) {
            (Some(0), _) if !self.failed_outputs.is_empty() => 1,
            (Some(c), _) => c,
            (None, Reason::Evicted) => 143,
            (None, _) => 1,
        }
    }

    /// Why the head must treat the job as failed although the tool may have exited 0.
    pub fn failure(&self) -> Option<String> {
        if self.reason == Reason::InitFailed {
            return Some(format!(
                "ferry init never completed in attempt {} (see the ferry-init container's log); nothing was changed on the head",
                self.attempt
            ));
        }
        if self.exit_code.is_none() {
            return Some(format!(
                "the tool ended without an exit code (reason {})",
                self.reason
            ));
        }
        if let Some(f) = self.failed_outputs.first() {
            return Some(format!(
                "output {} could not be read in the pod: {}{}",
                f.path,
                f.error,
                match self.failed_outputs.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(exit_code: Option<i32>, reason: Reason) -> Done {
        Done::empty("1", 1, exit_code, reason)
    }

    #[test]
    fn a_job_without_an_exit_code_never_looks_successful() {
        for r in [
            Reason::Crashed,
            Reason::Evicted,
            Reason::Timeout,
            Reason::InitFailed,
        ] {
            assert_ne!(sample(None, r).exit_code_for_head(), 0, "{r}");
            assert!(sample(None, r).failure().is_some(), "{r}");
        }
        assert_eq!(sample(Some(0), Reason::Exited).exit_code_for_head(), 0);
        assert_eq!(sample(Some(0), Reason::Exited).failure(), None);
        assert_eq!(sample(Some(3), Reason::Exited).exit_code_for_head(), 3);
    }

    #[test]
    fn an_unreadable_output_turns_a_successful_exit_into_a_failure() {
        let mut d = sample(Some(0), Reason::Exited);
        d.failed_outputs.push(FailedOutput {
            path: "/out/a.dat".into(),
            error: "dangling symlink".into(),
        });
        assert_eq!(d.exit_code_for_head(), 1);
        assert!(d.failure().unwrap().contains("/out/a.dat"));
        d.exit_code = Some(4);
        assert_eq!(d.exit_code_for_head(), 4, "a real failure keeps its code");
    }

    #[test]
    fn reasons_are_written_as_words() {
        let json = String::from_utf8(sample(None, Reason::InitFailed).to_json()).unwrap();
        assert!(json.contains("\"reason\": \"init-failed\""), "{json}");
        assert_eq!(Reason::Crashed.to_string(), "crashed");
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

//! `ferry status`: one line about a staged job.

use crate::done::Done;
use crate::error::{Error, Result};
use crate::job::Job;

pub async fn line(job: &Job) -> Result<String> {
    let m = &job.manifest;
    let files = m.workdir.entries.len() + m.inputs.len() + m.indices.len();
    match job.store.get_small(&m.done_key).await? {
        None => Ok(format!(
            "staged job={} files={files} outputs={} (no done.json yet)",
            m.job_id,
            m.outputs.len()
        )),
        Some(bytes) => {
            let d = Done::from_json(&bytes).map_err(|r| Error::manifest(&m.done_key, r))?;
            Ok(format!(
                "done job={} exit={} reason={:?} outputs={} missing_outputs={} uploaded_files={} uploaded_bytes={}",
                m.job_id,
                d.exit_code.map_or("none".into(), |c| c.to_string()),
                d.reason,
                d.outputs.len(),
                d.missing_outputs.len(),
                d.files_uploaded,
                d.bytes_uploaded
            ))
        }
    }
}

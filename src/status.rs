//! `ferry status`: one line about a staged job and its newest attempt.

use crate::attempt;
use crate::done::Done;
use crate::error::{Error, Result};
use crate::job::Job;

pub async fn line(job: &Job) -> Result<String> {
    let m = &job.manifest;
    let files = m.workdir.entries.len() + m.inputs.len() + m.indices.len();
    let n = attempt::latest(job).await?;
    let key = attempt::done_key(job, n);
    let record = match n {
        0 => None,
        _ => job.store.get_small(&key).await?,
    };
    match record {
        None => Ok(format!(
            "staged job={} files={files} outputs={} attempts={n} (no done.json yet)",
            m.job_id,
            m.outputs.len()
        )),
        Some(bytes) => {
            let d = Done::from_json(&bytes).map_err(|r| Error::manifest(&key, r))?;
            Ok(format!(
                "done job={} attempt={n} exit={} reason={} outputs={} missing_outputs={} failed_outputs={} uploaded_files={} uploaded_bytes={}",
                m.job_id,
                d.exit_code.map_or("none".into(), |c| c.to_string()),
                d.reason,
                d.outputs.len(),
                d.missing_outputs.len(),
                d.failed_outputs.len(),
                d.files_uploaded,
                d.bytes_uploaded
            ))
        }
    }
}

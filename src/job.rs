//! A staged job as the pod and the head node see it: its manifest, the S3 store it lives in,
//! and where its absolute paths land on this machine.

use crate::error::{Error, Result};
use crate::manifest::{self, Manifest};
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Job {
    pub manifest: Manifest,
    pub store: Arc<Store>,
    /// Prefix for every absolute path (`--root`), for running roles side by side on one machine.
    pub root: Option<PathBuf>,
    pub url: String,
}

/// Splits `s3://BUCKET/KEY` of a manifest object.
pub fn split_object_url(url: &str) -> Result<(String, String)> {
    let parsed: crate::config::S3Url = url.parse().map_err(Error::Config)?;
    if parsed.key.is_empty() {
        return Err(Error::Config(format!(
            "`{url}` names a bucket, not a manifest object (…/jobs/ID/manifest.json)"
        )));
    }
    Ok((parsed.bucket, parsed.key))
}

impl Job {
    /// Downloads and validates the manifest at `url` (`s3://…/manifest.json`).
    pub async fn load(url: &str, root: Option<PathBuf>) -> Result<Job> {
        let (bucket, key) = split_object_url(url)?;
        let store = Arc::new(Store::connect(&bucket).await?);
        let bytes = store.get_small(&key).await?.ok_or_else(|| Error::Missing {
            op: "get",
            bucket: bucket.clone(),
            key: key.clone(),
            hint: " (the manifest; was `ferry stage` run for this job?)".into(),
        })?;
        let manifest = Manifest::from_json(&bytes).map_err(|r| Error::manifest(url, r))?;
        if manifest.bucket != bucket || manifest.manifest_key() != key {
            return Err(Error::manifest(
                url,
                format!(
                    "it describes s3://{}/{}, not this URL; a manifest is read only where stage wrote it",
                    manifest.bucket,
                    manifest.manifest_key()
                ),
            ));
        }
        if let Some(r) = root.as_ref().filter(|r| !r.is_absolute()) {
            return Err(Error::Config(format!(
                "--root {} must be an absolute path",
                r.display()
            )));
        }
        store.record_uploads_under(manifest::uploads_key(&manifest.prefix, &manifest.job_id));
        tracing::info!(job = %manifest.job_id, "manifest {url}: {} workdir entries, {} inputs, {} outputs, {} indices",
            manifest.workdir.entries.len(), manifest.inputs.len(), manifest.outputs.len(), manifest.indices.len());
        Ok(Job {
            manifest,
            store,
            root,
            url: url.to_string(),
        })
    }

    /// Where an absolute manifest path is on this machine.
    pub fn local(&self, abs: &str) -> PathBuf {
        manifest::local_path(self.root.as_deref(), abs)
    }

    pub fn workdir(&self) -> PathBuf {
        self.local(&self.manifest.workdir.path)
    }

    pub fn exit_code_file(&self) -> PathBuf {
        self.local(&self.manifest.exit_code_file)
    }

    /// The object key of a workdir entry.
    pub fn workdir_key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.manifest.workdir.key)
    }

    /// Workdir-relative path of `path`, if it lies inside the workdir.
    pub fn rel_in_workdir(&self, abs: &str) -> Option<String> {
        let wd = &self.manifest.workdir.path;
        abs.strip_prefix(wd.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .map(str::to_string)
    }
}

/// Makes a user-given path absolute and checks it is normalised (no `..`, no `.`).
pub fn absolute(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, "resolve", e))?;
    let s = abs
        .to_str()
        .ok_or_else(|| Error::unsafe_path(abs.display().to_string(), "path is not UTF-8"))?
        .trim_end_matches('/')
        .to_string();
    manifest::check_abs(&s).map_err(|r| Error::unsafe_path(&s, r))?;
    Ok(s)
}

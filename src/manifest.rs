//! The staging manifest: pure data, validation, and the key ⇄ path mapping. No I/O.
//!
//! `stage` writes it; `init`, `sidecar`, `collect` and `inject` read it and nothing else.
//! `schema/manifest-v2.schema.json` is the published schema; a test keeps the two in step.
//! Version 2 adds `workdir.packs` (small workdir files travel packed, see [`crate::pack`]);
//! version 1 manifests (no packs) are still read.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 2;

/// Every version this ferry reads.
pub const READS: [u32; 2] = [1, 2];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub job_id: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Disjoint absolute directories; each becomes one emptyDir mounted at that path.
    pub roots: Vec<Root>,
    pub workdir: Workdir,
    pub inputs: Vec<Dataset>,
    pub outputs: Vec<Output>,
    pub indices: Vec<Dataset>,
    pub exit_code_file: String,
    pub done_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub path: String,
    /// Bytes staged under this root (workdir, inputs, indices); `inject` adds headroom for outputs.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workdir {
    pub path: String,
    /// Key prefix of the workdir's objects: `<prefix>/jobs/<id>/workdir`.
    pub key: String,
    pub entries: Vec<Entry>,
    /// v2: objects holding many small workdir files each (the rest have one object each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<Pack>,
}

/// One object holding workdir files back to back; each file's size and CRC are its entry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    /// `<prefix>/jobs/<id>/packs/<n>`.
    pub key: String,
    pub size: u64,
    pub crc64nvme: String,
    pub members: Vec<Member>,
}

/// A workdir file inside a pack, at `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub path: String,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink, at a path relative to its parent (workdir or dataset directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    #[serde(default)]
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// CRC64-NVME of the content, base64 of the 8 big-endian bytes (S3's own encoding). Files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    /// Symlinks only: the target, kept verbatim and never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// An input or an index: one file, or a directory whose files are listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub path: String,
    /// The object key (file) or the key prefix of its files (directory).
    pub key: String,
    pub kind: Kind,
    /// Bytes of the file, or of all the directory's files.
    pub size: u64,
    pub mode: u32,
    #[serde(default)]
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<Entry>,
}

/// Where the job writes a result; file or directory is known only after the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub path: String,
    pub key: String,
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Joins key parts with `/`, skipping empty ones (an empty prefix adds nothing).
pub fn join_key(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

pub fn manifest_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "manifest.json"])
}

pub fn done_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "done.json"])
}

/// Where the job's open multipart uploads are recorded while they run (see `store`).
pub fn uploads_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "uploads"])
}

/// `jobs/<id>/attempts`: one folder per attempt (pod) of the job.
pub fn attempts_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "attempts"])
}

/// `jobs/<id>/attempts/<n>`: what attempt `n` (one pod) claimed, uploaded and recorded.
pub fn attempt_key(prefix: &str, job_id: &str, attempt: u32) -> String {
    join_key(&[&attempts_key(prefix, job_id), &attempt.to_string()])
}

pub fn workdir_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "workdir"])
}

/// The key prefix of a job's packs.
pub fn packs_key(prefix: &str, job_id: &str) -> String {
    join_key(&[prefix, "jobs", job_id, "packs"])
}

/// The key of pack number `n`.
pub fn pack_key(prefix: &str, job_id: &str, n: usize) -> String {
    format!("{}/{n:05}", packs_key(prefix, job_id))
}

/// `data/<absolute path without its leading slash>`.
pub fn data_key(prefix: &str, abs: &str) -> String {
    join_key(&[prefix, "data", abs.trim_start_matches('/')])
}

/// `outputs/<id>/<n>-<claim>`: where the pod that claimed attempt `n` under the random name
/// `claim` uploads its outputs. Only that pod's sidecar writes below it, so no other attempt (a
/// straggling older pod, a pod of an earlier staging of the job id) and no other job can change
/// an output once `collect` verified or linked it.
pub fn outputs_key(prefix: &str, job_id: &str, attempt: u32, claim: &str) -> String {
    let dir = if claim.is_empty() {
        attempt.to_string()
    } else {
        format!("{attempt}-{claim}")
    };
    join_key(&[prefix, "outputs", job_id, &dir])
}

/// `outputs/<id>/<n>-<claim>/<absolute path without its leading slash>`: that pod's copy of an
/// output.
pub fn output_key(prefix: &str, job_id: &str, attempt: u32, claim: &str, abs: &str) -> String {
    join_key(&[
        &outputs_key(prefix, job_id, attempt, claim),
        abs.trim_start_matches('/'),
    ])
}

/// `refs/<absolute path without its leading slash>`.
pub fn refs_key(prefix: &str, abs: &str) -> String {
    join_key(&[prefix, "refs", abs.trim_start_matches('/')])
}

/// Where an absolute manifest path lands on this machine: itself, or under `root` if given.
pub fn local_path(root: Option<&Path>, abs: &str) -> PathBuf {
    match root {
        Some(r) => r.join(abs.trim_start_matches('/')),
        None => PathBuf::from(abs),
    }
}

// ---------------------------------------------------------------------------------------------
// Path and key checks: every string from a manifest is untrusted until it passes these.

fn check_components(s: &str, what: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    for c in s.split('/') {
        match c {
            "" => {
                return Err(format!(
                    "{what} has an empty component (`//`, or a leading/trailing `/`)"
                ));
            }
            "." | ".." => {
                return Err(format!(
                    "{what} has a `{c}` component that could escape its root"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A relative path inside a directory: no `..`, no `.`, not absolute, no empty component.
pub fn check_rel(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("relative path is empty".into());
    }
    if p.starts_with('/') {
        return Err("relative path is absolute".into());
    }
    check_components(p, "relative path")
}

/// An absolute, normalised path that is not `/` itself.
pub fn check_abs(p: &str) -> Result<(), String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("path is not absolute".into());
    };
    if rest.is_empty() {
        return Err("path is `/`".into());
    }
    check_components(rest, "path")
}

/// An S3 key ferry may create or read: no leading `/`, no `//`, no trailing `/`, no `..`.
pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("key is empty".into());
    }
    if k.starts_with('/') {
        return Err("key starts with `/`".into());
    }
    check_components(k, "key")
}

/// True if `path` is `dir` or inside it (both absolute, normalised).
pub fn is_within(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn check_key_under(key: &str, base: &str, what: &str) -> Result<(), String> {
    check_key(key).map_err(|e| format!("{what} key `{key}`: {e}"))?;
    if !is_within(key, base) {
        return Err(format!("{what} key `{key}` is not under `{base}`"));
    }
    Ok(())
}

fn check_entries(entries: &[Entry], what: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    let mut links = Vec::new();
    for e in entries {
        check_rel(&e.path).map_err(|r| format!("{what} entry `{}`: {r}", e.path))?;
        if !seen.insert(e.path.as_str()) {
            return Err(format!("{what} entry `{}` is listed twice", e.path));
        }
        if e.mode > 0o7777 {
            return Err(format!(
                "{what} entry `{}`: mode {:o} is not a permission mode",
                e.path, e.mode
            ));
        }
        match e.kind {
            Kind::File => {
                if e.crc64nvme.is_none() {
                    return Err(format!("{what} file `{}` has no crc64nvme", e.path));
                }
            }
            Kind::Symlink => {
                if e.target.as_deref().is_none_or(str::is_empty) {
                    return Err(format!("{what} symlink `{}` has no target", e.path));
                }
                links.push(e.path.as_str());
            }
            Kind::Dir => {}
        }
    }
    // Nothing may be written through a symlink: no entry lies below one.
    for e in entries {
        if let Some(l) = links
            .iter()
            .find(|l| e.path != **l && is_within(&e.path, l))
        {
            return Err(format!(
                "{what} entry `{}` lies below the symlink `{l}`",
                e.path
            ));
        }
    }
    Ok(())
}

/// Every pack lies under `base`; every member is a file of `entries`, in one pack only, whose
/// bytes lie inside the pack and overlap no other member's. (Manifest packs; `done.json` packs.)
pub fn check_packs(entries: &[Entry], packs: &[Pack], base: &str) -> Result<(), String> {
    let files: std::collections::HashMap<&str, &Entry> = entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut packed = HashSet::new();
    for p in packs {
        check_key_under(&p.key, base, "pack")?;
        let mut spans = Vec::new();
        for m in &p.members {
            let Some(e) = files.get(m.path.as_str()) else {
                return Err(format!(
                    "pack `{}` member `{}` is not a workdir file",
                    p.key, m.path
                ));
            };
            if !packed.insert(m.path.as_str()) {
                return Err(format!("workdir file `{}` is packed twice", m.path));
            }
            let end = m.offset.checked_add(e.size).filter(|end| *end <= p.size);
            let Some(end) = end else {
                return Err(format!(
                    "pack `{}` member `{}` lies outside the pack's {} bytes",
                    p.key, m.path, p.size
                ));
            };
            spans.push((m.offset, end, m.path.as_str()));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(format!(
                    "pack `{}` members `{}` and `{}` overlap",
                    p.key, w[0].2, w[1].2
                ));
            }
        }
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates; the error is one line saying what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if READS.iter().any(|r| u64::from(*r) == v) => {}
            Some(v) => {
                return Err(format!(
                    "manifest version {v} is not supported (this ferry reads versions 1 and {VERSION}); use a matching ferry"
                ));
            }
            None => return Err("no numeric `version` field: not a ferry manifest".into()),
        }
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| format!("does not match the manifest schema: {e}"))?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }

    pub fn manifest_key(&self) -> String {
        manifest_key(&self.prefix, &self.job_id)
    }

    /// The root that holds `path`, if any.
    pub fn root_of(&self, path: &str) -> Option<&Root> {
        self.roots.iter().find(|r| is_within(path, &r.path))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !READS.contains(&self.version) {
            return Err(format!("version {} is not 1 or {VERSION}", self.version));
        }
        if self.version == 1 && !self.workdir.packs.is_empty() {
            return Err("a version 1 manifest has no packs".into());
        }
        check_job_id(&self.job_id)?;
        if self.bucket.is_empty() || self.bucket.contains('/') {
            return Err(format!("bucket `{}` is not a bucket name", self.bucket));
        }
        if !self.prefix.is_empty() {
            check_key(&self.prefix).map_err(|e| format!("prefix `{}`: {e}", self.prefix))?;
        }
        if self.roots.is_empty() {
            return Err("no roots".into());
        }
        for (i, r) in self.roots.iter().enumerate() {
            check_abs(&r.path).map_err(|e| format!("root `{}`: {e}", r.path))?;
            for other in &self.roots[..i] {
                if is_within(&r.path, &other.path) || is_within(&other.path, &r.path) {
                    return Err(format!(
                        "roots `{}` and `{}` overlap; roots must be disjoint",
                        other.path, r.path
                    ));
                }
            }
        }
        let under_root = |p: &str, what: &str| -> Result<(), String> {
            check_abs(p).map_err(|e| format!("{what} `{p}`: {e}"))?;
            if self.root_of(p).is_none() {
                return Err(format!("{what} `{p}` is under no root"));
            }
            Ok(())
        };
        under_root(&self.workdir.path, "workdir")?;
        let wk = workdir_key(&self.prefix, &self.job_id);
        if self.workdir.key != wk {
            return Err(format!("workdir key `{}` is not `{wk}`", self.workdir.key));
        }
        check_entries(&self.workdir.entries, "workdir")?;
        check_packs(
            &self.workdir.entries,
            &self.workdir.packs,
            &packs_key(&self.prefix, &self.job_id),
        )?;
        let mut paths = HashSet::new();
        let data = join_key(&[&self.prefix, "data"]);
        let refs = join_key(&[&self.prefix, "refs"]);
        let outputs = join_key(&[&self.prefix, "outputs"]);
        for (list, base, what) in [
            (&self.inputs, &data, "input"),
            (&self.indices, &refs, "index"),
        ] {
            for d in list {
                under_root(&d.path, what)?;
                // An input may also be an earlier job's output object (see `stage`).
                if what != "input" || !is_within(&d.key, &outputs) {
                    check_key_under(&d.key, base, what)?;
                }
                check_key(&d.key).map_err(|e| format!("{what} key `{}`: {e}", d.key))?;
                if !paths.insert(d.path.as_str()) {
                    return Err(format!("{what} `{}` is listed twice", d.path));
                }
                match d.kind {
                    Kind::File if d.crc64nvme.is_none() => {
                        return Err(format!("{what} `{}` has no crc64nvme", d.path));
                    }
                    Kind::File if !d.files.is_empty() => {
                        return Err(format!("{what} `{}` is a file but lists files", d.path));
                    }
                    Kind::Symlink => {
                        return Err(format!(
                            "{what} `{}`: a dataset cannot be a symlink",
                            d.path
                        ));
                    }
                    Kind::Dir => check_entries(&d.files, what)?,
                    Kind::File => {}
                }
            }
        }
        for o in &self.outputs {
            under_root(&o.path, "output")?;
            check_key_under(&o.key, &data, "output")?;
            if !paths.insert(o.path.as_str()) {
                return Err(format!(
                    "output `{}` is listed twice or is also an input",
                    o.path
                ));
            }
        }
        under_root(&self.exit_code_file, "exit_code_file")?;
        let dk = done_key(&self.prefix, &self.job_id);
        if self.done_key != dk {
            return Err(format!("done_key `{}` is not `{dk}`", self.done_key));
        }
        Ok(())
    }
}

/// Job ids become key components: letters, digits, `.`, `_`, `-`; not `.` or `..`.
pub fn check_job_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "job id `{id}` must be 1-128 of [A-Za-z0-9._-] and not `.` or `..`"
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            version: VERSION,
            job_id: "42".into(),
            bucket: "b".into(),
            prefix: "ferry".into(),
            roots: vec![
                Root {
                    path: "/galaxy/jobs/42".into(),
                    bytes: 3,
                },
                Root {
                    path: "/galaxy/files".into(),
                    bytes: 5,
                },
            ],
            workdir: Workdir {
                packs: vec![],
                path: "/galaxy/jobs/42".into(),
                key: "ferry/jobs/42/workdir".into(),
                entries: vec![
                    Entry {
                        path: "galaxy_42.sh".into(),
                        kind: Kind::File,
                        size: 3,
                        mode: 0o755,
                        mtime_ns: 1,
                        crc64nvme: Some("AAAAAAAAAAA=".into()),
                        target: None,
                    },
                    Entry {
                        path: "link".into(),
                        kind: Kind::Symlink,
                        size: 0,
                        mode: 0o777,
                        mtime_ns: 1,
                        crc64nvme: None,
                        target: Some("/etc/passwd".into()),
                    },
                ],
            },
            inputs: vec![Dataset {
                path: "/galaxy/files/a.dat".into(),
                key: "ferry/data/galaxy/files/a.dat".into(),
                kind: Kind::File,
                size: 5,
                mode: 0o644,
                mtime_ns: 1,
                crc64nvme: Some("AAAAAAAAAAA=".into()),
                files: vec![],
            }],
            outputs: vec![Output {
                path: "/galaxy/files/b.dat".into(),
                key: "ferry/data/galaxy/files/b.dat".into(),
            }],
            indices: vec![],
            exit_code_file: "/galaxy/jobs/42/galaxy_42.ec".into(),
            done_key: "ferry/jobs/42/done.json".into(),
        }
    }

    fn reason(m: &Manifest) -> String {
        Manifest::from_json(&m.to_json()).unwrap_err()
    }

    #[test]
    fn a_valid_manifest_round_trips_through_json() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn malformed_json_is_refused_with_the_parser_position() {
        let e = Manifest::from_json(b"{\"version\": 1,").unwrap_err();
        assert!(e.starts_with("not valid JSON"), "{e}");
    }

    #[test]
    fn an_unknown_version_is_refused_before_the_fields_are_read() {
        let e = Manifest::from_json(br#"{"version": 3, "something": "else"}"#).unwrap_err();
        assert!(e.contains("version 3 is not supported"), "{e}");
    }

    /// The sample with its first file in a pack.
    pub fn packed() -> Manifest {
        let mut m = sample();
        m.workdir.packs = vec![Pack {
            key: "ferry/jobs/42/packs/00000".into(),
            size: 3,
            crc64nvme: "AAAAAAAAAAA=".into(),
            members: vec![Member {
                path: "galaxy_42.sh".into(),
                offset: 0,
            }],
        }];
        m
    }

    #[test]
    fn a_version_1_manifest_is_still_read_but_may_not_hold_packs() {
        let mut m = sample();
        m.version = 1;
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        let mut p = packed();
        p.version = 1;
        assert!(reason(&p).contains("version 1 manifest has no packs"));
        assert!(Manifest::from_json(&packed().to_json()).is_ok());
    }

    #[test]
    fn a_pack_member_must_be_a_workdir_file_inside_its_pack() {
        let mut m = packed();
        m.workdir.packs[0].members[0].path = "link".into();
        assert!(reason(&m).contains("is not a workdir file"));
        let mut m = packed();
        m.workdir.packs[0].members[0].offset = 1;
        assert!(reason(&m).contains("outside the pack"));
        let mut m = packed();
        m.workdir.packs[0].members[0].offset = u64::MAX;
        assert!(reason(&m).contains("outside the pack"));
        let mut m = packed();
        m.workdir.packs[0].key = "ferry/data/x".into();
        assert!(reason(&m).contains("is not under `ferry/jobs/42/packs`"));
        let mut m = packed();
        let p = m.workdir.packs[0].clone();
        m.workdir.packs.push(p);
        assert!(reason(&m).contains("packed twice"));
    }

    #[test]
    fn pack_members_may_not_overlap() {
        let mut m = packed();
        let mut e = m.workdir.entries[0].clone();
        e.path = "other".into();
        m.workdir.entries.push(e);
        m.workdir.packs[0].size = 5;
        m.workdir.packs[0].members.push(Member {
            path: "other".into(),
            offset: 2,
        });
        assert!(reason(&m).contains("overlap"));
        m.workdir.packs[0].size = 6;
        m.workdir.packs[0].members[1].offset = 3;
        assert!(m.validate().is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["surprise"] = 1.into();
        let e = Manifest::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("unknown field `surprise`"), "{e}");
    }

    #[test]
    fn a_workdir_entry_with_dotdot_is_refused() {
        let mut m = sample();
        m.workdir.entries[0].path = "a/../../etc/passwd".into();
        assert!(reason(&m).contains("could escape its root"));
    }

    #[test]
    fn an_absolute_workdir_entry_is_refused() {
        let mut m = sample();
        m.workdir.entries[0].path = "/etc/passwd".into();
        assert!(reason(&m).contains("is absolute"));
    }

    #[test]
    fn an_entry_below_a_symlink_is_refused() {
        let mut m = sample();
        m.workdir.entries[0].path = "link/shadow".into();
        assert!(reason(&m).contains("lies below the symlink `link`"));
    }

    #[test]
    fn a_symlink_pointing_outside_is_kept_as_data() {
        // The target is never followed, so an outside target is allowed.
        assert!(sample().validate().is_ok());
    }

    #[test]
    fn a_key_outside_the_prefix_is_refused() {
        let mut m = sample();
        m.inputs[0].key = "other/data/a.dat".into();
        assert!(reason(&m).contains("is not under `ferry/data`"));
        m.inputs[0].key = "ferry/data/../../x".into();
        assert!(reason(&m).contains("could escape"));
        m.inputs[0].key = "/ferry/data/a".into();
        assert!(reason(&m).contains("starts with `/`"));
    }

    #[test]
    fn an_input_may_be_an_earlier_jobs_output_object_but_never_escape_it() {
        let mut m = sample();
        m.inputs[0].key = "ferry/outputs/7/2/galaxy/files/a.dat".into();
        m.validate().unwrap();
        m.inputs[0].key = "ferry/outputs/../../x".into();
        assert!(reason(&m).contains("could escape"), "{}", reason(&m));
    }

    #[test]
    fn a_path_under_no_root_is_refused() {
        let mut m = sample();
        m.inputs[0].path = "/etc/shadow".into();
        assert!(reason(&m).contains("is under no root"));
    }

    #[test]
    fn overlapping_roots_are_refused() {
        let mut m = sample();
        m.roots[1].path = "/galaxy/jobs/42/sub".into();
        assert!(reason(&m).contains("overlap"));
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let mut m = sample();
        m.outputs[0].path = m.inputs[0].path.clone();
        assert!(reason(&m).contains("listed twice"));
        let mut m = sample();
        let e = m.workdir.entries[0].clone();
        m.workdir.entries.push(e);
        assert!(reason(&m).contains("listed twice"));
    }

    #[test]
    fn a_job_id_that_is_not_a_key_component_is_refused() {
        assert!(check_job_id("../x").is_err());
        assert!(check_job_id("..").is_err());
        assert!(check_job_id("a/b").is_err());
        assert!(check_job_id("job-1.2_x").is_ok());
    }

    #[test]
    fn keys_map_absolute_paths_under_data_and_refs() {
        assert_eq!(data_key("p", "/srv/a b/ü.dat"), "p/data/srv/a b/ü.dat");
        assert_eq!(data_key("", "/srv/x"), "data/srv/x");
        assert_eq!(
            output_key("p", "42", 3, "9f86d081884c7d65", "/srv/out.dat"),
            "p/outputs/42/3-9f86d081884c7d65/srv/out.dat"
        );
        assert_eq!(refs_key("p/q", "/ref/hg38.fa"), "p/q/refs/ref/hg38.fa");
        assert_eq!(done_key("", "7"), "jobs/7/done.json");
        assert_eq!(
            local_path(Some(Path::new("/tmp/r")), "/a/b"),
            PathBuf::from("/tmp/r/a/b")
        );
        assert_eq!(local_path(None, "/a/b"), PathBuf::from("/a/b"));
    }

    #[test]
    fn is_within_respects_component_boundaries() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
    }

    #[test]
    fn abs_paths_must_be_normalised() {
        assert!(check_abs("/a/./b").is_err());
        assert!(check_abs("/a//b").is_err());
        assert!(check_abs("/a/").is_err());
        assert!(check_abs("/").is_err());
        assert!(check_abs("a").is_err());
        assert!(check_abs("/a/b c").is_ok());
    }
}

#[cfg(test)]
mod schema_tests {
    //! The published JSON Schema and the serde types describe the same document.
    use super::tests::packed;
    use super::*;
    use serde_json::Value;

    fn schema() -> Value {
        serde_json::from_str(include_str!("../schema/manifest-v2.schema.json"))
            .expect("schema is JSON")
    }

    fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").expect("local ref");
                resolve(schema, &schema["$defs"][name])
            }
            None => node,
        }
    }

    /// Walks a serialised manifest alongside the schema: every object's keys are declared
    /// properties, its required properties are present, and closed objects stay closed.
    fn check(schema: &Value, node: &Value, value: &Value, at: &str) {
        let node = resolve(schema, node);
        match value {
            Value::Object(map) => {
                assert_eq!(
                    node["additionalProperties"],
                    Value::Bool(false),
                    "{at}: schema object not closed"
                );
                let props = node["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: no properties"));
                for (k, v) in map {
                    let sub = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}.{k}: serde field missing from the schema"));
                    check(schema, sub, v, &format!("{at}.{k}"));
                }
                for r in node["required"].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap();
                    assert!(
                        map.contains_key(r),
                        "{at}.{r}: required by the schema but not serialised"
                    );
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(schema, &node["items"], item, &format!("{at}[{i}]"));
                }
            }
            Value::String(s) => {
                if let Some(allowed) = node.get("enum").and_then(Value::as_array) {
                    assert!(
                        allowed.iter().any(|a| a == s),
                        "{at}: `{s}` not in the schema's enum"
                    );
                }
            }
            _ => {}
        }
    }

    /// A manifest that uses every field: a directory dataset, an index, every entry kind.
    fn full() -> Manifest {
        let mut m = packed();
        m.workdir.entries.push(Entry {
            path: "empty".into(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: 5,
            crc64nvme: None,
            target: None,
        });
        m.indices.push(Dataset {
            path: "/galaxy/files/ref".into(),
            key: "ferry/refs/galaxy/files/ref".into(),
            kind: Kind::Dir,
            size: 3,
            mode: 0o755,
            mtime_ns: 1,
            crc64nvme: None,
            files: vec![m.workdir.entries[0].clone()],
        });
        m.validate().unwrap();
        m
    }

    #[test]
    fn every_serde_field_is_in_the_schema_and_every_required_field_is_serialised() {
        let s = schema();
        let v = serde_json::to_value(full()).unwrap();
        check(&s, &s, &v, "manifest");
    }

    #[test]
    fn the_schema_declares_no_field_that_serde_does_not_know() {
        // Every property the schema declares for the manifest object is a field serde accepts.
        let s = schema();
        let v = serde_json::to_value(full()).unwrap();
        for k in s["properties"].as_object().unwrap().keys() {
            assert!(
                v.get(k).is_some(),
                "schema property `{k}` is not a manifest field"
            );
        }
        for def in [
            "entry", "dataset", "root", "workdir", "output", "pack", "member",
        ] {
            let props: Vec<&String> = s["$defs"][def]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .collect();
            let mut probe = serde_json::Map::new();
            for p in &props {
                probe.insert((*p).clone(), Value::Null);
            }
            // deny_unknown_fields: an unknown key would fail with "unknown field"; known ones fail otherwise.
            let err = match def {
                "entry" => serde_json::from_value::<Entry>(Value::Object(probe)).unwrap_err(),
                "dataset" => serde_json::from_value::<Dataset>(Value::Object(probe)).unwrap_err(),
                "root" => serde_json::from_value::<Root>(Value::Object(probe)).unwrap_err(),
                "workdir" => serde_json::from_value::<Workdir>(Value::Object(probe)).unwrap_err(),
                "pack" => serde_json::from_value::<Pack>(Value::Object(probe)).unwrap_err(),
                "member" => serde_json::from_value::<Member>(Value::Object(probe)).unwrap_err(),
                _ => serde_json::from_value::<Output>(Value::Object(probe)).unwrap_err(),
            };
            assert!(!err.to_string().contains("unknown field"), "{def}: {err}");
        }
    }
}

#[cfg(test)]
mod property_tests {
    //! Properties of parsing and of the key ⇄ path mapping, over generated hostile input.
    use super::tests::sample;
    use super::*;
    use proptest::prelude::*;

    /// Path-ish strings built from the components an attacker would use.
    fn hostile_path() -> impl Strategy<Value = String> {
        let component = prop_oneof![
            "\\.\\.",
            "\\.",
            "",
            "a",
            "b c",
            "ü",
            "x\u{0}y",
            "/",
            "etc",
            "[a-z]{1,8}"
        ];
        (proptest::bool::ANY, prop::collection::vec(component, 1..6))
            .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::from_json(&bytes);
        }

        #[test]
        fn an_accepted_relative_path_stays_inside_its_root(p in hostile_path()) {
            if check_rel(&p).is_ok() {
                let root = Path::new("/root/of/job");
                let joined = root.join(&p);
                prop_assert!(joined.starts_with(root));
                prop_assert!(joined.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
            } else {
                prop_assert!(p.is_empty() || p.starts_with('/') || p.contains('\0')
                    || p.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
            }
        }

        #[test]
        fn an_accepted_absolute_path_lands_under_the_local_root(p in hostile_path()) {
            if check_abs(&p).is_ok() {
                let local = local_path(Some(Path::new("/pod")), &p);
                prop_assert!(local.starts_with("/pod"));
                prop_assert!(local.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
            }
        }

        #[test]
        fn every_path_of_an_accepted_manifest_lies_under_a_root(
            entry in hostile_path(), input in hostile_path(), key in hostile_path()
        ) {
            let mut m = sample();
            m.workdir.entries[0].path = entry;
            m.inputs[0].path = input;
            m.inputs[0].key = key;
            if let Ok(m) = Manifest::from_json(&m.to_json()) {
                for e in &m.workdir.entries {
                    let abs = format!("{}/{}", m.workdir.path, e.path);
                    prop_assert!(m.root_of(&abs).is_some());
                    prop_assert!(check_rel(&e.path).is_ok());
                }
                for d in &m.inputs {
                    prop_assert!(m.root_of(&d.path).is_some());
                    prop_assert!(d.key.starts_with("ferry/data/") && !d.key.split('/').any(|c| c == ".."));
                }
            }
        }
    }
}

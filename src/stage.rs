//! `ferry stage`: head node, before the job. Uploads the workdir and the inputs/indices that
//! S3 does not already hold, then writes the manifest and prints its URL.

use crate::checksum;
use crate::cli::StageArgs;
use crate::config::Transfer;
use crate::error::{Error, Result};
use crate::job::absolute;
use crate::manifest::{self, Dataset, Entry, Kind, Manifest, Output, Root, Workdir, is_within};
use crate::pack;
use crate::store::Store;
use crate::sumcache::{self, Key, SumCache};
use crate::transfer::{self, Upload, UploadHow};
use crate::tree;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub async fn run(a: &StageArgs, store: &Arc<Store>, cfg: Transfer) -> Result<String> {
    let started = Instant::now();
    manifest::check_job_id(&a.job_id).map_err(Error::Config)?;
    store.record_uploads_under(manifest::uploads_key(&a.url.key, &a.job_id));
    let sums = Arc::new(if a.no_checksum_cache {
        SumCache::disabled()
    } else {
        SumCache::new(a.checksum_cache.as_deref())
    });
    let mut m = read_job(a, store, &sums).await?;
    // Check before uploading anything: a path outside every root is a usage error, not a
    // surprise in the pod. Checksums not known yet are learnt while uploading.
    let mut probe = m.clone();
    fill_crcs(&mut probe, &|_| Some(checksum::encode(0)));
    probe.validate().map_err(|r| {
        Error::Config(format!(
            "{r}; pass --mount-root for each directory the pod should mount"
        ))
    })?;
    let (packed, w, d) = upload_job(store, &mut m, cfg, &sums).await?;
    m.validate()
        .map_err(|r| Error::manifest(m.manifest_key(), r))?;

    crate::attempt::forget_all(store, &m).await?;
    let key = m.manifest_key();
    store
        .put_small(&key, m.to_json(), "application/json")
        .await?;
    tracing::info!(
        job = %m.job_id,
        "stage done: {}; {} small files in {} packs; datasets: {} uploaded, {} already in S3 ({:.1} MiB not sent); read {} bytes from local files; {}",
        crate::progress::summary(packed.files + w.files + d.files, packed.bytes + w.bytes + d.bytes, started.elapsed()),
        packed.files,
        m.workdir.packs.len(),
        d.files,
        d.skipped_files,
        d.skipped_bytes as f64 / 1048576.0,
        sumcache::bytes_read(),
        store.requests()
    );
    Ok(format!("s3://{}/{key}", m.bucket))
}

/// The job's absolute paths, as `stage` was given them.
struct Paths {
    workdir: String,
    ec: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    indices: Vec<String>,
    pod_mounts: Vec<String>,
}

fn job_paths(a: &StageArgs) -> Result<Paths> {
    let workdir = absolute(&a.workdir)?;
    if !Path::new(&workdir).is_dir() {
        return Err(Error::io(
            &workdir,
            "read workdir",
            std::io::Error::other("not a directory"),
        ));
    }
    let ec = match &a.exit_code_file {
        Some(p) => absolute(p)?,
        None => format!("{workdir}/galaxy_{}.ec", a.job_id),
    };
    let pod_mounts = abs_all(&a.pod_mounts)?;
    let indices = left_to_pod_mounts(abs_all(&a.indices)?, &pod_mounts);
    let (inputs, indices) = outermost(abs_all(&a.inputs)?, indices);
    Ok(Paths {
        workdir,
        ec,
        inputs,
        outputs: abs_all(&a.outputs)?,
        indices,
        pod_mounts,
    })
}

/// The datasets (inputs, then indices) without one given twice or inside another given one: the
/// enclosing directory already brings those bytes, and the pod must get each path once (two
/// datasets at one path would be placed twice). The same path given as an input and an index
/// stays an input.
fn outermost(inputs: Vec<String>, indices: Vec<String>) -> (Vec<String>, Vec<String>) {
    let given: HashSet<String> = inputs.iter().chain(&indices).cloned().collect();
    let mut seen = HashSet::new();
    let mut keep = |p: &String| {
        let enclosing = p
            .match_indices('/')
            .map(|(i, _)| &p[..i])
            .find(|d| given.contains(*d));
        if let Some(d) = enclosing {
            tracing::info!("stage: {p} is inside {d}, also given: staged as part of it");
            false
        } else if !seen.insert(p.clone()) {
            tracing::info!("stage: {p} is given twice: staged once");
            false
        } else {
            true
        }
    };
    let inputs: Vec<String> = inputs.into_iter().filter(&mut keep).collect();
    let indices: Vec<String> = indices.into_iter().filter(&mut keep).collect();
    (inputs, indices)
}

fn abs_all(paths: &[PathBuf]) -> Result<Vec<String>> {
    paths.iter().map(|p| absolute(p)).collect()
}

/// Scans the job (workdir, datasets, outputs, roots) into a manifest whose checksums are filled
/// in while uploading.
async fn read_job(a: &StageArgs, store: &Arc<Store>, sums: &Arc<SumCache>) -> Result<Manifest> {
    let paths = job_paths(a)?;
    let (prefix, workdir) = (a.url.key.clone(), paths.workdir.clone());
    tracing::info!(job = %a.job_id, "stage: reading {workdir} and {} inputs, {} indices", paths.inputs.len(), paths.indices.len());
    // What stage was given, as real paths: the only places a symlink inside a staged directory
    // may lead to.
    let given = real_paths(paths.inputs.iter().chain(&paths.indices))?;
    let datasets_in = |paths: &[String], key: fn(&str, &str) -> String| {
        paths
            .iter()
            .map(|p| dataset_cached(p, &key(&prefix, p), sums, &given))
            .collect::<Result<Vec<_>>>()
    };
    let mut inputs = datasets_in(&paths.inputs, manifest::data_key)?;
    adopt_linked_outputs(store, &prefix, &mut inputs).await?;
    let indices = datasets_in(&paths.indices, manifest::refs_key)?;
    let outputs: Vec<Output> = paths
        .outputs
        .iter()
        .map(|p| Output {
            path: p.clone(),
            key: manifest::data_key(&prefix, p),
        })
        .collect();
    // The workdir without what is staged or collected on its own: datasets, outputs, the .ec.
    let apart: Vec<&str> = inputs
        .iter()
        .chain(&indices)
        .map(|d| d.path.as_str())
        .chain(outputs.iter().map(|o| o.path.as_str()))
        .chain([paths.ec.as_str()])
        .collect();
    let entries: Vec<Entry> = tree::scan(Path::new(&workdir), &|_, _, _| false)?
        .into_iter()
        .filter(|e| {
            !apart
                .iter()
                .any(|p| is_within(&format!("{workdir}/{}", e.path), p))
        })
        .collect();
    let roots = if a.mount_roots.is_empty() {
        derive_roots(
            &workdir,
            &inputs,
            &indices,
            &outputs,
            &paths.ec,
            &paths.pod_mounts,
        )?
    } else {
        let roots = abs_all(&a.mount_roots)?;
        check_pod_mounts(&roots, &paths.pod_mounts)?;
        roots
    };
    let wd_bytes: u64 = entries.iter().map(|e| e.size).sum();
    let sized = [(workdir.as_str(), wd_bytes)].into_iter().chain(
        inputs
            .iter()
            .chain(&indices)
            .map(|d| (d.path.as_str(), d.size)),
    );
    Ok(Manifest {
        version: manifest::VERSION,
        job_id: a.job_id.clone(),
        bucket: a.url.bucket.clone(),
        roots: root_sizes(roots, sized),
        workdir: Workdir {
            key: manifest::workdir_key(&prefix, &a.job_id),
            path: workdir,
            entries,
            packs: vec![],
        },
        inputs,
        outputs,
        indices,
        exit_code_file: paths.ec,
        done_key: manifest::done_key(&prefix, &a.job_id),
        prefix,
    })
}

/// Each root with the bytes staged under it.
fn root_sizes<'a>(roots: Vec<String>, sized: impl Iterator<Item = (&'a str, u64)>) -> Vec<Root> {
    let mut roots: Vec<Root> = roots
        .into_iter()
        .map(|path| Root { path, bytes: 0 })
        .collect();
    for (path, bytes) in sized {
        if let Some(r) = roots.iter_mut().find(|r| is_within(path, &r.path)) {
            r.bytes += bytes;
        }
    }
    roots
}

/// Uploads the workdir (small files packed, the rest one object each, read once) and the
/// datasets S3 does not hold yet, and fills the manifest's checksums and packs from what was read.
async fn upload_job(
    store: &Arc<Store>,
    m: &mut Manifest,
    cfg: Transfer,
    sums: &Arc<SumCache>,
) -> Result<(transfer::Stats, transfer::Stats, transfer::Stats)> {
    let wd = PathBuf::from(&m.workdir.path);
    let (small, single): (Vec<&Entry>, Vec<&Entry>) = m
        .workdir
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .partition(|e| e.size <= pack::MEMBER_MAX);
    let sources = small
        .iter()
        .map(|e| pack::Source {
            rel: e.path.clone(),
            path: wd.join(&e.path),
            size: e.size,
        })
        .collect();
    let (job, pfx) = (m.job_id.clone(), m.prefix.clone());
    let groups = pack::plan(sources, cfg.part_size.bytes().min(pack::MAX_PACK));
    let sent = pack::upload(
        store,
        |n| manifest::pack_key(&pfx, &job, n),
        groups,
        cfg.concurrency.get(),
    )
    .await?;
    let singles: Vec<Upload> = single
        .iter()
        .map(|e| {
            upload(
                &wd.join(&e.path),
                format!("{}/{}", m.workdir.key, e.path),
                e,
            )
        })
        .collect();
    // Workdir files are staged once per job: their checksums are not worth remembering.
    let how = |skip_present, sums: &Arc<SumCache>| UploadHow {
        skip_present,
        adopt_read_crc: true,
        sums: sums.clone(),
    };
    let once = Arc::new(SumCache::disabled());
    let (w, wcrcs) =
        transfer::upload_all_with(store, singles, cfg, &how(false, &once), "stage workdir").await?;
    let (d, dcrcs) = transfer::upload_all_with(
        store,
        dataset_uploads(m.inputs.iter().chain(&m.indices)),
        cfg,
        &how(true, sums),
        "stage datasets",
    )
    .await?;
    let mut by_key: HashMap<String, String> = wcrcs.into_iter().chain(dcrcs).collect();
    let wkey = m.workdir.key.clone();
    for (rel, crc) in sent.crcs {
        by_key.insert(format!("{wkey}/{rel}"), crc);
    }
    fill_crcs(m, &|key| by_key.get(key).cloned());
    m.workdir.packs = sent.packs;
    let packed = transfer::Stats {
        files: sent.files,
        bytes: sent.bytes,
        ..Default::default()
    };
    Ok((packed, w, d))
}

/// Fills every file's missing checksum (workdir entries, datasets and their files) from
/// `crc_of(object key)`.
fn fill_crcs(m: &mut Manifest, crc_of: &dyn Fn(&str) -> Option<String>) {
    let wkey = m.workdir.key.clone();
    let fill = |crc: &mut Option<String>, key: String| {
        if crc.is_none() {
            *crc = crc_of(&key);
        }
    };
    for e in m
        .workdir
        .entries
        .iter_mut()
        .filter(|e| e.kind == Kind::File)
    {
        fill(&mut e.crc64nvme, format!("{wkey}/{}", e.path));
    }
    for d in m.inputs.iter_mut().chain(m.indices.iter_mut()) {
        if d.kind == Kind::File {
            // The upload's checksum wins: it is the checksum of the bytes S3 now holds.
            if let Some(c) = crc_of(&d.key) {
                d.crc64nvme = Some(c);
            }
            continue;
        }
        for f in d.files.iter_mut().filter(|f| f.kind == Kind::File) {
            if let Some(c) = crc_of(&format!("{}/{}", d.key, f.path)) {
                f.crc64nvme = Some(c);
            }
        }
    }
}

fn upload(src: &Path, key: String, e: &Entry) -> Upload {
    Upload {
        src: src.to_path_buf(),
        key,
        size: e.size,
        crc64nvme: e.crc64nvme.clone().unwrap_or_default(),
    }
}

/// Every file of the given datasets as an upload.
pub fn dataset_uploads<'a>(datasets: impl Iterator<Item = &'a Dataset>) -> Vec<Upload> {
    let mut out = Vec::new();
    for d in datasets {
        match d.kind {
            Kind::File => out.push(Upload {
                src: PathBuf::from(&d.path),
                key: d.key.clone(),
                size: d.size,
                crc64nvme: d.crc64nvme.clone().unwrap_or_default(),
            }),
            _ => out.extend(d.files.iter().filter(|f| f.kind == Kind::File).map(|f| {
                upload(
                    &Path::new(&d.path).join(&f.path),
                    format!("{}/{}", d.key, f.path),
                    f,
                )
            })),
        }
    }
    out
}

/// A dataset for staging: its checksum from the checksum cache when the cache still vouches
/// for it, otherwise left empty (the upload reads the file once and learns it). A path given
/// to stage is followed if it is a symlink (the operator named it); symlinks inside a directory
/// are resolved by [`resolve_links`] against `given`.
fn dataset_cached(path: &str, key: &str, sums: &SumCache, given: &[PathBuf]) -> Result<Dataset> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "stat dataset", e))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(not_a_file(Path::new(path)));
    }
    let cached = |p: &Path| -> Result<Option<String>> {
        // Non-blocking: a FIFO would hang the open, and no signal would end it.
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(p)
            .map_err(|e| Error::io(p, "open", e))?;
        let meta = f.metadata().map_err(|e| Error::io(p, "stat", e))?;
        if !meta.is_file() {
            return Err(not_a_file(p));
        }
        Ok(sums.lookup(&f, &Key::of(&meta)).map(checksum::encode))
    };
    if meta.is_dir() {
        let mut files = tree::scan(Path::new(path), &|_, _, _| false)?;
        resolve_links(Path::new(path), &mut files, given)?;
        for f in files.iter_mut().filter(|f| f.kind == Kind::File) {
            f.crc64nvme = cached(&Path::new(path).join(&f.path))?;
        }
        return Ok(Dataset {
            path: path.into(),
            key: key.into(),
            kind: Kind::Dir,
            size: files.iter().map(|f| f.size).sum(),
            mode: meta.permissions().mode() & 0o7777,
            mtime_ns: transfer::mtime_ns(&meta),
            crc64nvme: None,
            files,
        });
    }
    Ok(Dataset {
        path: path.into(),
        key: key.into(),
        kind: Kind::File,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        mtime_ns: transfer::mtime_ns(&meta),
        crc64nvme: cached(Path::new(path))?,
        files: vec![],
    })
}

fn not_a_file(path: &Path) -> Error {
    Error::Config(format!(
        "{}: not a regular file or directory (a FIFO, socket or device): stage only files and \
         directories",
        path.display()
    ))
}

/// An input that is a link `collect --link-outputs-under` made (its target ends in
/// `<prefix>/outputs/<id>/<n>/<path>`: an earlier job's output object, which a read-only mount of
/// the bucket shows) is staged as that object when S3 holds it with the file's size and a
/// recorded checksum: no byte of it is read through the mount or sent again.
async fn adopt_linked_outputs(store: &Store, prefix: &str, inputs: &mut [Dataset]) -> Result<()> {
    let marker = format!("/{}/", manifest::join_key(&[prefix, "outputs"]));
    for d in inputs.iter_mut().filter(|d| d.kind == Kind::File) {
        let Ok(target) = std::fs::read_link(&d.path) else {
            continue;
        };
        let target = target.to_string_lossy();
        let Some(at) = target.find(&marker) else {
            continue;
        };
        let key = &target[at + 1..];
        if manifest::check_key(key).is_err() || !is_attempt_output(&key[marker.len() - 1..]) {
            continue;
        }
        if let Some(head) = store.head(key).await?
            && head.size == d.size
            && head.crc64nvme.is_some()
        {
            tracing::info!(
                "stage: {} links to the output object {key}: staged as that object, nothing read or sent",
                d.path
            );
            d.key = key.to_string();
            d.crc64nvme = head.crc64nvme;
        }
    }
    Ok(())
}

/// Whether `rest` (what follows `<prefix>/outputs/`) reads `<job id>/<n>-<claim>/<path>`, the
/// shape of an attempt's output key, so a head path that merely contains `/outputs/` is read
/// as the file it is.
fn is_attempt_output(rest: &str) -> bool {
    let mut parts = rest.splitn(3, '/');
    let (Some(_job), Some(attempt), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some((n, claim)) = attempt.split_once('-') else {
        return false;
    };
    !path.is_empty()
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && claim.len() == 16
        && claim.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The real paths of what stage was given (`--input`, `--index`).
fn real_paths<'a>(paths: impl Iterator<Item = &'a String>) -> Result<Vec<PathBuf>> {
    paths
        .map(|p| std::fs::canonicalize(p).map_err(|e| Error::io(p, "resolve dataset", e)))
        .collect()
}

/// The symlinks of a staged directory, by the rule the sidecar applies to outputs: followed only
/// into what stage was given (`given`: real paths). A link to a file there is staged as that
/// file's bytes; a link to a directory there stays a link (its target is staged too). A link
/// that leads anywhere else, or nowhere, is refused naming it: the head never uploads a file
/// it was not given (`/etc/shadow`, a user's home), and the pod never gets a dangling link.
fn resolve_links(dir: &Path, files: &mut [Entry], given: &[PathBuf]) -> Result<()> {
    for f in files.iter_mut().filter(|f| f.kind == Kind::Symlink) {
        let link = dir.join(&f.path);
        let refuse = |why: String| {
            Error::unsafe_path(
                link.display().to_string(),
                format!(
                    "{why}; ferry stages only what it is given: remove the link, or give its \
                     target to stage as well"
                ),
            )
        };
        let target = f.target.clone().unwrap_or_default();
        let real = std::fs::canonicalize(&link).map_err(|e| {
            refuse(format!(
                "a symlink to {target} that cannot be resolved ({e})"
            ))
        })?;
        if !given.iter().any(|g| real.starts_with(g)) {
            return Err(refuse(format!(
                "a symlink to {}, outside everything given to stage",
                real.display()
            )));
        }
        let meta = std::fs::metadata(&real).map_err(|e| Error::io(&real, "stat", e))?;
        if meta.is_dir() {
            continue;
        }
        if !meta.is_file() {
            return Err(refuse(format!(
                "a symlink to {}, which is not a regular file",
                real.display()
            )));
        }
        f.kind = Kind::File;
        f.target = None;
        f.size = meta.len();
        f.mode = meta.permissions().mode() & 0o7777;
        f.mtime_ns = transfer::mtime_ns(&meta);
        f.crc64nvme = None;
    }
    Ok(())
}

/// `--index` paths the pod reads from one of its own mounts (`--pod-mount`) are not staged.
fn left_to_pod_mounts(indices: Vec<String>, pod_mounts: &[String]) -> Vec<String> {
    indices
        .into_iter()
        .filter(|p| match pod_mounts.iter().find(|m| is_within(p, m)) {
            Some(m) => {
                tracing::info!("stage: {p} is under {m}, which the pod mounts: not staged");
                false
            }
            None => true,
        })
        .collect()
}

/// Refuses a root that contains a path the pod mounts: the root's emptyDir would hide the mount
/// (or `inject` would refuse the pod), so this is checked before anything is uploaded.
fn check_pod_mounts(roots: &[String], pod_mounts: &[String]) -> Result<()> {
    for r in roots {
        if let Some(m) = pod_mounts.iter().find(|m| is_within(m, r)) {
            return Err(Error::Config(format!(
                "mount root {r} contains {m}, which the pod mounts (--pod-mount): its emptyDir would \
                 hide that mount; choose mount roots beside it"
            )));
        }
    }
    Ok(())
}

/// Default mount roots: the directories that hold what is staged (the workdir, each dataset's
/// directory, each output's directory outside the workdir), grouped by their first two path
/// components; each group becomes its deepest common ancestor, unless that ancestor contains a
/// path the pod already mounts (`pod_mounts`): then the group is split one level below it, again
/// and again, so no root ever swallows a pod mount. Nested roots are merged.
pub fn derive_roots(
    workdir: &str,
    inputs: &[Dataset],
    indices: &[Dataset],
    outputs: &[Output],
    ec: &str,
    pod_mounts: &[String],
) -> Result<Vec<String>> {
    let parent = |p: &str| -> Result<String> {
        match p.rfind('/') {
            Some(0) | None => Err(Error::Config(format!(
                "{p} sits directly under `/`; pass --mount-root with a directory that holds it"
            ))),
            Some(i) => Ok(p[..i].to_string()),
        }
    };
    let mut dirs = vec![workdir.to_string()];
    for d in inputs.iter().chain(indices) {
        dirs.push(if d.kind == Kind::Dir {
            d.path.clone()
        } else {
            parent(&d.path)?
        });
    }
    for p in outputs.iter().map(|o| o.path.as_str()).chain([ec]) {
        if !is_within(p, workdir) {
            dirs.push(parent(p)?);
        }
    }
    let group = |p: &str| p.split('/').take(3).collect::<Vec<_>>().join("/");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in dirs {
        groups.entry(group(&d)).or_default().push(d);
    }
    let mut roots = Vec::new();
    for dirs in groups.values() {
        cover(dirs, pod_mounts, &mut roots)?;
    }
    roots.sort_by_key(|r| r.len());
    let mut out: Vec<String> = Vec::new();
    for r in roots {
        if !out.iter().any(|o| is_within(&r, o)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Pushes the deepest common ancestor of `dirs` (all in one group, never empty), or, when it
/// contains a pod mount, covers each of its subdirectories that holds some of `dirs` apart.
fn cover(dirs: &[String], pod_mounts: &[String], out: &mut Vec<String>) -> Result<()> {
    let anc = dirs
        .iter()
        .skip(1)
        .fold(dirs[0].clone(), |a, d| common_ancestor(&a, d));
    let Some(m) = pod_mounts.iter().find(|m| is_within(m, &anc)) else {
        out.push(anc);
        return Ok(());
    };
    if dirs.contains(&anc) {
        return Err(Error::Config(format!(
            "{anc} holds staged files and contains {m}, which the pod mounts (--pod-mount): its \
             emptyDir would hide that mount; move the mount or the job's files apart"
        )));
    }
    let mut below: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in dirs {
        let child = d[anc.len() + 1..].split('/').next().unwrap_or_default();
        below.entry(child).or_default().push(d.clone());
    }
    for dirs in below.values() {
        cover(dirs, pod_mounts, out)?;
    }
    Ok(())
}

fn common_ancestor(a: &str, b: &str) -> String {
    let common: Vec<&str> = a
        .split('/')
        .zip(b.split('/'))
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    common.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_attempts_output_key_is_taken_for_a_linked_output() {
        assert!(is_attempt_output(
            "42/2-0123456789abcdef/galaxy/files/dataset_2.dat"
        ));
        assert!(!is_attempt_output("42/2-0123456789abcdef/"));
        assert!(!is_attempt_output("42/2-0123456789abcdeg/x"));
        assert!(!is_attempt_output("42/x-0123456789abcdef/x"));
        assert!(!is_attempt_output("results/run1.txt"));
    }

    fn file(path: &str) -> Dataset {
        Dataset {
            path: path.into(),
            key: String::new(),
            kind: Kind::File,
            size: 1,
            mode: 0o644,
            mtime_ns: 0,
            crc64nvme: Some(String::new()),
            files: vec![],
        }
    }

    #[test]
    fn default_roots_are_the_workdir_and_the_common_dataset_directory() {
        let inputs = [
            file("/galaxy/files/000/dataset_1.dat"),
            file("/galaxy/files/001/dataset_2.dat"),
        ];
        let outputs = [Output {
            path: "/galaxy/files/002/dataset_3.dat".into(),
            key: String::new(),
        }];
        let roots = derive_roots(
            "/galaxy/jobs/000/42",
            &inputs,
            &[],
            &outputs,
            "/galaxy/jobs/000/42/galaxy_42.ec",
            &[],
        )
        .unwrap();
        assert_eq!(roots, vec!["/galaxy/files", "/galaxy/jobs/000/42"]);
    }

    #[test]
    fn a_dataset_inside_the_workdir_adds_no_root() {
        let inputs = [file("/w/job/in.txt")];
        let roots = derive_roots("/w/job", &inputs, &[], &[], "/w/job/x.ec", &[]).unwrap();
        assert_eq!(roots, vec!["/w/job"]);
    }

    #[test]
    fn a_dataset_directly_under_slash_needs_an_explicit_root() {
        let e =
            derive_roots("/w/job", &[file("/in.txt")], &[], &[], "/w/job/x.ec", &[]).unwrap_err();
        assert!(e.to_string().contains("--mount-root"), "{e}");
    }

    /// galaxy-helm: one PVC at /galaxy/server/database; job pods mount its config, tmp, tool-data,
    /// tools and shed_tools subdirectories (and CVMFS) themselves.
    const HELM_MOUNTS: [&str; 6] = [
        "/galaxy/server/database/config",
        "/galaxy/server/database/tmp",
        "/galaxy/server/database/tool-data",
        "/galaxy/server/database/tools",
        "/galaxy/server/database/shed_tools",
        "/cvmfs/data.galaxyproject.org",
    ];

    fn helm_mounts() -> Vec<String> {
        HELM_MOUNTS.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn default_roots_split_around_every_path_the_pod_mounts() {
        let db = "/galaxy/server/database";
        let inputs = [
            file(&format!("{db}/objects/1/2/3/dataset_a.dat")),
            file(&format!("{db}/objects/9/8/7/dataset_b.dat")),
            file(&format!("{db}/objects/_metadata_files/4/metadata_c.dat")),
        ];
        let workdir = format!("{db}/jobs_directory/000/42");
        let ec = format!("{workdir}/galaxy_42.ec");
        let mounts = helm_mounts();

        let roots = derive_roots(&workdir, &inputs, &[], &[], &ec, &mounts).unwrap();

        assert_eq!(roots, vec![format!("{db}/objects"), workdir.clone()]);
        for m in &mounts {
            assert!(!roots.iter().any(|r| is_within(m, r)), "{m} in {roots:?}");
        }
        let without = derive_roots(&workdir, &inputs, &[], &[], &ec, &[]).unwrap();
        assert_eq!(
            without,
            vec![db],
            "without pod mounts the group's ancestor is kept"
        );
    }

    #[test]
    fn a_lone_dataset_beside_a_pod_mount_gets_its_own_directory_as_root() {
        let inputs = [file("/galaxy/server/database/objects/1/2/3/dataset_a.dat")];
        let workdir = "/galaxy/server/database/jobs_directory/000/42";
        let roots = derive_roots(workdir, &inputs, &[], &[], "/x/y.ec", &helm_mounts()).unwrap();
        assert_eq!(
            roots,
            vec![
                "/x",
                "/galaxy/server/database/objects/1/2/3",
                "/galaxy/server/database/jobs_directory/000/42"
            ]
        );
    }

    #[test]
    fn a_staged_directory_that_contains_a_pod_mount_is_refused_naming_both() {
        let workdir = "/srv/job";
        let e = derive_roots(
            workdir,
            &[],
            &[],
            &[],
            "/srv/job/x.ec",
            &["/srv/job/refs".into()],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("/srv/job holds staged files and contains /srv/job/refs"),
            "{e}"
        );
    }

    #[test]
    fn an_explicit_root_that_contains_a_pod_mount_is_refused() {
        let e = check_pod_mounts(&["/galaxy/server".into()], &helm_mounts()).unwrap_err();
        assert!(
            e.to_string()
                .contains("/galaxy/server contains /galaxy/server/database/config"),
            "{e}"
        );
        check_pod_mounts(&["/galaxy/server/database/objects".into()], &helm_mounts()).unwrap();
    }

    #[test]
    fn index_paths_under_a_pod_mount_are_left_to_it() {
        let kept = left_to_pod_mounts(
            vec![
                "/galaxy/server/database/shed_tools/repo/tool".into(),
                "/cvmfs/data.galaxyproject.org/byhand/hg38/bwa".into(),
                "/refs/hg38/bwa".into(),
            ],
            &helm_mounts(),
        );
        assert_eq!(kept, vec!["/refs/hg38/bwa"]);
    }
}

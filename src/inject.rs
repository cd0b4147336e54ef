//! `ferry inject`: adds ferry's init container, sidecar and volumes to a Pod, Job or pod template.
//!
//! The input is handled as a generic YAML tree (no typed Kubernetes structs): everything ferry does
//! not own stays as it was, in the same key order. What ferry owns is recognised by name, so
//! injecting twice gives the same YAML as injecting once:
//! - containers `ferry-init` and `ferry-sidecar` (or `z…z-ferry-sidecar`, see [`sidecar_name`]),
//!   in `initContainers` or `containers`: these names are reserved;
//! - `emptyDir` volumes named `ferry-…-r<N>` (see [`volume_names`]) or `ferry-…-bin` (see
//!   [`bin_volume_name`]) and every mount of them;
//! - a tool command that starts with `/ferry-bin/ferry exec` (see [`wrap`]).
//!
//! One emptyDir per manifest root, mounted at the root's own path (no `subPath`, which podman
//! ignores on an emptyDir) in ferry's containers and in every other container of the pod.
//!
//! With `--wrap` (jobs that write no exit-code file, i.e. anything but Galaxy), `ferry-init` also
//! copies ferry into one more small emptyDir, mounted read-only at `/ferry-bin` in the tool
//! containers, and each tool container's `command` + `args` becomes
//! `/ferry-bin/ferry exec --exit-code-file <manifest's file> -- <command…> <args…>`.
//!
//! With `--cache hostpath:PATH` (the node-local reference cache, see [`crate::cache`]), a hostPath
//! volume named `ferry-cache` is mounted at PATH: read-write in ferry's containers (which get
//! `FERRY_CACHE_DIR=PATH`), read-only in the others, where the index paths are symlinks into it.

use crate::cli::{InjectArgs, SidecarKind};
use crate::config::{Concurrency, PartSize, Transfer};
use crate::env;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::manifest::{Manifest, is_within};
use serde_yaml_ng::{Mapping, Value};
use std::io::Read;

pub mod credentials;
mod wrap;
mod yaml;

use wrap::*;
use yaml::*;

pub const INIT_NAME: &str = "ferry-init";
pub const SIDECAR_NAME: &str = "ferry-sidecar";
/// The ferry image's own user (`USER 65532:65532`), used unless the tool names its user.
const DEFAULT_ID: i64 = 65532;
/// The shared-pid sidecar's group, or the next lower one no container of the pod runs as.
const SIDECAR_GID: i64 = 65533;
/// Seconds the sidecar gets to upload after SIGTERM (native mode, eviction, deletion).
const GRACE_SECONDS: i64 = 300;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Memory beyond the transfer buffers: runtime, SDK, TLS, file lists.
const MEMORY_OVERHEAD: u64 = 256 * MIB;
/// Longest Kubernetes object name that is a DNS-1123 label (volume names).
const MAX_LABEL: usize = 63;

/// Where `--wrap` puts the ferry binary in the tool containers (an emptyDir of its own).
pub const BIN_DIR: &str = "/ferry-bin";
/// `BIN_DIR`'s binary; a tool command starting with it and `exec` is a wrapper of ours.
pub const BIN_FERRY: &str = "/ferry-bin/ferry";
/// sizeLimit of the `/ferry-bin` emptyDir: the image's stripped static binary is ≈ 30 MiB.
const BIN_SIZE_LIMIT: u64 = 64 * MIB;
/// The hostPath volume of `--cache`.
pub const CACHE_VOLUME: &str = "ferry-cache";
/// Where ferry's containers (only they) share the pod's attempt marker (see [`crate::attempt`]).
pub const STATE_DIR: &str = "/ferry-state";
/// The sidecar's default `FERRY_TIMEOUT` (72 h): no pod waits forever for a tool that never ends.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 72 * 3600;

const SUPPORTED: &str = "a Pod (v1), a Job (batch/v1), a PodTemplate (v1), a bare pod template \
(`metadata` + `spec`) or a bare pod spec (`containers: …`)";

/// What to inject besides the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `FERRY_MANIFEST` of ferry's containers: always an `s3://` URL.
    pub manifest_url: &'a str,
    /// The ferry image (ENTRYPOINT `/ferry`).
    pub image: &'a str,
    pub sidecar: SidecarKind,
    /// Extra environment of ferry's containers, after ferry's own (a same name replaces).
    pub extra_env: &'a [(String, String)],
    /// Run the tool containers' commands under `ferry exec` (`--wrap`).
    pub wrap: bool,
    /// The tool image's ENTRYPOINT, for a container that sets only `args` (`--entrypoint`).
    pub entrypoint: &'a [String],
    /// The node-local cache's path on the node and in every container (`--cache hostpath:PATH`).
    pub cache: Option<&'a str>,
    /// Bytes the job writes besides the staged files (`--disk`); None: see [`work_space`].
    pub disk: Option<u64>,
}

pub async fn run(args: &InjectArgs) -> Result<String> {
    let extra_env = parse_env(&args.env)?;
    credentials::refuse_plain_credentials(&extra_env)?;
    let secret = args
        .credentials_secret
        .as_deref()
        .map(credentials::check_secret_name)
        .transpose()?;
    let (manifest, manifest_url) = load_manifest(&args.manifest).await?;
    let cache = args.cache.as_deref().map(parse_cache).transpose()?;
    let input = read_input(&args.file)?;
    let opts = Options {
        manifest_url: &manifest_url,
        image: &args.image,
        sidecar: args.sidecar,
        extra_env: &extra_env,
        wrap: args.wrap,
        entrypoint: &args.entrypoint,
        cache: cache.as_deref(),
        disk: args.disk.map(|d| d.0),
    };
    inject_with_credentials(&input, &manifest, &opts, secret)
}

/// `NAME=VALUE` pairs (`--env`); the value may be empty or contain `=`.
pub fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
            _ => Err(Error::Config(format!("--env `{p}` is not NAME=VALUE"))),
        })
        .collect()
}

/// `--cache hostpath:PATH` → PATH (absolute, normalised).
pub fn parse_cache(arg: &str) -> Result<String> {
    let path = arg.strip_prefix("hostpath:").ok_or_else(|| {
        Error::Config(format!(
            "--cache `{arg}` is not hostpath:PATH (e.g. hostpath:/var/cache/ferry)"
        ))
    })?;
    let path = path.trim_end_matches('/');
    crate::manifest::check_abs(path).map_err(|r| Error::Config(format!("--cache `{arg}`: {r}")))?;
    Ok(path.to_string())
}

/// The manifest and the `s3://` URL ferry's containers read it from.
async fn load_manifest(arg: &str) -> Result<(Manifest, String)> {
    if arg.starts_with("s3://") {
        let job = Job::load(arg, None).await?;
        return Ok((job.manifest, arg.to_string()));
    }
    let bytes = std::fs::read(arg).map_err(|e| Error::io(arg, "read manifest", e))?;
    let manifest = Manifest::from_json(&bytes).map_err(|r| Error::manifest(arg, r))?;
    let url = format!("s3://{}/{}", manifest.bucket, manifest.manifest_key());
    Ok((manifest, url))
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io("<stdin>", "read", e))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| Error::io(file, "read", e))
    }
}

/// Injects into one YAML or JSON document; returns YAML.
pub fn inject(input: &str, manifest: &Manifest, opts: &Options) -> Result<String> {
    inject_with_credentials(input, manifest, opts, None)
}

/// [`inject`], with ferry's containers reading static keys from the Secret `secret`; either way
/// the other containers are kept from IRSA / Pod Identity (see [`credentials`]).
pub fn inject_with_credentials(
    input: &str,
    manifest: &Manifest,
    opts: &Options,
    secret: Option<&str>,
) -> Result<String> {
    let mut doc = parse(input)?;
    inject_value(&mut doc, manifest, opts)?;
    credentials::isolate(&mut doc, secret)?;
    to_yaml_1_1_safe(doc)
}

/// Injects into a parsed document (Pod, Job, PodTemplate, pod template or pod spec).
pub fn inject_value(doc: &mut Value, manifest: &Manifest, opts: &Options) -> Result<()> {
    let spec = pod_spec(doc)?;
    inject_pod_spec(spec, manifest, opts)
}

/// The PodSpec inside the document.
fn pod_spec(doc: &mut Value) -> Result<&mut Mapping> {
    let top = doc
        .as_mapping_mut()
        .ok_or_else(|| Error::Yaml(format!("the input is not a mapping; give {SUPPORTED}")))?;
    let kind = top.get("kind").and_then(Value::as_str);
    let api = top.get("apiVersion").and_then(Value::as_str);
    let path: &[&str] = match (kind, api) {
        (Some("Pod"), None | Some("v1")) => &["spec"],
        (Some("Job"), None | Some("batch/v1")) => &["spec", "template", "spec"],
        (Some("PodTemplate"), None | Some("v1")) => &["template", "spec"],
        (Some(k), Some(a)) if ["Pod", "Job", "PodTemplate"].contains(&k) => {
            return Err(Error::Yaml(format!(
                "apiVersion `{a}` of kind {k} is not supported; give {SUPPORTED}"
            )));
        }
        (Some(k), _) => {
            return Err(Error::Yaml(format!(
                "kind `{k}` is not supported; give {SUPPORTED}"
            )));
        }
        (None, _) if top.contains_key("containers") => &[],
        (None, _) if top.get("spec").is_some_and(Value::is_mapping) => &["spec"],
        (None, _) => {
            return Err(Error::Yaml(format!(
                "the input has no `kind`, `spec` or `containers`; give {SUPPORTED}"
            )));
        }
    };
    let what = kind.unwrap_or("pod template").to_string();
    let mut map = top;
    for (i, key) in path.iter().enumerate() {
        map = map
            .get_mut(*key)
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| {
                Error::Yaml(format!(
                    "the {what} has no `{}` mapping",
                    path[..=i].join(".")
                ))
            })?;
    }
    Ok(map)
}

/// Adds volumes, mounts, the init container, the sidecar and the pod-level settings.
pub fn inject_pod_spec(spec: &mut Mapping, manifest: &Manifest, opts: &Options) -> Result<()> {
    remove_ours(spec, manifest);
    let tool_names = check_pod(spec, manifest, opts)?;
    let mounts = add_volumes(spec, manifest, opts)?;
    add_ferry_containers(spec, manifest, opts, &mounts, &tool_names)?;
    let grace = match spec.get("terminationGracePeriodSeconds") {
        None | Some(Value::Null) => GRACE_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            Error::Yaml(format!(
                "terminationGracePeriodSeconds {v:?} is not a number"
            ))
        })?,
    };
    spec.insert(
        "terminationGracePeriodSeconds".into(),
        grace.max(GRACE_SECONDS).into(),
    );
    if let Some(vols) = spec.get_mut("volumes") {
        fix_octal_modes(vols);
    }
    request_ephemeral_storage(spec, manifest, opts.disk)
}

/// Step 1: removes what an earlier injection added (volumes, their mounts, ferry's containers,
/// the `--wrap` of tool commands), so injecting twice equals injecting once.
fn remove_ours(spec: &mut Mapping, manifest: &Manifest) {
    let names = volume_names(&manifest.job_id, manifest.roots.len());
    let mut ours: Vec<String> = names
        .iter()
        .cloned()
        .chain([
            bin_volume_name(&manifest.job_id),
            CACHE_VOLUME.to_string(),
            state_volume_name(&manifest.job_id),
        ])
        .collect();
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_sequence_mut) {
        vols.retain(|v| {
            let name = name_of(v).unwrap_or_default();
            let mine = is_ferry_volume(v) || names.iter().any(|n| n == name);
            if mine {
                ours.push(name.to_string());
            }
            !mine
        });
    }
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_sequence_mut) {
            cs.retain(|c| !name_of(c).is_some_and(is_ferry_container));
            for c in cs.iter_mut() {
                if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_sequence_mut) {
                    mounts.retain(|m| !name_of(m).is_some_and(|n| ours.iter().any(|o| o == n)));
                }
                if list == "containers" {
                    unwrap(c);
                }
            }
        }
    }
}

/// Step 2: checks what is left (containers, their mounts against the roots, `--wrap` and
/// `--cache` paths); returns the tool containers' names.
fn check_pod(spec: &Mapping, manifest: &Manifest, opts: &Options) -> Result<Vec<String>> {
    let has_tools = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .is_some_and(|c| !c.is_empty());
    if !has_tools {
        return Err(Error::Yaml(
            "the pod has no containers: nothing would use the staged files".into(),
        ));
    }
    let mut tool_names = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = name_of(c)
                .ok_or_else(|| Error::Yaml(format!("an entry of `{list}` has no name")))?;
            check_mounts(c, name, manifest)?;
            if opts.wrap {
                check_bin_mount(c, name)?;
            }
            if list == "containers" {
                tool_names.push(name.to_string());
            }
        }
    }
    if opts.wrap
        && let Some(r) = manifest
            .roots
            .iter()
            .find(|r| is_within(&r.path, BIN_DIR) || is_within(BIN_DIR, &r.path))
    {
        return Err(Error::Yaml(format!(
            "--wrap mounts ferry at {BIN_DIR}, which overlaps the staged root {}; \
             stage the job with other mount roots",
            r.path
        )));
    }
    if let Some(cache) = opts.cache {
        let clash = manifest.roots.iter().map(|r| r.path.as_str());
        let clash = clash.chain(opts.wrap.then_some(BIN_DIR));
        if let Some(p) = clash
            .into_iter()
            .find(|p| is_within(p, cache) || is_within(cache, p))
        {
            return Err(Error::Yaml(format!(
                "--cache mounts the cache at {cache}, which overlaps {p}; choose another path"
            )));
        }
    }
    Ok(tool_names)
}

/// A volume mount, read-only or not.
fn mount(name: &str, path: &str, read_only: bool) -> Value {
    let mut m = map([("name", name.into()), ("mountPath", path.into())]);
    if read_only && let Some(m) = m.as_mapping_mut() {
        m.insert("readOnly".into(), true.into());
    }
    m
}

/// Step 3: one emptyDir per root (and the cache and `/ferry-bin` volumes), mounted in every
/// container of the pod; the tool containers' commands wrapped with `--wrap`. Returns the
/// roots' mounts.
fn add_volumes(spec: &mut Mapping, manifest: &Manifest, opts: &Options) -> Result<Vec<Value>> {
    let names = volume_names(&manifest.job_id, manifest.roots.len());
    let bin_name = bin_volume_name(&manifest.job_id);
    let mounts: Vec<Value> = manifest
        .roots
        .iter()
        .zip(&names)
        .map(|(r, n)| mount(n, &r.path, false))
        .collect();
    let volumes = manifest.roots.iter().zip(&names).map(|(r, n)| {
        let limit = r.bytes.saturating_add(work_space(manifest, opts.disk));
        let empty_dir = map([("sizeLimit", quantity(round_up_mib(limit)).into())]);
        map([("name", n.as_str().into()), ("emptyDir", empty_dir)])
    });
    seq_mut(spec, "volumes", None)?.extend(volumes);
    if let Some(cache) = opts.cache {
        let host = map([("path", cache.into()), ("type", "DirectoryOrCreate".into())]);
        let volume = map([("name", CACHE_VOLUME.into()), ("hostPath", host)]);
        seq_mut(spec, "volumes", None)?.push(volume);
    }
    if opts.wrap {
        let limit = map([("sizeLimit", quantity(BIN_SIZE_LIMIT).into())]);
        let volume = map([("name", bin_name.as_str().into()), ("emptyDir", limit)]);
        seq_mut(spec, "volumes", None)?.push(volume);
    }
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_sequence_mut)
            .into_iter()
            .flatten()
        {
            let c = c
                .as_mapping_mut()
                .ok_or_else(|| Error::Yaml(format!("an entry of `{list}` is not a mapping")))?;
            seq_mut(c, "volumeMounts", None)?.extend(mounts.iter().cloned());
            if let Some(cache) = opts.cache {
                seq_mut(c, "volumeMounts", None)?.push(mount(CACHE_VOLUME, cache, true));
            }
            if opts.wrap && list == "containers" {
                seq_mut(c, "volumeMounts", None)?.push(mount(&bin_name, BIN_DIR, true));
                wrap(c, &manifest.exit_code_file, opts.entrypoint)?;
            }
        }
    }
    Ok(mounts)
}

/// Step 4: `ferry-init` and the sidecar (first init container with `restartPolicy: Always`, or
/// a regular container sorted after the tools with `shareProcessNamespace`), with the state
/// volume that only they mount.
fn add_ferry_containers(
    spec: &mut Mapping,
    manifest: &Manifest,
    opts: &Options,
    mounts: &[Value],
    tool_names: &[String],
) -> Result<()> {
    let tool = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_default();
    let user = run_as(spec, &tool);
    // Before ferry's containers join (ferry-init's default group is none of the job's).
    let pod_groups = run_as_groups(spec);
    let memory = memory_limit(opts.extra_env)?;
    let mut ferry_mounts = mounts.to_vec();
    let (state, state_mount) = state_volume(&manifest.job_id);
    seq_mut(spec, "volumes", None)?.push(state);
    ferry_mounts.push(state_mount);
    let mut extra_env = vec![(env::STATE_DIR.to_string(), STATE_DIR.to_string())];
    if let Some(cache) = opts.cache {
        ferry_mounts.push(mount(CACHE_VOLUME, cache, false));
        extra_env.push((env::CACHE_DIR.to_string(), cache.to_string()));
    }
    extra_env.extend(opts.extra_env.iter().cloned());
    let ferry = |name: &str, args: &[&str], env: Vec<(String, String)>| {
        ferry_container(name, args, env, &ferry_mounts, user, memory, opts)
    };
    let init_args: &[&str] = if opts.wrap {
        &["init", "--install-self", BIN_DIR]
    } else {
        &["init"]
    };
    let mut init = ferry(
        INIT_NAME,
        init_args,
        ferry_env(opts.manifest_url, None, &extra_env),
    );
    if opts.wrap
        && let Some(m) = init
            .get_mut("volumeMounts")
            .and_then(Value::as_sequence_mut)
    {
        m.push(mount(&bin_volume_name(&manifest.job_id), BIN_DIR, false));
    }
    let mode = match opts.sidecar {
        SidecarKind::Native => "native",
        SidecarKind::SharedPid => "shared-pid",
    };
    let timeout = [(
        env::TIMEOUT.to_string(),
        DEFAULT_TIMEOUT_SECONDS.to_string(),
    )];
    let mut sidecar_env = ferry_env(opts.manifest_url, Some(mode), &timeout);
    append_env(&mut sidecar_env, &extra_env);
    let inits = seq_mut(spec, "initContainers", Some("containers"))?;
    match opts.sidecar {
        SidecarKind::Native => {
            let mut sidecar = ferry(SIDECAR_NAME, &["sidecar", "--mode", mode], sidecar_env);
            if let Some(m) = sidecar.as_mapping_mut() {
                m.insert("restartPolicy".into(), "Always".into());
            }
            // First, so it runs beside ferry-init, the user's init containers and the tool.
            inits.splice(0..0, [sidecar, init]);
        }
        SidecarKind::SharedPid => {
            inits.insert(0, init);
            let name = sidecar_name(tool_names)?;
            let own_group = (user.0, sidecar_gid(spec));
            share_run_as_groups(spec, &pod_groups)?;
            let sidecar = ferry_container(
                &name,
                &["sidecar", "--mode", mode],
                sidecar_env,
                &ferry_mounts,
                own_group,
                memory,
                opts,
            );
            seq_mut(spec, "containers", None)?.push(sidecar);
            spec.insert("shareProcessNamespace".into(), true.into());
        }
    }
    Ok(())
}

/// Bytes the job may write besides what is staged: `--disk`, else the staged bytes + 1 GiB
/// (outputs as large as the inputs, plus 1 GiB).
pub fn work_space(manifest: &Manifest, disk: Option<u64>) -> u64 {
    disk.unwrap_or_else(|| staged_bytes(manifest).saturating_add(GIB))
}

fn staged_bytes(manifest: &Manifest) -> u64 {
    manifest.roots.iter().map(|r| r.bytes).sum()
}

/// The first tool container requests, and is limited to, the pod's whole disk: the staged bytes
/// plus [`work_space`], as `ephemeral-storage` (emptyDirs count against it), so the scheduler
/// places the pod on a node with that much free and the kubelet never evicts it below that. A
/// larger request or limit the container already has is kept.
fn request_ephemeral_storage(
    spec: &mut Mapping,
    manifest: &Manifest,
    disk: Option<u64>,
) -> Result<()> {
    let total = round_up_mib(staged_bytes(manifest).saturating_add(work_space(manifest, disk)));
    let Some(tool) = spec
        .get_mut("containers")
        .and_then(Value::as_sequence_mut)
        .and_then(|cs| {
            cs.iter_mut()
                .find(|c| !name_of(c).is_some_and(is_ferry_container))
        })
        .and_then(Value::as_mapping_mut)
    else {
        return Ok(());
    };
    let resources = tool
        .entry("resources".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if resources.is_null() {
        *resources = Value::Mapping(Mapping::new());
    }
    let resources = resources
        .as_mapping_mut()
        .ok_or_else(|| Error::Yaml("the tool container's `resources` is not a mapping".into()))?;
    for kind in ["requests", "limits"] {
        let m = resources
            .entry(kind.into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if m.is_null() {
            *m = Value::Mapping(Mapping::new());
        }
        let m = m.as_mapping_mut().ok_or_else(|| {
            Error::Yaml(format!(
                "the tool container's `resources.{kind}` is not a mapping"
            ))
        })?;
        let keep = m
            .get("ephemeral-storage")
            .and_then(parse_quantity)
            .is_some_and(|b| b >= total);
        if !keep {
            m.insert("ephemeral-storage".into(), quantity(total).into());
        }
    }
    Ok(())
}

/// `ferry-init`, `ferry-sidecar`, `zz-ferry-sidecar`, `zzz-ferry-sidecar`…
fn is_ferry_container(name: &str) -> bool {
    name == INIT_NAME
        || name.strip_suffix(SIDECAR_NAME).is_some_and(|p| {
            p.is_empty()
                || (p.len() >= 3
                    && p.strip_suffix('-')
                        .is_some_and(|z| z.bytes().all(|b| b == b'z')))
        })
}

/// An emptyDir named `ferry-…-r<N>` or `ferry-…-bin`, as [`volume_names`] and
/// [`bin_volume_name`] make them.
fn is_ferry_volume(v: &Value) -> bool {
    let Some(name) = name_of(v) else { return false };
    let index = name.rsplit_once("-r").map(|(_, i)| i).unwrap_or_default();
    let root = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit());
    let bin = name.len() > "ferry--bin".len() && name.ends_with("-bin");
    let state = name.len() > "ferry--state".len() && name.ends_with("-state");
    let cache = name == CACHE_VOLUME && v.get("hostPath").is_some();
    cache || (name.starts_with("ferry-") && (root || bin || state) && v.get("emptyDir").is_some())
}

/// The state volume of ferry's containers: `ferry-<job id>-state`, cleaned as in [`volume_names`].
pub fn state_volume_name(job_id: &str) -> String {
    format!("ferry-{}-state", volume_base(job_id, "-state".len()))
}

/// The state emptyDir (added to `volumes`) and its mount, for ferry's containers only.
fn state_volume(job_id: &str) -> (Value, Value) {
    let name = state_volume_name(job_id);
    let limit = map([("sizeLimit", "1Mi".into())]);
    let volume = map([("name", name.as_str().into()), ("emptyDir", limit)]);
    let mount = map([
        ("name", name.as_str().into()),
        ("mountPath", STATE_DIR.into()),
    ]);
    (volume, mount)
}

/// The `/ferry-bin` volume of `--wrap`: `ferry-<job id>-bin`, cleaned as in [`volume_names`].
pub fn bin_volume_name(job_id: &str) -> String {
    format!("ferry-{}-bin", volume_base(job_id, "-bin".len()))
}

/// One volume name per root: `ferry-<job id>-r<index>`, a DNS-1123 label of ≤ 63 characters.
///
/// The job id is in the name because podman shares same-named volumes between pods. An id that
/// is not already a label (upper case, `_`, `.`, too long) is cleaned up and gets a hash of the
/// original, so two ids never share a name.
pub fn volume_names(job_id: &str, roots: usize) -> Vec<String> {
    let base = volume_base(job_id, format!("-r{}", roots.saturating_sub(1)).len());
    (0..roots).map(|i| format!("ferry-{base}-r{i}")).collect()
}

/// The job id as the middle of a volume name `ferry-<base><suffix>` of ≤ 63 characters.
fn volume_base(job_id: &str, suffix_len: usize) -> String {
    let budget = MAX_LABEL - "ferry-".len() - suffix_len;
    let mut clean = String::new();
    for c in job_id.chars() {
        match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => clean.push(c),
            _ if !clean.is_empty() && !clean.ends_with('-') => clean.push('-'),
            _ => {}
        }
    }
    let clean = clean.trim_end_matches('-');
    if clean == job_id && clean.len() <= budget {
        clean.to_string()
    } else {
        let hash = format!("{:08x}", fnv1a(job_id.as_bytes()) as u32);
        let keep = clean.len().min(budget - hash.len() - 1);
        let head = clean[..keep].trim_end_matches('-');
        if head.is_empty() {
            hash
        } else {
            format!("{head}-{hash}")
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The shared-pid sidecar's name. Galaxy's runner reads the tool's OOM kill from
/// `containerStatuses[0]`, and the kubelet sorts that list by container name (byte order), so the
/// sidecar must sort after every tool container: `ferry-sidecar` if it does, else
/// `zz-ferry-sidecar`, with one more `z` than the longest run of leading `z`s among the tool names.
pub fn sidecar_name(tools: &[String]) -> Result<String> {
    let Some(last) = tools.iter().max() else {
        return Ok(SIDECAR_NAME.into());
    };
    if SIDECAR_NAME > last.as_str() {
        return Ok(SIDECAR_NAME.into());
    }
    let zs = last.bytes().take_while(|&b| b == b'z').count();
    let name = format!("{}-{SIDECAR_NAME}", "z".repeat((zs + 1).max(2)));
    if name.len() > MAX_LABEL {
        return Err(Error::Yaml(format!(
            "no sidecar name sorts after container `{last}`; rename it"
        )));
    }
    Ok(name)
}

/// Refuses a mount at or inside a root: the root's emptyDir would hide it, or it would hide files.
fn check_mounts(c: &Value, container: &str, manifest: &Manifest) -> Result<()> {
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let Some(raw) = m.get("mountPath").and_then(Value::as_str) else {
            continue;
        };
        let path = normalise(raw);
        if let Some(root) = manifest.roots.iter().find(|r| is_within(&path, &r.path)) {
            return Err(Error::Yaml(format!(
                "container `{container}` mounts volume `{}` at {raw}, inside {}, which ferry mounts as an emptyDir \
                 holding the staged files; remove that mount or stage the job with other mount roots",
                name_of(m).unwrap_or("?"),
                root.path
            )));
        }
    }
    Ok(())
}

/// `/a//b/./c/` → `/a/b/c` (no `..` resolution: Kubernetes refuses `..` in a mountPath).
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// uid and gid for ferry's containers: the tool container's, else the pod's, else 65532, so the
/// files `init` creates belong to the tool's user. A root tool gets 65532 (ferry never runs as root;
/// root can write anything anyway).
fn run_as(spec: &Mapping, tool: &Value) -> (i64, i64) {
    let pick = |key: &str| {
        let tool = tool
            .get("securityContext")
            .and_then(|s| s.get(key))
            .and_then(Value::as_i64);
        let pod = spec
            .get("securityContext")
            .and_then(|s| s.get(key))
            .and_then(Value::as_i64);
        tool.or(pod)
    };
    let uid = pick("runAsUser").filter(|&u| u != 0).unwrap_or(DEFAULT_ID);
    (uid, pick("runAsGroup").unwrap_or(DEFAULT_ID))
}

/// The shared-pid sidecar's group: [`SIDECAR_GID`], or the next lower one that no container of
/// the pod runs as or is a member of (`fsGroup`, `supplementalGroups`). The tool shares the
/// sidecar's PID namespace and (to read and write the same files) its uid; the kernel opens
/// another process's `/proc/<pid>/{environ,mem,root,fd}` only when uid *and* gid match, else it
/// needs CAP_SYS_PTRACE. A tool of another gid, and no member of the sidecar's (it could not make
/// a setgid program of that group), therefore cannot read the sidecar's credentials, not even in
/// the instant between `execve` and ferry marking itself non-dumpable.
fn sidecar_gid(spec: &Mapping) -> i64 {
    let mut taken = run_as_groups(spec);
    taken.extend(member_groups(spec));
    (0..SIDECAR_GID)
        .rev()
        .map(|below| below + 1)
        .find(|g| !taken.contains(g))
        .unwrap_or(SIDECAR_GID)
}

/// The `runAsGroup` of the pod and of each of its containers.
fn run_as_groups(spec: &Mapping) -> Vec<i64> {
    let group = |security: Option<&Value>| {
        security
            .and_then(|s| s.get("runAsGroup"))
            .and_then(Value::as_i64)
    };
    let mut groups: Vec<i64> = group(spec.get("securityContext")).into_iter().collect();
    for list in ["initContainers", "containers"] {
        let containers = spec.get(list).and_then(Value::as_sequence);
        let found = containers.into_iter().flatten();
        groups.extend(found.filter_map(|c| group(c.get("securityContext"))));
    }
    groups
}

/// Groups every container of the pod is a member of: `fsGroup` and `supplementalGroups`.
fn member_groups(spec: &Mapping) -> Vec<i64> {
    let Some(security) = spec.get("securityContext") else {
        return Vec::new();
    };
    let fs_group = security.get("fsGroup").and_then(Value::as_i64);
    let supplemental = security
        .get("supplementalGroups")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64);
    fs_group.into_iter().chain(supplemental).collect()
}

/// The shared-pid sidecar, in a group of its own, still reads a file another container wrote
/// readable only to its group (a second tool or an init container of another user): every group
/// the pod's containers run as becomes one of the pod's `supplementalGroups`. The kernel's `/proc`
/// check compares primary groups only, so this gives the tool nothing of the sidecar's.
fn share_run_as_groups(spec: &mut Mapping, groups: &[i64]) -> Result<()> {
    let members = member_groups(spec);
    let mut missing: Vec<i64> = Vec::new();
    for &g in groups {
        if !members.contains(&g) && !missing.contains(&g) {
            missing.push(g);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let security = spec.entry("securityContext".into()).or_insert(Value::Null);
    if security.is_null() {
        *security = Value::Mapping(Mapping::new());
    }
    let security = security
        .as_mapping_mut()
        .ok_or_else(|| Error::Yaml("the pod's securityContext is not a mapping".into()))?;
    let list = seq_mut(security, "supplementalGroups", None)?;
    list.extend(missing.into_iter().map(Value::from));
    Ok(())
}

/// `FERRY_MANIFEST`, `FERRY_SIDECAR_MODE` (sidecar only), then `extra` (a same name replaces).
pub fn ferry_env(
    manifest_url: &str,
    sidecar_mode: Option<&str>,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = vec![(env::MANIFEST.to_string(), manifest_url.to_string())];
    if let Some(mode) = sidecar_mode {
        env.push((env::SIDECAR_MODE.to_string(), mode.to_string()));
    }
    append_env(&mut env, extra);
    env
}

/// Appends `extra` to `env`; an entry of the same name is replaced in place.
pub fn append_env(env: &mut Vec<(String, String)>, extra: &[(String, String)]) {
    for (name, value) in extra {
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
}

fn ferry_container(
    name: &str,
    args: &[&str],
    env: Vec<(String, String)>,
    mounts: &[Value],
    (uid, gid): (i64, i64),
    memory: u64,
    opts: &Options,
) -> Value {
    let mut c = Mapping::new();
    c.insert("name".into(), name.into());
    c.insert("image".into(), opts.image.into());
    // Images built locally for podman tests are in no registry.
    if opts.image.starts_with("localhost/") {
        c.insert("imagePullPolicy".into(), "Never".into());
    }
    c.insert(
        "args".into(),
        Value::Sequence(args.iter().map(|&a| a.into()).collect()),
    );
    let env = env
        .into_iter()
        .map(|(n, v)| map([("name", n.into()), ("value", v.into())]));
    c.insert("env".into(), Value::Sequence(env.collect()));
    let resources = map([
        (
            "requests",
            map([("cpu", "50m".into()), ("memory", "64Mi".into())]),
        ),
        ("limits", map([("memory", quantity(memory).into())])),
    ]);
    c.insert("resources".into(), resources);
    let security = map([
        ("runAsNonRoot", true.into()),
        ("runAsUser", uid.into()),
        ("runAsGroup", gid.into()),
        ("allowPrivilegeEscalation", false.into()),
        ("readOnlyRootFilesystem", true.into()),
        (
            "capabilities",
            map([("drop", Value::Sequence(vec!["ALL".into()]))]),
        ),
        ("seccompProfile", map([("type", "RuntimeDefault".into())])),
    ]);
    c.insert("securityContext".into(), security);
    // A failed ferry container's status carries its error line (`/dev/termination-log`, else the
    // end of its log), which the Galaxy runner shows the user.
    c.insert(
        "terminationMessagePolicy".into(),
        "FallbackToLogsOnError".into(),
    );
    c.insert("volumeMounts".into(), Value::Sequence(mounts.to_vec()));
    Value::Mapping(c)
}

/// Memory limit of ferry's containers: one part buffer per concurrent transfer (concurrency ×
/// part size, from `FERRY_CONCURRENCY` / `FERRY_PART_SIZE` in `extra` or ferry's defaults) plus
/// 256 MiB for the rest: 512 MiB with the defaults (16 × 16 MiB).
fn memory_limit(extra: &[(String, String)]) -> Result<u64> {
    let mut t = Transfer::default();
    for (name, value) in extra {
        if name == env::CONCURRENCY {
            t.concurrency = value.parse::<Concurrency>().map_err(Error::Config)?;
        } else if name == env::PART_SIZE {
            t.part_size = value.parse::<PartSize>().map_err(Error::Config)?;
        }
    }
    let buffers = (t.concurrency.get() as u64).saturating_mul(t.part_size.bytes());
    Ok(buffers.saturating_add(MEMORY_OVERHEAD))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    const NO_ENV: &[(String, String)] = &[];

    pub(super) fn opts(sidecar: SidecarKind) -> Options<'static> {
        Options {
            manifest_url: "s3://b/ferry/jobs/42/manifest.json",
            image: "registry.example/ferry:0.1",
            sidecar,
            extra_env: NO_ENV,
            wrap: false,
            entrypoint: &[],
            cache: None,
            disk: None,
        }
    }

    pub(super) const JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: galaxy-42
  labels:
    app.galaxyproject.org/job-id: "42"
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        note: kept
    spec:
      restartPolicy: Never
      securityContext:
        runAsUser: 10001
        runAsGroup: 10001
      containers:
      - name: tool
        image: quay.io/biocontainers/tool:1
        command: ["/bin/bash", "-c", "/galaxy/jobs/42/galaxy_42.sh"]
        workingDir: /galaxy/jobs/42
        env:
        - name: GALAXY_SLOTS
          value: "2"
        resources:
          limits:
            memory: 4Gi
        volumeMounts:
        - name: tools
          mountPath: /cvmfs/tools
          readOnly: true
      volumes:
      - name: tools
        persistentVolumeClaim:
          claimName: galaxy-tools
"#;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: tool
    image: t
"#;

    fn run(input: &str, sidecar: SidecarKind) -> Value {
        serde_yaml_ng::from_str(&inject(input, &sample(), &opts(sidecar)).unwrap()).unwrap()
    }

    pub(super) fn spec(v: &Value) -> &Value {
        if v.get("kind").and_then(Value::as_str) == Some("Job") {
            &v["spec"]["template"]["spec"]
        } else {
            &v["spec"]
        }
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_sequence()
            .unwrap()
            .iter()
            .map(|c| name_of(c).unwrap())
            .collect()
    }

    fn mounts(c: &Value) -> Vec<(&str, &str)> {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect()
    }

    fn err(input: &str) -> String {
        inject(input, &sample(), &opts(SidecarKind::Native))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn inject_mounts_every_root_at_its_path_in_every_container() {
        for kind in [SidecarKind::Native, SidecarKind::SharedPid] {
            let out = run(JOB, kind);
            let s = spec(&out);
            let all = s["initContainers"]
                .as_sequence()
                .unwrap()
                .iter()
                .chain(s["containers"].as_sequence().unwrap());
            let mut seen = 0;
            for c in all {
                let m = mounts(c);
                assert!(m.contains(&("ferry-42-r0", "/galaxy/jobs/42")), "{m:?}");
                assert!(m.contains(&("ferry-42-r1", "/galaxy/files")), "{m:?}");
                assert!(
                    c["volumeMounts"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .all(|m| m.get("subPath").is_none())
                );
                seen += 1;
            }
            assert_eq!(seen, 3);
            let vols: Vec<_> = s["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter(|v| is_ferry_volume(v))
                .collect();
            assert_eq!(vols.len(), 3, "two roots and ferry's state");
            assert_eq!(name_of(vols[2]), Some("ferry-42-state"));
            // 3 bytes × 2 + 1 GiB, rounded up to MiB.
            assert_eq!(vols[0]["emptyDir"]["sizeLimit"].as_str(), Some("1025Mi"));
        }
    }

    #[test]
    fn cache_adds_a_host_path_read_write_for_ferry_and_read_only_for_the_tool() {
        let o = Options {
            cache: Some("/var/cache/ferry"),
            ..opts(SidecarKind::Native)
        };
        let once = inject(JOB, &sample(), &o).unwrap();
        assert_eq!(once, inject(&once, &sample(), &o).unwrap());
        let out: Value = serde_yaml_ng::from_str(&once).unwrap();
        let s = spec(&out);
        let vol = s["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| name_of(v) == Some(CACHE_VOLUME))
            .unwrap();
        assert_eq!(vol["hostPath"]["path"].as_str(), Some("/var/cache/ferry"));
        assert_eq!(vol["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"));
        let all = s["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(s["containers"].as_sequence().unwrap());
        for c in all {
            let name = name_of(c).unwrap();
            let m = c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| name_of(m) == Some(CACHE_VOLUME))
                .unwrap();
            assert_eq!(m["mountPath"].as_str(), Some("/var/cache/ferry"));
            let env = c["env"].as_sequence().into_iter().flatten();
            let cache_env = env
                .filter(|e| name_of(e) == Some("FERRY_CACHE_DIR"))
                .map(|e| e["value"].as_str().unwrap())
                .collect::<Vec<_>>();
            if is_ferry_container(name) {
                assert!(m.get("readOnly").is_none(), "{name}");
                assert_eq!(cache_env, ["/var/cache/ferry"], "{name}");
            } else {
                assert_eq!(m["readOnly"].as_bool(), Some(true), "{name}");
                assert!(cache_env.is_empty(), "{name}");
            }
        }
        // Without --cache, a re-injection removes it all.
        let plain = inject(&once, &sample(), &opts(SidecarKind::Native)).unwrap();
        assert!(!plain.contains("ferry-cache"), "{plain}");
        assert!(!plain.contains("FERRY_CACHE_DIR"), "{plain}");
    }

    #[test]
    fn cache_must_be_an_absolute_host_path_outside_the_roots() {
        assert_eq!(
            parse_cache("hostpath:/var/cache/ferry/").unwrap(),
            "/var/cache/ferry"
        );
        assert!(parse_cache("/var/cache/ferry").is_err());
        assert!(parse_cache("hostpath:var/cache").is_err());
        assert!(parse_cache("hostpath:/a/../b").is_err());
        let o = Options {
            cache: Some("/galaxy/files/cache"),
            ..opts(SidecarKind::Native)
        };
        let e = inject(JOB, &sample(), &o).unwrap_err().to_string();
        assert!(e.contains("overlaps /galaxy/files"), "{e}");
    }

    #[test]
    fn injecting_twice_equals_injecting_once() {
        for input in [JOB, POD] {
            for kind in [SidecarKind::Native, SidecarKind::SharedPid] {
                let once = inject(input, &sample(), &opts(kind)).unwrap();
                let twice = inject(&once, &sample(), &opts(kind)).unwrap();
                assert_eq!(once, twice);
            }
        }
    }

    #[test]
    fn reinjecting_with_another_mode_replaces_the_sidecar() {
        let shared = inject(JOB, &sample(), &opts(SidecarKind::SharedPid)).unwrap();
        let native = run(&shared, SidecarKind::Native);
        let s = spec(&native);
        assert_eq!(names(&s["initContainers"]), ["ferry-sidecar", "ferry-init"]);
        assert_eq!(names(&s["containers"]), ["tool"]);
    }

    #[test]
    fn shared_pid_sidecar_sorts_after_the_tool_container() {
        let out = run(JOB, SidecarKind::SharedPid);
        let s = spec(&out);
        assert_eq!(names(&s["containers"]), ["tool", "zz-ferry-sidecar"]);
        assert_eq!(s["shareProcessNamespace"].as_bool(), Some(true));
        assert_eq!(
            s["containers"][1]["args"],
            serde_yaml_ng::from_str::<Value>("[sidecar, --mode, shared-pid]").unwrap()
        );
        assert!(s["containers"][1].get("restartPolicy").is_none());
        assert_eq!(names(&s["initContainers"]), ["ferry-init"]);
    }

    #[test]
    fn shared_pid_sidecar_keeps_its_plain_name_when_it_already_sorts_last() {
        let pod = POD.replace("name: tool", "name: bwa");
        let out = run(&pod, SidecarKind::SharedPid);
        assert_eq!(names(&spec(&out)["containers"]), ["bwa", "ferry-sidecar"]);
    }

    #[test]
    fn the_sidecar_name_sorts_after_any_tool_name() {
        for tools in [
            &["tool"][..],
            &["a", "zebra"],
            &["zzz-top"],
            &["ferry-sidecar"],
            &["ferry-sidecar2"],
        ] {
            let tools: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
            let name = sidecar_name(&tools).unwrap();
            assert!(tools.iter().all(|t| name > *t), "{name} vs {tools:?}");
            assert!(is_ferry_container(&name), "{name}");
        }
        assert!(!is_ferry_container("zz-top-ferry-sidecar"));
        assert!(!is_ferry_container("z-ferry-sidecar"));
    }

    #[test]
    fn native_sidecar_is_the_first_init_container() {
        let input = JOB.replace(
            "      containers:",
            "      initContainers:\n      - name: setup\n        image: s\n      containers:",
        );
        let out = run(&input, SidecarKind::Native);
        let s = spec(&out);
        assert_eq!(
            names(&s["initContainers"]),
            ["ferry-sidecar", "ferry-init", "setup"]
        );
        let sidecar = &s["initContainers"][0];
        assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
        assert_eq!(
            sidecar["args"],
            serde_yaml_ng::from_str::<Value>("[sidecar, --mode, native]").unwrap()
        );
        assert!(sidecar.get("command").is_none());
        assert_eq!(
            s["initContainers"][1]["args"],
            serde_yaml_ng::from_str::<Value>("[init]").unwrap()
        );
        assert!(s["initContainers"][1].get("restartPolicy").is_none());
        assert_eq!(names(&s["containers"]), ["tool"]);
        assert!(s.get("shareProcessNamespace").is_none());
        assert_eq!(s["terminationGracePeriodSeconds"].as_i64(), Some(300));
    }

    #[test]
    fn a_longer_grace_period_is_kept() {
        let input = POD.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: 900\n");
        assert_eq!(
            spec(&run(&input, SidecarKind::Native))["terminationGracePeriodSeconds"].as_i64(),
            Some(900)
        );
    }

    #[test]
    fn a_job_keeps_its_labels_env_and_tools_volume() {
        let before: Value = serde_yaml_ng::from_str(JOB).unwrap();
        let after = run(JOB, SidecarKind::Native);
        assert_eq!(after["metadata"], before["metadata"]);
        assert_eq!(
            after["spec"]["backoffLimit"],
            before["spec"]["backoffLimit"]
        );
        // The template's metadata is kept; inject only adds the pod identity skip annotation.
        let mut template = after["spec"]["template"]["metadata"].clone();
        let skip = template["annotations"]
            .as_mapping_mut()
            .unwrap()
            .remove(credentials::SKIP_CONTAINERS);
        assert_eq!(skip.as_ref().and_then(Value::as_str), Some("tool"));
        assert_eq!(template, before["spec"]["template"]["metadata"]);
        let (b, a) = (spec(&before), spec(&after));
        assert_eq!(a["restartPolicy"], b["restartPolicy"]);
        assert_eq!(a["securityContext"], b["securityContext"]);
        assert_eq!(a["volumes"][0], b["volumes"][0]);
        let (bt, at) = (&b["containers"][0], &a["containers"][0]);
        for key in ["name", "image", "command", "workingDir", "env"] {
            assert_eq!(at[key], bt[key], "{key}");
        }
        assert_eq!(
            at["resources"]["limits"]["memory"],
            bt["resources"]["limits"]["memory"]
        );
        assert_eq!(at["volumeMounts"][0], bt["volumeMounts"][0]);
        assert!(at.get("securityContext").is_none());
        // Key order is the input's, ours after it.
        let keys: Vec<_> = a
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "restartPolicy",
                "securityContext",
                "initContainers",
                "containers",
                "volumes",
                "terminationGracePeriodSeconds"
            ]
        );
    }

    #[test]
    fn a_mount_inside_a_root_is_refused() {
        let input = JOB.replace("mountPath: /cvmfs/tools", "mountPath: /galaxy/files/tools/");
        let e = err(&input);
        assert!(
            e.contains("container `tool`")
                && e.contains("/galaxy/files/tools/")
                && e.contains("inside /galaxy/files"),
            "{e}"
        );
        let input = JOB.replace("mountPath: /cvmfs/tools", "mountPath: /galaxy/jobs/42");
        assert!(err(&input).contains("inside /galaxy/jobs/42"));
    }

    #[test]
    fn a_mount_above_a_root_or_beside_it_is_kept() {
        for path in ["/galaxy", "/galaxy/jobs/420"] {
            let input = JOB.replace("mountPath: /cvmfs/tools", &format!("mountPath: {path}"));
            let out = run(&input, SidecarKind::Native);
            assert_eq!(
                spec(&out)["containers"][0]["volumeMounts"][0]["mountPath"].as_str(),
                Some(path)
            );
        }
    }

    #[test]
    fn input_without_containers_is_refused() {
        assert!(
            err("apiVersion: v1\nkind: Pod\nspec:\n  containers: []\n").contains("no containers")
        );
        assert!(
            err("apiVersion: v1\nkind: Pod\nspec:\n  restartPolicy: Never\n")
                .contains("no containers")
        );
    }

    #[test]
    fn an_unsupported_kind_is_refused_naming_the_supported_ones() {
        let e = err("apiVersion: apps/v1\nkind: Deployment\nspec: {}\n");
        assert!(
            e.contains("kind `Deployment` is not supported") && e.contains("a Job (batch/v1)"),
            "{e}"
        );
        assert!(
            err("apiVersion: batch/v1beta1\nkind: Job\nspec: {}\n")
                .contains("apiVersion `batch/v1beta1`")
        );
        assert!(err("- a\n- b\n").contains("not a mapping"));
        assert!(err("").contains("empty"));
        assert!(err("kind: Pod\n---\nkind: Pod\n").contains("not one YAML or JSON document"));
        assert!(err("apiVersion: batch/v1\nkind: Job\nspec: {}\n").contains("no `spec.template`"));
    }

    #[test]
    fn a_bare_pod_spec_a_template_and_json_are_accepted() {
        let bare = "containers:\n- name: tool\n  image: t\n";
        let out: Value =
            serde_yaml_ng::from_str(&inject(bare, &sample(), &opts(SidecarKind::Native)).unwrap())
                .unwrap();
        assert_eq!(
            names(&out["initContainers"]),
            ["ferry-sidecar", "ferry-init"]
        );
        let template =
            "metadata:\n  labels: {a: b}\nspec:\n  containers:\n  - name: tool\n    image: t\n";
        let out = run(template, SidecarKind::Native);
        assert_eq!(
            names(&out["spec"]["initContainers"]),
            ["ferry-sidecar", "ferry-init"]
        );
        assert_eq!(out["metadata"]["labels"]["a"].as_str(), Some("b"));
        let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "tool", "image": "t", "args": ["a\/b"]}]}}"#;
        let out = run(json, SidecarKind::SharedPid);
        assert_eq!(
            names(&out["spec"]["containers"]),
            ["tool", "zz-ferry-sidecar"]
        );
        assert_eq!(
            out["spec"]["containers"][0]["args"][0].as_str(),
            Some("a/b")
        );
    }

    #[test]
    fn ferry_containers_get_the_manifest_url_and_a_restricted_security_context() {
        let out = run(JOB, SidecarKind::Native);
        let s = spec(&out);
        for c in s["initContainers"].as_sequence().unwrap() {
            assert_eq!(c["image"].as_str(), Some("registry.example/ferry:0.1"));
            assert!(c.get("imagePullPolicy").is_none());
            assert_eq!(c["env"][0]["name"].as_str(), Some("FERRY_MANIFEST"));
            assert_eq!(
                c["env"][0]["value"].as_str(),
                Some("s3://b/ferry/jobs/42/manifest.json")
            );
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
            assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
            assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
            assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
            assert_eq!(
                sc["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault")
            );
            // The pod's user, so the files init creates belong to the tool.
            assert_eq!(
                (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
                (Some(10001), Some(10001))
            );
            assert_eq!(c["resources"]["limits"]["memory"].as_str(), Some("512Mi"));
        }
        assert_eq!(
            s["initContainers"][0]["env"][1]["value"].as_str(),
            Some("native")
        );
    }

    #[test]
    fn ferry_runs_as_the_tool_containers_user_else_the_pods_else_65532() {
        let user = |input: &str| {
            let out = run(input, SidecarKind::Native);
            let sc = &spec(&out)["initContainers"][0]["securityContext"];
            (
                sc["runAsUser"].as_i64().unwrap(),
                sc["runAsGroup"].as_i64().unwrap(),
            )
        };
        assert_eq!(user(POD), (65532, 65532));
        let tool = POD.replace(
            "    image: t\n",
            "    image: t\n    securityContext:\n      runAsUser: 1000\n",
        );
        assert_eq!(user(&tool), (1000, 65532));
        let both = JOB.replace(
            "        workingDir:",
            "        securityContext: {runAsUser: 2000, runAsGroup: 3000}\n        workingDir:",
        );
        assert_eq!(user(&both), (2000, 3000));
        let root = POD.replace(
            "    image: t\n",
            "    image: t\n    securityContext:\n      runAsUser: 0\n",
        );
        assert_eq!(user(&root), (65532, 65532));
    }

    #[test]
    fn the_shared_pid_sidecar_runs_as_the_tools_user_in_a_group_no_container_uses() {
        let sidecar_ids = |input: &str| {
            let out = run(input, SidecarKind::SharedPid);
            let s = spec(&out);
            let sc = &s["containers"].as_sequence().unwrap().last().unwrap()["securityContext"];
            let init = &s["initContainers"][0]["securityContext"];
            (
                (
                    sc["runAsUser"].as_i64().unwrap(),
                    sc["runAsGroup"].as_i64().unwrap(),
                ),
                (
                    init["runAsUser"].as_i64().unwrap(),
                    init["runAsGroup"].as_i64().unwrap(),
                ),
            )
        };
        let tool = JOB.replace(
            "        workingDir:",
            "        securityContext: {runAsUser: 2000, runAsGroup: 3000}\n        workingDir:",
        );
        // init creates the tool's files as its user and group; the sidecar reads them as their
        // owner, from a group of its own.
        assert_eq!(sidecar_ids(&tool), ((2000, 65533), (2000, 3000)));
        let taken = JOB.replace(
            "        workingDir:",
            "        securityContext: {runAsUser: 2000, runAsGroup: 65533}\n        workingDir:",
        );
        assert_eq!(sidecar_ids(&taken), ((2000, 65532), (2000, 65533)));
        let pod_too = taken.replace("runAsGroup: 10001", "runAsGroup: 65532");
        assert!(pod_too.contains("runAsGroup: 65532"), "{pod_too}");
        assert_eq!(sidecar_ids(&pod_too), ((2000, 65531), (2000, 65533)));
        // A group every container is a member of is no group of the sidecar's own.
        let members = tool.replace(
            "runAsGroup: 10001",
            "runAsGroup: 10001\n        fsGroup: 65533\n        supplementalGroups: [65532]",
        );
        assert_eq!(sidecar_ids(&members), ((2000, 65531), (2000, 3000)));
        // The sidecar reads what the pod's other users left readable to their groups.
        let out = run(&members, SidecarKind::SharedPid);
        let groups = &spec(&out)["securityContext"]["supplementalGroups"];
        assert_eq!(groups, &yaml("[65532, 10001, 3000]"));
        // The native sidecar shares no PID namespace with the tool: the tool's group.
        let native = run(&tool, SidecarKind::Native);
        let sc = &spec(&native)["initContainers"][0]["securityContext"];
        assert_eq!(sc["runAsGroup"].as_i64(), Some(3000));
    }

    #[test]
    fn only_ferrys_containers_mount_the_state_volume_and_the_timeout_can_be_changed() {
        let extra = [("FERRY_TIMEOUT".to_string(), "600".to_string())];
        let o = Options {
            extra_env: &extra,
            ..opts(SidecarKind::SharedPid)
        };
        let out: Value = serde_yaml_ng::from_str(&inject(POD, &sample(), &o).unwrap()).unwrap();
        let s = spec(&out);
        let all = s["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(s["containers"].as_sequence().unwrap());
        for c in all {
            let has_state = mounts(c).contains(&("ferry-42-state", STATE_DIR));
            let name = name_of(c).unwrap();
            assert_eq!(has_state, is_ferry_container(name), "{name}");
        }
        let sidecar = &s["containers"][1];
        let timeouts: Vec<_> = sidecar["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "FERRY_TIMEOUT")
            .map(|e| e["value"].as_str().unwrap())
            .collect();
        assert_eq!(timeouts, ["600"]);
    }

    #[test]
    fn extra_env_reaches_ferry_containers_only_and_sizes_memory() {
        let extra = [
            (
                "AWS_ENDPOINT_URL".to_string(),
                "http://127.0.0.1:8333".to_string(),
            ),
            ("FERRY_CONCURRENCY".to_string(), "32".to_string()),
            (
                "FERRY_MANIFEST".to_string(),
                "s3://other/m.json".to_string(),
            ),
        ];
        let o = Options {
            extra_env: &extra,
            image: "localhost/ferry:dev",
            ..opts(SidecarKind::SharedPid)
        };
        let out: Value = serde_yaml_ng::from_str(&inject(POD, &sample(), &o).unwrap()).unwrap();
        let s = spec(&out);
        let sidecar = &s["containers"][1];
        let env: Vec<_> = sidecar["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("FERRY_MANIFEST", "s3://other/m.json"),
                ("FERRY_SIDECAR_MODE", "shared-pid"),
                ("FERRY_TIMEOUT", "259200"),
                ("FERRY_STATE_DIR", "/ferry-state"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
                ("FERRY_CONCURRENCY", "32"),
            ]
        );
        assert_eq!(sidecar["imagePullPolicy"].as_str(), Some("Never"));
        assert_eq!(
            sidecar["resources"]["limits"]["memory"].as_str(),
            Some("768Mi")
        );
        assert!(s["containers"][0].get("env").is_none());
        let bad = [("FERRY_PART_SIZE".to_string(), "1KiB".to_string())];
        assert!(
            inject(
                POD,
                &sample(),
                &Options {
                    extra_env: &bad,
                    ..o
                }
            )
            .is_err()
        );
    }

    #[test]
    fn env_flags_must_be_name_equals_value() {
        let ok = parse_env(&["A=b=c".into(), "E=".into()]).unwrap();
        assert_eq!(
            ok,
            [
                ("A".to_string(), "b=c".to_string()),
                ("E".to_string(), String::new())
            ]
        );
        assert!(parse_env(&["=x".into()]).is_err());
        assert!(parse_env(&["NOEQUALS".into()]).is_err());
    }

    #[test]
    fn volume_names_are_unique_dns_labels_that_contain_the_job_id() {
        let label = |s: &str| {
            s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        assert_eq!(volume_names("42", 2), ["ferry-42-r0", "ferry-42-r1"]);
        let long = "A".repeat(128);
        let ids = [
            "Job_1",
            "job-1",
            "job.1",
            "JOB-1",
            "_",
            "a..b",
            long.as_str(),
            "9-",
            &"x".repeat(60),
        ];
        let mut all = Vec::new();
        for id in ids {
            let n = volume_names(id, 11);
            assert!(n.iter().all(|n| label(n)), "{n:?}");
            assert!(n[0].starts_with("ferry-"));
            all.push(n[10].clone());
        }
        assert!(volume_names("job-1", 1)[0].starts_with("ferry-job-1-r0"));
        assert_eq!(bin_volume_name("job-1"), "ferry-job-1-bin");
        for id in ids {
            let bin = bin_volume_name(id);
            assert!(label(&bin) && bin.ends_with("-bin"), "{bin}");
            assert!(is_ferry_volume(&map([
                ("name", bin.as_str().into()),
                ("emptyDir", map([]))
            ])));
        }
        assert!(volume_names("Job_1", 1)[0].starts_with("ferry-job-1-"));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), ids.len(), "{all:?}");
    }

    #[test]
    fn sizes_are_kubernetes_quantities() {
        assert_eq!(quantity(round_up_mib(3 * GIB)), "3Gi");
        assert_eq!(quantity(round_up_mib(1)), "1Mi");
        assert_eq!(quantity(512 * MIB), "512Mi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(round_up_mib(u64::MAX) % MIB, 0);
    }

    fn wrapping(entrypoint: &[String]) -> Options<'_> {
        Options {
            wrap: true,
            entrypoint,
            ..opts(SidecarKind::SharedPid)
        }
    }

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    const WRAPPER: &str =
        "[/ferry-bin/ferry, exec, --exit-code-file, /galaxy/jobs/42/galaxy_42.ec, --";

    const GENERIC: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: sort
    image: busybox
    command: [/bin/sh, -c]
    args: ["sort in > out"]
    workingDir: /galaxy/jobs/42
"#;

    #[test]
    fn wrap_runs_the_tools_command_and_args_under_ferry_exec() {
        let out: Value = yaml(&inject(GENERIC, &sample(), &wrapping(&[])).unwrap());
        let tool = &spec(&out)["containers"][0];
        assert_eq!(
            tool["command"],
            yaml(&format!("{WRAPPER}, /bin/sh, -c, sort in > out]"))
        );
        assert!(tool.get("args").is_none());
        let keys: Vec<_> = tool
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "image",
                "command",
                "workingDir",
                "volumeMounts",
                "resources"
            ]
        );
    }

    #[test]
    fn wrap_makes_ferry_init_copy_ferry_into_a_small_emptydir_read_only_in_the_tool() {
        let out: Value = yaml(&inject(GENERIC, &sample(), &wrapping(&[])).unwrap());
        let s = spec(&out);
        let bin: Vec<_> = s["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|v| v["name"].as_str() == Some("ferry-42-bin"))
            .collect();
        assert_eq!(bin.len(), 1);
        assert_eq!(bin[0]["emptyDir"]["sizeLimit"].as_str(), Some("64Mi"));
        let init = &s["initContainers"][0];
        assert_eq!(init["args"], yaml("[init, --install-self, /ferry-bin]"));
        let bin_mount = |c: &Value| {
            c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"].as_str() == Some("ferry-42-bin"))
                .cloned()
        };
        let init_mount = bin_mount(init).unwrap();
        assert_eq!(init_mount["mountPath"].as_str(), Some("/ferry-bin"));
        assert!(init_mount.get("readOnly").is_none());
        let tool_mount = bin_mount(&s["containers"][0]).unwrap();
        assert_eq!(tool_mount["mountPath"].as_str(), Some("/ferry-bin"));
        assert_eq!(tool_mount["readOnly"].as_bool(), Some(true));
        assert_eq!(names(&s["containers"]), ["sort", "zz-ferry-sidecar"]);
        assert!(
            bin_mount(&s["containers"][1]).is_none(),
            "the sidecar needs no copy"
        );
        assert_eq!(
            s["containers"][1]["args"],
            yaml("[sidecar, --mode, shared-pid]")
        );
    }

    #[test]
    fn wrap_puts_the_entrypoint_before_the_args_of_a_container_without_command() {
        let entrypoint = ["/tini".to_string(), "--".to_string()];
        let input = GENERIC.replace("    command: [/bin/sh, -c]\n", "");
        let out: Value = yaml(&inject(&input, &sample(), &wrapping(&entrypoint)).unwrap());
        let tool = &spec(&out)["containers"][0];
        assert_eq!(
            tool["command"],
            yaml(&format!("{WRAPPER}, /tini, --, sort in > out]"))
        );
        assert!(tool.get("args").is_none());
        let keys: Vec<_> = tool
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "image",
                "command",
                "workingDir",
                "volumeMounts",
                "resources"
            ]
        );
        // A command in the YAML wins over --entrypoint, as over the image's ENTRYPOINT.
        let out: Value = yaml(&inject(GENERIC, &sample(), &wrapping(&entrypoint)).unwrap());
        assert_eq!(
            spec(&out)["containers"][0]["command"],
            yaml(&format!("{WRAPPER}, /bin/sh, -c, sort in > out]"))
        );
    }

    #[test]
    fn wrap_refuses_a_container_without_command_and_names_it() {
        let input = GENERIC.replace("    command: [/bin/sh, -c]\n", "");
        let e = inject(&input, &sample(), &wrapping(&[])).unwrap_err();
        assert!(matches!(e, Error::Yaml(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("container `sort` sets no `command`") && e.contains("--entrypoint"),
            "{e}"
        );
        // Without --wrap the same container is fine: its command is not touched.
        let out: Value = yaml(&inject(&input, &sample(), &opts(SidecarKind::SharedPid)).unwrap());
        assert_eq!(spec(&out)["containers"][0]["args"], yaml("[sort in > out]"));
        assert!(spec(&out)["containers"][0].get("command").is_none());
    }

    #[test]
    fn wrap_refuses_a_container_that_would_run_the_images_cmd() {
        let entrypoint = ["/tini".to_string()];
        let input = GENERIC
            .replace("    command: [/bin/sh, -c]\n", "")
            .replace("    args: [\"sort in > out\"]\n", "");
        let e = inject(&input, &sample(), &wrapping(&entrypoint))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("container `sort` sets neither `command` nor `args`"),
            "{e}"
        );
    }

    #[test]
    fn wrapping_twice_equals_wrapping_once() {
        let entrypoint = ["/tini".to_string()];
        let only_args = GENERIC.replace("    command: [/bin/sh, -c]\n", "");
        for input in [GENERIC, only_args.as_str()] {
            let once = inject(input, &sample(), &wrapping(&entrypoint)).unwrap();
            let twice = inject(&once, &sample(), &wrapping(&entrypoint)).unwrap();
            assert_eq!(once, twice);
            assert_eq!(once.matches("/ferry-bin/ferry").count(), 1, "{once}");
        }
    }

    #[test]
    fn injecting_a_wrapped_pod_without_wrap_restores_the_tools_command() {
        let wrapped = inject(GENERIC, &sample(), &wrapping(&[])).unwrap();
        let out: Value = yaml(&inject(&wrapped, &sample(), &opts(SidecarKind::SharedPid)).unwrap());
        let s = spec(&out);
        assert_eq!(
            s["containers"][0]["command"],
            yaml("[/bin/sh, -c, sort in > out]")
        );
        assert!(
            !serde_yaml_ng::to_string(&out)
                .unwrap()
                .contains("ferry-bin")
        );
        assert_eq!(s["initContainers"][0]["args"], yaml("[init]"));
    }

    #[test]
    fn without_wrap_no_ferry_bin_is_added() {
        let out = inject(GENERIC, &sample(), &opts(SidecarKind::Native)).unwrap();
        assert!(!out.contains("ferry-bin"), "{out}");
        assert_eq!(
            spec(&yaml(&out))["containers"][0]["args"],
            yaml("[sort in > out]")
        );
    }

    #[test]
    fn wrap_refuses_a_mount_at_ferry_bin() {
        let input = GENERIC.replace(
            "    workingDir: /galaxy/jobs/42\n",
            "    volumeMounts:\n    - name: mine\n      mountPath: /ferry-bin/\n",
        );
        let e = inject(&input, &sample(), &wrapping(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("container `sort`") && e.contains("/ferry-bin/"),
            "{e}"
        );
    }

    #[test]
    fn wrap_refuses_a_staged_root_that_overlaps_ferry_bin() {
        for root in ["/ferry-bin", "/ferry-bin/data"] {
            let mut m = sample();
            m.roots[1].path = root.into();
            let e = inject(GENERIC, &m, &wrapping(&[])).unwrap_err().to_string();
            assert!(
                e.contains(&format!("overlaps the staged root {root}")),
                "{e}"
            );
        }
        let mut m = sample();
        m.roots[1].path = "/ferry-binaries".into();
        assert!(inject(GENERIC, &m, &wrapping(&[])).is_ok());
    }

    #[test]
    fn octal_volume_modes_stay_octal() {
        let input = format!(
            "{JOB}      - name: cfg\n        configMap:\n          name: c\n          defaultMode: 0644\n"
        );
        let out = run(&input, SidecarKind::Native);
        assert_eq!(
            spec(&out)["volumes"][1]["configMap"]["defaultMode"].as_i64(),
            Some(0o644)
        );
    }

    #[test]
    fn disk_sizes_every_emptydir_and_the_tool_containers_ephemeral_storage() {
        let m = sample();
        let staged: u64 = m.roots.iter().map(|r| r.bytes).sum();
        let o = Options {
            disk: Some(20 * GIB),
            ..opts(SidecarKind::Native)
        };
        let v = run_with(JOB, &m, &o);
        let s = spec(&v);
        for (vol, r) in s["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|v| v.get("emptyDir").is_some() && !is_ferry_bin(v))
            .zip(&m.roots)
        {
            let want = quantity(round_up_mib(r.bytes + 20 * GIB));
            assert_eq!(vol["emptyDir"]["sizeLimit"].as_str(), Some(want.as_str()));
        }
        let want = quantity(round_up_mib(staged + 20 * GIB));
        let tool = &s["containers"][0];
        for kind in ["requests", "limits"] {
            assert_eq!(
                tool["resources"][kind]["ephemeral-storage"].as_str(),
                Some(want.as_str()),
                "{kind}"
            );
        }
        assert_eq!(tool["resources"]["limits"]["memory"].as_str(), Some("4Gi"));
        let again = inject(&serde_yaml_ng::to_string(&v).unwrap(), &m, &o).unwrap();
        assert_eq!(yaml(&again), v, "injecting twice equals injecting once");
    }

    #[test]
    fn without_disk_the_work_space_is_the_staged_bytes_plus_one_gib() {
        let m = sample();
        let staged: u64 = m.roots.iter().map(|r| r.bytes).sum();
        assert_eq!(work_space(&m, None), staged + GIB);
        let v = run_with(JOB, &m, &opts(SidecarKind::Native));
        let want = quantity(round_up_mib(2 * staged + GIB));
        assert_eq!(
            spec(&v)["containers"][0]["resources"]["requests"]["ephemeral-storage"].as_str(),
            Some(want.as_str())
        );
    }

    #[test]
    fn a_larger_ephemeral_storage_the_tool_asks_for_is_kept() {
        let job = JOB.replace(
            "memory: 4Gi",
            "memory: 4Gi\n            ephemeral-storage: 900Gi",
        );
        assert!(job.contains("900Gi"), "the sample job changed: {job}");
        let v = run_with(&job, &sample(), &opts(SidecarKind::Native));
        let r = &spec(&v)["containers"][0]["resources"];
        assert_eq!(r["limits"]["ephemeral-storage"].as_str(), Some("900Gi"));
        assert_eq!(parse_quantity(&"20G".into()), Some(20_000_000_000));
        assert_eq!(parse_quantity(&"lots".into()), None);
    }

    #[test]
    fn ferry_containers_report_their_error_line_as_termination_message() {
        let v = run(JOB, SidecarKind::Native);
        for c in spec(&v)["initContainers"].as_sequence().unwrap() {
            assert_eq!(
                c["terminationMessagePolicy"].as_str(),
                Some("FallbackToLogsOnError")
            );
        }
        assert!(
            spec(&v)["containers"][0]
                .get("terminationMessagePolicy")
                .is_none()
        );
    }

    fn run_with(input: &str, m: &Manifest, o: &Options) -> Value {
        yaml(&inject(input, m, o).unwrap())
    }

    fn is_ferry_bin(v: &Value) -> bool {
        name_of(v).is_some_and(|n| n.ends_with("-bin"))
    }
}

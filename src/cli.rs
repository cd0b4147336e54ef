//! Command-line types (clap only). Flags win over `FERRY_*` variables, which win over defaults.

use crate::config::{ByteSize, Concurrency, PartSize, S3Url};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "Stage a batch job's files through S3 instead of NFS.\n\n\
Head node: `stage` before the job, `collect` after it. Job pod: `init` (init container) and \
`sidecar` beside the unchanged tool container. `inject` adds both to a Pod/Job YAML.\n\n\
S3 settings come from the standard AWS chain (AWS_ENDPOINT_URL, AWS_REGION, credentials, IRSA); \
set FERRY_S3_FORCE_PATH_STYLE=true for local servers. Logs go to stderr, filtered by FERRY_LOG \
(e.g. FERRY_LOG=debug).";

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = ABOUT, after_help = crate::error::ExitCode::table())]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "plain",
        env = "FERRY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub transfer: TransferArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// Files or parts transferred at once.
    #[arg(long, global = true, env = "FERRY_CONCURRENCY", default_value = "16")]
    pub concurrency: Concurrency,
    /// Part size for multipart uploads and ranged downloads (e.g. 8MiB, 16MiB).
    #[arg(long, global = true, env = "FERRY_PART_SIZE", default_value = "16MiB")]
    pub part_size: PartSize,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Head node, before the job: upload the workdir and inputs, write the manifest, print its URL.
    ///
    /// Example:
    ///   ferry stage --url s3://bucket/ferry --job-id 42 --workdir /galaxy/jobs/000/42 \
    ///     --input /galaxy/files/000/dataset_1.dat --output /galaxy/files/000/dataset_2.dat
    Stage(StageArgs),
    /// Job pod, init container: download workdir, inputs and indices to their absolute paths.
    Init(InitArgs),
    /// Job pod, sidecar: wait for the tool to end, upload outputs and workdir changes, write done.json.
    Sidecar(SidecarArgs),
    /// Head node, after the job: wait for done.json, download workdir changes and outputs.
    Collect(CollectArgs),
    /// One line: staged / done exit=N / missing.
    Status(ManifestArg),
    /// Add ferry's init container, sidecar and volumes to a Pod, Job or pod template (YAML or JSON).
    ///
    /// Example:
    ///   ferry inject --manifest s3://bucket/ferry/jobs/42/manifest.json \
    ///     --image registry.example/ferry:0.1 -f job.yaml > job-ferry.yaml
    Inject(InjectArgs),
    /// Run a command, pass its stdio and signals through, and write its exit code to a file.
    ///
    /// Example (what `inject --wrap` puts in a tool container):
    ///   /ferry-bin/ferry exec --exit-code-file /work/job/exit.code -- samtools sort in.bam
    Exec(ExecArgs),
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Where to write the exit code (128 + signal number when the command is killed).
    #[arg(long)]
    pub exit_code_file: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SidecarKind {
    /// Kubernetes ≥ 1.29: the first init container, `restartPolicy: Always`.
    Native,
    /// Older clusters and podman: a regular container with `shareProcessNamespace: true`.
    SharedPid,
}

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The manifest: its s3:// URL (read from S3) or a local JSON file.
    #[arg(long, env = "FERRY_MANIFEST")]
    pub manifest: String,
    /// The ferry image for the init container and the sidecar.
    #[arg(long)]
    pub image: String,
    /// How the sidecar runs.
    #[arg(long, value_enum, default_value = "native")]
    pub sidecar: SidecarKind,
    /// The Pod, Job or pod template to change; `-` reads stdin.
    #[arg(short = 'f', long = "file", default_value = "-")]
    pub file: String,
    /// Extra environment for ferry's containers, NAME=VALUE (repeatable), e.g. AWS_ENDPOINT_URL=…
    /// Credentials are refused here (exit 2): see --credentials-secret.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// A Kubernetes Secret holding AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally
    /// AWS_SESSION_TOKEN): referenced (secretKeyRef) by ferry's containers only, never by the
    /// tool's. Not needed with IRSA / EKS Pod Identity.
    #[arg(long, value_name = "NAME")]
    pub credentials_secret: Option<String>,
    /// For jobs that write no exit-code file themselves (any batch pod, not Galaxy): run every
    /// tool container's command under `/ferry-bin/ferry exec --exit-code-file <manifest's file>`.
    /// ferry-init copies ferry into a small emptyDir mounted read-only at /ferry-bin. The
    /// containers must set `command` (inject cannot see the image's ENTRYPOINT), or give it with
    /// --entrypoint.
    #[arg(long)]
    pub wrap: bool,
    /// With --wrap: one word of the tool image's ENTRYPOINT (repeat in order, e.g.
    /// `--entrypoint /usr/bin/tini --entrypoint --`), run before the `args` of a container that
    /// sets no `command`.
    #[arg(
        long,
        value_name = "WORD",
        requires = "wrap",
        allow_hyphen_values = true
    )]
    pub entrypoint: Vec<String>,
    /// Node-local reference cache, `hostpath:PATH` (PATH absolute, e.g. hostpath:/var/cache/ferry):
    /// a hostPath volume (DirectoryOrCreate) mounted read-write at PATH in ferry's containers and
    /// read-only at PATH in the tool containers, with FERRY_CACHE_DIR=PATH. The only feature that
    /// needs a hostPath volume, which the `restricted` Pod Security profile does not allow.
    #[arg(long, value_name = "hostpath:PATH")]
    pub cache: Option<String>,
    /// Space the job writes besides the staged files (outputs, temporary files), e.g. 20GiB. Each
    /// emptyDir's sizeLimit becomes its staged bytes + DISK, and the first tool container requests
    /// (and is limited to) all staged bytes + DISK of `ephemeral-storage`. Default: the staged
    /// bytes + 1GiB (outputs as large as the inputs, plus 1 GiB).
    #[arg(long, value_name = "BYTES")]
    pub disk: Option<ByteSize>,
}

#[derive(Args, Debug)]
pub struct StageArgs {
    /// Where to stage: s3://BUCKET/PREFIX.
    #[arg(long)]
    pub url: S3Url,
    /// Job id (letters, digits, . _ -), used in keys and in the default exit-code file name.
    #[arg(long)]
    pub job_id: String,
    /// The job working directory; every file in it is uploaded.
    #[arg(long)]
    pub workdir: PathBuf,
    /// An input file or directory; uploaded to data/<path> unless S3 already holds the same bytes.
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// A path the job writes (file or directory); uploaded by the sidecar.
    #[arg(long = "output")]
    pub outputs: Vec<PathBuf>,
    /// Reference data (file or directory); uploaded to refs/<path> unless already there.
    #[arg(long = "index")]
    pub indices: Vec<PathBuf>,
    /// The file the job writes its exit code to [default: WORKDIR/galaxy_<ID>.ec].
    #[arg(long)]
    pub exit_code_file: Option<PathBuf>,
    /// A directory the pod mounts as one emptyDir (repeatable; disjoint). Default: derived from
    /// the workdir and the datasets' parent directories.
    #[arg(long = "mount-root")]
    pub mount_roots: Vec<PathBuf>,
    /// A path the pod already mounts (a PVC, CVMFS, a hostPath; repeatable): no root may contain
    /// it (checked before anything is uploaded), default roots are split around it, and `--index`
    /// paths under it are not staged (the pod reads them from its mount).
    #[arg(long = "pod-mount", value_name = "PATH")]
    pub pod_mounts: Vec<PathBuf>,
    /// Where to remember checksums of files that take no user xattr (read-only files,
    /// filesystems without xattrs): one small file per inode. Without it, the checksum cache
    /// lives in the `user.ferry.crc64nvme` xattr of each input and index only.
    #[arg(long, env = "FERRY_CHECKSUM_CACHE", value_name = "DIR")]
    pub checksum_cache: Option<PathBuf>,
    /// Read every input and index in full instead of trusting the checksum cache.
    #[arg(long, conflicts_with = "checksum_cache")]
    pub no_checksum_cache: bool,
}

#[derive(Args, Debug)]
pub struct ManifestArg {
    /// The manifest URL printed by `stage` (s3://BUCKET/PREFIX/jobs/ID/manifest.json).
    #[arg(long, env = "FERRY_MANIFEST")]
    pub manifest: String,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Place every absolute path under this directory instead of at `/` (local runs, tests).
    #[arg(long, env = "FERRY_ROOT")]
    pub root: Option<PathBuf>,
    /// Also copy this ferry binary to DIR/ferry (mode 0555) first, for `inject --wrap`.
    #[arg(long, value_name = "DIR")]
    pub install_self: Option<PathBuf>,
    /// Node-local reference cache (off by default): index files are kept once per node in
    /// DIR/objects, keyed by checksum and size, and placed as symlinks into it, so DIR must be
    /// mounted at the same path (read-only) in the tool containers (`inject --cache`).
    #[arg(long, env = "FERRY_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// With --cache-dir: after placing, evict the least recently used entries not pinned by a
    /// running job until the cache holds at most this much (e.g. 50GiB). Default: no limit.
    #[arg(long, env = "FERRY_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub cache_max_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SidecarMode {
    /// The exit-code file appears and the workdir then stays quiet (local runs, tests).
    File,
    /// A regular container with shareProcessNamespace: ends when the tool's processes are gone.
    SharedPid,
    /// A native sidecar (Kubernetes ≥ 1.29): SIGTERM after the tool container exits.
    Native,
}

impl std::fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SidecarMode::File => "file",
            SidecarMode::SharedPid => "shared-pid",
            SidecarMode::Native => "native",
        })
    }
}

#[derive(Args, Debug)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[arg(long, env = "FERRY_ROOT")]
    pub root: Option<PathBuf>,
    /// How to tell that the tool has ended.
    #[arg(long, value_enum, env = "FERRY_SIDECAR_MODE", default_value = "file")]
    pub mode: SidecarMode,
    /// Give up waiting after SECS (0 = never); done.json then records reason `timeout`.
    /// `inject` sets 259200 (72 h) unless told otherwise.
    #[arg(long, env = "FERRY_TIMEOUT", default_value = "0", value_name = "SECS")]
    pub timeout: u64,
    /// shared-pid: when no tool process has been seen for SECS and no exit-code file exists,
    /// the tool never started or ended before the first look: done.json says `crashed`.
    #[arg(
        long,
        env = "FERRY_START_GRACE",
        default_value = "30",
        value_name = "SECS"
    )]
    pub start_grace: u64,
    /// How long the workdir must stay unchanged after the exit-code file appears.
    #[arg(long, default_value = "1000", value_name = "MS")]
    pub quiet_ms: u64,
}

#[derive(Args, Debug)]
pub struct CollectArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[arg(long, env = "FERRY_ROOT")]
    pub root: Option<PathBuf>,
    /// Wait up to SECS for done.json before declaring the job failed.
    #[arg(long, default_value = "0", value_name = "SECS")]
    pub wait: u64,
    /// Instead of downloading outputs, make each a symlink to MOUNT/<key>: a read-only mount of
    /// the bucket on the head node (e.g. mountpoint-s3) shows every object at a predictable path.
    #[arg(long, value_name = "MOUNT")]
    pub link_outputs_under: Option<PathBuf>,
}

//! The S3 client: configured from the standard AWS chain, with request counters and errors that
//! name the object. File-granularity helpers only; `transfer` builds on them.

use crate::env;
use crate::error::{Error, Result, in_words};

mod credentials;
mod tls;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// User metadata holding ferry's CRC64-NVME of the whole object (multipart objects included).
pub const CRC_METADATA: &str = "ferry-crc64nvme";

/// The longest one S3 request may take before it is abandoned and retried: far above what one
/// part (16 MiB by default) needs on any working link, far below "forever".
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `FERRY_S3_ATTEMPT_TIMEOUT` (seconds), else [`ATTEMPT_TIMEOUT`].
fn attempt_timeout() -> Result<Duration> {
    match std::env::var(env::S3_ATTEMPT_TIMEOUT) {
        Ok(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| *s >= 1)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}=`{v}` is not a number of seconds ≥ 1",
                    env::S3_ATTEMPT_TIMEOUT
                ))
            }),
        Err(_) => Ok(ATTEMPT_TIMEOUT),
    }
}

/// The largest manifest or done.json ferry reads (about a million files).
pub const MAX_SMALL_OBJECT: usize = 256 << 20;

/// S3 requests made, by kind. Reported in `done.json` and the summaries.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    pub get: u64,
    pub put: u64,
    pub head: u64,
    pub multipart: u64,
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests get={} put={} head={} multipart={}",
            self.get, self.put, self.head, self.multipart
        )
    }
}

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    multipart: AtomicU64,
}

/// What a HEAD says about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub size: u64,
    pub crc64nvme: Option<String>,
}

/// Reads of a small object whose body keeps breaking before `get_small` gives up.
const SMALL_BODY_ATTEMPTS: u32 = 4;

pub struct Store {
    client: Client,
    /// The endpoint, as error lines name it.
    endpoint: String,
    /// Where credentials come from, as error lines name it.
    credentials_source: String,
    pub bucket: String,
    counters: Counters,
    /// Multipart uploads in flight (key → upload id), aborted if the process is interrupted.
    open_uploads: Mutex<HashMap<String, String>>,
    /// Where open multipart uploads are recorded (see [`Store::record_uploads_under`]).
    journal: OnceLock<String>,
}

/// The record of one open multipart upload, kept under the job's prefix until it ends.
#[derive(Serialize, Deserialize)]
struct OpenUpload {
    key: String,
    upload_id: String,
}

fn bool_env(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

impl Store {
    /// A client from the standard AWS chain (env, profile, IRSA/Pod Identity, instance profile),
    /// with the SDK's standard retry (backoff on 503 SlowDown and 5xx).
    pub async fn connect(bucket: &str) -> Result<Store> {
        let attempts = match std::env::var(env::S3_MAX_ATTEMPTS) {
            Ok(v) => v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                Error::Config(format!(
                    "{}=`{v}` is not a number ≥ 1",
                    env::S3_MAX_ATTEMPTS
                ))
            })?,
            Err(_) => 8,
        };
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_max_backoff(Duration::from_secs(20));
        let region =
            aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
        // A server that accepts the connection and never answers must not hang a job: every
        // attempt ends after ATTEMPT_TIMEOUT (a request moves at most one part) and is retried.
        let attempt = attempt_timeout()?;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(attempt)
            .build();
        // A credentials lookup (STS, Pod Identity) gets as long as one S3 attempt, not the SDK's
        // default of every retry at its longest (a stalled STS held a job ~17 minutes).
        let identity_cache = aws_config::identity::IdentityCache::lazy()
            .load_timeout(attempt)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .retry_config(retry)
            .timeout_config(timeouts)
            .identity_cache(identity_cache);
        // STS (IRSA) and S3 alike trust AWS_CA_BUNDLE's CAs and never retry a failed handshake.
        loader = loader.http_client(tls::http_client()?);
        let sdk = loader.load().await;
        let endpoint = tls::endpoint_name(&sdk, bucket);
        let credentials_source = credentials::source(&sdk);
        // The standard retry's shared token bucket allows ~50 retries per process: at 16
        // transfers at once a 3-second outage used it up. Each request keeps its own attempt
        // budget (FERRY_S3_MAX_ATTEMPTS) and backoff instead.
        use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};
        let partition = RetryPartition::custom("ferry")
            .token_bucket(TokenBucket::unlimited())
            .build();
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(bool_env(env::S3_FORCE_PATH_STYLE))
            .retry_partition(partition)
            // No aws-chunked streamed checksum trailer (Garage, older Ceph RGW and MinIO refuse
            // it): ferry sends the checksums it computes itself as plain headers.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        Ok(Store {
            client: Client::from_conf(conf),
            endpoint,
            credentials_source,
            bucket: bucket.to_string(),
            counters: Counters::default(),
            open_uploads: Mutex::new(HashMap::new()),
            journal: OnceLock::new(),
        })
    }

    pub fn requests(&self) -> Requests {
        let c = &self.counters;
        Requests {
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            multipart: c.multipart.load(Ordering::Relaxed),
        }
    }

    fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let lookup = credentials::lookup_error(&e, &self.credentials_source, op, &self.bucket, key);
        if let Some(reason) = tls::handshake_error(&e) {
            let endpoint = match lookup {
                Some(_) => self.credentials_source.clone(),
                None => format!("s3 endpoint {}", self.endpoint),
            };
            return Error::Tls { endpoint, reason };
        }
        if let Some(error) = lookup {
            return error;
        }
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or_default().to_string();
        // A service error says it in its code and message; anything else (network, timeout)
        // needs the whole error chain.
        let message = match (e.code(), status) {
            (Some(c), Some(st)) => {
                format!("{c}: {} (HTTP {st})", e.message().unwrap_or("no message"))
            }
            _ => format!("{} (endpoint {})", in_words(&e), self.endpoint),
        };
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        if status == Some(404) || matches!(code.as_str(), "NoSuchKey" | "NotFound" | "NoSuchBucket")
        {
            let hint = if code == "NoSuchBucket" {
                format!(" (bucket {} does not exist)", self.bucket)
            } else {
                String::new()
            };
            return Error::Missing {
                op,
                bucket,
                key,
                hint,
            };
        }
        if status == Some(403)
            || matches!(
                code.as_str(),
                "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
            )
        {
            return Error::Credentials {
                op,
                bucket,
                key,
                message,
            };
        }
        Error::S3 {
            op,
            bucket,
            key,
            message,
        }
    }

    /// HEAD; `None` if the object does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<Head>> {
        self.counters.head.fetch_add(1, Ordering::Relaxed);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(Head {
                size: o.content_length().unwrap_or(0).max(0) as u64,
                crc64nvme: o.metadata().and_then(|m| m.get(CRC_METADATA)).cloned(),
            })),
            Err(e) => match self.err("head", key, e) {
                Error::Missing { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// GET a small object (manifest, done.json, a claim) into memory; `None` if it does not
    /// exist. A body that breaks midway (a reset connection) is fetched again, a few times.
    pub async fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut attempt = 1;
        loop {
            let body = match self.get(key, None).await {
                Ok(body) => body,
                Err(Error::Missing { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            match self.read_small(key, body).await? {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(broke) if attempt < SMALL_BODY_ATTEMPTS => {
                    tracing::warn!(
                        "s3 get s3://{}/{key}: body broke ({broke}); reading it again",
                        self.bucket
                    );
                    attempt += 1;
                }
                Err(broke) => {
                    return Err(Error::S3 {
                        op: "get",
                        bucket: self.bucket.clone(),
                        key: key.to_string(),
                        message: format!("body broke {attempt} times: {broke}"),
                    });
                }
            }
        }
    }

    /// A small object's body, whole; the inner error says how the body broke.
    async fn read_small(
        &self,
        key: &str,
        mut body: ByteStream,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let mut bytes = Vec::new();
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    // A manifest is read whole: refuse to hold an unbounded one in memory.
                    if bytes.len() + chunk.len() > MAX_SMALL_OBJECT {
                        return Err(Error::manifest(
                            format!("s3://{}/{key}", self.bucket),
                            format!(
                                "larger than the {} MiB ferry reads into memory; split the job into smaller ones",
                                MAX_SMALL_OBJECT >> 20
                            ),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Ok(bytes)),
                Err(e) => return Ok(Err(in_words(&e))),
            }
        }
    }

    /// GET, optionally a byte range `[start, end]` (inclusive), as a stream.
    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((a, b)) = range {
            req = req.range(format!("bytes={a}-{b}"));
        }
        req.send()
            .await
            .map(|o| o.body)
            .map_err(|e| self.err("get", key, e))
    }

    /// PUT small bytes (manifest, done.json), checksummed.
    pub async fn put_small(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        let crc = crate::checksum::encode(crate::checksum::of_bytes(&bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .checksum_crc64_nvme(&crc)
            .metadata(CRC_METADATA, &crc)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("put", key, e))
    }

    /// PUT bytes read into memory with their CRC64-NVME: the server verifies it.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>, crc64nvme: &str) -> Result<()> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_crc64_nvme(crc64nvme)
            .metadata(CRC_METADATA, crc64nvme)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("put", key, e))
    }

    /// PUT a whole file whose CRC64-NVME is known: the server verifies it.
    pub async fn put_file(&self, key: &str, path: &Path, crc64nvme: &str) -> Result<()> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| Error::io(path, "open for upload", std::io::Error::other(e)))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_crc64_nvme(crc64nvme)
            .metadata(CRC_METADATA, crc64nvme)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.err("put", key, e))
    }

    /// Records multipart uploads this job starts under `prefix` (`…/jobs/<id>/uploads`), one
    /// small object per open upload, so a re-run after a kill aborts exactly what this job left
    /// open and nothing another job is uploading. Without it, nothing is recorded.
    pub fn record_uploads_under(&self, prefix: String) {
        let _ = self.journal.set(prefix);
    }

    /// The journal object of an open multipart upload of `key` (its name: a hash of the key).
    fn journal_key(&self, key: &str) -> Option<String> {
        let crc = crate::checksum::of_bytes(key.as_bytes());
        let sha = crate::checksum::of_bytes(format!("ferry:{key}").as_bytes());
        self.journal
            .get()
            .map(|p| format!("{p}/{crc:016x}{sha:016x}.json"))
    }

    /// Starts a multipart upload of `key`. An upload of the same key that this job recorded and
    /// never finished (a run killed by SIGKILL) is aborted first; uploads of other jobs, even of
    /// the same key, are never touched (many jobs stage one shared input at once).
    pub async fn create_multipart(&self, key: &str, crc64nvme: &str) -> Result<String> {
        let journal = self.journal_key(key);
        if let Some(j) = &journal
            && let Some(bytes) = self.get_small(j).await?
        {
            match serde_json::from_slice::<OpenUpload>(&bytes) {
                Ok(u) if u.key == key => {
                    tracing::info!(
                        key,
                        "aborting the multipart upload an earlier run of this job left open"
                    );
                    self.abort_multipart(&u.key, &u.upload_id).await;
                }
                _ => tracing::warn!(
                    "ignoring an unreadable upload record s3://{}/{j}",
                    self.bucket
                ),
            }
        }
        self.counters.multipart.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .metadata(CRC_METADATA, crc64nvme)
            .send()
            .await
            .map_err(|e| self.err("create multipart upload", key, e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        self.open_uploads
            .lock()
            .expect("lock")
            .insert(key.to_string(), id.clone());
        if let Some(j) = &journal {
            let record = OpenUpload {
                key: key.to_string(),
                upload_id: id.clone(),
            };
            let body = serde_json::to_vec(&record).expect("an upload record serialises");
            if let Err(e) = self.put_small(j, body, "application/json").await {
                self.abort_multipart(key, &id).await;
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Uploads bytes `[offset, offset+len)` of `path` as part `number` (1-based), CRC32-checked.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<CompletedPart> {
        self.counters.multipart.fetch_add(1, Ordering::Relaxed);
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(aws_sdk_s3::primitives::Length::Exact(len))
            .build()
            .await
            .map_err(|e| Error::io(path, "open for upload", std::io::Error::other(e)))?;
        // The part's CRC32, computed here and sent as a header (the server verifies it), not
        // by the SDK in a streamed trailer that many S3-compatible servers refuse.
        let crc32 = {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || crate::checksum::crc32_of_range(&p, offset, len))
                .await
                .map_err(|e| Error::io(path, "checksum part", std::io::Error::other(e)))?
                .map_err(|e| Error::io(path, "checksum part", e))?
        };
        let crc32 = aws_smithy_types::base64::encode(crc32.to_be_bytes());
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_crc32(&crc32)
            .body(body)
            .send()
            .await
            .map_err(|e| self.err("upload part", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .checksum_crc32(crc32)
            .build())
    }

    /// Uploads bytes read into memory as part `number` (1-based), CRC32-checked.
    pub async fn upload_part_bytes(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Vec<u8>,
    ) -> Result<CompletedPart> {
        self.counters.multipart.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.err("upload part", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .build())
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<()> {
        self.counters.multipart.fetch_add(1, Ordering::Relaxed);
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("complete multipart upload", key, e))?;
        self.open_uploads.lock().expect("lock").remove(key);
        self.forget_upload(key).await;
        Ok(())
    }

    /// Deletes the journal record of `key`'s upload (best effort: a leftover record only makes
    /// the next run try to abort an upload that is already gone).
    async fn forget_upload(&self, key: &str) {
        if let Some(j) = self.journal_key(key) {
            let _ = self.delete(&j).await;
        }
    }

    /// DELETE one object (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.err("delete", key, e) {
                Error::Missing { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// PUT small bytes only if `key` does not exist yet (`If-None-Match: *`). `false`: it exists.
    pub async fn put_small_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        let crc = crate::checksum::encode(crate::checksum::of_bytes(&bytes));
        let r = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .if_none_match("*")
            .checksum_crc64_nvme(&crc)
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
            Err(e) if e.code() == Some("PreconditionFailed") => Ok(false),
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) {
        self.counters.multipart.fetch_add(1, Ordering::Relaxed);
        let r = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = r {
            tracing::warn!(key, "could not abort multipart upload: {}", in_words(&e));
        }
        self.open_uploads.lock().expect("lock").remove(key);
        self.forget_upload(key).await;
    }

    /// Aborts every multipart upload still open (called when interrupted), best effort, for at
    /// most 10 s; a further SIGTERM/SIGINT ends it at once (the next run aborts what is left).
    pub async fn abort_after_interrupt(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = self.abort_open_uploads() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("gave up aborting multipart uploads after 10 s"),
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }

    async fn abort_open_uploads(&self) {
        let open: Vec<(String, String)> = self.open_uploads.lock().expect("lock").drain().collect();
        for (key, id) in open {
            self.abort_multipart(&key, &id).await;
        }
    }

    /// Creates the bucket if it does not exist (for local runs and tests).
    pub async fn ensure_bucket(&self) -> Result<()> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.err("create bucket", "", e)),
        }
    }
}

//! Every environment variable ferry reads, named once.

pub const MANIFEST: &str = "FERRY_MANIFEST";
pub const ROOT: &str = "FERRY_ROOT";
pub const LOG: &str = "FERRY_LOG";
pub const LOG_FORMAT: &str = "FERRY_LOG_FORMAT";
pub const CONCURRENCY: &str = "FERRY_CONCURRENCY";
pub const PART_SIZE: &str = "FERRY_PART_SIZE";
pub const S3_FORCE_PATH_STYLE: &str = "FERRY_S3_FORCE_PATH_STYLE";
pub const S3_MAX_ATTEMPTS: &str = "FERRY_S3_MAX_ATTEMPTS";
pub const S3_ATTEMPT_TIMEOUT: &str = "FERRY_S3_ATTEMPT_TIMEOUT";
pub const SIDECAR_MODE: &str = "FERRY_SIDECAR_MODE";
pub const CACHE_DIR: &str = "FERRY_CACHE_DIR";
pub const CACHE_MAX_BYTES: &str = "FERRY_CACHE_MAX_BYTES";
pub const STATE_DIR: &str = "FERRY_STATE_DIR";
pub const TIMEOUT: &str = "FERRY_TIMEOUT";
pub const START_GRACE: &str = "FERRY_START_GRACE";
/// A PEM file of CA certificates trusted besides the system roots (the AWS convention).
pub const AWS_CA_BUNDLE: &str = "AWS_CA_BUNDLE";
/// Read only to name where credentials come from in an error line (the SDK reads them itself).
pub const AWS_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
pub const AWS_ENDPOINT_URL_STS: &str = "AWS_ENDPOINT_URL_STS";
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
pub const AWS_CONTAINER_CREDENTIALS_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
pub const CHECKSUM_CACHE: &str = "FERRY_CHECKSUM_CACHE";

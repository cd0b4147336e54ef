//! Validated settings: newtypes that check themselves when parsed from flags or the environment.

use crate::manifest::check_key;
use std::fmt;
use std::str::FromStr;

/// `s3://BUCKET[/PREFIX]`, the prefix normalised without leading or trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl FromStr for S3Url {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}` is not an s3:// URL (expected s3://BUCKET/PREFIX)"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let key = key.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !bucket_ok {
            return Err(format!(
                "`{bucket}` in `{s}` is not a valid bucket name (3-63 of a-z 0-9 . -)"
            ));
        }
        if !key.is_empty() {
            check_key(key).map_err(|e| format!("`{s}`: {e}"))?;
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.key)
        }
    }
}

const MIB: u64 = 1 << 20;

/// Multipart part size: S3 wants ≥ 5 MiB (but the last) and ≤ 5 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSize(u64);

impl PartSize {
    pub const MIN: u64 = 5 * MIB;
    pub const MAX: u64 = 5 * 1024 * MIB;
    pub const MAX_PARTS: u64 = 10_000;

    pub fn new(bytes: u64) -> Result<Self, String> {
        if !(Self::MIN..=Self::MAX).contains(&bytes) {
            return Err(format!("part size {bytes} is outside 5 MiB..5 GiB"));
        }
        Ok(PartSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The part size for one object: the configured size, grown so that ≤ 10,000 parts cover it.
    pub fn for_object(self, size: u64) -> u64 {
        self.0.max(size.div_ceil(Self::MAX_PARTS)).min(Self::MAX)
    }
}

impl Default for PartSize {
    fn default() -> Self {
        PartSize(16 * MIB)
    }
}

impl FromStr for PartSize {
    type Err = String;

    /// Bytes, or with a unit: `8MiB`, `16M`, `1GiB`.
    fn from_str(s: &str) -> Result<Self, String> {
        PartSize::new(parse_bytes(s, "part size")?)
    }
}

/// Bytes, or with a binary unit: `512`, `8MiB`, `16M`, `50GiB`, `1TiB`.
fn parse_bytes(s: &str, what: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{what} `{s}` is not a number with an optional unit (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => MIB,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "{what} unit `{u}` is not one of B, KiB, MiB, GiB, TiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{what} `{s}` is too large"))
}

/// A byte count given with an optional unit (`--cache-max-bytes 50GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_bytes(s, "size").map(ByteSize)
    }
}

/// How many transfers (files or parts) run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency(usize);

impl Concurrency {
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency(16)
    }
}

impl FromStr for Concurrency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<usize>() {
            Ok(n) if (1..=256).contains(&n) => Ok(Concurrency(n)),
            _ => Err(format!("concurrency `{s}` is not a number in 1..=256")),
        }
    }
}

/// Transfer settings shared by every role.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transfer {
    pub concurrency: Concurrency,
    pub part_size: PartSize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_normalised_prefix() {
        let u: S3Url = "s3://my-bucket/a/b/".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("my-bucket", "a/b"));
        let u: S3Url = "s3://my-bucket".parse().unwrap();
        assert_eq!(u.key, "");
        assert_eq!(u.to_string(), "s3://my-bucket");
    }

    #[test]
    fn s3_urls_that_escape_or_are_not_s3_are_refused() {
        assert!(
            "http://b/x"
                .parse::<S3Url>()
                .unwrap_err()
                .contains("not an s3:// URL")
        );
        assert!("s3://b/../x".parse::<S3Url>().is_err());
        assert!("s3://bu/a//b".parse::<S3Url>().is_err());
        assert!("s3://UPPER/x".parse::<S3Url>().is_err());
    }

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert!(PartSize::new(4 * MIB).is_err());
        assert_eq!("8MiB".parse::<PartSize>().unwrap().bytes(), 8 * MIB);
        assert!("8 parsecs".parse::<PartSize>().is_err());
        let p = PartSize::new(5 * MIB).unwrap();
        // A 100 GiB object needs bigger parts to stay within 10,000 of them.
        let size = 100 * 1024 * MIB;
        let part = p.for_object(size);
        assert!(size.div_ceil(part) <= PartSize::MAX_PARTS);
        assert_eq!(p.for_object(10 * MIB), 5 * MIB);
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!("50GiB".parse::<ByteSize>().unwrap().0, 50 << 30);
        assert_eq!("1T".parse::<ByteSize>().unwrap().0, 1 << 40);
        assert_eq!("1234".parse::<ByteSize>().unwrap().0, 1234);
        assert!("5 GB".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn concurrency_must_be_positive_and_bounded() {
        assert!("0".parse::<Concurrency>().is_err());
        assert!("1000".parse::<Concurrency>().is_err());
        assert_eq!("8".parse::<Concurrency>().unwrap().get(), 8);
    }
}

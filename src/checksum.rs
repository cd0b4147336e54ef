//! CRC64-NVME, the checksum ferry records for every file: fast (SIMD), combinable across
//! ranges, and one of S3's own checksum algorithms (sent as `x-amz-checksum-crc64nvme`).

use crc_fast::{CrcAlgorithm, Digest};
use std::io::Read;
use std::path::Path;

const ALG: CrcAlgorithm = CrcAlgorithm::Crc64Nvme;

/// A running CRC64-NVME over a byte stream.
pub struct Crc(Digest);

impl Default for Crc {
    fn default() -> Self {
        Crc(Digest::new(ALG))
    }
}

impl Crc {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn value(&self) -> u64 {
        self.0.finalize()
    }
}

/// The checksum of `first` followed by `second_len` bytes whose checksum is `second`.
pub fn combine(first: u64, second: u64, second_len: u64) -> u64 {
    crc_fast::checksum_combine(ALG, first, second, second_len)
}

/// S3's text form: base64 of the 8 big-endian bytes.
pub fn encode(crc: u64) -> String {
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

pub fn of_bytes(bytes: &[u8]) -> u64 {
    crc_fast::checksum(ALG, bytes)
}

/// Reads the whole file (blocking). Returns (size, crc).
pub fn of_file(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut crc = Crc::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crc.value()))
}

/// CRC32 (ISO-HDLC, S3's `x-amz-checksum-crc32`) of bytes `[offset, offset+len)` of a file
/// (blocking): the checksum a multipart part is sent with.
pub fn crc32_of_range(path: &Path, offset: u64, len: u64) -> std::io::Result<u32> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut digest = Digest::new(CrcAlgorithm::Crc32IsoHdlc);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file shorter than {} bytes", offset + len),
            ));
        }
        digest.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(digest.finalize() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64nvme_matches_the_published_check_value() {
        // CRC-64/NVME check value for "123456789".
        assert_eq!(of_bytes(b"123456789"), 0xae8b_1486_0a79_9888);
    }

    #[test]
    fn combining_two_ranges_equals_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = data.split_at(12_345);
        assert_eq!(
            combine(of_bytes(a), of_bytes(b), b.len() as u64),
            of_bytes(&data)
        );
    }

    #[test]
    fn crc32_of_a_range_matches_the_published_check_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"xx123456789yy").unwrap();
        // CRC-32/ISO-HDLC check value for "123456789".
        assert_eq!(crc32_of_range(&p, 2, 9).unwrap(), 0xcbf4_3926);
        assert!(crc32_of_range(&p, 2, 100).is_err());
    }

    #[test]
    fn encoding_is_base64_of_big_endian_bytes() {
        assert_eq!(encode(0), "AAAAAAAAAAA=");
        assert_eq!(encode(of_bytes(b"")), "AAAAAAAAAAA=");
    }
}

//! The checksum types a bmap file may name, and one hasher over all of them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

/// A checksum type, by the name bmap files use (Python's `hashlib` names).
///
/// bmaptool 3.x writes `sha256`; format 1.3 files use `sha1`; any `hashlib` name is legal in
/// format 2.0, of which these are the ones seen in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChecksumType {
    /// `md5`.
    Md5,
    /// `sha1` (format 1.3).
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256`, what bmaptool 3.x writes.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl ChecksumType {
    /// The name in a bmap file (`"sha256"`).
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Md5 => "md5",
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha224 => "sha224",
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha384 => "sha384",
            ChecksumType::Sha512 => "sha512",
        }
    }

    /// The length of a checksum in hexadecimal digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Md5 => 32,
            ChecksumType::Sha1 => 40,
            ChecksumType::Sha224 => 56,
            ChecksumType::Sha256 => 64,
            ChecksumType::Sha384 => 96,
            ChecksumType::Sha512 => 128,
        }
    }

    /// A new hasher of this type.
    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            ChecksumType::Md5 => Inner::Md5(md5::Md5::new()),
            ChecksumType::Sha1 => Inner::Sha1(sha1::Sha1::new()),
            ChecksumType::Sha224 => Inner::Sha224(sha2::Sha224::new()),
            ChecksumType::Sha256 => Inner::Sha256(sha2::Sha256::new()),
            ChecksumType::Sha384 => Inner::Sha384(sha2::Sha384::new()),
            ChecksumType::Sha512 => Inner::Sha512(sha2::Sha512::new()),
        })
    }

    /// The lower-case hexadecimal checksum of `data`.
    pub fn hex_digest(self, data: &[u8]) -> String {
        let mut h = self.hasher();
        h.update(data);
        h.finish_hex()
    }
}

impl fmt::Display for ChecksumType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A checksum name that is not one of [`ChecksumType`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported checksum type {0:?} (md5, sha1, sha224, sha256, sha384, sha512 are)")]
pub struct UnknownChecksumType(pub String);

impl FromStr for ChecksumType {
    type Err = UnknownChecksumType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "md5" => ChecksumType::Md5,
            "sha1" => ChecksumType::Sha1,
            "sha224" => ChecksumType::Sha224,
            "sha256" => ChecksumType::Sha256,
            "sha384" => ChecksumType::Sha384,
            "sha512" => ChecksumType::Sha512,
            _ => return Err(UnknownChecksumType(s.to_owned())),
        })
    }
}

/// An incremental hash of one of the [`ChecksumType`]s.
#[derive(Debug, Clone)]
pub struct Hasher(Inner);

#[derive(Debug, Clone)]
enum Inner {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// Hashes `data` in.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Md5(h) => h.update(data),
            Inner::Sha1(h) => h.update(data),
            Inner::Sha224(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
            Inner::Sha384(h) => h.update(data),
            Inner::Sha512(h) => h.update(data),
        }
    }

    /// The checksum in lower-case hexadecimal, as bmap files hold it.
    pub fn finish_hex(self) -> String {
        match self.0 {
            Inner::Md5(h) => hex(&h.finalize()),
            Inner::Sha1(h) => hex(&h.finalize()),
            Inner::Sha224(h) => hex(&h.finalize()),
            Inner::Sha256(h) => hex(&h.finalize()),
            Inner::Sha384(h) => hex(&h.finalize()),
            Inner::Sha512(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers for "abc" (FIPS 180 and RFC 1321 test vectors).
    #[test]
    fn known_answers() {
        let abc = |t: ChecksumType| t.hex_digest(b"abc");
        assert_eq!(abc(ChecksumType::Md5), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            abc(ChecksumType::Sha1),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            abc(ChecksumType::Sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for t in [
            ChecksumType::Md5,
            ChecksumType::Sha1,
            ChecksumType::Sha224,
            ChecksumType::Sha256,
            ChecksumType::Sha384,
            ChecksumType::Sha512,
        ] {
            assert_eq!(abc(t).len(), t.hex_len(), "{t}");
            assert_eq!(t.name().parse::<ChecksumType>(), Ok(t));
        }
        assert!("crc32".parse::<ChecksumType>().is_err());
    }
}

//! A URL as given and as shown, and the redaction of its password.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// An `http://` or `https://` URL as given, and as shown (its password replaced by `***`).
#[derive(Debug, Clone)]
pub(crate) struct Url {
    pub(super) raw: String,
    pub(super) shown: String,
}

impl Url {
    /// The URL in `path`, if it is one (`http://` or `https://`, any case of the scheme).
    pub(crate) fn of(path: &Path) -> Option<Url> {
        let raw = path.to_str()?;
        is_url(raw).then(|| Url {
            raw: raw.to_owned(),
            shown: redact(raw).into_owned(),
        })
    }

    /// The URL for messages, as a path (the type errors carry).
    pub(crate) fn shown(&self) -> PathBuf {
        PathBuf::from(&self.shown)
    }

    /// Where the URL's path ends (before its query or fragment).
    fn path_end(&self) -> usize {
        self.raw.find(['?', '#']).unwrap_or(self.raw.len())
    }

    /// The URL's path, for the compression its name says.
    pub(super) fn name(&self) -> &str {
        &self.raw[..self.path_end()]
    }

    /// `suffix` added to the URL's path (before its query).
    pub(super) fn with_suffix(&self, suffix: &str) -> Url {
        let end = self.path_end();
        let raw = format!("{}{suffix}{}", &self.raw[..end], &self.raw[end..]);
        Url {
            shown: redact(&raw).into_owned(),
            raw,
        }
    }

    /// The URL with its last extension dropped (`disk.img.xz` → `disk.img`), if the last
    /// segment of its path has one.
    pub(super) fn without_extension(&self) -> Option<Url> {
        let end = self.path_end();
        let path = &self.raw[..end];
        let segment_start = path.rfind('/').map_or(0, |i| i + 1);
        let dot = path[segment_start..].rfind('.')?;
        // A name that starts with its only dot (`.img`) has no extension, as for a path.
        if dot == 0 {
            return None;
        }
        let raw = format!("{}{}", &path[..segment_start + dot], &self.raw[end..]);
        Some(Url {
            shown: redact(&raw).into_owned(),
            raw,
        })
    }
}

/// Whether `path` is an `http://` or `https://` URL.
pub(crate) fn is_url_path(path: &Path) -> bool {
    path.to_str().is_some_and(is_url)
}

/// Whether `text` is an `http://` or `https://` URL.
fn is_url(text: &str) -> bool {
    let lower = |n: usize| text.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`: what
/// may be shown of a message that names a URL.
///
/// ```
/// assert_eq!(
///     blockmap_bmap::redact("https://me:secret@example.org/disk.img: not found"),
///     "https://me:***@example.org/disk.img: not found"
/// );
/// ```
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut done = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("://") {
        let authority_start = from + at + 3;
        let rest = &text[authority_start..];
        let authority_len = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if let Some(userinfo_len) = authority.rfind('@')
            && let Some(colon) = authority[..userinfo_len].find(':')
        {
            let password = authority_start + colon + 1..authority_start + userinfo_len;
            out.push_str(&text[done..password.start]);
            out.push_str("***");
            done = password.end;
        }
        from = authority_start + authority_len;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn passwords_are_redacted_and_nothing_else() {
        assert_eq!(
            redact("x https://u:p@h:1/a?b=c:d@e y http://h/x:y@z"),
            "x https://u:***@h:1/a?b=c:d@e y http://h/x:y@z"
        );
        assert_eq!(redact("ftp://u@h/x"), "ftp://u@h/x");
        assert_eq!(redact("no url: a:b@c"), "no url: a:b@c");
    }

    #[test]
    fn bmap_candidates_are_those_of_a_path() {
        let url = Url::of(Path::new("https://u:p@h/dir.d/disk.img.xz?t=1")).unwrap();
        let mut names = Vec::new();
        let mut stem = Some(url);
        while let Some(s) = stem {
            names.push(s.with_suffix(".bmap").raw);
            stem = s.without_extension();
        }
        assert_eq!(
            names,
            [
                "https://u:p@h/dir.d/disk.img.xz.bmap?t=1",
                "https://u:p@h/dir.d/disk.img.bmap?t=1",
                "https://u:p@h/dir.d/disk.bmap?t=1",
            ]
        );
        // The same as for the path.
        let dir = tempfile::tempdir().unwrap();
        let err = crate::find_bmap(dir.path().join("disk.img.xz")).unwrap_err();
        let Error::NoBmap { tried, .. } = err else {
            panic!("{err}")
        };
        let tails: Vec<_> = tried
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(tails, ["disk.img.xz.bmap", "disk.img.bmap", "disk.bmap"]);
    }
}

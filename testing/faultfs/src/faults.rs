//! The faults of one path, the control language that sets them (see the crate docs), and the
//! table of faults by path that the filesystem consults on every operation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// The faults set on one path. `Default` is no fault at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// `read-eio=OFF`: a read starting at or after OFF fails with EIO; one starting before it
    /// returns at most the bytes before OFF.
    pub read_eio: Option<u64>,
    /// `short-read=N`: each read returns at most N bytes.
    pub short_read: Option<u32>,
    /// `read-delay-ms=N`: each read is answered N ms late.
    pub read_delay_ms: Option<u64>,
    /// `write-eio=OFF`, `write-enospc=OFF`, `write-edquot=OFF`: the errno and the offset from
    /// which writes fail with it (the lowest offset wins when several are set).
    pub write_fail: Vec<(u64, WriteErrno)>,
    /// `short-write=N`: each write accepts at most N bytes.
    pub short_write: Option<u32>,
    /// `flush-eio`: close(2) fails with EIO (after the data is written).
    pub flush_eio: bool,
    /// `fsync-eio`: fsync(2) and fdatasync(2) fail with EIO.
    pub fsync_eio: bool,
    /// `truncate-eio`: truncate(2) and ftruncate(2) fail with EIO.
    pub truncate_eio: bool,
    /// `fallocate-eopnotsupp`: fallocate(2) fails with EOPNOTSUPP.
    pub fallocate_eopnotsupp: bool,
    /// `size=N`: stat reports size N.
    pub size: Option<u64>,
    /// `no-seek`: lseek SEEK_DATA/SEEK_HOLE fail with EINVAL.
    pub no_seek: bool,
    /// `read-corrupt=OFF`: every read covering byte OFF returns it with its bits flipped.
    pub read_corrupt: Option<u64>,
    /// `read-corrupt-once=OFF`: the first read covering byte OFF returns it flipped; the
    /// fault is then gone (later reads are true).
    pub read_corrupt_once: Option<u64>,
    /// `write-corrupt-once=OFF`: the first write covering byte OFF stores it flipped (a write
    /// that did not land right); the fault is then gone.
    pub write_corrupt_once: Option<u64>,
}

/// The faults that are spent when they fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Once {
    /// `read-corrupt-once`.
    Read,
    /// `write-corrupt-once`.
    Write,
}

/// The errnos a write can be made to fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteErrno {
    Eio,
    Enospc,
    Edquot,
}

impl WriteErrno {
    pub fn raw(self) -> i32 {
        match self {
            WriteErrno::Eio => libc::EIO,
            WriteErrno::Enospc => libc::ENOSPC,
            WriteErrno::Edquot => libc::EDQUOT,
        }
    }

    fn token(self) -> &'static str {
        match self {
            WriteErrno::Eio => "write-eio",
            WriteErrno::Enospc => "write-enospc",
            WriteErrno::Edquot => "write-edquot",
        }
    }
}

impl Faults {
    /// Parses one `FAULT` token.
    fn add_token(&mut self, token: &str) -> Result<(), String> {
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (token, None),
        };
        let number = || -> Result<u64, String> {
            let value = value.ok_or_else(|| format!("{name} needs =N"))?;
            value
                .parse::<u64>()
                .map_err(|_| format!("{token}: {value:?} is not a number"))
        };
        let positive_u32 = || -> Result<u32, String> {
            let n = number()?;
            u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{token}: N must be 1 to {}", u32::MAX))
        };
        let flag = || -> Result<bool, String> {
            match value {
                None => Ok(true),
                Some(_) => Err(format!("{name} takes no value")),
            }
        };
        match name {
            "read-eio" => self.read_eio = Some(number()?),
            "short-read" => self.short_read = Some(positive_u32()?),
            "read-delay-ms" => self.read_delay_ms = Some(number()?),
            "write-eio" | "write-enospc" | "write-edquot" => {
                let errno = match name {
                    "write-eio" => WriteErrno::Eio,
                    "write-enospc" => WriteErrno::Enospc,
                    _ => WriteErrno::Edquot,
                };
                let offset = number()?;
                self.write_fail.retain(|(_, e)| *e != errno);
                self.write_fail.push((offset, errno));
            }
            "short-write" => self.short_write = Some(positive_u32()?),
            "flush-eio" => self.flush_eio = flag()?,
            "fsync-eio" => self.fsync_eio = flag()?,
            "truncate-eio" => self.truncate_eio = flag()?,
            "fallocate-eopnotsupp" => self.fallocate_eopnotsupp = flag()?,
            "size" => self.size = Some(number()?),
            "no-seek" => self.no_seek = flag()?,
            "read-corrupt" => self.read_corrupt = Some(number()?),
            "read-corrupt-once" => self.read_corrupt_once = Some(number()?),
            "write-corrupt-once" => self.write_corrupt_once = Some(number()?),
            _ => return Err(format!("unknown fault {token:?}")),
        }
        Ok(())
    }

    /// The first write failure: its offset and errno.
    pub fn write_failure(&self) -> Option<(u64, WriteErrno)> {
        self.write_fail.iter().copied().min_by_key(|(off, _)| *off)
    }

    /// Whether the file must be opened with direct I/O: any fault at all.
    pub fn any(&self) -> bool {
        *self != Faults::default()
    }
}

impl fmt::Display for Faults {
    /// The tokens, as `set` takes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tokens: Vec<String> = Vec::new();
        if let Some(n) = self.read_eio {
            tokens.push(format!("read-eio={n}"));
        }
        if let Some(n) = self.short_read {
            tokens.push(format!("short-read={n}"));
        }
        if let Some(n) = self.read_delay_ms {
            tokens.push(format!("read-delay-ms={n}"));
        }
        for (off, errno) in &self.write_fail {
            tokens.push(format!("{}={off}", errno.token()));
        }
        if let Some(n) = self.short_write {
            tokens.push(format!("short-write={n}"));
        }
        for (set, token) in [
            (self.flush_eio, "flush-eio"),
            (self.fsync_eio, "fsync-eio"),
            (self.truncate_eio, "truncate-eio"),
            (self.fallocate_eopnotsupp, "fallocate-eopnotsupp"),
        ] {
            if set {
                tokens.push(token.to_owned());
            }
        }
        if let Some(n) = self.size {
            tokens.push(format!("size={n}"));
        }
        if self.no_seek {
            tokens.push("no-seek".to_owned());
        }
        if let Some(n) = self.read_corrupt {
            tokens.push(format!("read-corrupt={n}"));
        }
        if let Some(n) = self.read_corrupt_once {
            tokens.push(format!("read-corrupt-once={n}"));
        }
        if let Some(n) = self.write_corrupt_once {
            tokens.push(format!("write-corrupt-once={n}"));
        }
        f.write_str(&tokens.join(" "))
    }
}

/// One control line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Set(PathBuf, Faults),
    Clear(PathBuf),
    ClearAll,
}

/// `RELPATH` made canonical: relative, without `.` or empty components; `..` is refused.
fn relative_path(text: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in Path::new(text).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{text:?}: `..` is not allowed"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("{text:?} names the root, not a file"));
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Option<Command>, String> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Ok(None);
    };
    if verb.starts_with('#') {
        return Ok(None);
    }
    let command = match verb {
        "set" => {
            let path = relative_path(words.next().ok_or("set needs RELPATH FAULT...")?)?;
            let mut faults = Faults::default();
            for token in words {
                faults.add_token(token)?;
            }
            if !faults.any() {
                return Err("set needs at least one FAULT".to_owned());
            }
            Command::Set(path, faults)
        }
        "clear" => {
            let path = relative_path(words.next().ok_or("clear needs RELPATH")?)?;
            if words.next().is_some() {
                return Err("clear takes one RELPATH".to_owned());
            }
            Command::Clear(path)
        }
        "clear-all" => {
            if words.next().is_some() {
                return Err("clear-all takes nothing".to_owned());
            }
            Command::ClearAll
        }
        _ => return Err(format!("unknown command {verb:?}")),
    };
    Ok(Some(command))
}

/// The faults of every path that has some.
#[derive(Debug, Default)]
pub struct FaultTable {
    by_path: Mutex<BTreeMap<PathBuf, Faults>>,
}

impl FaultTable {
    /// The faults of `path` (relative to the mount root), no fault if none is set.
    pub fn get(&self, path: &Path) -> Faults {
        self.lock().get(path).cloned().unwrap_or_default()
    }

    /// The byte of `path`'s `read-corrupt-once` or `write-corrupt-once` fault (`which`) if
    /// `bytes` holds it: the fault is then spent (removed, and the path's entry with it if it
    /// was the last).
    pub fn fire_once(&self, path: &Path, which: Once, bytes: std::ops::Range<u64>) -> Option<u64> {
        let mut table = self.lock();
        let faults = table.get_mut(path)?;
        let fault = match which {
            Once::Read => &mut faults.read_corrupt_once,
            Once::Write => &mut faults.write_corrupt_once,
        };
        match *fault {
            Some(off) if bytes.contains(&off) => {
                *fault = None;
                if !faults.any() {
                    table.remove(path);
                }
                Some(off)
            }
            _ => None,
        }
    }

    /// Applies the control lines in `text`: all of them, or none if one is bad (then the
    /// error names it).
    pub fn apply(&self, text: &str) -> Result<(), String> {
        let mut commands = Vec::new();
        for (n, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => {}
                Err(e) => return Err(format!("line {}: {line:?}: {e}", n + 1)),
            }
        }
        let mut table = self.lock();
        for command in commands {
            match command {
                Command::Set(path, faults) => {
                    table.insert(path, faults);
                }
                Command::Clear(path) => {
                    table.remove(&path);
                }
                Command::ClearAll => table.clear(),
            }
        }
        Ok(())
    }

    /// Every path with its faults, one `set` line each: what reading the control file gives.
    pub fn listing(&self) -> String {
        self.lock()
            .iter()
            .map(|(path, faults)| format!("set {} {faults}\n", path.display()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Faults>> {
        self.by_path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(line: &str) -> Faults {
        match parse_line(line) {
            Ok(Some(Command::Set(_, faults))) => faults,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn every_token_parses_and_prints_back() {
        let line = "set a/b read-eio=10 short-read=3 read-delay-ms=5 write-eio=7 \
                    write-enospc=8 write-edquot=9 short-write=2 flush-eio fsync-eio \
                    truncate-eio fallocate-eopnotsupp size=0 no-seek read-corrupt=11 \
                    read-corrupt-once=12 write-corrupt-once=13";
        let faults = set(line);
        assert_eq!(faults.read_eio, Some(10));
        assert_eq!(faults.short_read, Some(3));
        assert_eq!(faults.read_delay_ms, Some(5));
        assert_eq!(faults.write_failure(), Some((7, WriteErrno::Eio)));
        assert_eq!(faults.short_write, Some(2));
        assert!(faults.flush_eio && faults.fsync_eio && faults.truncate_eio);
        assert!(faults.fallocate_eopnotsupp && faults.no_seek);
        assert_eq!(faults.size, Some(0));
        assert_eq!(faults.read_corrupt, Some(11));
        assert_eq!(faults.read_corrupt_once, Some(12));
        assert_eq!(faults.write_corrupt_once, Some(13));
        let printed = format!("set a/b {faults}");
        assert_eq!(set(&printed), faults);
        assert_eq!(
            printed.split_whitespace().collect::<Vec<_>>(),
            line.split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_corrupt_once_fault_fires_once_and_only_where_it_is() {
        let table = FaultTable::default();
        table
            .apply("set f read-corrupt-once=100 write-corrupt-once=7 no-seek")
            .unwrap();
        let f = Path::new("f");
        assert_eq!(
            table.fire_once(f, Once::Read, 0..100),
            None,
            "fired before its byte"
        );
        assert_eq!(table.fire_once(Path::new("g"), Once::Read, 0..4096), None);
        assert_eq!(table.fire_once(f, Once::Read, 100..101), Some(100));
        assert_eq!(table.fire_once(f, Once::Read, 0..4096), None, "fired twice");
        assert_eq!(table.listing(), "set f no-seek write-corrupt-once=7\n");
        assert_eq!(table.fire_once(f, Once::Write, 0..4096), Some(7));
        assert_eq!(table.listing(), "set f no-seek\n");
        table.apply("set f read-corrupt-once=0").unwrap();
        assert_eq!(table.fire_once(f, Once::Read, 0..1), Some(0));
        assert_eq!(table.listing(), "", "a spent fault left an empty entry");
    }

    #[test]
    fn the_lowest_write_failure_wins() {
        let faults = set("set f write-edquot=100 write-enospc=50");
        assert_eq!(faults.write_failure(), Some((50, WriteErrno::Enospc)));
    }

    #[test]
    fn bad_lines_are_refused() {
        for line in [
            "set f",
            "set",
            "set f read-eio",
            "set f read-eio=x",
            "set f read-corrupt",
            "set f read-corrupt-once=x",
            "set f short-read=0",
            "set f short-write=0",
            "set f flush-eio=1",
            "set f bogus",
            "set ../f flush-eio",
            "set / flush-eio",
            "clear",
            "clear a b",
            "frob f",
        ] {
            assert!(parse_line(line).is_err(), "{line:?} was accepted");
        }
    }

    #[test]
    fn paths_are_canonical_and_apply_is_all_or_nothing() {
        let table = FaultTable::default();
        table
            .apply("set /d/./f no-seek\n\n# comment\nset g size=3\n")
            .unwrap();
        assert!(table.get(Path::new("d/f")).no_seek);
        assert_eq!(table.get(Path::new("g")).size, Some(3));
        assert!(table.apply("clear d/f\nset h bogus\n").is_err());
        assert!(
            table.get(Path::new("d/f")).no_seek,
            "a bad batch changed the table"
        );
        table.apply("clear d/f").unwrap();
        assert!(!table.get(Path::new("d/f")).any());
        assert_eq!(table.listing(), "set g size=3\n");
        table.apply("clear-all").unwrap();
        assert_eq!(table.listing(), "");
    }
}

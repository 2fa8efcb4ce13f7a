//! The proof that the filesystem tests ran: the report file they append to, and its table.
//!
//! Each test appends one line per filesystem it exercised,
//! `fs=<name> test=<test name> cases=<n>`, with `fs=<a>-><b>` for a test that works on a pair
//! (a copy from a file on `a` to one on `b`). Several lines for the same filesystem and test are
//! summed. A mounted filesystem that no line names with at least one case was skipped by the
//! tests, which fs-test treats as a failure: a silent skip must not pass for a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The names of fs-test's other targets, which tests may report too: the small tmpfs and the
/// spare block device. They are columns of the table when reported, never required.
pub const EXTRA_TARGETS: &[&str] = &["tiny", "blockdev"];

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// A filesystem name, or `a->b` for a pair.
    pub fs: String,
    pub test: String,
    pub cases: u64,
}

impl Entry {
    /// `Some((a, b))` for a pair entry `a->b`.
    fn pair(&self) -> Option<(&str, &str)> {
        self.fs.split_once("->")
    }

    /// The filesystems this entry exercised: one, or the two of a pair (one if both sides
    /// are the same).
    fn filesystems(&self) -> Vec<&str> {
        match self.pair() {
            Some((a, b)) if a == b => vec![a],
            Some((a, b)) => vec![a, b],
            None => vec![&self.fs],
        }
    }
}

/// A parsed report.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: Vec<Entry>,
    /// Lines that do not follow the format, as they were.
    pub malformed: Vec<String>,
}

/// Parses the report file's text. Blank lines and `#` comments are skipped; keys other than
/// `fs`, `test` and `cases` are allowed and ignored, so the tests may add detail later.
pub fn parse(text: &str) -> Report {
    let mut report = Report::default();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed) {
            Some(entry) => report.entries.push(entry),
            None => report.malformed.push(line.to_owned()),
        }
    }
    report
}

fn parse_line(line: &str) -> Option<Entry> {
    let (mut fs, mut test, mut cases) = (None, None, None);
    for field in line.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "fs" => fs = Some(value),
            "test" => test = Some(value),
            "cases" => cases = Some(value.parse::<u64>().ok()?),
            _ => {}
        }
    }
    let fs = fs.filter(|f| !f.is_empty() && !f.starts_with("->") && !f.ends_with("->"))?;
    let test = test.filter(|t| !t.is_empty())?;
    Some(Entry {
        fs: fs.to_owned(),
        test: test.to_owned(),
        cases: cases?,
    })
}

impl Report {
    /// Cases per filesystem, pairs counting for both sides.
    fn cases_per_fs(&self) -> BTreeMap<&str, u64> {
        let mut per_fs = BTreeMap::new();
        for entry in &self.entries {
            for fs in entry.filesystems() {
                *per_fs.entry(fs).or_insert(0) += entry.cases;
            }
        }
        per_fs
    }

    /// The mounted filesystems on which no case ran.
    pub fn unexercised<'a>(&self, mounted: &[&'a str]) -> Vec<&'a str> {
        let per_fs = self.cases_per_fs();
        mounted
            .iter()
            .copied()
            .filter(|fs| per_fs.get(fs).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// Names in the report that are neither mounted filesystems nor [`EXTRA_TARGETS`].
    pub fn unknown_filesystems(&self, mounted: &[&str]) -> Vec<String> {
        let known: BTreeSet<&str> = mounted.iter().chain(EXTRA_TARGETS).copied().collect();
        let unknown: BTreeSet<&str> = self
            .entries
            .iter()
            .flat_map(Entry::filesystems)
            .filter(|fs| !known.contains(fs))
            .collect();
        unknown.into_iter().map(str::to_owned).collect()
    }

    pub fn total_cases(&self) -> u64 {
        self.entries.iter().map(|e| e.cases).sum()
    }

    /// The tables: cases per test and filesystem (mounted ones first, in their order), then
    /// for each pair test its cases per source and destination. `-` marks a test that reported nothing for a filesystem, `0` one
    /// that reported zero cases.
    pub fn render(&self, mounted: &[&str]) -> String {
        let per_fs = self.cases_per_fs();
        let mut columns: Vec<String> = mounted.iter().map(|s| (*s).to_owned()).collect();
        columns.extend(
            EXTRA_TARGETS
                .iter()
                .filter(|name| per_fs.contains_key(*name))
                .map(|name| (*name).to_owned()),
        );
        columns.extend(self.unknown_filesystems(mounted));

        // (is a pair test, test) -> (fs -> cases, cases of the test)
        let mut rows: BTreeMap<(bool, &str), Row<'_>> = BTreeMap::new();
        for entry in &self.entries {
            let (cells, total) = rows
                .entry((entry.pair().is_some(), entry.test.as_str()))
                .or_default();
            for fs in entry.filesystems() {
                *cells.entry(fs).or_insert(0) += entry.cases;
            }
            *total += entry.cases;
        }

        let mut table = vec![header_row("test", &columns)];
        for ((is_pair, test), (cells, test_total)) in &rows {
            let name = if *is_pair {
                format!("{test} (pairs)")
            } else {
                (*test).to_owned()
            };
            let mut row = vec![name];
            row.extend(columns.iter().map(|fs| match cells.get(fs.as_str()) {
                Some(n) => n.to_string(),
                None => "-".to_owned(),
            }));
            row.push(test_total.to_string());
            table.push(row);
        }
        let mut total = vec!["total".to_owned()];
        total.extend(
            columns
                .iter()
                .map(|fs| per_fs.get(fs.as_str()).copied().unwrap_or(0).to_string()),
        );
        total.push(self.total_cases().to_string());
        table.push(total);

        let mut out = String::from(
            "cases run per test and filesystem (a pair test counts for both of its filesystems)\n",
        );
        out.push_str(&format_table(&table));

        // test -> (source, destination) -> cases
        let mut pairs: BTreeMap<&str, BTreeMap<(&str, &str), u64>> = BTreeMap::new();
        for entry in &self.entries {
            if let Some(pair) = entry.pair() {
                *pairs
                    .entry(&entry.test)
                    .or_default()
                    .entry(pair)
                    .or_insert(0) += entry.cases;
            }
        }
        for (test, cells) in &pairs {
            let mut table = vec![header_row("from \\ to", &columns)];
            for from in &columns {
                let mut row = vec![from.clone()];
                let mut row_total = 0;
                for to in &columns {
                    row.push(match cells.get(&(from.as_str(), to.as_str())) {
                        Some(n) => {
                            row_total += n;
                            n.to_string()
                        }
                        None => "-".to_owned(),
                    });
                }
                row.push(row_total.to_string());
                table.push(row);
            }
            let _ = write!(
                out,
                "\n{test}: cases per source (rows) and destination (columns)\n"
            );
            out.push_str(&format_table(&table));
        }
        out
    }
}

/// The cells of one test's row (filesystem -> cases) and the test's own total.
type Row<'a> = (BTreeMap<&'a str, u64>, u64);

fn header_row(first: &str, columns: &[String]) -> Vec<String> {
    let mut row = vec![first.to_owned()];
    row.extend(columns.iter().cloned());
    row.push("total".to_owned());
    row
}

/// Columns padded to their widest cell: the first left-aligned, the others right-aligned.
fn format_table(rows: &[Vec<String>]) -> String {
    let width = |col: usize| {
        rows.iter()
            .filter_map(|r| r.get(col))
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(width)
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (col, cell) in row.iter().enumerate() {
            if col == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[col]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTED: &[&str] = &["ext4", "xfs", "tmpfs"];

    #[test]
    fn lines_are_parsed_and_odd_ones_kept_aside() {
        let report = parse(
            "fs=ext4 test=map_model cases=10\n\
             \n\
             # a comment\n\
             fs=ext4->xfs test=copy cases=3 seed=42\n\
             fs=xfs test=map_model\n\
             fs=xfs test=map_model cases=many\n\
             garbage\n\
             fs=->xfs test=copy cases=1\n",
        );
        assert_eq!(
            report.entries,
            [
                Entry {
                    fs: "ext4".into(),
                    test: "map_model".into(),
                    cases: 10
                },
                Entry {
                    fs: "ext4->xfs".into(),
                    test: "copy".into(),
                    cases: 3
                },
            ]
        );
        assert_eq!(report.malformed.len(), 4);
    }

    #[test]
    fn a_filesystem_is_exercised_by_single_or_pair_cases() {
        let report = parse(
            "fs=ext4 test=map cases=5\n\
             fs=ext4->xfs test=copy cases=2\n\
             fs=tmpfs test=map cases=0\n",
        );
        assert_eq!(report.unexercised(MOUNTED), ["tmpfs"]);
        assert_eq!(parse("").unexercised(MOUNTED), MOUNTED);
        assert_eq!(report.total_cases(), 7);
    }

    #[test]
    fn unknown_names_are_reported_and_extra_targets_known() {
        let report = parse(
            "fs=ext4->vfat test=copy cases=1\n\
             fs=tiny test=enospc cases=1\n\
             fs=blockdev test=dev cases=2\n",
        );
        assert_eq!(report.unknown_filesystems(MOUNTED), ["vfat"]);
        let table = report.render(MOUNTED);
        assert!(
            table.contains("test          ext4  xfs  tmpfs  tiny  blockdev  vfat  total\n"),
            "{table}"
        );
        assert!(report.unexercised(MOUNTED).contains(&"xfs"));
    }

    #[test]
    fn the_table_sums_per_test_and_filesystem() {
        let report = parse(
            "fs=ext4 test=map cases=5\n\
             fs=ext4 test=map cases=7\n\
             fs=xfs test=map cases=0\n\
             fs=ext4->xfs test=copy cases=2\n\
             fs=xfs->xfs test=copy cases=1\n",
        );
        let table = report.render(MOUNTED);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "test          ext4  xfs  tmpfs  total");
        assert_eq!(lines[2], "map             12    0      -     12");
        assert_eq!(lines[3], "copy (pairs)     2    3      -      3");
        assert_eq!(lines[4], "total           14    3      0     15");
        assert_eq!(
            lines[6],
            "copy: cases per source (rows) and destination (columns)"
        );
        assert_eq!(lines[7], "from \\ to  ext4  xfs  tmpfs  total");
        assert_eq!(lines[8], "ext4          -    2      -      2");
        assert_eq!(lines[9], "xfs           -    1      -      1");
        assert_eq!(lines[10], "tmpfs         -    -      -      0");
    }
}

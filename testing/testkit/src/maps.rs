//! Maps of a file: the kernel's own SEEK_DATA walk, the library's maps every way it can be
//! asked, `blockmap map --json` parsed, and the checks of a map against a model.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use blockmap_core::{Backend, BackendChoice, BlockMap, Error, Extent, MapOptions};

use crate::ensure;
use crate::ranges::{check_tiling, first_uncovered, merged, short};

/// The kernel's own SEEK_DATA/SEEK_HOLE walk of the whole file, merged; `None` when this
/// filesystem has no SEEK_DATA (then it has no opinion and everything may be data).
pub fn kernel_walk(file: &File) -> Result<Option<Vec<Range<u64>>>, String> {
    let size = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
    match seekmap::DataSegments::new(file, 0..size).collect::<Result<Vec<_>, _>>() {
        Ok(v) => Ok(Some(merged(v))),
        Err(e) if e.is_unsupported() => Ok(None),
        Err(e) => Err(format!("kernel walk: {e}")),
    }
}

/// How a map was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub backend: BackendChoice,
    pub batch: u32,
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend {} (batch {})", self.backend, self.batch)
    }
}

/// Every way the library is asked: auto, each backend, and FIEMAP with one extent per call
/// (every call ends full and without LAST) and with many.
pub const ASKS: [Ask; 5] = [
    Ask {
        backend: BackendChoice::Auto,
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Fiemap),
        batch: 1,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Fiemap),
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::Seek),
        batch: 4096,
    },
    Ask {
        backend: BackendChoice::Only(Backend::None),
        batch: 4096,
    },
];

/// One map taken by the library (of the whole file or of a window), with the kernel walk taken
/// just before it.
#[derive(Debug, Clone)]
pub struct LibMap {
    pub ask: Ask,
    /// The window asked (`0..u64::MAX` for the whole file).
    pub window: Range<u64>,
    pub backend: Backend,
    pub size: u64,
    pub block_size: u32,
    pub data: Vec<Range<u64>>,
    pub holes: Vec<Range<u64>>,
    /// The raw FIEMAP extents (empty for the other backends).
    pub extents: Vec<Extent>,
    pub kernel: Option<Vec<Range<u64>>>,
}

/// Maps `file` as `ask` says; `Ok(None)` when that backend is not supported on it.
pub fn lib_map(path: &Path, file: &File, ask: Ask) -> Result<Option<LibMap>, String> {
    lib_map_window(path, file, ask, 0..u64::MAX)
}

/// Maps `window` of `file` as `ask` says; `Ok(None)` when that backend is not supported.
pub fn lib_map_window(
    path: &Path,
    file: &File,
    ask: Ask,
    window: Range<u64>,
) -> Result<Option<LibMap>, String> {
    let kernel = kernel_walk(file)?;
    let options = MapOptions {
        backend: ask.backend,
        sync: false,
        fiemap_batch: ask.batch,
    };
    let map = match BlockMap::with_path(file, path, options) {
        Ok(map) => map,
        Err(Error::Unsupported { .. }) if ask.backend != BackendChoice::Auto => return Ok(None),
        Err(e) => return Err(format!("{ask}: {e}")),
    };
    let data = map.data(window.clone()).collect::<Result<Vec<_>, _>>();
    let holes = map.holes(window.clone()).collect::<Result<Vec<_>, _>>();
    let extents = map.extents(window.clone()).collect::<Result<Vec<_>, _>>();
    let fail = |what: &str, e: Error| format!("{ask}, window {window:?}: {what}: {e}");
    Ok(Some(LibMap {
        ask,
        window: window.clone(),
        backend: map.backend(),
        size: map.size(),
        block_size: map.block_size(),
        data: data.map_err(|e| fail("data", e))?,
        holes: holes.map_err(|e| fail("holes", e))?,
        extents: extents.map_err(|e| fail("extents", e))?,
        kernel,
    }))
}

impl LibMap {
    /// The logical ranges of the raw extents.
    pub fn extent_ranges(&self) -> Vec<Range<u64>> {
        self.extents.iter().map(|e| e.logical.clone()).collect()
    }
}

/// One raw extent of `map --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliExtent {
    pub start: u64,
    pub end: u64,
    pub physical: u64,
    pub flags: Vec<String>,
}

/// The parsed output of `blockmap map --json`, with the kernel walk taken just before it.
#[derive(Debug, Clone)]
pub struct CliMap {
    pub path: String,
    pub size: u64,
    pub block_size: u64,
    pub backend: String,
    pub data: Vec<Range<u64>>,
    pub holes: Vec<Range<u64>>,
    pub extents: Vec<CliExtent>,
    pub kernel: Option<Vec<Range<u64>>>,
}

impl CliMap {
    /// Parses the output of `blockmap map --json`, which must hold its schema
    /// (`map.schema.json`: exactly the documented keys, known extent flags); `kernel` is the
    /// kernel walk taken just before it ran.
    pub fn parse(stdout: &str, kernel: Option<Vec<Range<u64>>>) -> Result<CliMap, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Json {
            #[serde(rename = "version")]
            _version: u32,
            path: String,
            size: u64,
            block_size: u64,
            backend: String,
            data: Vec<[u64; 2]>,
            holes: Vec<[u64; 2]>,
            extents: Vec<CliExtent>,
        }
        let value = crate::schema::parse(crate::schema::Doc::Map, stdout)
            .map_err(|e| format!("map --json: {e}"))?;
        let json: Json =
            serde_json::from_value(value).map_err(|e| format!("map --json: {e}: {stdout:.400}"))?;
        for e in &json.extents {
            for f in &e.flags {
                ensure!(
                    fiemap_sys::EXTENT_FLAG_NAMES.iter().any(|(_, n)| n == f),
                    "map --json: unknown extent flag {f}"
                );
            }
        }
        let ranges = |v: Vec<[u64; 2]>| v.into_iter().map(|[a, b]| a..b).collect();
        Ok(CliMap {
            path: json.path,
            size: json.size,
            block_size: json.block_size,
            backend: json.backend,
            data: ranges(json.data),
            holes: ranges(json.holes),
            extents: json.extents,
            kernel,
        })
    }

    /// The logical ranges of the raw extents.
    pub fn extent_ranges(&self) -> Vec<Range<u64>> {
        self.extents.iter().map(|e| e.start..e.end).collect()
    }
}

/// Checks one map's data against the model and the kernel: every non-zero byte inside data,
/// and (except for the none backend, which calls everything data) no data where the kernel
/// walk taken just before saw none.
pub fn check_data(
    what: &str,
    backend: &str,
    data: &[Range<u64>],
    kernel: Option<&Vec<Range<u64>>>,
    nonzero: &[Range<u64>],
) -> Result<(), String> {
    if let Some(r) = first_uncovered(data, nonzero) {
        return Err(format!(
            "{what}: non-zero bytes {r:?} are not inside a data range; data {}",
            short(data)
        ));
    }
    if backend != "none"
        && let Some(kernel) = kernel
        && let Some(r) = first_uncovered(kernel, data)
    {
        return Err(format!(
            "{what}: data {r:?} is more than the kernel's SEEK_DATA walk {}; data {}",
            short(kernel),
            short(data)
        ));
    }
    Ok(())
}

/// Checks a FIEMAP map's raw extents as README.md's "Map" describes them ("the raw detail"):
/// each non-empty, in file order without overlaps or repeats, and together covering every data
/// range (a FIEMAP map's data comes from its extents). Says every kind of fault it finds.
pub fn check_extents(
    what: &str,
    extents: &[Range<u64>],
    data: &[Range<u64>],
) -> Result<(), String> {
    let mut faults = Vec::new();
    if let Some((i, e)) = extents.iter().enumerate().find(|(_, e)| e.start >= e.end) {
        faults.push(format!("extent {i} is empty: {e:?}"));
    }
    if let Some(i) = (1..extents.len()).find(|&i| extents[i].start < extents[i - 1].end) {
        faults.push(format!(
            "extent {i} {:?} overlaps or repeats extent {} {:?}",
            extents[i],
            i - 1,
            extents[i - 1]
        ));
    }
    let union = merged(extents.to_vec());
    if let Some(r) = first_uncovered(&union, data) {
        faults.push(format!(
            "data {r:?} is in no extent (they end at {:?})",
            union.last().map(|e| e.end)
        ));
    }
    ensure!(
        faults.is_empty(),
        "{what}: {} ({} extents)",
        faults.join("; "),
        extents.len()
    );
    Ok(())
}

/// Checks one library map (of the whole file or of a window) against the model's size and
/// non-zero runs and against the kernel walk taken before it.
pub fn check_lib_map(m: &LibMap, size: u64, nonzero: &[Range<u64>]) -> Result<(), String> {
    let what = if m.window == (0..u64::MAX) {
        m.ask.to_string()
    } else {
        format!("{}, window {:?}", m.ask, m.window)
    };
    ensure!(
        m.size == size,
        "{what}: size {} but the file has {size} bytes",
        m.size
    );
    let window = m.window.start.min(size)..m.window.end.min(size);
    check_tiling(&m.data, &m.holes, window.clone()).map_err(|e| format!("{what}: {e}"))?;
    let nonzero: Vec<Range<u64>> = nonzero
        .iter()
        .map(|r| r.start.max(window.start)..r.end.min(window.end))
        .filter(|r| r.start < r.end)
        .collect();
    check_data(
        &what,
        m.backend.name(),
        &m.data,
        m.kernel.as_ref(),
        &nonzero,
    )?;
    // (A FIEMAP map's data need not lie inside its extents: see [`check_extents`], which is
    // not part of this check.)
    if m.backend != Backend::Fiemap {
        ensure!(
            m.extents.is_empty(),
            "{what}: extents from backend {}",
            m.backend
        );
    }
    Ok(())
}

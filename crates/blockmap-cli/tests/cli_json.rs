//! Machine output as a contract: every `--json` document of `blockmap` (`map`, `copy`,
//! `bmap copy`) checked against its JSON Schema (`crates/blockmap-cli/schemas`, through
//! `testkit::schema`), on files of every kind (empty, all hole, all data, mixed, preallocated,
//! data at an offset near the filesystem's largest) in every test directory (`$TMPDIR`,
//! `/dev/shm`, fs-test's mounts), with every backend; and the schemas themselves: valid
//! against the draft 2020-12 metaschema, every field typed and described, strict enough to
//! refuse a document with a field added, removed or out of range.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use testkit::schema::{self, Doc};

use crate::common::{BLOCKMAP, CliMap, blockmap, check_tiling, s, test_dirs};

/// Non-zero bytes, so that what a copy wrote can be told from a hole.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1)
        .collect()
}

/// One file to map and copy.
struct Sample {
    name: &'static str,
    path: PathBuf,
    size: u64,
}

impl Sample {
    /// Small enough to read whole, compress, map with the none backend.
    fn small(&self) -> bool {
        self.size <= 64 << 20
    }
}

/// The files of every kind in `dir`.
fn samples(dir: &Path) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, make: &dyn Fn(&File) -> std::io::Result<()>| {
        let path = dir.join(format!("{name}.img"));
        let f = File::create(&path).unwrap();
        make(&f).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let size = f.metadata().unwrap().len();
        out.push(Sample { name, path, size });
    };
    add("empty", &|_| Ok(()));
    add("holes", &|f| f.set_len(64 << 20));
    add("data", &|f| f.write_all_at(&bytes((1 << 20) + 333, 1), 0));
    add("mixed", &|f| {
        f.write_all_at(&bytes(70_000, 1), 0)?;
        f.write_all_at(&bytes(5000, 2), (3 << 20) + 123)?;
        f.write_all_at(&bytes(1 << 20, 3), 9 << 20)?;
        f.write_all_at(&bytes(333, 4), (16 << 20) - 333)
    });
    // Unwritten extents with written blocks inside: FIEMAP's `unwritten` flag.
    add("prealloc", &|f| {
        rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, 8 << 20)?;
        f.write_all_at(&bytes(8192, 5), 1 << 20)
    });
    // One block of data at the end of the largest file this filesystem takes (tmpfs: 4 EiB).
    let path = dir.join("huge.img");
    let f = File::create(&path).unwrap();
    let size = [1u64 << 62, 1 << 43, 1 << 40, 1 << 34, 1 << 32]
        .into_iter()
        .find(|&size| f.write_all_at(&bytes(4096, 6), size - 4096).is_ok())
        .unwrap_or_else(|| panic!("{path:?}: no write past 4 GiB"));
    f.set_len(size).unwrap();
    out.push(Sample {
        name: "huge",
        path,
        size,
    });
    out
}

/// A tempdir in each test directory, with its samples.
fn each_dir(mut check: impl FnMut(&Path, &[Sample])) {
    for dir in test_dirs() {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        let samples = samples(tmp.path());
        eprintln!(
            "{}: {}",
            dir.display(),
            samples
                .iter()
                .map(|s| format!("{} {}", s.name, s.size))
                .collect::<Vec<_>>()
                .join(", ")
        );
        check(tmp.path(), &samples);
    }
}

/// `blockmap ARGS`, which must succeed with one line of JSON on stdout and nothing on stderr,
/// checked against `doc`'s schema.
fn json_of(doc: Doc, args: &[&str]) -> Value {
    json_checked(doc, args, &blockmap(args))
}

fn json_checked(doc: Doc, args: &[&str], out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "blockmap {args:?}: {} {stderr}",
        out.status
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "blockmap {args:?}: {stdout:.400}"
    );
    assert!(
        stdout.starts_with("{\"version\":"),
        "blockmap {args:?}: version first: {stdout:.400}"
    );
    schema::parse(doc, &stdout).unwrap_or_else(|e| panic!("blockmap {args:?}: {e}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn map_json_holds_its_schema_for_every_file_and_backend() {
    let mut seen = BTreeSet::new();
    each_dir(|_, samples| {
        for sample in samples {
            for backend in ["auto", "fiemap", "seek", "none"] {
                if backend == "none" && !sample.small() {
                    continue; // all data: its JSON is small, but copying it would not be
                }
                let args = ["map", "--json", "--backend", backend, s(&sample.path)];
                let out = blockmap(&args);
                if !out.status.success() {
                    // A backend asked for by name that this filesystem lacks (fiemap on tmpfs).
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        backend != "auto" && stderr.contains("not supported here"),
                        "blockmap {args:?}: {stderr}"
                    );
                    continue;
                }
                let stdout = String::from_utf8_lossy(&out.stdout);
                let map = CliMap::parse(&stdout, None).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(map.size, sample.size, "{args:?}");
                check_tiling(&map.data, &map.holes, 0..map.size)
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert!(backend == "auto" || map.backend == backend, "{args:?}");
                seen.insert(map.backend.clone());
                // --holes is for the table: the JSON has both already, and is the same.
                let with_holes = json_of(Doc::Map, &[&args[..4], &["--holes", args[4]]].concat());
                let again = CliMap::parse(&with_holes.to_string(), None).unwrap();
                assert_eq!((again.data, again.holes), (map.data, map.holes), "{args:?}");
            }
        }
    });
    assert_eq!(
        seen,
        BTreeSet::from(["fiemap", "none", "seek"].map(String::from)),
        "every backend checked somewhere"
    );
}

#[test]
fn copy_json_holds_its_schema_for_every_file_and_option() {
    let variants: [&[&str]; 9] = [
        &[],
        &["--reflink", "never"],
        &["--detect-zeros"],
        &["--backend", "seek"],
        &["--backend", "none"],
        &["--skip", "1M", "--seek", "4097", "--length", "5M"],
        &["--method", "read-write"],
        &["--method", "copy-file-range"],
        &["--sync"],
    ];
    each_dir(|dir, samples| {
        for sample in samples {
            for (i, extra) in variants.iter().enumerate() {
                let skip = if extra.contains(&"1M") { 1 << 20 } else { 0 };
                if extra.contains(&"none") && !sample.small() || skip > sample.size {
                    continue;
                }
                // A new DST, and (for the small) an existing one full of data to clear.
                let dst = dir.join(format!("{}.copy{i}", sample.name));
                let old = dir.join(format!("{}.over{i}", sample.name));
                let mut dsts = vec![(dst.clone(), true)];
                if sample.small() {
                    File::create(&old)
                        .unwrap()
                        .write_all(&bytes(sample.size as usize + 4096, 9))
                        .unwrap();
                    dsts.push((old.clone(), false));
                }
                for (dst, new) in dsts {
                    let mut args = vec!["copy", "--json", "--no-progress"];
                    args.extend(*extra);
                    args.extend([s(&sample.path), s(&dst)]);
                    let report = json_of(Doc::CopyReport, &args);
                    let length = sample.size.saturating_sub(skip);
                    let length = if extra.contains(&"5M") {
                        length.min(5 << 20)
                    } else {
                        length
                    };
                    assert_eq!(u64_of(&report, "length"), length, "{args:?}");
                    assert_eq!(
                        u64_of(&report, "data_bytes") + u64_of(&report, "hole_bytes"),
                        length,
                        "{args:?}: {report}"
                    );
                    let by_method: u64 = [
                        "reflinked_bytes",
                        "copy_file_range_bytes",
                        "read_write_bytes",
                        "zero_skipped_bytes",
                    ]
                    .iter()
                    .map(|k| u64_of(&report, k))
                    .sum();
                    assert_eq!(by_method, u64_of(&report, "data_bytes"), "{args:?}");
                    assert_eq!(report["created"], json!(new), "{args:?}");
                    if sample.small() && skip == 0 && new {
                        let copied = std::fs::read(&dst).unwrap();
                        assert!(copied == std::fs::read(&sample.path).unwrap(), "{args:?}");
                    }
                    std::fs::remove_file(&dst).unwrap();
                }
            }
        }
    });
}

/// `blockmap ARGS` with `stdin` as its standard input.
fn blockmap_with_stdin(args: &[&str], stdin: File) -> Output {
    Command::new(BLOCKMAP)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::from(stdin))
        .output()
        .unwrap()
}

#[test]
fn bmap_copy_json_holds_its_schema_for_every_file_and_input() {
    each_dir(|dir, samples| {
        for sample in samples {
            let bmap = dir.join(format!("{}.bmap", sample.name));
            let dst = dir.join(format!("{}.flashed", sample.name));
            let (image, bmap_arg) = (s(&sample.path), s(&bmap));
            let mut runs: Vec<(Vec<&str>, Option<File>, &str)> =
                vec![(vec!["--nobmap", image], None, "none")];
            // bmaptool, too, makes no bmap of an empty image.
            if sample.size > 0 {
                let out = blockmap(&["bmap", "create", "-o", bmap_arg, image]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs.extend([
                    (vec![image], None, "none"),
                    (vec!["--no-verify", image], None, "none"),
                    (vec!["--checksum-retry", "1", image], None, "none"),
                ]);
            }
            // Streams: a gzip file, and a pipe on stdin; both read to their end.
            let gz = dir.join(format!("{}.img.gz", sample.name));
            if sample.small() && sample.size > 0 {
                let mut enc = flate2::write::GzEncoder::new(
                    File::create(&gz).unwrap(),
                    flate2::Compression::fast(),
                );
                enc.write_all(&std::fs::read(&sample.path).unwrap())
                    .unwrap();
                enc.finish().unwrap();
                let stdin = File::open(&sample.path).unwrap();
                runs.extend([
                    (vec!["--bmap", bmap_arg, s(&gz)], None, "gzip"),
                    (vec!["--bmap", bmap_arg, "-"], Some(stdin), "none"),
                ]);
            }
            for (extra, stdin, compression) in runs {
                let mut args = vec!["bmap", "copy", "--json", "--no-progress"];
                args.extend(&extra);
                args.push(s(&dst));
                let out = match stdin {
                    Some(stdin) => blockmap_with_stdin(&args, stdin),
                    None => blockmap(&args),
                };
                let report = json_checked(Doc::BmapCopyReport, &args, &out);
                assert_eq!(u64_of(&report, "image_size"), sample.size, "{args:?}");
                assert!(u64_of(&report, "mapped_bytes") <= sample.size, "{args:?}");
                assert_eq!(report["compression"], json!(compression), "{args:?}");
                assert_eq!(
                    report["readback"].is_object(),
                    extra.contains(&"--checksum-retry"),
                    "{args:?}: {report}"
                );
                let verifies = !extra.contains(&"--nobmap") && !extra.contains(&"--no-verify");
                assert_eq!(
                    u64_of(&report, "verified_ranges"),
                    if verifies {
                        u64_of(&report, "ranges")
                    } else {
                        0
                    },
                    "{args:?}: {report}"
                );
                assert_eq!(report["checksum_type"].is_string(), verifies, "{report}");
                if sample.small() {
                    let flashed = std::fs::read(&dst).unwrap();
                    assert!(flashed == std::fs::read(&sample.path).unwrap(), "{args:?}");
                }
            }
            for path in [&dst, &gz, &bmap] {
                let _ = std::fs::remove_file(path);
            }
        }
    });
}

#[test]
fn the_schemas_hold_the_metaschema_and_describe_every_field() {
    for doc in Doc::ALL {
        schema::check_schema(doc).unwrap();
        let schema = doc.schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            doc.file_name()
        );
        for key in ["$id", "title", "description"] {
            assert!(schema[key].is_string(), "{}: {key}", doc.file_name());
        }
        assert_eq!(schema["properties"]["version"]["const"], 1);
        check_objects(doc.file_name(), &schema);
    }
}

/// Every object schema inside `v`: each property described and typed, all of them required,
/// no others allowed.
fn check_objects(at: &str, v: &Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(props)) = o.get("properties") {
                let names: BTreeSet<&str> = props.keys().map(String::as_str).collect();
                let required: BTreeSet<&str> = o["required"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{at}: no required"))
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                assert_eq!(names, required, "{at}: every field is required");
                assert_eq!(o["additionalProperties"], json!(false), "{at}");
                for (name, p) in props {
                    assert!(p["description"].is_string(), "{at}/{name}: no description");
                    let typed = ["type", "enum", "const", "$ref", "oneOf"]
                        .iter()
                        .any(|k| p.get(k).is_some());
                    assert!(typed, "{at}/{name}: no type");
                }
            }
            for (k, inner) in o {
                check_objects(&format!("{at}/{k}"), inner);
            }
        }
        Value::Array(a) => a.iter().for_each(|inner| check_objects(at, inner)),
        _ => {}
    }
}

/// The names the schemas list are the names the code prints.
#[test]
fn the_schemas_enums_are_the_codes_names() {
    let enum_at = |doc: Doc, pointer: &str| -> Vec<Value> {
        doc.schema()
            .pointer(pointer)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{}: no {pointer}", doc.file_name()))
            .clone()
    };
    let names = |names: &[&str]| names.iter().map(|n| json!(n)).collect::<Vec<_>>();
    let flags: Vec<_> = fiemap_sys::EXTENT_FLAG_NAMES
        .iter()
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        enum_at(Doc::Map, "/$defs/extent/properties/flags/items/enum"),
        names(&flags)
    );
    use blockmap_core::Backend;
    let backends = [Backend::Fiemap, Backend::Seek, Backend::None].map(Backend::name);
    for doc in [Doc::Map, Doc::CopyReport] {
        assert_eq!(enum_at(doc, "/properties/backend/enum"), names(&backends));
    }
    use sparsecopy::Transfer;
    let methods = [
        Transfer::Reflink,
        Transfer::CopyFileRange,
        Transfer::ReadWrite,
    ]
    .map(Transfer::name);
    assert_eq!(
        enum_at(Doc::CopyReport, "/properties/methods/items/enum"),
        names(&methods)
    );
    use blockmap_bmap::{ChecksumType, Compression};
    let mut checksums = names(
        &[
            ChecksumType::Md5,
            ChecksumType::Sha1,
            ChecksumType::Sha224,
            ChecksumType::Sha256,
            ChecksumType::Sha384,
            ChecksumType::Sha512,
        ]
        .map(ChecksumType::name),
    );
    checksums.push(Value::Null);
    assert_eq!(
        enum_at(Doc::BmapCopyReport, "/properties/checksum_type/enum"),
        checksums
    );
    let compressions = [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Lz4,
    ]
    .map(Compression::name);
    assert_eq!(
        enum_at(Doc::BmapCopyReport, "/properties/compression/enum"),
        names(&compressions)
    );
}

/// A real document of each kind, from a mixed file in `$TMPDIR`.
fn real_documents(dir: &Path) -> Vec<(Doc, Value)> {
    let samples = samples(dir);
    let mixed = samples.iter().find(|s| s.name == "mixed").unwrap();
    let (img, copy, bmap, flashed) = (
        s(&mixed.path),
        dir.join("copy.img"),
        dir.join("mixed.bmap"),
        dir.join("flashed.img"),
    );
    let out = blockmap(&["bmap", "create", "-o", s(&bmap), img]);
    assert!(out.status.success());
    vec![
        (Doc::Map, json_of(Doc::Map, &["map", "--json", img])),
        (
            Doc::CopyReport,
            json_of(Doc::CopyReport, &["copy", "--json", img, s(&copy)]),
        ),
        (
            Doc::BmapCopyReport,
            json_of(
                Doc::BmapCopyReport,
                &[
                    "bmap",
                    "copy",
                    "--json",
                    "--checksum-retry",
                    "1",
                    img,
                    s(&flashed),
                ],
            ),
        ),
    ]
}

/// The schemas can fail: a document with a field added (at the top or in a nested object),
/// removed, of the wrong type or out of range, or of another version, is refused.
#[test]
fn a_document_unlike_its_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (doc, real) in real_documents(tmp.path()) {
        schema::validate(doc, &real).unwrap();
        let refused = |what: &str, changed: &Value| {
            assert!(
                schema::validate(doc, changed).is_err(),
                "{}: {what} passes: {changed}",
                doc.file_name()
            );
        };
        let keys: Vec<String> = real.as_object().unwrap().keys().cloned().collect();
        for key in &keys {
            let mut v = real.clone();
            v.as_object_mut().unwrap().remove(key);
            refused(&format!("without {key}"), &v);
            let mut v = real.clone();
            v[key] = json!({ "unexpected": true });
            refused(&format!("{key} an object"), &v);
        }
        let mut v = real.clone();
        v["unexpected"] = json!(1);
        refused("an undocumented field", &v);
        let mut v = real.clone();
        v["version"] = json!(2);
        refused("version 2", &v);
        // Nested objects are closed too; integers are unsigned.
        let (nested, integer) = match doc {
            Doc::Map => ("/extents/0", "/size"),
            Doc::CopyReport => ("/syscalls", "/data_bytes"),
            Doc::BmapCopyReport => ("/readback", "/mapped_bytes"),
        };
        let mut v = real.clone();
        v.pointer_mut(nested).unwrap()["unexpected"] = json!(1);
        refused(&format!("an undocumented field in {nested}"), &v);
        let mut v = real.clone();
        *v.pointer_mut(integer).unwrap() = json!(-1);
        refused(&format!("{integer} negative"), &v);
        *v.pointer_mut(integer).unwrap() = json!(1.5);
        refused(&format!("{integer} a fraction"), &v);
        if doc != Doc::BmapCopyReport {
            let mut v = real.clone();
            v["backend"] = json!("ioctl");
            refused("an unknown backend", &v);
        }
    }
}

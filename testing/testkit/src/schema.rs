//! The JSON Schemas of `blockmap`'s `--json` documents (`crates/blockmap-cli/schemas`),
//! compiled once per test process, and the check of a document against its schema.

use std::sync::OnceLock;

use serde_json::Value;

/// A `--json` document of `blockmap`, by its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    /// `blockmap map --json`.
    Map,
    /// `blockmap copy --json`.
    CopyReport,
    /// `blockmap bmap copy --json`.
    BmapCopyReport,
}

impl Doc {
    pub const ALL: [Doc; 3] = [Doc::Map, Doc::CopyReport, Doc::BmapCopyReport];

    /// The schema's file name in `crates/blockmap-cli/schemas`.
    pub fn file_name(self) -> &'static str {
        match self {
            Doc::Map => "map.schema.json",
            Doc::CopyReport => "copy-report.schema.json",
            Doc::BmapCopyReport => "bmap-copy-report.schema.json",
        }
    }

    /// The schema, as shipped.
    pub fn schema_text(self) -> &'static str {
        match self {
            Doc::Map => include_str!("../../../crates/blockmap-cli/schemas/map.schema.json"),
            Doc::CopyReport => {
                include_str!("../../../crates/blockmap-cli/schemas/copy-report.schema.json")
            }
            Doc::BmapCopyReport => {
                include_str!("../../../crates/blockmap-cli/schemas/bmap-copy-report.schema.json")
            }
        }
    }

    /// The schema as JSON.
    pub fn schema(self) -> Value {
        serde_json::from_str(self.schema_text())
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.file_name()))
    }

    fn index(self) -> usize {
        match self {
            Doc::Map => 0,
            Doc::CopyReport => 1,
            Doc::BmapCopyReport => 2,
        }
    }
}

/// The draft of the schemas.
const METASCHEMA: &str = "https://json-schema.org/draft/2020-12/schema";

struct Compiled {
    schemas: boon::Schemas,
    docs: [boon::SchemaIndex; 3],
    metaschema: boon::SchemaIndex,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let metaschema = compiler
            .compile(METASCHEMA, &mut schemas)
            .unwrap_or_else(|e| panic!("the metaschema {METASCHEMA}: {e:#}"));
        let docs = Doc::ALL.map(|doc| {
            let schema = doc.schema();
            let loc = schema["$id"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no $id", doc.file_name()))
                .to_owned();
            let invalid = |e: boon::CompileError| -> ! {
                panic!("{}: not a valid schema: {e:#}", doc.file_name())
            };
            compiler
                .add_resource(&loc, schema)
                .unwrap_or_else(|e| invalid(e));
            compiler
                .compile(&loc, &mut schemas)
                .unwrap_or_else(|e| invalid(e))
        });
        Compiled {
            schemas,
            docs,
            metaschema,
        }
    })
}

/// Checks `value` against `doc`'s schema; the error names every failure found.
pub fn validate(doc: Doc, value: &Value) -> Result<(), String> {
    let c = compiled();
    c.schemas
        .validate(value, c.docs[doc.index()])
        .map_err(|e| format!("{} does not hold: {e}", doc.file_name()))
}

/// Parses `text` (one `--json` document) and checks it against `doc`'s schema.
pub fn parse(doc: Doc, text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("{}: not JSON ({e}): {text:.400}", doc.file_name()))?;
    validate(doc, &value).map_err(|e| format!("{e}\nin {text:.400}"))?;
    Ok(value)
}

/// Checks `doc`'s schema itself against the draft 2020-12 metaschema.
pub fn check_schema(doc: Doc) -> Result<(), String> {
    let c = compiled();
    c.schemas
        .validate(&doc.schema(), c.metaschema)
        .map_err(|e| format!("{}: against the metaschema: {e}", doc.file_name()))
}

//! Reading a stack file's text of either kind (plumb's TOML, or a Compose file) with what a
//! Compose file needs from the machine: the folder it sits in names the stack when the file
//! does not, and its `env_file`s are read from there. Every caller that parses a stack file,
//! also again from a stack's record, goes through [`parse`].

use std::collections::BTreeMap;
use std::path::Path;

use plumb_core::diag::Diagnostics;
use plumb_core::spec::{self, ComposeInput, Parsed};

/// Parses and validates `text` (named `file` in diagnostics), a file in folder `dir`, with
/// some services' replica counts replaced.
pub fn parse(file: &str, text: &str, dir: &Path, replicas: &BTreeMap<String, u32>) -> Result<Parsed, Diagnostics> {
    let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let read = |path: &str| std::fs::read_to_string(dir.join(path)).map_err(|e| e.to_string());
    let input = ComposeInput {
        dir_name,
        read_env_file: &read,
    };
    spec::parse_any_scaled(file, text, &input, replicas)
}

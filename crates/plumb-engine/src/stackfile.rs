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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_files_read_env_files_and_their_name_from_their_folder() {
        let dir = std::env::temp_dir().join(format!("plumb-stackfile-{}", std::process::id()));
        let dir = dir.join("My App");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.env"), "GREETING=hello\n").unwrap();
        let text = "services:\n  a:\n    command: [/bin/true]\n    env_file: app.env\n";
        let parsed = parse("compose.yaml", text, &dir, &BTreeMap::new()).unwrap();
        assert_eq!(parsed.stack.name, "my-app");
        assert_eq!(
            parsed.stack.services["a"].process.as_ref().unwrap().env["GREETING"],
            "hello"
        );
        // Scaled as `plumb scale` does; a TOML file by its name.
        let scaled = parse("compose.yaml", text, &dir, &BTreeMap::from([("a".to_string(), 3)])).unwrap();
        assert_eq!(scaled.stack.services["a"].replicas, 3);
        let e = parse("plumb.toml", text, &dir, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().starts_with("plumb.toml:1:"), "{e}");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}

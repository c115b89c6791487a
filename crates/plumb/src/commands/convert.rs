//! `plumb convert`: a Compose file (or any stack file) as the plumb stack file (TOML) that
//! brings up the same stack, on stdout.

use std::io::Write as _;
use std::path::Path;

use crate::failure::{Failure, Result};
use crate::stackfile;

pub fn run(file: &Path) -> Result<()> {
    let parsed = stackfile::load(file)?;
    let toml = plumb_core::spec::to_toml(&parsed.stack).map_err(|why| {
        Failure::new(format!("cannot convert {}: {why}", parsed.file))
            .hint("keep the TOML file as it is")
            .code(2)
    })?;
    let header = format!(
        "# Converted from {} by `plumb convert`: the same stack, every setting written out.\n",
        parsed.file
    );
    std::io::stdout()
        .write_all(format!("{header}{toml}").as_bytes())
        .map_err(|e| Failure::new(format!("cannot write the stack file: {e}")))
}

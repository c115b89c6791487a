//! `plumb graph`: the stack's topology as Graphviz dot or a Mermaid flowchart, from a stack
//! that is up (by name) or from a stack file (addresses as `up` would give them).

use std::path::Path;

use plumb_core::desired::{self, Desired};
use plumb_core::graph::{self, GraphFormat};

use super::{require_stack_name, Context};
use crate::failure::{Failure, Result};
use crate::stackfile;

pub fn run(ctx: &Context, stack: Option<&str>, file: &Path, format: GraphFormat) -> Result<()> {
    let desired = match stack {
        Some(name) => of_stack(ctx, name)?,
        None => of_file(ctx, file)?,
    };
    print!("{}", graph::render(&desired, format));
    Ok(())
}

fn of_stack(ctx: &Context, name: &str) -> Result<Desired> {
    require_stack_name(name)?;
    let unknown = || {
        Failure::new(format!("no stack called {name:?} is up"))
            .hint("`plumb ps` lists the stacks that are up; `plumb graph -f FILE` draws a stack file")
            .code(2)
    };
    let state = ctx.state.load(name).map_err(|_| unknown())?.ok_or_else(unknown)?;
    state.desired.ok_or_else(unknown)
}

/// The stack as `up` would make it: addresses already leased stay as they are.
fn of_file(ctx: &Context, file: &Path) -> Result<Desired> {
    let parsed = stackfile::load(file)?;
    let previous = ctx
        .state
        .load(&parsed.stack.name)
        .ok()
        .flatten()
        .map(|s| s.leases)
        .unwrap_or_default();
    Ok(desired::resolve(&parsed, &previous)?.0)
}

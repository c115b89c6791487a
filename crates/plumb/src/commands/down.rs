//! `plumb down`: remove everything a stack made (namespaces, veths, bridges, its nft table)
//! and nothing else. Works from the kernel's own records even if the state file is gone.

use plumb_core::{plan, Step};

use super::{require_nft, require_root, Context};
use crate::apply::Executor;
use crate::failure::Result;
use crate::observe::observe;
use crate::processes;

pub fn run(ctx: &Context, stack: &str) -> Result<()> {
    require_root("down")?;
    require_nft()?;
    let _lock = ctx.state.lock()?;
    let state = ctx.state.load(stack)?;
    // Processes first, each with its stop_grace: they keep namespaces alive.
    processes::stop_supervisor(&ctx.state.stack_dir(stack))?;
    let actual = observe(stack, None, state.as_ref())?;
    let plan = plan::diff(stack, None, &actual);
    if plan.is_empty() && state.is_none() {
        println!("stack {stack} is not up: nothing to remove");
        return Ok(());
    }
    Executor::new()?.run(&plan)?;
    ctx.state.remove(stack)?;
    ctx.state.restore_forwarding_if_last()?;
    let containers = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::DeleteContainer { .. }))
        .count();
    let networks = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::DeleteBridge { .. }))
        .count();
    println!("stack {stack} removed ({containers} containers, {networks} networks)");
    Ok(())
}

//! `plumb down`: remove everything a stack made (namespaces, veths, bridges, its nft table)
//! and nothing else, or print that plan with `--dry-run`. Works from the kernel's own records
//! even if the state file is gone. A teardown goes on past failures and reports them all.

use plumb_engine::Engine;

use super::up::print_plan;
use super::{require_nft, require_root, require_stack_name, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{count, say};
use crate::{apply, faults, processes, runfile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun(Format),
}

pub fn run(ctx: &Context, stack: &str, mode: Mode) -> Result<()> {
    remove(ctx, stack, mode).map(|_| ())
}

/// `plumb down STACK`: a stack named on the command line that plumb knows nothing of (no
/// record, nothing in the kernel) is an input error (exit 2), not a quiet success: a typo
/// must not look like a teardown.
pub fn run_named(ctx: &Context, stack: &str, mode: Mode) -> Result<()> {
    match remove(ctx, stack, mode)? {
        true => Ok(()),
        false => Err(
            Failure::new(format!("no stack called {stack:?} is up: nothing to remove"))
                .hint("`plumb ps` lists the stacks that are up")
                .code(2),
        ),
    }
}

/// Removes the stack; false when there was nothing of it to remove.
fn remove(ctx: &Context, stack: &str, mode: Mode) -> Result<bool> {
    require_stack_name(stack)?;
    require_root("down")?;
    require_nft()?;
    let mut kernel = apply::kernel()?;
    let mut engine = Engine::open(&mut kernel, &ctx.state)?;
    let stack_dir = ctx.state.stack_dir(stack);
    if mode == Mode::Apply {
        // Faults first (their relays, taps, redirects and tables), then processes, each with
        // its stop_grace: they keep namespaces alive.
        let kernel = engine.kernel().expect("an engine on a kernel");
        let errors = faults::remove_all(kernel, stack, &stack_dir)?;
        if !errors.is_empty() {
            eprintln!("plumb: removing faults: {}", errors.join("; "));
        }
        processes::stop_supervisor(&stack_dir)?;
        let specs = runfile::read_run(&stack_dir).specs;
        // What a crashed supervisor left in cgroups (a clean stop leaves nothing).
        let kernel = engine.kernel().expect("an engine on a kernel");
        for spec in specs.iter().filter(|s| s.oci.is_none()) {
            crate::processes::remove_cgroup(kernel, &plumb_core::cgroup::replica_path(stack, &spec.container));
        }
        // What a crashed supervisor left in podman (a clean stop leaves nothing).
        if crate::oci::runs_containers(&specs) {
            let n = crate::oci::remove_stack(stack)?;
            if n > 0 {
                say!("removed {} left in podman", count(n, "container"));
            }
        }
    }
    let teardown = engine.plan_down(stack)?;
    for warning in &teardown.warnings {
        eprintln!("plumb: {warning}");
    }
    if let Mode::DryRun(format) = mode {
        let recorded = faults::read(&stack_dir).unwrap_or_default();
        let chaos_ops = faults::undo_all(engine.kernel().expect("an engine on a kernel"), stack, &recorded);
        let chaos = match chaos_ops.is_empty() {
            true => String::new(),
            false => format!(
                "# Faults made by `plumb chaos` go first: their redirects, taps and tables; their relays end.\n{}\n",
                chaos_ops.iter().map(|op| op.command()).collect::<Vec<_>>().join("\n")
            ),
        };
        let preamble = chaos
            + &match runfile::live_supervisor(&stack_dir) {
                Some(pid) => format!(
                    "# First the stack's supervisor stops (it would restart what the plan ends); it stops its services itself.\n\
                 kill -TERM {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done\n"
                ),
                None => String::new(),
            };
        return print_plan(&teardown.plan, "plumb down", &preamble, format).map(|_| true);
    }
    if !teardown.exists {
        say!("stack {stack} is not up: nothing to remove");
        return Ok(false);
    }
    let removed = apply::with_progress(|progress| engine.down(teardown, progress))?;
    say!(
        "stack {stack} removed ({} and {})",
        count(removed.containers, "container"),
        count(removed.networks, "network")
    );
    Ok(true)
}

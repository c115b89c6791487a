//! `plumb up`: make the kernel match the stack file (observe, diff, execute), or print the
//! plan as a script with `--dry-run`.

use std::collections::BTreeMap;
use std::path::Path;

use plumb_core::spec::Parsed;
use plumb_core::{desired, plan, render, Actual, Desired, Diagnostics, Step};

use super::{require_nft, require_root, Context};
use crate::apply::Executor;
use crate::failure::Result;
use crate::observe::observe;
use crate::stackfile;
use crate::state::StackState;

pub fn run(ctx: &Context, file: &Path, dry_run: bool) -> Result<()> {
    let parsed = stackfile::load(file)?;
    let stack = parsed.stack.name.clone();
    let root = nix::unistd::geteuid().is_root();
    if !dry_run {
        require_root("up")?;
        require_nft()?;
    }
    let _lock = if root { Some(ctx.state.lock()?) } else { None };
    let state = ctx.state.load(&stack)?;
    let previous = state.as_ref().map(|s| s.leases.clone()).unwrap_or_default();
    let (desired, leases) = desired::resolve(&parsed, &previous)?;
    check_other_stacks(&parsed, &desired, &ctx.state.stacks()?)?;
    let actual = if root {
        observe(&stack, Some(&desired), state.as_ref())?
    } else {
        Actual::default()
    };
    let plan = plan::diff(&stack, Some(&desired), &actual);

    if dry_run {
        print!("{}", render::script(&plan));
        if !root {
            eprintln!("note: not running as root, so the kernel was not read: this is the plan from scratch");
        }
        return Ok(());
    }

    // Record the intent first: an `up` killed from here on is finished or undone by the next
    // `up` or `down`, which find every namespace and network listed here.
    let mut st = state.unwrap_or_default();
    st.stack = stack.clone();
    st.file = Some(stackfile::absolute(file));
    st.desired = Some(desired.clone());
    st.leases = leases;
    st.namespaces
        .extend(desired.containers.iter().map(|c| c.netns.clone()));
    st.networks
        .extend(desired.networks.iter().map(|n| n.name.clone()));
    ctx.state.save(&st)?;

    let mut executor = Executor::new()?;
    let result = executor.run(&plan);
    if let Some(applied) = executor.firewall.take() {
        st.firewall = Some(applied);
    }
    if result.is_ok() {
        st.namespaces = desired.containers.iter().map(|c| c.netns.clone()).collect();
        st.networks = desired.networks.iter().map(|n| n.name.clone()).collect();
    }
    ctx.state.save(&st)?;
    result?;
    println!("{}", summary(&desired, &plan.steps));
    Ok(())
}

fn summary(desired: &Desired, steps: &[Step]) -> String {
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let created = count(|s| matches!(s, Step::CreateContainer(_)));
    let removed = count(|s| matches!(s, Step::DeleteContainer { .. }));
    if steps.is_empty() {
        return format!(
            "stack {}: up to date ({} containers, {} networks)",
            desired.stack,
            desired.containers.len(),
            desired.networks.len()
        );
    }
    format!(
        "stack {}: {} containers on {} networks ({created} created, {removed} removed, {} unchanged)",
        desired.stack,
        desired.containers.len(),
        desired.networks.len(),
        desired.containers.len().saturating_sub(created)
    )
}

/// Two stacks must not claim the same addresses or host ports.
fn check_other_stacks(
    parsed: &Parsed,
    desired: &Desired,
    stacks: &BTreeMap<String, StackState>,
) -> std::result::Result<(), Diagnostics> {
    let mut errors = Vec::new();
    for (name, other) in stacks.iter().filter(|(n, _)| **n != desired.stack) {
        let Some(theirs) = &other.desired else {
            continue;
        };
        for net in &desired.networks {
            for t in &theirs.networks {
                if net.subnet.contains(&t.subnet.network())
                    || t.subnet.contains(&net.subnet.network())
                {
                    errors.push(parsed.error(
                        &format!("networks.{}.subnet", net.name),
                        format!(
                            "{} overlaps network {:?} ({}) of stack {name:?}, which is up",
                            net.subnet, t.name, t.subnet
                        ),
                        "pick another address range, or `plumb down` the other stack",
                    ));
                }
            }
        }
        let their_ports: Vec<_> = theirs
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().map(|p| (p.host, p.protocol)))
            .collect();
        for (svc, spec) in &parsed.stack.services {
            for (i, p) in spec.ports.iter().enumerate() {
                if their_ports.contains(&(p.host, p.protocol)) {
                    errors.push(parsed.error(
                        &format!("services.{svc}.ports[{i}]"),
                        format!(
                            "host port {}/{} is already published by stack {name:?}",
                            p.host,
                            p.protocol.as_str()
                        ),
                        "pick another host port, or `plumb down` the other stack",
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors))
    }
}

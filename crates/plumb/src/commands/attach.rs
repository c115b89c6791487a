//! `plumb attach` and `plumb detach`: a container someone else made (a runtime's namespace,
//! what a CNI ADD and DEL give) joined to, or taken off, a network of a stack that is up,
//! through the engine like any change. Its namespace and processes stay its owner's.

use std::path::Path;

use plumb_core::desired::Attachment;
use plumb_core::What;
use plumb_engine::{Change, Engine};
use serde_json::json;

use super::{require_nft, require_root, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{print_json, say};
use crate::{apply, events, stackfile};

pub struct Request<'a> {
    /// `STACK/NAME`.
    pub target: &'a str,
    pub network: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub service: Option<&'a str>,
}

/// `STACK/NAME` split; both are required (an attached container has no stack file to name).
fn split(target: &str) -> Result<(&str, &str)> {
    match stackfile::qualified(target) {
        (Some(stack), name) if !name.is_empty() => {
            super::require_stack_name(stack)?;
            Ok((stack, name))
        }
        _ => Err(Failure::new(format!("{target:?} is not STACK/NAME"))
            .hint("name the stack and the container: `plumb attach shop/ext-1 --network backend --netns /run/netns/X`")
            .code(2)),
    }
}

pub fn attach(ctx: &Context, request: &Request, format: Format) -> Result<()> {
    require_root("attach")?;
    require_nft()?;
    let (stack, name) = split(request.target)?;
    let attachment = Attachment {
        name: name.to_string(),
        network: request.network.to_string(),
        netns_path: request.netns.display().to_string(),
        ifname: request.ifname.to_string(),
        service: request.service.map(str::to_string),
        container_id: None,
    };
    let change = attach_container(ctx, stack, attachment)?;
    let c = change
        .desired
        .container(name)
        .ok_or_else(|| Failure::new(format!("{name} is not in the stack after attaching it")))?;
    let i = &c.interfaces[0];
    match format {
        Format::Json => print_json(&json!({
            "stack": stack, "name": name, "netns": c.netns, "interface": i.name,
            "address": i.cidr().to_string(), "gateway": c.gateway.map(|g| g.to_string()),
            "mac": i.mac.to_string(), "host_veth": i.host_veth, "bridge": i.bridge,
            "dns": change.desired.networks.iter().find(|n| n.name == i.network).map(|n| n.gateway.to_string()),
        })),
        Format::Human => say!(
            "{stack}/{name}: {} {} on {} (gateway {})",
            i.name,
            i.cidr(),
            i.network,
            c.gateway.map_or("none".to_string(), |g| g.to_string())
        ),
    }
    Ok(())
}

/// The one way a container someone else made joins a stack (`plumb attach` and CNI's ADD):
/// its namespace path checked, then the engine's `plan_attach` and `apply`.
pub fn attach_container(ctx: &Context, stack: &str, attachment: Attachment) -> Result<Change> {
    let netns = namespace_path(Path::new(&attachment.netns_path))?;
    let attachment = Attachment {
        netns_path: netns.display().to_string(),
        ..attachment
    };
    apply_change(ctx, stack, |engine| engine.plan_attach(stack, attachment))
}

/// The one way attached containers leave a stack (`plumb detach`, CNI's DEL and GC): every
/// one `doomed` picks, in one change.
pub fn detach_containers(ctx: &Context, stack: &str, doomed: impl Fn(&Attachment) -> bool) -> Result<Change> {
    apply_change(ctx, stack, |engine| engine.plan_detach_where(stack, doomed))
}

/// The canonical path of a network namespace file, or why it is not one.
fn namespace_path(path: &Path) -> Result<std::path::PathBuf> {
    // The folder is made canonical, not the file: `/proc/PID/ns/net` is a link to no path.
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = path.file_name().unwrap_or_default();
    let netns = std::fs::canonicalize(folder).map(|f| f.join(file)).map_err(|e| {
        Failure::new(format!("{}: {e}", path.display()))
            .hint("give the path of the container's network namespace (/run/netns/NAME or /proc/PID/ns/net)")
            .code(2)
    })?;
    // NSFS_MAGIC: what a namespace file (bound or /proc's) is.
    let is_namespace = nix::sys::statfs::statfs(&netns).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673);
    if !is_namespace {
        return Err(Failure::new(format!("{} is not a network namespace", netns.display()))
            .hint("give the path of the container's network namespace (/run/netns/NAME or /proc/PID/ns/net)")
            .code(2));
    }
    Ok(netns)
}

pub fn detach(ctx: &Context, target: &str) -> Result<()> {
    require_root("detach")?;
    require_nft()?;
    let (stack, name) = split(target)?;
    let change = detach_containers(ctx, stack, |a| a.name == name)?;
    match change.plan.is_empty() {
        true => say!("{stack}/{name} is not attached: nothing to do"),
        false => say!("{stack}/{name} detached"),
    }
    Ok(())
}

/// Plans with `plan`, applies, and records the containers' events.
fn apply_change(
    ctx: &Context,
    stack: &str,
    plan: impl FnOnce(&mut Engine) -> plumb_engine::Result<Change>,
) -> Result<Change> {
    let mut kernel = apply::kernel()?;
    let mut engine = Engine::open(&mut kernel, &ctx.state)?;
    let change = plan(&mut engine)?;
    let change = apply::with_progress(|progress| engine.apply(change, &mut |_, _| Ok(()), progress))?;
    if !change.plan.is_empty() {
        let base = change.base().to_path_buf();
        super::up::refresh_supervisor(ctx, &change.desired, &base)?;
    }
    drop(engine);
    let dir = ctx.state.stack_dir(stack);
    for step in &change.plan.steps {
        match &step.what {
            What::CreateContainer { container, .. } => events::record(&dir, stack, container, "attached", ""),
            What::DeleteContainer { container, .. } => events::record(&dir, stack, container, "detached", ""),
            _ => {}
        }
    }
    Ok(change)
}

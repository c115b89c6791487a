//! plumb as a CNI plugin: run with `CNI_COMMAND` set and no subcommand (as
//! `/usr/lib/cni/plumb`, which `plumb cni install` links), it answers ADD, DEL, CHECK,
//! STATUS, GC and VERSION for a network of a stack that is up. The protocol is
//! `plumb_core::cni` (pure); this is its I/O, and every change goes through the engine by
//! the same functions `plumb attach` and `plumb detach` use.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use plumb_core::cni::{self, code, CniError, Made, NetConf, Verb};
use plumb_core::desired::Desired;
use plumb_engine::state::StackState;
use plumb_engine::Engine;
use serde_json::Value;

use super::attach::{attach_container, detach_containers};
use super::Context;
use crate::apply;
use crate::failure::{Failure, Result};
use crate::output::say;

/// The plugin: reads the environment and stdin, prints the result (or the error) as JSON
/// on stdout, as the spec asks; exits 0, or 1 with an error.
pub fn plugin(ctx: &Context) -> ExitCode {
    let mut stdin = Vec::new();
    let env = cni::parse_env(|name| std::env::var(name).ok());
    // VERSION needs no configuration: stdin is not waited for.
    let read = match &env {
        Ok(env) if env.verb == Verb::Version => Ok(0),
        _ => std::io::stdin().read_to_end(&mut stdin),
    };
    // Every answer is in the version the configuration asked for, when it asked for one
    // plumb speaks.
    let version = cni::conf_version(&stdin).unwrap_or_else(|_| cni::SPEC_VERSION.to_string());
    let answer = match (env, read) {
        (Err(e), _) => Err(e),
        (Ok(env), _) if env.verb == Verb::Version => Ok(Some(cni::version_info())),
        (Ok(_), Err(e)) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot read the network configuration on stdin: {e}"),
            "",
        )),
        (Ok(env), Ok(_)) => cni::parse_conf(&stdin).and_then(|conf| serve(ctx, &env, &conf)),
    };
    let (value, exit) = match answer {
        Ok(Some(value)) => (Some(value), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "plumb: {} ({})", e.msg, e.details);
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(value) = value {
        let _ = writeln!(std::io::stdout().lock(), "{value}");
    }
    exit
}

fn serve(ctx: &Context, env: &cni::Env, conf: &NetConf) -> std::result::Result<Option<Value>, CniError> {
    // The configuration's state directory wins over the environment's, which runtimes do not
    // always pass on.
    let named;
    let ctx = match &conf.state_dir {
        Some(dir) => {
            named = Context {
                state: plumb_engine::state::StateDir::new(dir.into()),
            };
            &named
        }
        None => ctx,
    };
    let record = ctx.state.load(&conf.stack).map_err(|e| from_failure(e.into()))?;
    match env.verb {
        Verb::Add => add(ctx, env, conf, record).map(Some),
        Verb::Del => del(ctx, env, conf, record).map(|()| None),
        Verb::Check => check(ctx, env, conf, record).map(|()| None),
        Verb::Status => status(conf, record).map(|()| None),
        Verb::Gc => gc(ctx, conf, record).map(|()| None),
        Verb::Version => Ok(Some(cni::version_info())),
    }
}

/// The stack's record with its desired state, or the spec's "not available" with the way out.
fn up_stack(conf: &NetConf, record: Option<StackState>, code: u32) -> std::result::Result<Desired, CniError> {
    record.and_then(|r| r.desired).ok_or_else(|| {
        CniError::new(
            code,
            format!("stack {} is not up", conf.stack),
            format!(
                "run `plumb up` for stack {} first (its network {} must exist before containers join it)",
                conf.stack, conf.network
            ),
        )
    })
}

fn add(
    ctx: &Context,
    env: &cni::Env,
    conf: &NetConf,
    record: Option<StackState>,
) -> std::result::Result<Value, CniError> {
    let desired = up_stack(conf, record, code::NOT_AVAILABLE)?;
    require_tools()?;
    let attachment = cni::attachment(env, conf, |s| desired.service(s).is_some());
    let name = attachment.name.clone();
    let change = attach_container(ctx, &conf.stack, attachment).map_err(from_failure)?;
    let made = change
        .desired
        .container(&name)
        .and_then(|c| c.interfaces.first())
        .and_then(|i| Some((i, change.desired.network(&i.network)?)))
        .map(|(i, net)| Made {
            host_ifname: i.host_veth.clone(),
            ifname: i.name.clone(),
            mac: i.mac.to_string(),
            sandbox: env.netns.clone(),
            address: i.cidr(),
            gateway: net.gateway,
            nameservers: vec![net.gateway.to_string()],
            search: vec![conf.stack.clone()],
        })
        .ok_or_else(|| {
            CniError::new(
                code::KERNEL_FAILED,
                format!("{name} is not in stack {} after attaching it", conf.stack),
                "",
            )
        })?;
    Ok(cni::add_result(&conf.cni_version, conf.prev_result.as_ref(), &made))
}

/// DEL succeeds whenever nothing of the container is left: repeated, after the stack went
/// down, or with its namespace gone.
fn del(ctx: &Context, env: &cni::Env, conf: &NetConf, record: Option<StackState>) -> std::result::Result<(), CniError> {
    let attached = record.is_some_and(|r| {
        r.attached
            .iter()
            .any(|a| cni::is_attachment(a, &env.container_id, &env.ifname))
    });
    if !attached {
        return Ok(());
    }
    require_tools()?;
    detach_containers(ctx, &conf.stack, |a| {
        cni::is_attachment(a, &env.container_id, &env.ifname)
    })
    .map(|_| ())
    .map_err(from_failure)
}

fn check(
    ctx: &Context,
    env: &cni::Env,
    conf: &NetConf,
    record: Option<StackState>,
) -> std::result::Result<(), CniError> {
    let unknown = || {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {} ({}) is not attached to network {} of stack {}",
                env.container_id, env.ifname, conf.network, conf.stack
            ),
            "ADD it first",
        )
    };
    let record = record.ok_or_else(unknown)?;
    let attachment = (record.attached.iter())
        .find(|a| cni::is_attachment(a, &env.container_id, &env.ifname) && a.network == conf.network)
        .ok_or_else(unknown)?;
    let container = (record.desired.as_ref())
        .and_then(|d| d.container(&attachment.name))
        .ok_or_else(unknown)?;
    let interface = container.interfaces.first().ok_or_else(unknown)?;
    cni::check_prev_result(conf.prev_result.as_ref(), interface.cidr())?;
    let mut kernel = apply::kernel().map_err(from_failure)?;
    let mut engine = Engine::open(&mut kernel, &ctx.state).map_err(|e| from_failure(e.into()))?;
    let kernel = engine
        .kernel()
        .ok_or_else(|| CniError::new(code::IO_FAILURE, "no kernel", ""))?;
    let observed = kernel
        .netns(&container.netns)
        .map_err(|e| from_failure(plumb_engine::Error::from(e).into()))?;
    cni::check_interface(interface, observed.as_ref())
}

/// Ready when the stack is up with the network.
fn status(conf: &NetConf, record: Option<StackState>) -> std::result::Result<(), CniError> {
    let desired = up_stack(conf, record, code::NOT_AVAILABLE_LIMITED)?;
    match desired.network(&conf.network) {
        Some(_) => Ok(()),
        None => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("stack {} has no network {}", conf.stack, conf.network),
            "name one of the stack's networks in the configuration's \"network\"",
        )),
    }
}

/// Detaches, in one change, the containers CNI attached to this network that the runtime
/// no longer lists.
fn gc(ctx: &Context, conf: &NetConf, record: Option<StackState>) -> std::result::Result<(), CniError> {
    let Some(record) = record else { return Ok(()) };
    let doomed: Vec<String> = cni::garbage(&record.attached, &conf.network, &conf.valid_attachments)
        .into_iter()
        .map(|a| a.name.clone())
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    require_tools()?;
    detach_containers(ctx, &conf.stack, |a| doomed.contains(&a.name))
        .map(|_| ())
        .map_err(from_failure)
}

/// What changing the kernel needs, said before anything is tried.
fn require_tools() -> std::result::Result<(), CniError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CniError::new(
            code::KERNEL_FAILED,
            "the plumb CNI plugin needs root: it changes network namespaces, links and nft rules",
            "run the runtime as root (rootless podman cannot use it)",
        ));
    }
    super::require_nft().map_err(from_failure)
}

/// plumb's failures as CNI errors: refusals of the request (exit 2 elsewhere) are plumb's
/// code 100, the rest 101; the hint becomes the details.
fn from_failure(f: Failure) -> CniError {
    let code = match f.code {
        2 => code::REFUSED,
        _ => code::KERNEL_FAILED,
    };
    CniError::new(code, f.message, f.hint.unwrap_or_default())
}

/// `plumb cni conflist`: the network configuration list for `/etc/cni/net.d/NAME.conflist`.
pub fn conflist(ctx: &Context, stack: &str, network: &str, name: Option<&str>) -> Result<()> {
    super::require_stack_name(stack)?;
    if !plumb_core::spec::valid_host_name(network) || network.contains('.') {
        return Err(Failure::new(format!("{network:?} is not a network name"))
            .hint("name a network of the stack file's [networks]")
            .code(2));
    }
    let name = name.map_or_else(|| format!("{stack}-{network}"), str::to_string);
    let state_dir = std::path::absolute(ctx.state.root()).map_err(|e| Failure::new(e.to_string()))?;
    let list = cni::conflist(&name, stack, network, &state_dir.display().to_string());
    let text = serde_json::to_string_pretty(&list).map_err(|e| Failure::new(e.to_string()))?;
    say!("{text}");
    Ok(())
}

/// `plumb cni install [DIR]`: links this binary as DIR/plumb, where runtimes look for
/// plugins by their `type`.
pub fn install(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| Failure::new(format!("cannot find the plumb binary: {e}")))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())).hint("run it as root"))?;
    let link = dir.join("plumb");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&link).is_ok_and(|target| target == exe) {
                say!("{} already links {}", link.display(), exe.display());
                return Ok(());
            }
        }
        Ok(_) => {
            return Err(Failure::new(format!("{} exists and is not a link", link.display()))
                .hint("remove it (another plugin called plumb?), or install into another folder")
                .code(2))
        }
        Err(_) => {}
    }
    // Made beside it and renamed over it: a runtime never finds the plugin missing.
    let temporary = dir.join(format!(".plumb.{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&exe, &temporary)
        .and_then(|()| std::fs::rename(&temporary, &link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            Failure::new(format!("cannot link {}: {e}", link.display())).hint("run it as root")
        })?;
    say!("{} -> {}", link.display(), exe.display());
    say!("next: plumb cni conflist STACK NETWORK > /etc/cni/net.d/STACK-NETWORK.conflist");
    Ok(())
}

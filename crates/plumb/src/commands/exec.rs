//! `plumb exec CONTAINER -- CMD ...`: run a command inside a container's network namespace;
//! plumb's exit code is the command's.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use plumb_linux::netns;

use super::{require_root, Context};
use crate::failure::{Failure, Result};
use crate::stackfile::find_container;

pub fn run(ctx: &Context, container: &str, command: &[String]) -> Result<()> {
    require_root("exec")?;
    let (_, c) = find_container(&ctx.state, container)?;
    let fd = netns::open(&c.netns).map_err(|e| {
        Failure::from(e).hint("the container's namespace is gone: run `plumb up` to recreate it")
    })?;
    netns::enter(fd.as_fd())?;
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new("no command given").hint("plumb exec CONTAINER -- CMD ARGS..."));
    };
    let err = Command::new(program).args(args).exec();
    Err(Failure::new(format!("cannot run {program:?} in {}: {err}", c.name)).code(127))
}

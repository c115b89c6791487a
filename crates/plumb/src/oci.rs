//! Podman, for image services: `up` builds (or checks) their images, the supervisor runs
//! each replica as `podman run` in the foreground joined to the replica's own namespace,
//! exec health checks run with `podman exec`, and `up`'s supervisor and `down` remove the
//! containers a stack left in podman (found by their label). Podman reads its own
//! configuration (`CONTAINERS_CONF`, `/etc/containers/containers.conf`): plumb passes it on
//! unchanged (see docs/oci.md).

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plumb_core::oci::{self, Mounts, OciRun};
use plumb_core::services::RunSpec;
use plumb_core::spec::{Image, Parsed};

use crate::failure::{Failure, Result};

/// A `podman` command with plumb's environment (podman's configuration variables pass
/// through) and no input.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.stdin(Stdio::null());
    command
}

/// Starts one replica's container: `podman run` in a session of its own (so the supervisor
/// signals its group as a host program's), with its output piped to the replica's log. The
/// container's environment reaches podman as podman's own (`--env NAME` takes its value from
/// there): values are not on a command line others can read.
pub fn spawn(spec: &RunSpec, run: &OciRun, hosts: &Path, conmon_dir: &Path) -> Result<Child> {
    crate::state::create_private_dir(conmon_dir)?;
    let conmon_pidfile = conmon_dir.join(&spec.container).display().to_string();
    let netns = crate::apply::netns_path(&spec.netns);
    let resolv = crate::apply::resolv_conf_path(&spec.netns);
    let (netns, hosts) = (netns.display().to_string(), hosts.display().to_string());
    let resolv = resolv.exists().then(|| resolv.display().to_string());
    let mounts = Mounts {
        netns: &netns,
        hosts: &hosts,
        resolv_conf: resolv.as_deref(),
        conmon_pidfile: &conmon_pidfile,
    };
    let mut command = podman();
    command
        .args(oci::run_args(spec, run, mounts))
        .envs(&spec.env)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::new("podman is not installed").hint("apt-get install podman runc"),
        _ => Failure::new(format!("cannot run podman: {e}")),
    })
}

/// Removes a container (stopping it at once) on a thread of its own, so the supervisor's
/// loop does not wait: after its `podman run` was killed, the container (kept by conmon)
/// would outlive it.
pub fn remove_soon(name: &str) {
    let name = name.to_string();
    let _ = std::thread::Builder::new().spawn(move || {
        let _ = podman()
            .args(["rm", "--force", "--ignore", "--time=0", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
}

/// Waits (at most `patience`) until the container monitors whose PIDs podman wrote into
/// `conmon_dir` have exited, so nothing of a stopped stack runs on; forgets their files.
pub fn wait_for_monitors(conmon_dir: &Path, patience: Duration) {
    let Ok(entries) = std::fs::read_dir(conmon_dir) else {
        return;
    };
    let deadline = Instant::now() + patience;
    for entry in entries.flatten() {
        let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let pid = pid.trim();
        // The PID is conmon's as long as /proc says so (not a later process's).
        let alive = || {
            !pid.is_empty() && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "conmon")
        };
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Removes every container podman holds for `stack` (what a crash left); returns how many.
pub fn remove_stack(stack: &str) -> Result<usize> {
    let label = format!("label={}={stack}", oci::STACK_LABEL);
    let listed = podman()
        .args(["ps", "--all", "--quiet", "--filter", &label])
        .output()
        .map_err(|e| Failure::new(format!("cannot run podman: {e}")))?;
    if !listed.status.success() {
        return Err(Failure::new(format!(
            "podman ps failed: {}",
            String::from_utf8_lossy(&listed.stderr).trim()
        )));
    }
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let removed = podman()
        .args(["rm", "--force", "--ignore", "--time=0"])
        .args(&ids)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| Failure::new(format!("cannot run podman: {e}")))?;
    if !removed.status.success() {
        return Err(Failure::new(format!(
            "podman rm failed: {}",
            String::from_utf8_lossy(&removed.stderr).trim()
        )));
    }
    Ok(ids.len())
}

/// True if the run file lists an image service: only then are podman's containers looked at
/// (podman takes a tenth of a second to answer; stacks of host programs do not wait for it).
pub fn runs_containers(specs: &[RunSpec]) -> bool {
    specs.iter().any(|s| s.oci.is_some())
}

/// An exec health check inside the container: `podman exec NAME COMMAND`, true if it exits
/// 0 within `timeout` (killed after it).
pub fn exec_probe(name: &str, command: &[String], timeout: Duration) -> bool {
    let child = podman()
        .arg("exec")
        .arg(name)
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Before `up` changes anything: every image service's image is there. One with `build` is
/// built when its context changed since it was built (or never was), with podman's output
/// as progress; one without must be in podman's store, or pullable.
pub fn prepare_images(parsed: &Parsed, base: &Path) -> Result<()> {
    for (name, svc) in &parsed.stack.services {
        let Some(image) = &svc.image else { continue };
        let field = format!("services.{name}.image");
        match &image.build {
            Some(build) => {
                let context = base.join(&build.context);
                let dockerfile = context.join(&build.dockerfile);
                let digest = context_digest(&context, &dockerfile)?;
                if built_digest(&image.name).as_deref() == Some(digest.as_str()) {
                    continue;
                }
                eprintln!(
                    "plumb: building image {} for service {name} (podman build {})",
                    image.name,
                    context.display()
                );
                let args = oci::build_args(
                    &image.name,
                    &dockerfile.display().to_string(),
                    &context.display().to_string(),
                    &digest,
                );
                run_visible(
                    podman().args(&args),
                    parsed,
                    &format!("services.{name}.build"),
                    "podman build",
                )?;
            }
            None if present(image) => {}
            None => {
                eprintln!("plumb: pulling image {} for service {name}", image.name);
                run_visible(podman().args(["pull", &image.name]), parsed, &field, "podman pull")?;
            }
        }
    }
    Ok(())
}

fn present(image: &Image) -> bool {
    podman()
        .args(["image", "exists", &image.name])
        .status()
        .is_ok_and(|s| s.success())
}

/// The context digest an image was built from, as its label says; None if there is no such
/// image (or it was not built by plumb).
fn built_digest(image: &str) -> Option<String> {
    let format = format!("{{{{index .Labels \"{}\"}}}}", oci::CONTEXT_LABEL);
    let out = podman()
        .args(["image", "inspect", "--format", &format, image])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty() && text != "<no value>").then_some(text)
}

/// Runs a podman step whose output the user watches (stderr), failing at `field`.
fn run_visible(command: &mut Command, parsed: &Parsed, field: &str, what: &str) -> Result<()> {
    let status = command
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| Failure::new(format!("cannot run podman: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let diagnostic = parsed.error(
        field,
        format!("{what} failed ({status}); its output is above"),
        "fix the Dockerfile or the image's name, then run `plumb up` again (nothing was changed)",
    );
    Err(plumb_core::Diagnostics(vec![diagnostic]).into())
}

/// A digest of what a build reads: the Dockerfile (path and content) and every file under the
/// context (path, mode and content, in path order). SipHash with fixed keys: the same on every run of
/// one plumb build; another plumb at worst builds once more.
fn context_digest(context: &Path, dockerfile: &Path) -> Result<String> {
    let mut files = Vec::new();
    list_files(context, &mut files)?;
    files.sort();
    let mut hasher = DefaultHasher::new();
    // The Dockerfile may live outside the context: its path and content count too.
    hasher.write(dockerfile.as_os_str().as_encoded_bytes());
    let content = std::fs::read(dockerfile).map_err(|e| read_error(dockerfile, e))?;
    hasher.write_usize(content.len());
    hasher.write(&content);
    let mut buffer = Vec::new();
    for file in files {
        let relative = file.strip_prefix(context).unwrap_or(&file);
        hasher.write(relative.as_os_str().as_encoded_bytes());
        hasher.write_u8(0);
        let meta = std::fs::symlink_metadata(&file).map_err(|e| read_error(&file, e))?;
        hasher.write_u32(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()));
        buffer.clear();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&file).map_err(|e| read_error(&file, e))?;
            buffer.extend_from_slice(target.as_os_str().as_encoded_bytes());
        } else {
            std::fs::File::open(&file)
                .and_then(|mut f| f.read_to_end(&mut buffer))
                .map_err(|e| read_error(&file, e))?;
        }
        hasher.write_usize(buffer.len());
        hasher.write(&buffer);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| read_error(dir, e))? {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            list_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn read_error(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(format!("cannot read {}: {e}", path.display())).hint("podman build reads the whole context")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contexts_digest_changes_with_any_file_and_only_then() {
        let dir = std::env::temp_dir().join(format!("plumb-oci-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.join("sub/app.py"), "print(1)\n").unwrap();
        let dockerfile = dir.join("Dockerfile");
        let first = context_digest(&dir, &dockerfile).unwrap();
        assert_eq!(first, context_digest(&dir, &dockerfile).unwrap());
        std::fs::write(dir.join("sub/app.py"), "print(2)\n").unwrap();
        let second = context_digest(&dir, &dockerfile).unwrap();
        assert_ne!(first, second);
        assert_ne!(second, context_digest(&dir, &dir.join("sub/app.py")).unwrap());
        // A Dockerfile outside the context counts by its content too.
        let outside = std::env::temp_dir().join(format!("plumb-oci-digest-{}.Dockerfile", std::process::id()));
        std::fs::write(&outside, "FROM x\n").unwrap();
        let before = context_digest(&dir, &outside).unwrap();
        std::fs::write(&outside, "FROM y\n").unwrap();
        assert_ne!(before, context_digest(&dir, &outside).unwrap());
        std::fs::remove_file(&outside).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

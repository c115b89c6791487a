//! Podman inside a test sandbox: the sandbox's own /etc/containers (containers.conf for this
//! machine kind, a storage.conf), its own tmpfs for podman's store and run-time files
//! (`/var/lib/containers`, `/run/containers`), and the shared base image `localhost/debian:12`
//! (scripts/oci-base: made once, then read-only as an additional image store). Nothing podman
//! makes outlives the sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::Sandbox;

/// The containers.conf scripts/oci-base writes (runc, cgroupfs, ulimits; docs/oci.md).
const CONTAINERS_CONF: &str = "/var/cache/plumb-test/containers.conf";

/// The image store holding `localhost/debian:12`, made (or found) once per test binary.
pub fn base_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oci-base");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/oci-base could not make the base image (see above); scripts/test installs what it needs"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Podman's overlay driver refuses a store on overlayfs (CI's fresh root is one) unless it
/// mounts with fuse-overlayfs (as scripts/oci-base did to fill it).
fn overlay_options(store: &Path) -> &'static str {
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(store)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match fs.as_str() {
        "overlayfs" => "[storage.options.overlay]\nmount_program = \"/usr/bin/fuse-overlayfs\"\n",
        _ => "",
    }
}

/// One podman-using test at a time (per test binary; cargo runs binaries one after another):
/// podman mounts the shared store's base layer itself while building (fuse-overlayfs mounts it
/// in that store's folder, on CI), and two builds at once unmount it under each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Sandbox {
    /// Makes podman usable in this sandbox (and only here): call before anything runs it, and
    /// keep what it returns until the test ends (other podman tests wait for it).
    #[must_use = "other podman tests wait while this guard lives"]
    pub fn use_podman(&self) -> MutexGuard<'static, ()> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let store = base_store();
        let etc = self.dir.join("etc-containers");
        std::fs::create_dir_all(&etc).unwrap();
        // The machine's policy.json and registries.conf, then the tests' settings (the
        // storage.conf after the copy: the machine's must not win).
        self.ok(&format!(
            "set -e
             mkdir -p /etc/containers /var/lib/containers /run/containers
             cp -a /etc/containers/. {etc}/ 2>/dev/null || true
             cp {conf} {etc}/containers.conf
             mount --bind {etc} /etc/containers
             mount -t tmpfs tmpfs /var/lib/containers
             mount -t tmpfs tmpfs /run/containers",
            etc = etc.display(),
            conf = CONTAINERS_CONF
        ));
        std::fs::write(
            etc.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"/var/lib/containers/storage\"\n\
                 runroot = \"/run/containers/storage\"\n[storage.options]\nadditionalimagestores = [\"{}\"]\n{}",
                store.display(),
                overlay_options(store)
            ),
        )
        .unwrap();
        turn
    }

    /// The names of the containers podman holds in this sandbox, running or not, sorted.
    pub fn podman_containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ok("podman ps --all --format '{{.Names}}'")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }
}

//! Who may read and change the state directory: its owner only (it holds the services'
//! environments and output). Creates folders and files private, tightens what an older plumb
//! left readable, and refuses a directory that anyone else could change, or rename under us.

use std::fs::{self, DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error as Failure, Result};

/// The mode of every folder plumb makes in the state directory.
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of every file plumb writes there, but the shared ones.
pub const PRIVATE_FILE: u32 = 0o600;
/// The mode of files that are readable by design: a container's hosts file, read as its
/// /etc/hosts by services running as any user.
pub const SHARED_FILE: u32 = 0o644;
/// The folder (in a stack's folder) of the hosts files, which keep [`SHARED_FILE`].
pub const HOSTS_DIR: &str = "hosts";

/// Creates `dir` and its missing parents, private.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(|e| write_error(dir, e))
}

/// The failure of writing `path`, naming it, with a hint when the cause is a full disk.
pub fn write_error(path: &Path, e: io::Error) -> Failure {
    let failure = Failure::new(format!("cannot write {}: {e}", path.display()));
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => failure.hint(
            "the file system holding plumb's state directory is full: free some space, then run the command again",
        ),
        _ => failure,
    }
}

/// The failure of reading `path`, naming it; a hint when only root may read it.
pub fn read_error(path: &Path, e: io::Error) -> Failure {
    let failure = Failure::new(format!("cannot read {}: {e}", path.display()));
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            failure.hint("plumb's state directory is private to root: run the command with sudo")
        }
        _ => failure,
    }
}

/// Makes the state directory `root` ready: refuses it when another user could change it or a
/// folder above it, creates it private, and tightens it (and what is inside) if an older
/// plumb left it readable by others.
pub fn prepare(root: &Path) -> Result<()> {
    let root = std::path::absolute(root).map_err(|e| read_error(root, e))?;
    let me = nix::unistd::geteuid().as_raw();
    for dir in root.ancestors().skip(1) {
        if let Ok(meta) = fs::metadata(dir) {
            refuse_if_open(dir, &meta, me, Place::Above)?;
        }
    }
    match fs::metadata(&root) {
        Ok(meta) => {
            refuse_if_open(&root, &meta, me, Place::StateDir)?;
            if meta.mode() & 0o077 != 0 {
                refuse_if_not_plumbs(&root)?;
                make_private(&root)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(&root),
        Err(e) => Err(read_error(&root, e)),
    }
}

/// Where a folder stands relative to the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    StateDir,
    /// A folder above it: a sticky one (like /tmp) may be writable by all, since nobody but
    /// its owner can rename or remove what is in it.
    Above,
}

fn refuse_if_open(dir: &Path, meta: &Metadata, me: u32, place: Place) -> Result<()> {
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let problem = if meta.uid() != me && meta.uid() != 0 {
        Some(format!("is owned by uid {}, not by the user running plumb", meta.uid()))
    } else if mode & 0o022 != 0 && !(sticky && place == Place::Above) {
        Some(format!("is writable by others (mode {mode:04o})"))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Failure::new(format!(
            "refusing the state directory: {} {problem}, so another user could change plumb's records",
            dir.display()
        ))
        .hint(format!(
            "make it writable by its owner only (chown root and chmod go-w {}), or pass --state-dir DIR (or set PLUMB_STATE_DIR) to a private folder",
            dir.display()
        ))),
    }
}

/// What plumb keeps at the top of its state directory.
const PLUMBS: &[&str] = &["lock", "stacks", "demo", super::FORWARDING_MARK];

/// Tightening changes the mode of everything below `root`: only a folder that holds nothing
/// but plumb's (an older plumb's, left readable) is tightened. `--state-dir /var/lib` by
/// mistake must not make /var/lib private.
fn refuse_if_not_plumbs(root: &Path) -> Result<()> {
    let entries = fs::read_dir(root).map_err(|e| read_error(root, e))?;
    let foreign = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| !PLUMBS.contains(&name.as_str()));
    match foreign {
        None => Ok(()),
        Some(name) => Err(Failure::new(format!(
            "refusing the state directory: {} is readable by others and holds {name:?}, which plumb did not make",
            root.display()
        ))
        .hint("pass --state-dir DIR (or set PLUMB_STATE_DIR) to a folder of plumb's own: a new one, which plumb creates private")),
    }
}

/// Tightens `root` and everything below: folders 0700, files 0600, hosts files 0644.
fn make_private(root: &Path) -> Result<()> {
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        set_mode(&dir, PRIVATE_DIR)?;
        let entries = fs::read_dir(&dir).map_err(|e| read_error(&dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Symbolic links are not followed: plumb makes none, and their mode means nothing.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let shared = dir.file_name().is_some_and(|n| n == HOSTS_DIR);
                set_mode(&path, if shared { SHARED_FILE } else { PRIVATE_FILE })?;
            }
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| write_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plumb-access-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_readable_state_directory_is_made_private_but_hosts_files_stay_readable() {
        let root = scratch("tighten").join("state");
        fs::create_dir_all(root.join("stacks/s/hosts")).unwrap();
        fs::create_dir_all(root.join("stacks/s/logs")).unwrap();
        for f in ["stacks/s/run.json", "stacks/s/logs/c.log", "stacks/s/hosts/c"] {
            fs::write(root.join(f), "x").unwrap();
            set_mode(&root.join(f), 0o644).unwrap();
        }
        set_mode(&root, 0o755).unwrap();
        prepare(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("stacks/s/logs")), 0o700);
        assert_eq!(mode(&root.join("stacks/s/run.json")), 0o600);
        assert_eq!(mode(&root.join("stacks/s/logs/c.log")), 0o600);
        assert_eq!(mode(&root.join("stacks/s/hosts/c")), 0o644);
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_readable_folder_that_is_not_plumbs_is_refused_and_left_as_it_was() {
        let root = scratch("foreign").join("lib");
        fs::create_dir_all(root.join("apt")).unwrap();
        fs::write(root.join("apt/lists"), "x").unwrap();
        set_mode(&root, 0o755).unwrap();
        set_mode(&root.join("apt/lists"), 0o644).unwrap();
        let err = prepare(&root).unwrap_err();
        assert!(err.message.contains("holds \"apt\", which plumb did not make"), "{err}");
        assert_eq!(mode(&root), 0o755);
        assert_eq!(mode(&root.join("apt/lists")), 0o644);
        fs::remove_dir_all(root.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_new_state_directory_is_private() {
        let root = scratch("new").join("a/state");
        prepare(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        fs::remove_dir_all(root.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn folders_others_may_write_are_refused_unless_sticky_above() {
        let base = scratch("open");
        let open = base.join("open");
        fs::create_dir_all(&open).unwrap();
        set_mode(&open, 0o777).unwrap();
        let err = prepare(&open.join("state")).unwrap_err();
        assert!(err.message.contains("writable by others (mode 0777)"), "{err}");
        assert!(err.hint.is_some_and(|h| h.contains("chmod go-w")));
        assert!(!open.join("state").exists(), "nothing is created");

        set_mode(&open, 0o1777).unwrap();
        prepare(&open.join("state")).unwrap();
        // The state directory itself gets no such leeway.
        set_mode(&open.join("state"), 0o1777).unwrap();
        assert!(prepare(&open.join("state")).is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn write_errors_name_the_file_and_a_full_disk() {
        let full = io::Error::from_raw_os_error(28);
        let err = write_error(Path::new("/s/stacks/x/state.json"), full);
        assert!(
            err.message
                .starts_with("cannot write /s/stacks/x/state.json: No space left on device"),
            "{err}"
        );
        assert!(err.hint.is_some_and(|h| h.contains("full")));
    }
}

//! The containers' hosts files (`hosts/CONTAINER` in the stack folder), bound over each
//! service's /etc/hosts: readable by all (a service may run as any user; the folder above
//! stays private), and rewritten in place when addresses change (the same file: the bind
//! mount shows the new content).

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::failure::Result;
use crate::state::{create_private_dir, write_error, SHARED_FILE};

/// Writes `container`'s hosts file into `hosts_dir`; returns its path.
pub fn write(hosts_dir: &Path, container: &str, content: &str) -> Result<PathBuf> {
    create_private_dir(hosts_dir)?;
    let path = hosts_dir.join(container);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(SHARED_FILE)
            .open(&path)?;
        // The supervisor's umask (077) applies to the mode given at creation: set it again.
        file.set_permissions(Permissions::from_mode(SHARED_FILE))?;
        file.write_all(content.as_bytes())
    })();
    written.map_err(|e| write_error(&path, e))?;
    Ok(path)
}

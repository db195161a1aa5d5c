//! Files a node writes once and must not lose: created new (never overwriting), with their
//! mode set exactly, and synced before they count as written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `contents` to a new file at `path` with `mode`; an existing file is an
/// `AlreadyExists` error and stays as it was.
pub(crate) fn write_new(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    // The mode given at creation is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

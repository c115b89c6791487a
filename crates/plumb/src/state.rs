//! plumb's state lives in the engine (behind its `StateStore` trait); the binary uses the
//! directory store.

pub use plumb_engine::state::*;

/// The engine's atomic write, with the binary's error type.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> crate::failure::Result<()> {
    Ok(plumb_engine::state::write_atomically(path, bytes)?)
}

/// The folder (in a stack's folder) where podman writes each image replica's monitor PID.
pub const CONMON_DIR: &str = "conmon";

//! plumb's engine: observe what the kernel holds of a stack, execute plans, keep state.
//! It talks to the kernel only through plumb-core's [`plumb_core::kernel::Kernel`] trait
//! (plumb-linux has the real one, [`fake`] an in-memory one) and to state only through
//! [`state::StateStore`].

pub mod engine;
pub mod error;
pub mod execute;
pub mod fake;
pub mod observe;
pub mod ownership;
pub mod stackfile;
pub mod state;

pub use engine::{Change, Engine, Removed, Teardown, Up};
pub use error::{Error, Result};
pub use execute::{execute, OnError, Outcome};
pub use observe::{observe, Observed};

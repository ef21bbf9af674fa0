//! The QEMU program (0x20008087): monitor and guest-agent passthrough, raw monitor events.

use crate::rpc::Procedure;

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    Vec::new()
}

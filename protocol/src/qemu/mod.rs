//! The QEMU program (0x20008087): monitor and guest-agent passthrough and
//! raw monitor events, generated from libvirt's `qemu_protocol.x`.

pub mod procs;
pub mod types;

pub use types::*;

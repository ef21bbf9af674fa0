//! qemud settings and the libvirt domain XML model.

pub mod domain;
pub mod interface;
pub mod nodedev;
pub mod secret;
pub mod settings;

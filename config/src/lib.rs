//! qemud settings and the libvirt domain and network XML models.

pub mod domain;
pub mod network;
pub mod settings;

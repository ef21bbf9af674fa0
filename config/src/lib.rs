//! qemud settings and the libvirt domain and network XML models.

pub mod domain;
pub mod settings;
pub mod network;

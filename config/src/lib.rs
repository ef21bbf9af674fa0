//! qemud settings and the libvirt domain XML model.

pub mod domain;
pub mod settings;
pub mod storage;

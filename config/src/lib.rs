//! qemud settings and the libvirt domain XML model.

pub mod domain;
pub mod settings;
pub mod tune;
pub mod xml_depth;

//! qemud settings and the libvirt XML models.

pub mod capabilities;
pub mod domain;
pub mod domcaps;
pub mod interface;
pub mod network;
pub mod nodedev;
pub mod secret;
pub mod settings;
pub mod storage;
pub mod tune;
pub mod xml_depth;

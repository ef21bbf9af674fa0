//! The daemon's behaviour, one folder per driver. Each folder declares its
//! procedures as rows of the table in [`rpc::table`]:
//!
//! - [`rpc`]: the connection actor, the procedure table, connection-state
//!   procedures (open, auth, features, event callbacks).
//! - [`host`]: capabilities, node information and statistics.
//! - [`domain`]: the registry, one actor per QEMU, QMP, command lines, storage
//!   of definitions.
//! - [`network`], [`storage`], [`secret`], [`nodedev`], [`interface`],
//!   [`nwfilter`]: the other object kinds.
//! - [`qemu_program`]: the QEMU program (monitor and agent passthrough).
//! - [`events`]: the bus that fans events out to subscribed connections.

pub mod domain;
pub mod error;
pub mod events;
pub mod host;
pub mod interface;
pub mod network;
pub mod nodedev;
pub mod nwfilter;
pub mod qemu_program;
pub mod rpc;
pub mod secret;
pub mod storage;

use std::sync::Arc;

use actix::Addr;

pub use error::{Error, Result};

/// What every connection needs; built once at start-up.
pub struct Services {
    pub settings: Arc<qemud_config::settings::Settings>,
    pub host: Arc<host::HostInfo>,
    pub index: Arc<domain::index::DomainIndex>,
    pub registry: Addr<domain::registry::Registry>,
    pub events: Addr<events::EventBus>,
    pub secrets: Addr<secret::driver::SecretDriver>,
    pub nodedevs: nodedev::NodeDevices,
    /// The storage driver, owner of every pool and volume.
    pub storage: Addr<storage::driver::StorageDriver>,
    /// The network driver's registry (definitions and active networks).
    pub networks: Addr<network::registry::NetworkRegistry>,
    /// The driver URI clients get from `virConnectGetURI`.
    pub uri: String,
}

//! The actors of qemud and what they share.
//!
//! - [`connection::Connection`]: one per client; framing, dispatch, events.
//! - [`registry::Registry`]: owns all domains, persistence and transitions.
//! - [`qemu::QemuVm`]: one per running QEMU, driven over [`qmp`].
//! - [`events::EventBus`]: fans domain events out to subscribed clients.

pub mod connection;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod host;
pub mod index;
pub mod procedures;
pub mod qemu;
pub mod qemu_cmdline;
pub mod qmp;
pub mod registry;
pub mod store;

use std::sync::Arc;

use actix::Addr;

pub use error::{Error, Result};

/// What every connection needs; built once at start-up.
pub struct Services {
    pub settings: Arc<qemud_config::settings::Settings>,
    pub host: Arc<host::HostInfo>,
    pub index: Arc<index::DomainIndex>,
    pub registry: Addr<registry::Registry>,
    pub events: Addr<events::EventBus>,
    /// The driver URI clients get from `virConnectGetURI`.
    pub uri: String,
}

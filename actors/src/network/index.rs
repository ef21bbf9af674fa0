//! The lock-free view of every network that connections and the domain
//! registry read; the network registry is its only writer.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use uuid::Uuid;

use qemud_config::network::NetworkDef;
use qemud_protocol::remote::NonnullNetwork;
use qemud_protocol::xdr::Uuid16;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct NetView {
    pub name: String,
    pub uuid: Uuid,
    pub active: bool,
    pub persistent: bool,
    pub autostart: bool,
    /// The running definition.
    pub live: Option<NetworkDef>,
    /// The persistent (or transient) definition.
    pub def: NetworkDef,
    /// dnsmasq's lease file.
    pub leases: PathBuf,
}

impl NetView {
    pub fn to_wire(&self) -> NonnullNetwork {
        NonnullNetwork {
            name: self.name.clone().into(),
            uuid: Uuid16(*self.uuid.as_bytes()),
        }
    }

    /// The running definition, or the persistent one.
    pub fn current(&self) -> &NetworkDef {
        self.live.as_ref().unwrap_or(&self.def)
    }
}

#[derive(Default)]
pub struct NetworkIndex {
    by_uuid: DashMap<Uuid, Arc<NetView>>,
}

/// The daemon's one index (the domain registry looks networks up here when
/// it plugs a guest's NIC in).
pub fn global() -> Arc<NetworkIndex> {
    static INDEX: LazyLock<Arc<NetworkIndex>> = LazyLock::new(Arc::default);
    INDEX.clone()
}

impl NetworkIndex {
    pub fn publish(&self, v: Arc<NetView>) {
        self.by_uuid.insert(v.uuid, v);
    }

    pub fn remove(&self, uuid: &Uuid) {
        self.by_uuid.remove(uuid);
    }

    pub fn get(&self, uuid: &Uuid) -> Option<Arc<NetView>> {
        self.by_uuid.get(uuid).map(|v| v.clone())
    }

    pub fn all(&self) -> Vec<Arc<NetView>> {
        let mut v: Vec<_> = self.by_uuid.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<NetView>> {
        self.by_uuid
            .iter()
            .find(|e| e.value().name == name)
            .map(|e| e.value().clone())
            .ok_or_else(|| Error::NoNetwork(format!("no network with matching name '{name}'")))
    }

    pub fn by_uuid(&self, uuid: &Uuid) -> Result<Arc<NetView>> {
        self.get(uuid)
            .ok_or_else(|| Error::NoNetwork(format!("no network with matching uuid '{uuid}'")))
    }

    pub fn resolve(&self, net: &NonnullNetwork) -> Result<Arc<NetView>> {
        let uuid = Uuid::from_bytes(net.uuid.0);
        match self.get(&uuid) {
            Some(v) if v.name == net.name.as_str() => Ok(v),
            _ => Err(Error::NoNetwork(format!(
                "no network with matching uuid '{uuid}' ({})",
                net.name.as_str()
            ))),
        }
    }
}

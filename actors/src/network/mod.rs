//! The network driver: virtual networks. A registry actor owns the
//! definitions; one actor per active network owns its bridge, its nftables
//! table and its supervised dnsmasq. Guests' NICs of type network and
//! bridge are tap devices the daemon creates and plugs into the bridge.

pub mod active;
pub mod dnsmasq;
pub mod firewall;
pub mod index;
pub mod procedures;
pub mod registry;
pub mod sys;

use qemud_config::domain::{DomainDef, InterfaceKind};

use crate::error::{Error, Result};
use crate::rpc::Procedure;

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    procedures::procedures()
}

pub use qemud_config::network::{nic_tap, tap_name};

/// A tap to create for a NIC: its name, the bridge it joins (none for an
/// ethernet NIC), its MTU.
#[derive(Debug, Clone)]
pub struct TapPlan {
    pub tap: String,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
}

/// The taps a domain's NICs need, checked against the networks now active:
/// libvirt's errors for a missing or inactive network.
pub fn plan_taps(def: &DomainDef) -> Result<Vec<TapPlan>> {
    let index = index::global();
    let mut plans = Vec::new();
    for (i, nic) in def.devices.interfaces.iter().enumerate() {
        let bridge = match &nic.kind {
            InterfaceKind::User => continue,
            InterfaceKind::Network(name) => {
                let v = index.by_name(name)?;
                let live = v.live.as_ref().ok_or_else(|| {
                    Error::OperationInvalid(format!("network '{name}' is not active"))
                })?;
                live.bridge
                    .clone()
                    .ok_or_else(|| Error::Internal(format!("network '{name}' has no bridge")))?
            }
            InterfaceKind::Bridge(b) => {
                if !sys::link_exists(b) {
                    return Err(Error::System(format!(
                        "Cannot get interface MTU on '{b}': No such device"
                    )));
                }
                b.clone()
            }
            InterfaceKind::Ethernet { target, managed } => {
                if !managed {
                    // Someone else's tap: it must be there, and stays theirs.
                    let t = target.as_deref().unwrap_or_default();
                    if !sys::link_exists(t) {
                        return Err(Error::System(format!(
                            "Unable to get index for interface {t}: No such device"
                        )));
                    }
                    continue;
                }
                plans.push(TapPlan {
                    tap: nic_tap(&def.uuid, i, &nic.kind).unwrap_or_default(),
                    mtu: None,
                    bridge: None,
                });
                continue;
            }
        };
        plans.push(TapPlan {
            tap: tap_name(&def.uuid, i),
            mtu: None,
            bridge: Some(bridge),
        });
    }
    Ok(plans)
}

/// Creates every planned tap; on failure none is left.
pub async fn create_taps(plans: &[TapPlan]) -> Result<()> {
    for (n, p) in plans.iter().enumerate() {
        let mtu = match (p.mtu, &p.bridge) {
            (Some(m), _) => Some(m),
            (None, Some(b)) => sys::link_mtu(b).await,
            (None, None) => None,
        };
        if let Err(e) = sys::create_tap(&p.tap, p.bridge.as_deref(), mtu).await {
            for q in &plans[..n] {
                sys::delete_link(&q.tap).await;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the taps of a domain that stopped.
pub async fn delete_taps(def: &DomainDef) {
    for (i, nic) in def.devices.interfaces.iter().enumerate() {
        let ours = match &nic.kind {
            InterfaceKind::User => false,
            InterfaceKind::Ethernet { managed, .. } => *managed,
            _ => true,
        };
        if let Some(tap) = nic_tap(&def.uuid, i, &nic.kind).filter(|_| ours) {
            sys::delete_link(&tap).await;
        }
    }
}

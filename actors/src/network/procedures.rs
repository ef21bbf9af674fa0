//! Table rows of the network driver. Queries read the network index;
//! changes go to the network registry actor.

use std::net::IpAddr;

use uuid::Uuid;

use qemud_config::domain::{DomainDef, InterfaceKind};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{XdrString, XdrVec};

use super::dnsmasq;
use super::index::{global, NetView};
use super::registry::NetOp;
use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_NUM_OF_NETWORKS, Read, num_active),
        call!(CONNECT_LIST_NETWORKS, Read, list_active),
        call!(CONNECT_NUM_OF_DEFINED_NETWORKS, Read, num_defined),
        call!(CONNECT_LIST_DEFINED_NETWORKS, Read, list_defined),
        call!(CONNECT_LIST_ALL_NETWORKS, Read, list_all),
        call!(NETWORK_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(NETWORK_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(NETWORK_CREATE_XML, Write, create_xml),
        call!(NETWORK_CREATE_XML_FLAGS, Write, create_xml_flags),
        call!(NETWORK_DEFINE_XML, Write, define_xml),
        call!(NETWORK_DEFINE_XML_FLAGS, Write, define_xml_flags),
        call!(NETWORK_UNDEFINE, Write, undefine),
        call!(NETWORK_UPDATE, Write, update),
        call!(NETWORK_CREATE, Write, create),
        call!(NETWORK_DESTROY, Write, destroy),
        call!(NETWORK_GET_XML_DESC, Read, get_xml_desc),
        call!(NETWORK_GET_BRIDGE_NAME, Read, get_bridge_name),
        call!(NETWORK_GET_AUTOSTART, Read, get_autostart),
        call!(NETWORK_SET_AUTOSTART, Write, set_autostart),
        call!(NETWORK_IS_ACTIVE, Read, is_active),
        call!(NETWORK_IS_PERSISTENT, Read, is_persistent),
        call!(NETWORK_GET_DHCP_LEASES, Read, get_dhcp_leases),
        call!(DOMAIN_INTERFACE_ADDRESSES, Read, domain_interface_addresses),
        call!(DOMAIN_INTERFACE_STATS, Read, domain_interface_stats),
    ]
}

/// `virConnectListAllNetworksFlags`.
const LIST_INACTIVE: u32 = 1;
const LIST_ACTIVE: u32 = 2;
const LIST_PERSISTENT: u32 = 4;
const LIST_TRANSIENT: u32 = 8;
const LIST_AUTOSTART: u32 = 16;
const LIST_NO_AUTOSTART: u32 = 32;
/// `virNetworkXMLFlags`.
const XML_INACTIVE: u32 = 1;
/// `virDomainInterfaceAddressesSource`.
const ADDRESSES_SRC_LEASE: u32 = 0;

fn resolve(net: &NonnullNetwork) -> Result<std::sync::Arc<NetView>> {
    global().resolve(net)
}

fn check_max(max: i32) -> Result<usize> {
    if max < 0 || max as usize > NETWORK_LIST_MAX {
        return Err(Error::Rpc(format!(
            "too many remote networks requested ({max} > {NETWORK_LIST_MAX})"
        )));
    }
    Ok(max as usize)
}

async fn operate(call: &Call, op: NetOp) -> Result<std::sync::Arc<NetView>> {
    call.svc.networks.send(op).await?
}

fn names(active: bool, max: i32) -> Result<XdrVec<XdrString, 16384>> {
    let max = check_max(max)?;
    Ok(XdrVec(
        global()
            .all()
            .iter()
            .filter(|v| v.active == active)
            .take(max)
            .map(|v| XdrString(v.name.clone()))
            .collect(),
    ))
}

async fn num_active(_: &Call, _: ()) -> Result<ConnectNumOfNetworksRet> {
    Ok(ConnectNumOfNetworksRet {
        num: global().all().iter().filter(|v| v.active).count() as i32,
    })
}

async fn list_active(_: &Call, a: ConnectListNetworksArgs) -> Result<ConnectListNetworksRet> {
    Ok(ConnectListNetworksRet {
        names: names(true, a.maxnames)?,
    })
}

async fn num_defined(_: &Call, _: ()) -> Result<ConnectNumOfDefinedNetworksRet> {
    Ok(ConnectNumOfDefinedNetworksRet {
        num: global().all().iter().filter(|v| !v.active).count() as i32,
    })
}

async fn list_defined(
    _: &Call,
    a: ConnectListDefinedNetworksArgs,
) -> Result<ConnectListDefinedNetworksRet> {
    Ok(ConnectListDefinedNetworksRet {
        names: names(false, a.maxnames)?,
    })
}

fn list_filter(v: &NetView, flags: u32) -> bool {
    let pick = |on: u32, off: u32, value: bool| {
        let f = flags & (on | off);
        f == 0 || f == on | off || (value && f == on) || (!value && f == off)
    };
    pick(LIST_ACTIVE, LIST_INACTIVE, v.active)
        && pick(LIST_PERSISTENT, LIST_TRANSIENT, v.persistent)
        && pick(LIST_AUTOSTART, LIST_NO_AUTOSTART, v.autostart)
}

async fn list_all(_: &Call, a: ConnectListAllNetworksArgs) -> Result<ConnectListAllNetworksRet> {
    let all = LIST_INACTIVE
        | LIST_ACTIVE
        | LIST_PERSISTENT
        | LIST_TRANSIENT
        | LIST_AUTOSTART
        | LIST_NO_AUTOSTART;
    crate::rpc::wire::check_flags(a.flags, all, "virConnectListAllNetworks")?;
    let views: Vec<_> = global()
        .all()
        .into_iter()
        .filter(|v| list_filter(v, a.flags))
        .collect();
    let count = views.len() as u32;
    Ok(ConnectListAllNetworksRet {
        nets: XdrVec(if a.need_results != 0 {
            views.iter().map(|v| v.to_wire()).collect()
        } else {
            Vec::new()
        }),
        ret: count,
    })
}

async fn lookup_by_name(_: &Call, a: NetworkLookupByNameArgs) -> Result<NetworkLookupByNameRet> {
    Ok(NetworkLookupByNameRet {
        net: global().by_name(a.name.as_str())?.to_wire(),
    })
}

async fn lookup_by_uuid(_: &Call, a: NetworkLookupByUuidArgs) -> Result<NetworkLookupByUuidRet> {
    Ok(NetworkLookupByUuidRet {
        net: global().by_uuid(&Uuid::from_bytes(a.uuid.0))?.to_wire(),
    })
}

async fn create_xml(call: &Call, a: NetworkCreateXmlArgs) -> Result<NetworkCreateXmlRet> {
    let v = operate(call, NetOp::Create { xml: a.xml.0 }).await?;
    Ok(NetworkCreateXmlRet { net: v.to_wire() })
}

async fn create_xml_flags(
    call: &Call,
    a: NetworkCreateXmlFlagsArgs,
) -> Result<NetworkCreateXmlFlagsRet> {
    // VIR_NETWORK_CREATE_VALIDATE: the parser always validates.
    crate::rpc::wire::check_flags(a.flags, 1, "virNetworkCreateXMLFlags")?;
    let v = operate(call, NetOp::Create { xml: a.xml.0 }).await?;
    Ok(NetworkCreateXmlFlagsRet { net: v.to_wire() })
}

async fn define_xml(call: &Call, a: NetworkDefineXmlArgs) -> Result<NetworkDefineXmlRet> {
    let v = operate(call, NetOp::Define { xml: a.xml.0 }).await?;
    Ok(NetworkDefineXmlRet { net: v.to_wire() })
}

async fn define_xml_flags(
    call: &Call,
    a: NetworkDefineXmlFlagsArgs,
) -> Result<NetworkDefineXmlFlagsRet> {
    // VIR_NETWORK_DEFINE_VALIDATE: the parser always validates.
    crate::rpc::wire::check_flags(a.flags, 1, "virNetworkDefineXMLFlags")?;
    let v = operate(call, NetOp::Define { xml: a.xml.0 }).await?;
    Ok(NetworkDefineXmlFlagsRet { net: v.to_wire() })
}

async fn undefine(call: &Call, a: NetworkUndefineArgs) -> Result<()> {
    let uuid = resolve(&a.net)?.uuid;
    operate(call, NetOp::Undefine { uuid }).await?;
    Ok(())
}

async fn update(call: &Call, a: NetworkUpdateArgs) -> Result<()> {
    let uuid = resolve(&a.net)?.uuid;
    operate(
        call,
        NetOp::Update {
            uuid,
            // libvirt's client sends the two swapped unless the daemon
            // reports VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER
            // (16), which qemud does not: `command` carries the section.
            command: a.section,
            section: a.command,
            parent_index: a.parent_index,
            xml: a.xml.0,
            flags: a.flags,
        },
    )
    .await?;
    Ok(())
}

async fn create(call: &Call, a: NetworkCreateArgs) -> Result<()> {
    let uuid = resolve(&a.net)?.uuid;
    operate(call, NetOp::Start { uuid }).await?;
    Ok(())
}

async fn destroy(call: &Call, a: NetworkDestroyArgs) -> Result<()> {
    let uuid = resolve(&a.net)?.uuid;
    operate(call, NetOp::Destroy { uuid }).await?;
    Ok(())
}

async fn get_xml_desc(call: &Call, a: NetworkGetXmlDescArgs) -> Result<NetworkGetXmlDescRet> {
    crate::rpc::wire::check_flags(a.flags, XML_INACTIVE, "virNetworkGetXMLDesc")?;
    let v = resolve(&a.net)?;
    let xml = if a.flags & XML_INACTIVE != 0 {
        v.def.to_xml(None)
    } else {
        let connections = v.live.as_ref().map(|_| connections(call, &v));
        v.current().to_xml(connections)
    };
    Ok(NetworkGetXmlDescRet { xml: xml.into() })
}

/// NICs of running guests on the network (libvirt's `connections`).
fn connections(call: &Call, v: &NetView) -> u32 {
    let bridge = v.current().bridge.clone();
    call.svc
        .index
        .all()
        .iter()
        .filter(|d| d.is_active())
        .filter_map(|d| DomainDef::parse(&d.xml).ok())
        .map(|d| {
            d.devices
                .interfaces
                .iter()
                .filter(|n| match &n.kind {
                    InterfaceKind::Network(name) => *name == v.name,
                    InterfaceKind::Bridge(b) => {
                        v.def.is_bridge_mode() && Some(b) == bridge.as_ref()
                    }
                    InterfaceKind::User | InterfaceKind::Ethernet { .. } => false,
                })
                .count() as u32
        })
        .sum()
}

async fn get_bridge_name(_: &Call, a: NetworkGetBridgeNameArgs) -> Result<NetworkGetBridgeNameRet> {
    let v = resolve(&a.net)?;
    let name = v.current().bridge.clone().ok_or_else(|| {
        Error::Internal(format!("network '{}' does not have a bridge name.", v.name))
    })?;
    Ok(NetworkGetBridgeNameRet { name: name.into() })
}

async fn get_autostart(_: &Call, a: NetworkGetAutostartArgs) -> Result<NetworkGetAutostartRet> {
    Ok(NetworkGetAutostartRet {
        autostart: resolve(&a.net)?.autostart as i32,
    })
}

async fn set_autostart(call: &Call, a: NetworkSetAutostartArgs) -> Result<()> {
    let uuid = resolve(&a.net)?.uuid;
    operate(
        call,
        NetOp::SetAutostart {
            uuid,
            on: a.autostart != 0,
        },
    )
    .await?;
    Ok(())
}

async fn is_active(_: &Call, a: NetworkIsActiveArgs) -> Result<NetworkIsActiveRet> {
    Ok(NetworkIsActiveRet {
        active: resolve(&a.net)?.active as i32,
    })
}

async fn is_persistent(_: &Call, a: NetworkIsPersistentArgs) -> Result<NetworkIsPersistentRet> {
    Ok(NetworkIsPersistentRet {
        persistent: resolve(&a.net)?.persistent as i32,
    })
}

/// The leases dnsmasq granted on an active network, as libvirt reports
/// them (expired ones left out).
fn leases_of(v: &NetView) -> Vec<NetworkDhcpLease> {
    let Some(live) = &v.live else {
        return Vec::new();
    };
    // The file is written by dnsmasq; a runaway one must not exhaust memory.
    let text = match std::fs::metadata(&v.leases) {
        Ok(m) if m.len() <= 16 << 20 => std::fs::read_to_string(&v.leases).unwrap_or_default(),
        _ => String::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    dnsmasq::parse_leases(&text)
        .into_iter()
        .filter(|l| l.expiry == 0 || l.expiry > now)
        .map(|l| {
            let prefix = live
                .ips
                .iter()
                .find(|i| i.contains(l.ip))
                .map(|i| u32::from(i.prefix))
                .unwrap_or(0);
            NetworkDhcpLease {
                iface: live.bridge.clone().unwrap_or_default().into(),
                expirytime: l.expiry,
                type_: if l.ip.is_ipv4() { 0 } else { 1 },
                mac: l.mac.map(Into::into),
                iaid: l.iaid.map(Into::into),
                ipaddr: l.ip.to_string().into(),
                prefix,
                hostname: l.hostname.map(Into::into),
                clientid: l.client_id.map(Into::into),
            }
        })
        .collect()
}

async fn get_dhcp_leases(_: &Call, a: NetworkGetDhcpLeasesArgs) -> Result<NetworkGetDhcpLeasesRet> {
    crate::rpc::wire::check_flags(a.flags, 0, "virNetworkGetDHCPLeases")?;
    let v = resolve(&a.net)?;
    if !v.active {
        return Err(Error::OperationInvalid(format!(
            "network '{}' is not active",
            v.name
        )));
    }
    let mac = a.mac.map(|m| m.0.to_ascii_lowercase());
    let leases: Vec<_> = leases_of(&v)
        .into_iter()
        .filter(|l| match (&mac, &l.mac) {
            (Some(want), Some(have)) => want == have.as_str(),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .collect();
    let count = leases.len() as u32;
    Ok(NetworkGetDhcpLeasesRet {
        leases: XdrVec(if a.need_results != 0 {
            leases
        } else {
            Vec::new()
        }),
        ret: count,
    })
}

/// `virDomainInterfaceAddresses` from the lease source: the addresses the
/// networks' dnsmasq leased to the domain's NICs.
async fn domain_interface_addresses(
    call: &Call,
    a: DomainInterfaceAddressesArgs,
) -> Result<DomainInterfaceAddressesRet> {
    if a.source == crate::domain::agent::ADDRESSES_SRC_AGENT {
        return crate::domain::agent::interface_addresses(call, a).await;
    }
    crate::rpc::wire::check_flags(a.flags, 0, "virDomainInterfaceAddresses")?;
    let dom = call.svc.index.resolve(&a.dom)?;
    if !dom.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    if a.source != ADDRESSES_SRC_LEASE {
        return Err(Error::ArgumentUnsupported(format!(
            "Unknown IP address data source {}",
            a.source
        )));
    }
    let def = DomainDef::parse(&dom.xml).map_err(|e| Error::Internal(e.to_string()))?;
    let mut ifaces = Vec::new();
    for (i, nic) in def.devices.interfaces.iter().enumerate() {
        let InterfaceKind::Network(name) = &nic.kind else {
            continue;
        };
        let Ok(v) = global().by_name(name) else {
            continue;
        };
        let addrs: Vec<DomainIpAddr> = leases_of(&v)
            .into_iter()
            .filter(|l| l.mac.as_ref().map(|m| m.as_str()) == Some(nic.mac.as_str()))
            .filter_map(|l| {
                let ip: IpAddr = l.ipaddr.as_str().parse().ok()?;
                Some(DomainIpAddr {
                    type_: if ip.is_ipv4() { 0 } else { 1 },
                    addr: l.ipaddr,
                    prefix: l.prefix,
                })
            })
            .collect();
        if addrs.is_empty() {
            continue;
        }
        ifaces.push(DomainInterface {
            name: super::tap_name(&def.uuid, i).into(),
            hwaddr: Some(nic.mac.clone().into()),
            addrs: XdrVec(addrs),
        });
    }
    Ok(DomainInterfaceAddressesRet {
        ifaces: XdrVec(ifaces),
    })
}

/// `virDomainInterfaceStats` of a NIC on a tap the daemon created, named by
/// its tap or its MAC. The tap's counters are seen from the host, so they
/// are swapped to be the guest's, as libvirt does.
async fn domain_interface_stats(
    call: &Call,
    a: DomainInterfaceStatsArgs,
) -> Result<DomainInterfaceStatsRet> {
    let dom = call.svc.index.resolve(&a.dom)?;
    if !dom.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    let def = DomainDef::parse(&dom.xml).map_err(|e| Error::Internal(e.to_string()))?;
    let device = a.device.as_str();
    let (tap, _) = def
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, n)| (super::nic_tap(&def.uuid, i, &n.kind), n))
        .find(|(tap, n)| tap.as_deref() == Some(device) || n.mac.eq_ignore_ascii_case(device))
        .ok_or_else(|| {
            Error::InvalidArg(format!("invalid path, '{device}' is not a known interface"))
        })?;
    // A user-mode NIC has no host interface to count: libvirt's answer.
    let tap = tap.ok_or_else(|| Error::Internal("Interface name not provided".into()))?;
    let c = super::sys::link_counters(&tap)
        .filter(|c| c.len() >= 12)
        .ok_or_else(|| Error::System(format!("Interface '{tap}' not found")))?;
    Ok(DomainInterfaceStatsRet {
        rx_bytes: c[8],
        rx_packets: c[9],
        rx_errs: c[10],
        rx_drop: c[11],
        tx_bytes: c[0],
        tx_packets: c[1],
        tx_errs: c[2],
        tx_drop: c[3],
    })
}

//! The network driver: virtual networks (one actor per active network with
//! its bridge, firewall and dnsmasq). Until that driver lands, qemud has no
//! networks, and says so truthfully: lists are empty and every lookup gets
//! libvirt's "no network with matching ..." error.

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use uuid::Uuid;

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_LIST_ALL_NETWORKS, Read, list_all),
        call!(CONNECT_NUM_OF_NETWORKS, Read, num_of_active),
        call!(CONNECT_LIST_NETWORKS, Read, list_active),
        call!(CONNECT_NUM_OF_DEFINED_NETWORKS, Read, num_of_defined),
        call!(CONNECT_LIST_DEFINED_NETWORKS, Read, list_defined),
        call!(NETWORK_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(NETWORK_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(NETWORK_GET_XML_DESC, Read, get_xml_desc),
        call!(NETWORK_IS_ACTIVE, Read, is_active),
        call!(NETWORK_IS_PERSISTENT, Read, is_persistent),
        call!(NETWORK_GET_AUTOSTART, Read, get_autostart),
        call!(NETWORK_GET_BRIDGE_NAME, Read, get_bridge_name),
    ]
}

/// `virConnectListAllNetworksFlags` (active/inactive, persistent/transient,
/// autostart/no-autostart).
const LIST_ALL_FLAGS: u32 = 0x3f;

/// libvirt's error for a network handle that names no network.
fn no_network(net: &NonnullNetwork) -> Error {
    Error::NoNetwork(format!(
        "no network with matching uuid '{}' ({})",
        Uuid::from(net.uuid).hyphenated(),
        net.name.as_str()
    ))
}

async fn list_all(_: &Call, a: ConnectListAllNetworksArgs) -> Result<ConnectListAllNetworksRet> {
    if a.flags & !LIST_ALL_FLAGS != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !LIST_ALL_FLAGS,
            function: "networkConnectListAllNetworks",
        });
    }
    Ok(ConnectListAllNetworksRet {
        nets: Vec::new().into(),
        ret: 0,
    })
}

async fn num_of_active(_: &Call, _: ()) -> Result<ConnectNumOfNetworksRet> {
    Ok(ConnectNumOfNetworksRet { num: 0 })
}

async fn list_active(_: &Call, _: ConnectListNetworksArgs) -> Result<ConnectListNetworksRet> {
    Ok(ConnectListNetworksRet {
        names: Vec::new().into(),
    })
}

async fn num_of_defined(_: &Call, _: ()) -> Result<ConnectNumOfDefinedNetworksRet> {
    Ok(ConnectNumOfDefinedNetworksRet { num: 0 })
}

async fn list_defined(
    _: &Call,
    _: ConnectListDefinedNetworksArgs,
) -> Result<ConnectListDefinedNetworksRet> {
    Ok(ConnectListDefinedNetworksRet {
        names: Vec::new().into(),
    })
}

async fn lookup_by_name(_: &Call, a: NetworkLookupByNameArgs) -> Result<NetworkLookupByNameRet> {
    Err(Error::NoNetwork(format!(
        "no network with matching name '{}'",
        a.name.as_str()
    )))
}

async fn lookup_by_uuid(_: &Call, a: NetworkLookupByUuidArgs) -> Result<NetworkLookupByUuidRet> {
    Err(Error::NoNetwork(format!(
        "no network with matching uuid '{}'",
        Uuid::from(a.uuid).hyphenated()
    )))
}

async fn get_xml_desc(_: &Call, a: NetworkGetXmlDescArgs) -> Result<NetworkGetXmlDescRet> {
    Err(no_network(&a.net))
}

async fn is_active(_: &Call, a: NetworkIsActiveArgs) -> Result<NetworkIsActiveRet> {
    Err(no_network(&a.net))
}

async fn is_persistent(_: &Call, a: NetworkIsPersistentArgs) -> Result<NetworkIsPersistentRet> {
    Err(no_network(&a.net))
}

async fn get_autostart(_: &Call, a: NetworkGetAutostartArgs) -> Result<NetworkGetAutostartRet> {
    Err(no_network(&a.net))
}

async fn get_bridge_name(_: &Call, a: NetworkGetBridgeNameArgs) -> Result<NetworkGetBridgeNameRet> {
    Err(no_network(&a.net))
}

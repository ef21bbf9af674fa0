//! The network filter driver. qemud applies no network filters: lists are
//! empty, lookups get libvirt's "no nwfilter with matching ..." errors, and
//! defining a filter or a binding is answered VIR_ERR_NO_SUPPORT (those
//! procedures have no row, so the table answers for them).

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::{ErrorCode, ErrorDomain};
use uuid::Uuid;

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_NUM_OF_NWFILTERS, Read, num_of_nwfilters),
        call!(CONNECT_LIST_NWFILTERS, Read, list_nwfilters),
        call!(CONNECT_LIST_ALL_NWFILTERS, Read, list_all_nwfilters),
        call!(NWFILTER_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(NWFILTER_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(NWFILTER_GET_XML_DESC, Read, get_xml_desc),
        call!(NWFILTER_UNDEFINE, Write, undefine),
        call!(CONNECT_LIST_ALL_NWFILTER_BINDINGS, Read, list_all_bindings),
        call!(NWFILTER_BINDING_LOOKUP_BY_PORT_DEV, Read, binding_lookup),
        call!(NWFILTER_BINDING_GET_XML_DESC, Read, binding_get_xml_desc),
        call!(NWFILTER_BINDING_DELETE, Write, binding_delete),
    ]
}

fn no_filter_uuid(uuid: Uuid) -> Error {
    Error::NoNwfilter(format!(
        "no nwfilter with matching uuid '{}'",
        uuid.hyphenated()
    ))
}

fn no_binding(portdev: &str) -> Error {
    Error::Other {
        code: ErrorCode::NoNwfilterBinding,
        domain: ErrorDomain::Nwfilter,
        message: format!(
            "Network filter binding not found: no nwfilter binding for port dev '{portdev}'"
        ),
    }
}

fn check_no_flags(flags: u32, function: &'static str) -> Result<()> {
    if flags != 0 {
        return Err(Error::UnsupportedFlags { flags, function });
    }
    Ok(())
}

async fn num_of_nwfilters(_: &Call, _: ()) -> Result<ConnectNumOfNwfiltersRet> {
    Ok(ConnectNumOfNwfiltersRet { num: 0 })
}

async fn list_nwfilters(_: &Call, _: ConnectListNwfiltersArgs) -> Result<ConnectListNwfiltersRet> {
    Ok(ConnectListNwfiltersRet {
        names: Vec::new().into(),
    })
}

async fn list_all_nwfilters(
    _: &Call,
    a: ConnectListAllNwfiltersArgs,
) -> Result<ConnectListAllNwfiltersRet> {
    check_no_flags(a.flags, "nwfilterConnectListAllNWFilters")?;
    Ok(ConnectListAllNwfiltersRet {
        filters: Vec::new().into(),
        ret: 0,
    })
}

async fn lookup_by_name(_: &Call, a: NwfilterLookupByNameArgs) -> Result<NwfilterLookupByNameRet> {
    Err(Error::NoNwfilter(format!(
        "no nwfilter with matching name '{}'",
        a.name.as_str()
    )))
}

async fn lookup_by_uuid(_: &Call, a: NwfilterLookupByUuidArgs) -> Result<NwfilterLookupByUuidRet> {
    Err(no_filter_uuid(a.uuid.into()))
}

async fn get_xml_desc(_: &Call, a: NwfilterGetXmlDescArgs) -> Result<NwfilterGetXmlDescRet> {
    Err(no_filter_uuid(a.nwfilter.uuid.into()))
}

async fn undefine(_: &Call, a: NwfilterUndefineArgs) -> Result<()> {
    Err(no_filter_uuid(a.nwfilter.uuid.into()))
}

async fn list_all_bindings(
    _: &Call,
    a: ConnectListAllNwfilterBindingsArgs,
) -> Result<ConnectListAllNwfilterBindingsRet> {
    check_no_flags(a.flags, "nwfilterConnectListAllNWFilterBindings")?;
    Ok(ConnectListAllNwfilterBindingsRet {
        bindings: Vec::new().into(),
        ret: 0,
    })
}

async fn binding_lookup(
    _: &Call,
    a: NwfilterBindingLookupByPortDevArgs,
) -> Result<NwfilterBindingLookupByPortDevRet> {
    Err(no_binding(a.name.as_str()))
}

async fn binding_get_xml_desc(
    _: &Call,
    a: NwfilterBindingGetXmlDescArgs,
) -> Result<NwfilterBindingGetXmlDescRet> {
    Err(no_binding(a.nwfilter.portdev.as_str()))
}

async fn binding_delete(_: &Call, a: NwfilterBindingDeleteArgs) -> Result<()> {
    Err(no_binding(a.nwfilter.portdev.as_str()))
}

//! The storage driver: pools and volumes. Until that driver lands, qemud has
//! no pools, and says so truthfully: lists are empty and every lookup gets
//! libvirt's "no storage pool/vol with matching ..." error.

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use uuid::Uuid;

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_LIST_ALL_STORAGE_POOLS, Read, list_all),
        call!(CONNECT_NUM_OF_STORAGE_POOLS, Read, num_of_active),
        call!(CONNECT_LIST_STORAGE_POOLS, Read, list_active),
        call!(CONNECT_NUM_OF_DEFINED_STORAGE_POOLS, Read, num_of_defined),
        call!(CONNECT_LIST_DEFINED_STORAGE_POOLS, Read, list_defined),
        call!(STORAGE_POOL_LOOKUP_BY_NAME, Read, lookup_by_name),
        call!(STORAGE_POOL_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(STORAGE_POOL_LOOKUP_BY_VOLUME, Read, lookup_by_volume),
        call!(
            STORAGE_POOL_LOOKUP_BY_TARGET_PATH,
            Read,
            lookup_by_target_path
        ),
        call!(STORAGE_POOL_GET_INFO, Read, get_info),
        call!(STORAGE_POOL_GET_XML_DESC, Read, get_xml_desc),
        call!(STORAGE_POOL_GET_AUTOSTART, Read, get_autostart),
        call!(STORAGE_POOL_IS_ACTIVE, Read, is_active),
        call!(STORAGE_POOL_IS_PERSISTENT, Read, is_persistent),
        call!(STORAGE_POOL_NUM_OF_VOLUMES, Read, num_of_volumes),
        call!(STORAGE_POOL_LIST_VOLUMES, Read, list_volumes),
        call!(STORAGE_POOL_LIST_ALL_VOLUMES, Read, list_all_volumes),
        call!(STORAGE_VOL_LOOKUP_BY_NAME, Read, vol_lookup_by_name),
        call!(STORAGE_VOL_LOOKUP_BY_KEY, Read, vol_lookup_by_key),
        call!(STORAGE_VOL_LOOKUP_BY_PATH, Read, vol_lookup_by_path),
    ]
}

/// `virConnectListAllStoragePoolsFlags`: state, persistence, autostart and
/// the pool types (bits 0..=19 in libvirt 9.0).
const LIST_ALL_FLAGS: u32 = (1 << 20) - 1;

/// libvirt's error for a pool handle that names no pool.
fn no_pool(pool: &NonnullStoragePool) -> Error {
    Error::NoStoragePool(format!(
        "no storage pool with matching uuid '{}' ({})",
        Uuid::from(pool.uuid).hyphenated(),
        pool.name.as_str()
    ))
}

async fn list_all(
    _: &Call,
    a: ConnectListAllStoragePoolsArgs,
) -> Result<ConnectListAllStoragePoolsRet> {
    if a.flags & !LIST_ALL_FLAGS != 0 {
        return Err(Error::UnsupportedFlags {
            flags: a.flags & !LIST_ALL_FLAGS,
            function: "storageConnectListAllStoragePools",
        });
    }
    Ok(ConnectListAllStoragePoolsRet {
        pools: Vec::new().into(),
        ret: 0,
    })
}

async fn num_of_active(_: &Call, _: ()) -> Result<ConnectNumOfStoragePoolsRet> {
    Ok(ConnectNumOfStoragePoolsRet { num: 0 })
}

async fn list_active(
    _: &Call,
    _: ConnectListStoragePoolsArgs,
) -> Result<ConnectListStoragePoolsRet> {
    Ok(ConnectListStoragePoolsRet {
        names: Vec::new().into(),
    })
}

async fn num_of_defined(_: &Call, _: ()) -> Result<ConnectNumOfDefinedStoragePoolsRet> {
    Ok(ConnectNumOfDefinedStoragePoolsRet { num: 0 })
}

async fn list_defined(
    _: &Call,
    _: ConnectListDefinedStoragePoolsArgs,
) -> Result<ConnectListDefinedStoragePoolsRet> {
    Ok(ConnectListDefinedStoragePoolsRet {
        names: Vec::new().into(),
    })
}

async fn lookup_by_name(
    _: &Call,
    a: StoragePoolLookupByNameArgs,
) -> Result<StoragePoolLookupByNameRet> {
    Err(Error::NoStoragePool(format!(
        "no storage pool with matching name '{}'",
        a.name.as_str()
    )))
}

async fn lookup_by_uuid(
    _: &Call,
    a: StoragePoolLookupByUuidArgs,
) -> Result<StoragePoolLookupByUuidRet> {
    Err(Error::NoStoragePool(format!(
        "no storage pool with matching uuid '{}'",
        Uuid::from(a.uuid).hyphenated()
    )))
}

async fn lookup_by_volume(
    _: &Call,
    a: StoragePoolLookupByVolumeArgs,
) -> Result<StoragePoolLookupByVolumeRet> {
    Err(Error::NoStoragePool(format!(
        "no storage pool with matching name '{}'",
        a.vol.pool.as_str()
    )))
}

async fn lookup_by_target_path(
    _: &Call,
    a: StoragePoolLookupByTargetPathArgs,
) -> Result<StoragePoolLookupByTargetPathRet> {
    Err(Error::NoStoragePool(format!(
        "no storage pool with matching target path '{}'",
        a.path.as_str()
    )))
}

async fn get_info(_: &Call, a: StoragePoolGetInfoArgs) -> Result<StoragePoolGetInfoRet> {
    Err(no_pool(&a.pool))
}

async fn get_xml_desc(_: &Call, a: StoragePoolGetXmlDescArgs) -> Result<StoragePoolGetXmlDescRet> {
    Err(no_pool(&a.pool))
}

async fn get_autostart(
    _: &Call,
    a: StoragePoolGetAutostartArgs,
) -> Result<StoragePoolGetAutostartRet> {
    Err(no_pool(&a.pool))
}

async fn is_active(_: &Call, a: StoragePoolIsActiveArgs) -> Result<StoragePoolIsActiveRet> {
    Err(no_pool(&a.pool))
}

async fn is_persistent(
    _: &Call,
    a: StoragePoolIsPersistentArgs,
) -> Result<StoragePoolIsPersistentRet> {
    Err(no_pool(&a.pool))
}

async fn num_of_volumes(
    _: &Call,
    a: StoragePoolNumOfVolumesArgs,
) -> Result<StoragePoolNumOfVolumesRet> {
    Err(no_pool(&a.pool))
}

async fn list_volumes(
    _: &Call,
    a: StoragePoolListVolumesArgs,
) -> Result<StoragePoolListVolumesRet> {
    Err(no_pool(&a.pool))
}

async fn list_all_volumes(
    _: &Call,
    a: StoragePoolListAllVolumesArgs,
) -> Result<StoragePoolListAllVolumesRet> {
    Err(no_pool(&a.pool))
}

async fn vol_lookup_by_name(
    _: &Call,
    a: StorageVolLookupByNameArgs,
) -> Result<StorageVolLookupByNameRet> {
    Err(no_pool(&a.pool))
}

async fn vol_lookup_by_key(
    _: &Call,
    a: StorageVolLookupByKeyArgs,
) -> Result<StorageVolLookupByKeyRet> {
    Err(Error::NoStorageVol(format!(
        "no storage vol with matching key {}",
        a.key.as_str()
    )))
}

async fn vol_lookup_by_path(
    _: &Call,
    a: StorageVolLookupByPathArgs,
) -> Result<StorageVolLookupByPathRet> {
    Err(Error::NoStorageVol(format!(
        "no storage vol with matching path '{}'",
        a.path.as_str()
    )))
}

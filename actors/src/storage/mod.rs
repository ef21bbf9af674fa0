//! The storage driver: pools and volumes. [`driver::StorageDriver`] is the
//! actor that owns every pool; [`ops`] holds the operations (quick checks in
//! the actor, slow work outside it); [`disk`] what is done to files. This
//! file is the driver's rows of the procedure table.

pub mod disk;
pub mod driver;
pub mod ops;
mod stream_glue;
pub mod transfer;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{XdrString, XdrVec};

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};
use driver::{with, Pool, StorageDriver};

pub use driver::VOLUME_INDEX;

/// Points every `<disk type='volume'>` of a domain about to start at its
/// volume's file, refusing the start when the pool is inactive or the
/// volume missing or still being created.
pub fn resolve_volume_disks(def: &mut qemud_config::domain::DomainDef) -> Result<()> {
    for disk in &mut def.devices.disks {
        let Some(v) = &disk.volume else {
            continue;
        };
        let (path, format) = VOLUME_INDEX.resolve(&v.pool, &v.volume)?;
        if v.format_from_volume {
            if format != "raw" && format != "qcow2" {
                return Err(Error::ConfigUnsupported(format!(
                    "disk format '{format}' is not supported"
                )));
            }
            disk.format = format;
        }
        disk.source = Some(path);
    }
    Ok(())
}

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_NUM_OF_STORAGE_POOLS, Read, num_active),
        call!(CONNECT_LIST_STORAGE_POOLS, Read, list_active),
        call!(CONNECT_NUM_OF_DEFINED_STORAGE_POOLS, Read, num_defined),
        call!(CONNECT_LIST_DEFINED_STORAGE_POOLS, Read, list_defined),
        call!(CONNECT_LIST_ALL_STORAGE_POOLS, Read, list_all),
        call!(STORAGE_POOL_CREATE_XML, Write, pool_create_xml),
        call!(STORAGE_POOL_DEFINE_XML, Write, pool_define_xml),
        call!(STORAGE_POOL_CREATE, Write, pool_create),
        call!(STORAGE_POOL_BUILD, Write, pool_build),
        call!(STORAGE_POOL_DESTROY, Write, pool_destroy),
        call!(STORAGE_POOL_DELETE, Write, pool_delete),
        call!(STORAGE_POOL_UNDEFINE, Write, pool_undefine),
        call!(STORAGE_POOL_REFRESH, Write, pool_refresh),
        call!(STORAGE_POOL_LOOKUP_BY_NAME, Read, pool_lookup_by_name),
        call!(STORAGE_POOL_LOOKUP_BY_UUID, Read, pool_lookup_by_uuid),
        call!(STORAGE_POOL_LOOKUP_BY_VOLUME, Read, pool_lookup_by_volume),
        call!(
            STORAGE_POOL_LOOKUP_BY_TARGET_PATH,
            Read,
            pool_lookup_by_target_path
        ),
        call!(STORAGE_POOL_GET_INFO, Read, pool_get_info),
        call!(STORAGE_POOL_GET_XML_DESC, Read, pool_get_xml_desc),
        call!(STORAGE_POOL_GET_AUTOSTART, Read, pool_get_autostart),
        call!(STORAGE_POOL_SET_AUTOSTART, Write, pool_set_autostart),
        call!(STORAGE_POOL_IS_ACTIVE, Read, pool_is_active),
        call!(STORAGE_POOL_IS_PERSISTENT, Read, pool_is_persistent),
        call!(STORAGE_POOL_NUM_OF_VOLUMES, Read, pool_num_of_volumes),
        call!(STORAGE_POOL_LIST_VOLUMES, Read, pool_list_volumes),
        call!(STORAGE_POOL_LIST_ALL_VOLUMES, Read, pool_list_all_volumes),
        call!(STORAGE_VOL_CREATE_XML, Write, vol_create_xml),
        call!(STORAGE_VOL_CREATE_XML_FROM, Write, vol_create_xml_from),
        call!(STORAGE_VOL_DELETE, Write, vol_delete),
        call!(STORAGE_VOL_WIPE, Write, vol_wipe),
        call!(STORAGE_VOL_WIPE_PATTERN, Write, vol_wipe_pattern),
        call!(STORAGE_VOL_RESIZE, Write, vol_resize),
        call!(STORAGE_VOL_LOOKUP_BY_NAME, Read, vol_lookup_by_name),
        call!(STORAGE_VOL_LOOKUP_BY_KEY, Read, vol_lookup_by_key),
        call!(STORAGE_VOL_LOOKUP_BY_PATH, Read, vol_lookup_by_path),
        call!(STORAGE_VOL_GET_INFO, Read, vol_get_info),
        call!(STORAGE_VOL_GET_INFO_FLAGS, Read, vol_get_info_flags),
        call!(STORAGE_VOL_GET_XML_DESC, Read, vol_get_xml_desc),
        call!(STORAGE_VOL_GET_PATH, Read, vol_get_path),
        call!(
            CONNECT_GET_STORAGE_POOL_CAPABILITIES,
            Read,
            pool_capabilities
        ),
        call!(STORAGE_VOL_UPLOAD, Write, vol_upload),
        call!(STORAGE_VOL_DOWNLOAD, Write, vol_download),
    ]
}

fn drv(call: &Call) -> &actix::Addr<StorageDriver> {
    &call.svc.storage
}

fn check_max(max: i32, what: &str) -> Result<usize> {
    if max < 0 || max as usize > 16384 {
        return Err(Error::Rpc(format!(
            "too many remote {what} requested ({max} > 16384)"
        )));
    }
    Ok(max as usize)
}

async fn names(call: &Call, active: bool, max: i32) -> Result<XdrVec<XdrString, 16384>> {
    let max = check_max(max, "storage pools")?;
    let names = with(drv(call), move |d| {
        Ok(d.pools
            .values()
            .filter(|p| p.active == active)
            .take(max)
            .map(|p| XdrString::from(p.def.name.clone()))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(XdrVec(names))
}

async fn count(call: &Call, active: bool) -> Result<i32> {
    with(drv(call), move |d| {
        Ok(d.pools.values().filter(|p| p.active == active).count() as i32)
    })
    .await
}

async fn num_active(call: &Call, _: ()) -> Result<ConnectNumOfStoragePoolsRet> {
    Ok(ConnectNumOfStoragePoolsRet {
        num: count(call, true).await?,
    })
}

async fn num_defined(call: &Call, _: ()) -> Result<ConnectNumOfDefinedStoragePoolsRet> {
    Ok(ConnectNumOfDefinedStoragePoolsRet {
        num: count(call, false).await?,
    })
}

async fn list_active(
    call: &Call,
    a: ConnectListStoragePoolsArgs,
) -> Result<ConnectListStoragePoolsRet> {
    Ok(ConnectListStoragePoolsRet {
        names: names(call, true, a.maxnames).await?,
    })
}

async fn list_defined(
    call: &Call,
    a: ConnectListDefinedStoragePoolsArgs,
) -> Result<ConnectListDefinedStoragePoolsRet> {
    Ok(ConnectListDefinedStoragePoolsRet {
        names: names(call, false, a.maxnames).await?,
    })
}

/// `virConnectListAllStoragePoolsFlags`.
mod list_flags {
    pub const INACTIVE: u32 = 1;
    pub const ACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const AUTOSTART: u32 = 16;
    pub const NO_AUTOSTART: u32 = 32;
    pub const DIR: u32 = 64;
    pub const FS: u32 = 128;
    pub const NETFS: u32 = 256;
    pub const LOGICAL: u32 = 512;
    /// Every type bit libvirt 9.0 knows (dir ... iscsi-direct).
    pub const ALL_TYPES: u32 = 0xFFFC0;
    pub const ALL: u32 = 0xFFFFF;
}

fn list_filter(p: &Pool, flags: u32) -> bool {
    use list_flags::*;
    use qemud_config::storage::PoolType;
    let pair = |a: u32, b: u32, first: bool| -> bool {
        flags & (a | b) == 0 || (flags & a != 0 && first) || (flags & b != 0 && !first)
    };
    if !pair(ACTIVE, INACTIVE, p.active)
        || !pair(PERSISTENT, TRANSIENT, p.persistent)
        || !pair(AUTOSTART, NO_AUTOSTART, p.autostart)
    {
        return false;
    }
    if flags & ALL_TYPES != 0 {
        let bit = match p.def.pool_type {
            PoolType::Dir => DIR,
            PoolType::Fs => FS,
            PoolType::Netfs => NETFS,
            PoolType::Logical => LOGICAL,
        };
        return flags & bit != 0;
    }
    true
}

async fn list_all(
    call: &Call,
    a: ConnectListAllStoragePoolsArgs,
) -> Result<ConnectListAllStoragePoolsRet> {
    check_flags(a.flags, list_flags::ALL, "virConnectListAllStoragePools")?;
    let flags = a.flags;
    let pools = with(drv(call), move |d| {
        Ok(d.pools
            .values()
            .filter(|p| list_filter(p, flags))
            .map(Pool::to_wire)
            .collect::<Vec<_>>())
    })
    .await?;
    let n = pools.len() as u32;
    Ok(ConnectListAllStoragePoolsRet {
        pools: XdrVec(if a.need_results != 0 {
            pools
        } else {
            Vec::new()
        }),
        ret: n,
    })
}

async fn pool_create_xml(
    call: &Call,
    a: StoragePoolCreateXmlArgs,
) -> Result<StoragePoolCreateXmlRet> {
    check_flags(a.flags, 7, "virStoragePoolCreateXML")?;
    let pool = ops::create_transient(drv(call), a.xml.as_str().to_owned(), a.flags).await?;
    Ok(StoragePoolCreateXmlRet { pool })
}

async fn pool_define_xml(
    call: &Call,
    a: StoragePoolDefineXmlArgs,
) -> Result<StoragePoolDefineXmlRet> {
    // VIR_STORAGE_POOL_DEFINE_VALIDATE: the parser validates anyway.
    check_flags(a.flags, 1, "virStoragePoolDefineXML")?;
    let pool = ops::define(drv(call), a.xml.as_str().to_owned()).await?;
    Ok(StoragePoolDefineXmlRet { pool })
}

async fn pool_create(call: &Call, a: StoragePoolCreateArgs) -> Result<()> {
    check_flags(a.flags, 7, "virStoragePoolCreate")?;
    let p = a.pool;
    let name = with(drv(call), move |d| d.name_by_wire(&p)).await?;
    ops::start_pool(drv(call), &name, a.flags, true).await?;
    Ok(())
}

async fn pool_build(call: &Call, a: StoragePoolBuildArgs) -> Result<()> {
    check_flags(a.flags, 0xF, "virStoragePoolBuild")?;
    ops::build(drv(call), a.pool, a.flags).await
}

async fn pool_destroy(call: &Call, a: StoragePoolDestroyArgs) -> Result<()> {
    ops::destroy(drv(call), a.pool).await
}

async fn pool_delete(call: &Call, a: StoragePoolDeleteArgs) -> Result<()> {
    ops::delete(drv(call), a.pool, a.flags).await
}

async fn pool_undefine(call: &Call, a: StoragePoolUndefineArgs) -> Result<()> {
    ops::undefine(drv(call), a.pool).await
}

async fn pool_refresh(call: &Call, a: StoragePoolRefreshArgs) -> Result<()> {
    check_flags(a.flags, 0, "virStoragePoolRefresh")?;
    ops::refresh(drv(call), a.pool).await
}

async fn pool_lookup_by_name(
    call: &Call,
    a: StoragePoolLookupByNameArgs,
) -> Result<StoragePoolLookupByNameRet> {
    let pool = with(drv(call), move |d| Ok(d.pool(a.name.as_str())?.to_wire())).await?;
    Ok(StoragePoolLookupByNameRet { pool })
}

async fn pool_lookup_by_uuid(
    call: &Call,
    a: StoragePoolLookupByUuidArgs,
) -> Result<StoragePoolLookupByUuidRet> {
    let uuid = uuid::Uuid::from_bytes(a.uuid.0);
    let pool = with(drv(call), move |d| {
        d.pools
            .values()
            .find(|p| p.def.uuid == uuid)
            .map(Pool::to_wire)
            .ok_or_else(|| {
                Error::NoStoragePool(format!("no storage pool with matching uuid '{uuid}'"))
            })
    })
    .await?;
    Ok(StoragePoolLookupByUuidRet { pool })
}

async fn pool_lookup_by_volume(
    call: &Call,
    a: StoragePoolLookupByVolumeArgs,
) -> Result<StoragePoolLookupByVolumeRet> {
    let pool = with(drv(call), move |d| {
        Ok(d.pool(a.vol.pool.as_str())?.to_wire())
    })
    .await?;
    Ok(StoragePoolLookupByVolumeRet { pool })
}

async fn pool_lookup_by_target_path(
    call: &Call,
    a: StoragePoolLookupByTargetPathArgs,
) -> Result<StoragePoolLookupByTargetPathRet> {
    let path = qemud_config::storage::sanitize_path(a.path.as_str());
    let pool = with(drv(call), move |d| {
        d.pools
            .values()
            .find(|p| p.active && p.def.target_path == path)
            .map(Pool::to_wire)
            .ok_or_else(|| {
                Error::NoStoragePool(format!(
                    "no storage pool with matching target path '{path}'"
                ))
            })
    })
    .await?;
    Ok(StoragePoolLookupByTargetPathRet { pool })
}

async fn pool_get_info(call: &Call, a: StoragePoolGetInfoArgs) -> Result<StoragePoolGetInfoRet> {
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        Ok(StoragePoolGetInfoRet {
            // VIR_STORAGE_POOL_RUNNING / VIR_STORAGE_POOL_INACTIVE.
            state: if p.active { 2 } else { 0 },
            capacity: p.sizes.capacity,
            allocation: p.sizes.allocation,
            available: p.sizes.available,
        })
    })
    .await
}

async fn pool_get_xml_desc(
    call: &Call,
    a: StoragePoolGetXmlDescArgs,
) -> Result<StoragePoolGetXmlDescRet> {
    // VIR_STORAGE_XML_INACTIVE.
    check_flags(a.flags, 1, "virStoragePoolGetXMLDesc")?;
    let (def, sizes) = with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        let def = match (&p.pending_def, a.flags & 1 != 0) {
            (Some(next), true) => next.clone(),
            _ => p.def.clone(),
        };
        Ok((def, p.sizes))
    })
    .await?;
    let target = def.target_path.clone();
    let perms = tokio::task::spawn_blocking(move || {
        std::fs::metadata(&target).ok().map(|m| disk::perms_of(&m))
    })
    .await
    .ok()
    .flatten();
    Ok(StoragePoolGetXmlDescRet {
        xml: def.format(sizes, perms.as_ref()).into(),
    })
}

async fn pool_get_autostart(
    call: &Call,
    a: StoragePoolGetAutostartArgs,
) -> Result<StoragePoolGetAutostartRet> {
    with(drv(call), move |d| {
        Ok(StoragePoolGetAutostartRet {
            autostart: d.pool_by_wire(&a.pool)?.autostart as i32,
        })
    })
    .await
}

async fn pool_set_autostart(call: &Call, a: StoragePoolSetAutostartArgs) -> Result<()> {
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        if !p.persistent {
            return Err(Error::OperationInvalid(
                "cannot set autostart for transient pool".into(),
            ));
        }
        let name = p.def.name.clone();
        let on = a.autostart != 0;
        d.set_autostart_file(&name, on)?;
        d.pool_mut(&name)?.autostart = on;
        Ok(())
    })
    .await
}

async fn pool_is_active(call: &Call, a: StoragePoolIsActiveArgs) -> Result<StoragePoolIsActiveRet> {
    with(drv(call), move |d| {
        Ok(StoragePoolIsActiveRet {
            active: d.pool_by_wire(&a.pool)?.active as i32,
        })
    })
    .await
}

async fn pool_is_persistent(
    call: &Call,
    a: StoragePoolIsPersistentArgs,
) -> Result<StoragePoolIsPersistentRet> {
    with(drv(call), move |d| {
        Ok(StoragePoolIsPersistentRet {
            persistent: d.pool_by_wire(&a.pool)?.persistent as i32,
        })
    })
    .await
}

async fn pool_num_of_volumes(
    call: &Call,
    a: StoragePoolNumOfVolumesArgs,
) -> Result<StoragePoolNumOfVolumesRet> {
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        p.check_active()?;
        Ok(StoragePoolNumOfVolumesRet {
            num: p.volumes.len() as i32,
        })
    })
    .await
}

async fn pool_list_volumes(
    call: &Call,
    a: StoragePoolListVolumesArgs,
) -> Result<StoragePoolListVolumesRet> {
    let max = check_max(a.maxnames, "storage volumes")?;
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        p.check_active()?;
        Ok(StoragePoolListVolumesRet {
            names: XdrVec(
                p.volumes
                    .keys()
                    .take(max)
                    .map(|n| XdrString::from(n.clone()))
                    .collect(),
            ),
        })
    })
    .await
}

async fn pool_list_all_volumes(
    call: &Call,
    a: StoragePoolListAllVolumesArgs,
) -> Result<StoragePoolListAllVolumesRet> {
    check_flags(a.flags, 0, "virStoragePoolListAllVolumes")?;
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        p.check_active()?;
        let vols: Vec<_> = p.volumes.values().map(|v| p.vol_wire(v)).collect();
        let n = vols.len() as u32;
        Ok(StoragePoolListAllVolumesRet {
            vols: XdrVec(if a.need_results != 0 {
                vols
            } else {
                Vec::new()
            }),
            ret: n,
        })
    })
    .await
}

async fn vol_create_xml(call: &Call, a: StorageVolCreateXmlArgs) -> Result<StorageVolCreateXmlRet> {
    // PREALLOC_METADATA | VALIDATE; reflink needs a filesystem qemud does
    // not promise.
    check_flags(a.flags, 1 | 4, "virStorageVolCreateXML")?;
    let vol = ops::create_vol(drv(call), a.pool, a.xml.as_str().to_owned(), None, a.flags).await?;
    Ok(StorageVolCreateXmlRet { vol })
}

async fn vol_create_xml_from(
    call: &Call,
    a: StorageVolCreateXmlFromArgs,
) -> Result<StorageVolCreateXmlFromRet> {
    check_flags(a.flags, 1 | 4, "virStorageVolCreateXMLFrom")?;
    let vol = ops::create_vol(
        drv(call),
        a.pool,
        a.xml.as_str().to_owned(),
        Some(a.clonevol),
        a.flags,
    )
    .await?;
    Ok(StorageVolCreateXmlFromRet { vol })
}

async fn vol_delete(call: &Call, a: StorageVolDeleteArgs) -> Result<()> {
    // VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS: files have no snapshots to keep.
    check_flags(a.flags, 2, "virStorageVolDelete")?;
    ops::delete_vol(drv(call), a.vol).await
}

async fn vol_wipe(call: &Call, a: StorageVolWipeArgs) -> Result<()> {
    check_flags(a.flags, 0, "virStorageVolWipe")?;
    ops::wipe(drv(call), a.vol, 0).await
}

async fn vol_wipe_pattern(call: &Call, a: StorageVolWipePatternArgs) -> Result<()> {
    check_flags(a.flags, 0, "virStorageVolWipePattern")?;
    ops::wipe(drv(call), a.vol, a.algorithm).await
}

async fn vol_resize(call: &Call, a: StorageVolResizeArgs) -> Result<()> {
    check_flags(a.flags, 7, "virStorageVolResize")?;
    ops::resize(drv(call), a.vol, a.capacity, a.flags).await
}

async fn vol_lookup_by_name(
    call: &Call,
    a: StorageVolLookupByNameArgs,
) -> Result<StorageVolLookupByNameRet> {
    with(drv(call), move |d| {
        let p = d.pool_by_wire(&a.pool)?;
        p.check_active()?;
        let v = p.vol(a.name.as_str())?;
        Ok(StorageVolLookupByNameRet { vol: p.vol_wire(v) })
    })
    .await
}

/// The volume whose key or path is `what`, in any active pool.
async fn find_vol(call: &Call, what: String, by_key: bool) -> Result<NonnullStorageVol> {
    let wanted = if by_key {
        what.clone()
    } else {
        qemud_config::storage::sanitize_path(&what)
    };
    let canon = std::fs::canonicalize(&wanted)
        .map(|p| p.to_string_lossy().into_owned())
        .ok();
    with(drv(call), move |d| {
        for p in d.pools.values().filter(|p| p.active) {
            for v in p.volumes.values() {
                if v.facts.path == wanted || Some(&v.facts.path) == canon.as_ref() {
                    return Ok(p.vol_wire(v));
                }
            }
        }
        Err(Error::NoStorageVol(if by_key {
            format!("no storage vol with matching key {what}")
        } else {
            format!("no storage vol with matching path '{what}'")
        }))
    })
    .await
}

async fn vol_lookup_by_key(
    call: &Call,
    a: StorageVolLookupByKeyArgs,
) -> Result<StorageVolLookupByKeyRet> {
    Ok(StorageVolLookupByKeyRet {
        vol: find_vol(call, a.key.as_str().to_owned(), true).await?,
    })
}

async fn vol_lookup_by_path(
    call: &Call,
    a: StorageVolLookupByPathArgs,
) -> Result<StorageVolLookupByPathRet> {
    Ok(StorageVolLookupByPathRet {
        vol: find_vol(call, a.path.as_str().to_owned(), false).await?,
    })
}

fn vol_type_number(t: &str) -> i8 {
    match t {
        "block" => 1,
        "dir" => 2,
        _ => 0,
    }
}

async fn vol_info(call: &Call, vol: NonnullStorageVol, physical: bool) -> Result<(i8, u64, u64)> {
    with(drv(call), move |d| {
        let (_, v) = d.vol_by_wire(&vol)?;
        let f = &v.facts;
        Ok((
            vol_type_number(&f.vol_type),
            f.capacity,
            if physical { f.physical } else { f.allocation },
        ))
    })
    .await
}

async fn vol_get_info(call: &Call, a: StorageVolGetInfoArgs) -> Result<StorageVolGetInfoRet> {
    let (type_, capacity, allocation) = vol_info(call, a.vol, false).await?;
    Ok(StorageVolGetInfoRet {
        type_,
        capacity,
        allocation,
    })
}

async fn vol_get_info_flags(
    call: &Call,
    a: StorageVolGetInfoFlagsArgs,
) -> Result<StorageVolGetInfoFlagsRet> {
    // VIR_STORAGE_VOL_GET_PHYSICAL.
    check_flags(a.flags, 1, "virStorageVolGetInfoFlags")?;
    let (type_, capacity, allocation) = vol_info(call, a.vol, a.flags & 1 != 0).await?;
    Ok(StorageVolGetInfoFlagsRet {
        type_,
        capacity,
        allocation,
    })
}

async fn vol_get_xml_desc(
    call: &Call,
    a: StorageVolGetXmlDescArgs,
) -> Result<StorageVolGetXmlDescRet> {
    check_flags(a.flags, 0, "virStorageVolGetXMLDesc")?;
    let xml = with(drv(call), move |d| {
        Ok(d.vol_by_wire(&a.vol)?.1.facts.format())
    })
    .await?;
    Ok(StorageVolGetXmlDescRet { xml: xml.into() })
}

async fn vol_get_path(call: &Call, a: StorageVolGetPathArgs) -> Result<StorageVolGetPathRet> {
    let path = with(drv(call), move |d| {
        Ok(d.vol_by_wire(&a.vol)?.1.facts.path.clone())
    })
    .await?;
    Ok(StorageVolGetPathRet { name: path.into() })
}

async fn vol_download(call: &Call, a: StorageVolDownloadArgs) -> Result<()> {
    // Sparse streams need holes in the stream engine.
    check_flags(a.flags, 0, "virStorageVolDownload")?;
    let (offset, length) = (a.offset, a.length);
    transfer_in_background(call, a.vol, "virStorageVolDownload", move |io, path| {
        transfer::send_file(io, path, offset, length)
    })
    .await
}

async fn vol_upload(call: &Call, a: StorageVolUploadArgs) -> Result<()> {
    check_flags(a.flags, 0, "virStorageVolUpload")?;
    let (offset, length) = (a.offset, a.length);
    transfer_in_background(call, a.vol, "virStorageVolUpload", move |io, path| {
        transfer::receive_file(io, path, offset, length)
    })
    .await
}

/// Marks the volume in use, opens the call's stream and runs `copy` over it
/// in the background. The volume is released before the client's finish is
/// confirmed, so a client that deletes it right after finds it free.
async fn transfer_in_background<F, Fut>(
    call: &Call,
    vol: NonnullStorageVol,
    api: &str,
    copy: F,
) -> Result<()>
where
    F: FnOnce(crate::rpc::stream::StreamIo, std::path::PathBuf) -> Fut + 'static,
    Fut: std::future::Future<Output = Option<crate::rpc::stream::StreamIo>> + 'static,
{
    let t = transfer::begin_transfer(drv(call), vol).await?;
    let io = match stream_glue::open(call, api).await {
        Ok(io) => io,
        Err(e) => {
            transfer::finish_transfer(drv(call), t).await;
            return Err(e);
        }
    };
    let driver = drv(call).clone();
    actix_rt::spawn(async move {
        let finished = copy(io, t.path.clone()).await;
        transfer::finish_transfer(&driver, t).await;
        if let Some(io) = finished {
            io.finish();
        }
    });
    Ok(())
}

async fn pool_capabilities(
    _: &Call,
    a: ConnectGetStoragePoolCapabilitiesArgs,
) -> Result<ConnectGetStoragePoolCapabilitiesRet> {
    check_flags(a.flags, 0, "virConnectGetStoragePoolCapabilities")?;
    Ok(ConnectGetStoragePoolCapabilitiesRet {
        capabilities: qemud_config::storage::pool_capabilities_xml().into(),
    })
}

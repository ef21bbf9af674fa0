//! The storage operations: each checks and marks state inside the driver
//! actor, does its slow part (filesystem, qemu-img) outside it, and records
//! the outcome in a final step. A failure in the slow part undoes the mark,
//! so the driver never shows a half-made volume.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use qemud_config::storage::{PoolDef, PoolSizes, PoolType, VolDef, VolFacts};
use qemud_protocol::remote::{NonnullStoragePool, NonnullStorageVol};
use qemud_protocol::{ErrorCode, ErrorDomain};

use super::disk;
use super::driver::{lifecycle, new_pool, type_supported, with, StorageDriver, Vol};
use crate::error::{Error, Result};
use actix::Addr;

type Driver = Addr<StorageDriver>;

/// How long a mount or unmount of an fs or netfs pool may take.
const MOUNT_DEADLINE: Duration = Duration::from_secs(60);

/// `virStoragePoolBuildFlags`.
pub const BUILD_OVERWRITE: u32 = 8;
pub const BUILD_NO_OVERWRITE: u32 = 4;
/// `virStoragePoolCreateFlags`.
pub const CREATE_WITH_BUILD: u32 = 1;
pub const CREATE_WITH_BUILD_OVERWRITE: u32 = 2;
pub const CREATE_WITH_BUILD_NO_OVERWRITE: u32 = 4;
/// `virStorageVolCreateFlags`.
pub const VOL_CREATE_PREALLOC_METADATA: u32 = 1;
/// `virStorageVolResizeFlags`.
pub const RESIZE_ALLOCATE: u32 = 1;
pub const RESIZE_DELTA: u32 = 2;
pub const RESIZE_SHRINK: u32 = 4;

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("storage task failed: {e}")))?
}

fn xml_error(e: qemud_config::storage::StorageXmlError) -> Error {
    use qemud_config::storage::StorageXmlError as E;
    match e {
        E::Xml(m) => Error::Other {
            code: ErrorCode::XmlError,
            domain: ErrorDomain::Storage,
            message: format!("XML error: {m}"),
        },
        E::Unsupported(m) => Error::Other {
            code: ErrorCode::ConfigUnsupported,
            domain: ErrorDomain::Storage,
            message: format!("unsupported configuration: {m}"),
        },
        E::InvalidArg(m) => Error::InvalidArg(m),
    }
}

/// Checks a new definition against the others: libvirt's name/UUID rules
/// and one pool per target.
fn check_duplicates(d: &StorageDriver, def: &PoolDef, check_active: bool) -> Result<bool> {
    if let Some(same) = d.pools.values().find(|p| p.def.uuid == def.uuid) {
        if same.def.name != def.name {
            return Err(Error::OperationFailed(format!(
                "pool '{}' is already defined with uuid {}",
                same.def.name, same.def.uuid
            )));
        }
        if check_active && same.active {
            return Err(Error::OperationInvalid(format!(
                "pool is already active as '{}'",
                same.def.name
            )));
        }
        return Ok(true);
    }
    if let Some(same) = d.pools.get(&def.name) {
        return Err(Error::OperationFailed(format!(
            "pool '{}' already exists with uuid {}",
            def.name, same.def.uuid
        )));
    }
    if let Some(other) = d.pools.values().find(|p| {
        p.def.name != def.name
            && (p.def.target_path == def.target_path
                || (def.pool_type == PoolType::Logical
                    && p.def.pool_type == PoolType::Logical
                    && p.def.source.name == def.source.name))
    }) {
        return Err(Error::OperationFailed(format!(
            "Storage source conflict with pool: '{}'",
            other.def.name
        )));
    }
    Ok(false)
}

pub async fn define(drv: &Driver, xml: String) -> Result<NonnullStoragePool> {
    let def = PoolDef::parse(&xml).map_err(xml_error)?;
    type_supported(def.pool_type)?;
    with(drv, move |d| {
        let existing = check_duplicates(d, &def, false)?;
        d.save_config(&def)?;
        let name = def.name.clone();
        if existing {
            let p = d.pool_mut(&name)?;
            if p.active {
                p.pending_def = Some(def);
            } else {
                p.def = def;
            }
            p.persistent = true;
        } else {
            d.pools.insert(name.clone(), new_pool(def, true, false));
        }
        let p = d.pool(&name)?;
        let wire = p.to_wire();
        d.publish(&name);
        d.lifecycle_event(&wire, lifecycle::DEFINED);
        info!(pool = %name, "storage pool defined");
        Ok(wire)
    })
    .await
}

pub async fn create_transient(drv: &Driver, xml: String, flags: u32) -> Result<NonnullStoragePool> {
    let def = PoolDef::parse(&xml).map_err(xml_error)?;
    type_supported(def.pool_type)?;
    if flags & CREATE_WITH_BUILD_OVERWRITE != 0 && flags & CREATE_WITH_BUILD_NO_OVERWRITE != 0 {
        return Err(overwrite_exclusive());
    }
    let name = def.name.clone();
    with(drv, move |d| {
        if check_duplicates(d, &def, true)? {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is already defined",
                def.name
            )));
        }
        d.pools
            .insert(def.name.clone(), new_pool(def, false, false));
        Ok(())
    })
    .await?;
    match start_pool(drv, &name, flags, true).await {
        Ok(wire) => Ok(wire),
        Err(e) => {
            let n = name.clone();
            let _ = with(drv, move |d| {
                if d.pools.get(&n).is_some_and(|p| !p.persistent && !p.active) {
                    d.pools.remove(&n);
                    d.publish(&n);
                }
                Ok(())
            })
            .await;
            Err(e)
        }
    }
}

fn overwrite_exclusive() -> Error {
    Error::InvalidArg(
        "Argument 'VIR_STORAGE_POOL_BUILD_OVERWRITE' cannot be used with 'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE'"
            .into(),
    )
}

/// Builds a pool's target: the directory, with the pool's permissions.
fn build_target(def: &PoolDef, flags: u32) -> Result<()> {
    let path = Path::new(&def.target_path);
    if flags & BUILD_NO_OVERWRITE != 0 && def.pool_type == PoolType::Fs {
        // Nothing is formatted by qemud: an existing filesystem is kept.
    }
    std::fs::create_dir_all(path).map_err(|e| {
        Error::System(format!(
            "cannot create path '{}': {}",
            path.display(),
            disk::strip_os_error(&e)
        ))
    })?;
    use std::os::unix::fs::PermissionsExt;
    let mode = def.perms.mode.unwrap_or(0o711);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::System(format!(
            "cannot set mode of '{}' to {mode:04o}: {}",
            path.display(),
            disk::strip_os_error(&e)
        ))
    })?;
    if def.perms.owner.is_some() || def.perms.group.is_some() {
        let _ = nix::unistd::chown(
            path,
            def.perms.owner.map(nix::unistd::Uid::from_raw),
            def.perms.group.map(nix::unistd::Gid::from_raw),
        );
    }
    Ok(())
}

pub async fn build(drv: &Driver, pool: NonnullStoragePool, flags: u32) -> Result<()> {
    if flags & BUILD_OVERWRITE != 0 && flags & BUILD_NO_OVERWRITE != 0 {
        return Err(overwrite_exclusive());
    }
    let def = with(drv, move |d| {
        let p = d.pool_by_wire(&pool)?;
        if p.active {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is already active",
                p.def.name
            )));
        }
        Ok(p.def.clone())
    })
    .await?;
    let d2 = def.clone();
    blocking(move || build_target(&d2, flags)).await?;
    let name = def.name.clone();
    with(drv, move |d| {
        let p = d.pool(&name)?;
        let wire = p.to_wire();
        d.lifecycle_event(&wire, lifecycle::CREATED);
        Ok(())
    })
    .await
}

async fn run_tool(program: &str, args: &[String]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        Error::System(format!(
            "Cannot find '{program}' in path: {}",
            disk::strip_os_error(&e)
        ))
    })?;
    let out = tokio::time::timeout(MOUNT_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| Error::Timeout(format!("{program} did not finish in time")))?
        .map_err(|e| Error::Internal(format!("{program} failed: {e}")))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "Child process ({program} {}) unexpected exit status {}: {}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// Mounts the source of an fs or netfs pool on its target.
async fn mount(def: &PoolDef) -> Result<()> {
    if is_mounted(&def.target_path) {
        return Ok(());
    }
    let source = match def.pool_type {
        PoolType::Fs => def.source.devices.first().cloned().unwrap_or_default(),
        PoolType::Netfs => format!(
            "{}:{}",
            def.source.host.clone().unwrap_or_default(),
            def.source.dir.clone().unwrap_or_default()
        ),
        _ => return Ok(()),
    };
    let mut args = Vec::new();
    if let Some(f) = def.source.format.as_deref().filter(|f| *f != "auto") {
        args.push("-t".to_owned());
        args.push(f.to_owned());
    }
    args.push(source);
    args.push(def.target_path.clone());
    run_tool("mount", &args).await
}

/// Starts a pool: build when asked, mount, scan. `api` distinguishes a
/// client's start from a resume at daemon start-up.
pub async fn start_pool(
    drv: &Driver,
    name: &str,
    flags: u32,
    api: bool,
) -> Result<NonnullStoragePool> {
    let n = name.to_owned();
    let def = with(drv, move |d| {
        let p = d.pool_mut(&n)?;
        if p.active {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is already active",
                p.def.name
            )));
        }
        if p.starting {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is starting up",
                p.def.name
            )));
        }
        p.starting = true;
        if let Some(next) = p.pending_def.take() {
            p.def = next;
        }
        Ok(p.def.clone())
    })
    .await?;
    let prepared = async {
        if flags
            & (CREATE_WITH_BUILD | CREATE_WITH_BUILD_OVERWRITE | CREATE_WITH_BUILD_NO_OVERWRITE)
            != 0
        {
            let d2 = def.clone();
            blocking(move || build_target(&d2, 0)).await?;
        }
        if matches!(def.pool_type, PoolType::Fs | PoolType::Netfs) {
            mount(&def).await?;
        }
        let target = PathBuf::from(&def.target_path);
        blocking(move || {
            disk::remove_partials(&target);
            let vols = disk::scan_dir(&target)?;
            Ok((vols, disk::statvfs(&target)?))
        })
        .await
    }
    .await;
    let n = name.to_owned();
    let (vols, sizes) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = with(drv, move |d| {
                if let Some(p) = d.pools.get_mut(&n) {
                    p.starting = false;
                }
                Ok(())
            })
            .await;
            return Err(e);
        }
    };
    let n = name.to_owned();
    with(drv, move |d| {
        let p = d.pool_mut(&n)?;
        p.starting = false;
        p.active = true;
        p.sizes = sizes;
        p.volumes = vols
            .into_iter()
            .map(|f| {
                (
                    f.name.clone(),
                    Vol {
                        facts: f,
                        building: false,
                        in_use: 0,
                    },
                )
            })
            .collect();
        let wire = p.to_wire();
        let p = d.pool(&n)?;
        d.save_state(p);
        d.publish(&n);
        d.lifecycle_event(&wire, lifecycle::STARTED);
        if api {
            info!(pool = %n, "storage pool started");
        }
        Ok(wire)
    })
    .await
}

pub async fn destroy(drv: &Driver, pool: NonnullStoragePool) -> Result<()> {
    let def = with(drv, move |d| {
        let p = d.pool_by_wire(&pool)?;
        p.check_active()?;
        if p.jobs > 0 {
            return Err(Error::OperationInvalid(format!(
                "pool '{}' has asynchronous jobs running.",
                p.def.name
            )));
        }
        Ok(p.def.clone())
    })
    .await?;
    if matches!(def.pool_type, PoolType::Fs | PoolType::Netfs) && is_mounted(&def.target_path) {
        run_tool("umount", std::slice::from_ref(&def.target_path)).await?;
    }
    let name = def.name.clone();
    with(drv, move |d| {
        let p = d.pool_mut(&name)?;
        // A create may have begun meanwhile.
        if p.jobs > 0 {
            return Err(Error::OperationInvalid(format!(
                "pool '{}' has asynchronous jobs running.",
                p.def.name
            )));
        }
        p.active = false;
        p.volumes.clear();
        p.sizes = PoolSizes::default();
        let wire = p.to_wire();
        let persistent = p.persistent;
        let p = d.pool(&name)?;
        d.save_state(p);
        if !persistent {
            d.pools.remove(&name);
        }
        d.publish(&name);
        d.lifecycle_event(&wire, lifecycle::STOPPED);
        info!(pool = %name, "storage pool destroyed");
        Ok(())
    })
    .await
}

pub async fn delete(drv: &Driver, pool: NonnullStoragePool, flags: u32) -> Result<()> {
    let def = with(drv, move |d| {
        let p = d.pool_by_wire(&pool)?;
        p.check_inactive()?;
        Ok(p.def.clone())
    })
    .await?;
    if flags != 0 {
        return Err(Error::UnsupportedFlags {
            flags,
            function: "virStorageBackendFileSystemDelete",
        });
    }
    let path = def.target_path.clone();
    blocking(move || match std::fs::remove_dir(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::System(format!(
            "failed to remove pool '{path}': {}",
            disk::strip_os_error(&e)
        ))),
    })
    .await?;
    let name = def.name.clone();
    with(drv, move |d| {
        let wire = d.pool(&name)?.to_wire();
        d.lifecycle_event(&wire, lifecycle::DELETED);
        Ok(())
    })
    .await
}

pub async fn undefine(drv: &Driver, pool: NonnullStoragePool) -> Result<()> {
    with(drv, move |d| {
        let p = d.pool_by_wire(&pool)?;
        p.check_inactive()?;
        if !p.persistent {
            return Err(Error::OperationInvalid("pool has no config file".into()));
        }
        let name = p.def.name.clone();
        let wire = p.to_wire();
        d.remove_config(&name)?;
        d.pools.remove(&name);
        d.publish(&name);
        d.lifecycle_event(&wire, lifecycle::UNDEFINED);
        info!(pool = %name, "storage pool undefined");
        Ok(())
    })
    .await
}

/// Rescans an active pool. Volumes being created keep their mark.
pub async fn refresh(drv: &Driver, pool: NonnullStoragePool) -> Result<()> {
    let (name, target) = with(drv, move |d| {
        let p = d.pool_by_wire(&pool)?;
        p.check_active()?;
        if p.jobs > 0 {
            return Err(Error::OperationInvalid(format!(
                "pool '{}' has asynchronous jobs running.",
                p.def.name
            )));
        }
        Ok((p.def.name.clone(), p.target()))
    })
    .await?;
    let (vols, sizes) =
        blocking(move || Ok((disk::scan_dir(&target)?, disk::statvfs(&target)?))).await?;
    with(drv, move |d| {
        let p = d.pool_mut(&name)?;
        p.check_active()?;
        let mut next: std::collections::BTreeMap<String, Vol> = vols
            .into_iter()
            .map(|f| {
                let in_use = p.volumes.get(&f.name).map(|v| v.in_use).unwrap_or(0);
                (
                    f.name.clone(),
                    Vol {
                        facts: f,
                        building: false,
                        in_use,
                    },
                )
            })
            .collect();
        for (n, v) in &p.volumes {
            if v.building {
                next.insert(n.clone(), v.clone());
            }
        }
        p.volumes = next;
        p.sizes = sizes;
        let wire = p.to_wire();
        d.publish(&name);
        d.refresh_event(&wire);
        Ok(())
    })
    .await
}

/// What a volume create does once the driver agreed to it.
struct CreatePlan {
    pool: String,
    name: String,
    target: PathBuf,
    path: PathBuf,
    format: String,
    capacity: u64,
    allocation: u64,
    mode: u32,
    def: VolDef,
    /// For create-from: the source's path and format.
    source: Option<(String, String, String, String)>,
}

fn check_vol_name(name: &str) -> Result<()> {
    if name.contains('/') {
        return Err(Error::OperationInvalid(format!(
            "volume name '{name}' cannot contain '/'"
        )));
    }
    if name == "." || name == ".." || name.starts_with(disk::PARTIAL_PREFIX) {
        return Err(Error::OperationInvalid(format!(
            "volume name '{name}' is not allowed"
        )));
    }
    Ok(())
}

fn begin_create(
    d: &mut StorageDriver,
    pool: &NonnullStoragePool,
    def: VolDef,
    source: Option<&NonnullStorageVol>,
    flags: u32,
) -> Result<CreatePlan> {
    let p = d.pool_by_wire(pool)?;
    p.check_active()?;
    let pool_name = p.def.name.clone();
    check_vol_name(&def.name)?;
    if p.volumes.contains_key(&def.name) {
        return Err(Error::Other {
            code: ErrorCode::StorageVolExist,
            domain: ErrorDomain::Storage,
            message: format!("storage volume '{}' exists already", def.name),
        });
    }
    let target = p.target();
    let path = target.join(&def.name);
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(Error::Other {
            code: ErrorCode::StorageVolExist,
            domain: ErrorDomain::Storage,
            message: format!("storage volume '{}' exists already", def.name),
        });
    }
    let mut src = None;
    let mut capacity = def.capacity;
    let mut format = def.format.clone();
    if let Some(sv) = source {
        let (sp, s) = d.vol_by_wire(sv)?;
        if s.building {
            return Err(Error::OperationInvalid(format!(
                "volume '{}' is still being allocated.",
                s.facts.name
            )));
        }
        capacity = Some(capacity.unwrap_or(s.facts.capacity).max(s.facts.capacity));
        if format.is_none() {
            format = Some(s.facts.format.clone());
        }
        src = Some((
            sp.def.name.clone(),
            s.facts.name.clone(),
            s.facts.path.clone(),
            s.facts.format.clone(),
        ));
    }
    let format = format.unwrap_or_else(|| "raw".into());
    if !matches!(
        format.as_str(),
        "raw" | "qcow2" | "qcow" | "qed" | "vmdk" | "vdi" | "vpc"
    ) {
        return Err(Error::OperationUnsupported(format!(
            "storage volume format '{format}' is not supported"
        )));
    }
    if def.backing_path.is_some() && format == "raw" {
        return Err(Error::NoSupport(
            "backing storage not supported for raw volumes".into(),
        ));
    }
    let unsupported = |m: &str| Error::Other {
        code: ErrorCode::ConfigUnsupported,
        domain: ErrorDomain::Storage,
        message: format!("unsupported configuration: {m}"),
    };
    if flags & VOL_CREATE_PREALLOC_METADATA != 0 {
        if format == "raw" {
            return Err(unsupported(
                "metadata preallocation is not supported for raw volumes",
            ));
        }
        if format != "qcow2" {
            return Err(unsupported(
                "metadata preallocation only available with qcow2",
            ));
        }
        if def.backing_path.is_some() {
            return Err(unsupported(
                "metadata preallocation conflicts with backing store",
            ));
        }
    }
    if def.compat.is_some() && format != "qcow2" && format != "raw" {
        return Err(unsupported(
            "compatibility option only available with qcow2",
        ));
    }
    if def.lazy_refcounts && def.compat.as_deref() == Some("0.10") {
        return Err(Error::Other {
            code: ErrorCode::ConfigUnsupported,
            domain: ErrorDomain::Storage,
            message:
                "unsupported configuration: lazy_refcounts not supported with compat level 0.10"
                    .into(),
        });
    }
    let capacity = capacity.ok_or_else(|| Error::Xml("missing capacity element".into()))?;
    let allocation = def.allocation.unwrap_or(capacity);
    let plan = CreatePlan {
        pool: pool_name.clone(),
        name: def.name.clone(),
        target: target.clone(),
        path: path.clone(),
        format: format.clone(),
        capacity,
        allocation,
        mode: def.perms.mode.unwrap_or(0o600),
        def,
        source: src,
    };
    // The mark: listed, not usable, not deletable.
    let src_ref = plan.source.clone();
    let p = d.pool_mut(&pool_name)?;
    p.jobs += 1;
    p.volumes.insert(
        plan.name.clone(),
        Vol {
            facts: VolFacts {
                name: plan.name.clone(),
                path: path.to_string_lossy().into_owned(),
                vol_type: "file".into(),
                format,
                capacity,
                ..VolFacts::default()
            },
            building: true,
            in_use: 0,
        },
    );
    if let Some((spool, sname, _, _)) = src_ref {
        if let Some(v) = d
            .pools
            .get_mut(&spool)
            .and_then(|p| p.volumes.get_mut(&sname))
        {
            v.in_use += 1;
        }
    }
    d.publish(&pool_name);
    Ok(plan)
}

async fn run_create(plan: &CreatePlan, flags: u32) -> Result<()> {
    let partial = plan
        .target
        .join(format!("{}{}", disk::PARTIAL_PREFIX, plan.name));
    let _ = std::fs::remove_file(&partial);
    let result = write_image(plan, &partial, flags).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // Into place without replacing anything that appeared meanwhile.
    let final_path = plan.path.clone();
    blocking(move || {
        let r = std::fs::hard_link(&partial, &final_path);
        let _ = std::fs::remove_file(&partial);
        r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Other {
                    code: ErrorCode::StorageVolExist,
                    domain: ErrorDomain::Storage,
                    message: format!("storage volume '{}' exists already", final_path.display()),
                }
            } else {
                Error::System(format!(
                    "cannot create path '{}': {}",
                    final_path.display(),
                    disk::strip_os_error(&e)
                ))
            }
        })
    })
    .await
}

async fn write_image(plan: &CreatePlan, partial: &Path, flags: u32) -> Result<()> {
    let partial_s = partial.to_string_lossy().into_owned();
    if let Some((_, _, src_path, src_fmt)) = &plan.source {
        let mut args = vec![
            "convert".to_owned(),
            "-f".into(),
            src_fmt.clone(),
            "-O".into(),
            plan.format.clone(),
        ];
        if plan.format == "qcow2" {
            args.push("-o".into());
            args.push(qcow2_options(plan, flags));
        }
        args.push(src_path.clone());
        args.push(partial_s.clone());
        disk::qemu_img(&args).await?;
        let (cap, fmt) = (plan.capacity, plan.format.clone());
        let info = disk::qemu_img(&[
            "info".into(),
            "--output=json".into(),
            "-f".into(),
            fmt.clone(),
            partial_s.clone(),
        ])
        .await?;
        let current = serde_json::from_str::<serde_json::Value>(&info)
            .ok()
            .and_then(|v| v.get("virtual-size").and_then(|s| s.as_u64()))
            .unwrap_or(cap);
        if cap > current {
            disk::qemu_img(&[
                "resize".into(),
                "-f".into(),
                fmt,
                partial_s.clone(),
                cap.to_string(),
            ])
            .await?;
        }
        set_mode(partial, plan.mode)?;
        return Ok(());
    }
    if plan.format == "raw" {
        let (p, shown) = (partial.to_path_buf(), plan.path.clone());
        let (cap, alloc, mode) = (plan.capacity, plan.allocation, plan.mode);
        return blocking(move || disk::create_raw(&p, &shown, cap, alloc, mode)).await;
    }
    let mut args = vec!["create".to_owned(), "-f".into(), plan.format.clone()];
    if let Some(b) = &plan.def.backing_path {
        let bfmt = match &plan.def.backing_format {
            Some(f) => f.clone(),
            None => disk::probe_header(Path::new(b))
                .map(|h| h.format)
                .map_err(|e| {
                    Error::System(format!(
                        "Cannot access backing file '{b}': {}",
                        disk::strip_os_error(&e)
                    ))
                })?,
        };
        let bp = PathBuf::from(b);
        blocking(move || disk::check_backing_chain(&bp)).await?;
        args.extend(["-b".into(), b.clone(), "-F".into(), bfmt]);
    }
    if plan.format == "qcow2" {
        args.push("-o".into());
        args.push(qcow2_options(plan, flags));
    }
    args.push(partial_s);
    args.push(plan.capacity.to_string());
    disk::qemu_img(&args).await?;
    set_mode(partial, plan.mode)
}

fn qcow2_options(plan: &CreatePlan, flags: u32) -> String {
    // libvirt's default is the oldest qcow2 (0.10) unless asked otherwise.
    let mut o = vec![format!(
        "compat={}",
        plan.def.compat.clone().unwrap_or_else(|| "0.10".into())
    )];
    // As libvirt: metadata only while the image is to stay sparse.
    if flags & VOL_CREATE_PREALLOC_METADATA != 0 {
        if plan.capacity.div_ceil(1024) > plan.allocation.div_ceil(1024) {
            o.push("preallocation=metadata".into());
        } else {
            o.push("preallocation=falloc".into());
        }
    }
    if plan.def.lazy_refcounts {
        o.push("lazy_refcounts".into());
    }
    if let Some(c) = plan.def.cluster_size {
        o.push(format!("cluster_size={c}"));
    }
    o.join(",")
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::System(format!(
            "cannot set mode of '{}' to {mode:04o}: {}",
            path.display(),
            disk::strip_os_error(&e)
        ))
    })
}

/// Creates a volume (`clone_of`: create-from another volume).
pub async fn create_vol(
    drv: &Driver,
    pool: NonnullStoragePool,
    xml: String,
    clone_of: Option<NonnullStorageVol>,
    flags: u32,
) -> Result<NonnullStorageVol> {
    let def = VolDef::parse(&xml, clone_of.is_none()).map_err(xml_error)?;
    let plan = with(drv, move |d| {
        begin_create(d, &pool, def, clone_of.as_ref(), flags)
    })
    .await?;
    let outcome = run_create(&plan, flags).await;
    let facts = match outcome {
        Ok(()) => {
            let (name, path, target) = (plan.name.clone(), plan.path.clone(), plan.target.clone());
            let (format, compat) = (plan.format.clone(), plan.def.compat.clone());
            let features = plan.def.has_features.then(|| {
                if plan.def.lazy_refcounts {
                    vec!["lazy_refcounts".to_owned()]
                } else {
                    Vec::new()
                }
            });
            blocking(move || {
                let mut f = disk::vol_facts(&name, &path, false).map_err(|e| {
                    Error::System(format!(
                        "cannot stat file '{}': {}",
                        path.display(),
                        disk::strip_os_error(&e)
                    ))
                })?;
                // As libvirt: the definition's own compat and features
                // until the next pool refresh reads the header.
                if format == "qcow2" {
                    f.compat = compat;
                    f.features = features;
                }
                Ok((f, disk::statvfs(&target).ok()))
            })
            .await
        }
        Err(e) => Err(e),
    };
    let (pool_name, name, source) = (plan.pool.clone(), plan.name.clone(), plan.source.clone());
    with(drv, move |d| {
        if let Some((spool, sname, _, _)) = &source {
            if let Some(v) = d
                .pools
                .get_mut(spool)
                .and_then(|p| p.volumes.get_mut(sname))
            {
                v.in_use = v.in_use.saturating_sub(1);
            }
        }
        let p = d.pool_mut(&pool_name)?;
        p.jobs = p.jobs.saturating_sub(1);
        let r = match facts {
            Ok((f, sizes)) => {
                if let Some(s) = sizes {
                    p.sizes = s;
                }
                let v = Vol {
                    facts: f,
                    building: false,
                    in_use: 0,
                };
                let wire = p.vol_wire(&v);
                p.volumes.insert(name.clone(), v);
                info!(pool = %pool_name, volume = %name, "volume created");
                Ok(wire)
            }
            Err(e) => {
                p.volumes.remove(&name);
                Err(e)
            }
        };
        d.publish(&pool_name);
        r
    })
    .await
}

/// Marks a volume in use for a long operation; returns its pool, facts.
pub async fn begin_use(
    drv: &Driver,
    vol: NonnullStorageVol,
) -> Result<(String, VolFacts, PoolSizes)> {
    with(drv, move |d| {
        let (p, v) = d.vol_by_wire(&vol)?;
        if v.building {
            return Err(Error::OperationInvalid(format!(
                "volume '{}' is still being allocated.",
                v.facts.name
            )));
        }
        let (pname, facts, sizes) = (p.def.name.clone(), v.facts.clone(), p.sizes);
        let p = d.pool_mut(&pname)?;
        p.jobs += 1;
        if let Some(v) = p.volumes.get_mut(&facts.name) {
            v.in_use += 1;
        }
        Ok((pname, facts, sizes))
    })
    .await
}

pub async fn end_use(drv: &Driver, pool: String, name: String, result: Result<()>) -> Result<()> {
    let path = {
        let pool = pool.clone();
        let name = name.clone();
        with(drv, move |d| {
            let p = d.pool(&pool)?;
            Ok((p.target(), p.vol(&name)?.facts.path.clone()))
        })
        .await
    };
    let fresh = match path {
        Ok((target, path)) => {
            let n = name.clone();
            blocking(move || {
                Ok((
                    disk::vol_facts(&n, Path::new(&path), false).ok(),
                    disk::statvfs(&target).ok(),
                ))
            })
            .await?
        }
        Err(_) => (None, None),
    };
    with(drv, move |d| {
        let p = d.pool_mut(&pool)?;
        p.jobs = p.jobs.saturating_sub(1);
        if let Some(s) = fresh.1 {
            p.sizes = s;
        }
        if let Some(v) = p.volumes.get_mut(&name) {
            v.in_use = v.in_use.saturating_sub(1);
            if let Some(mut f) = fresh.0 {
                f.compat = v.facts.compat.take();
                f.cluster_size = v.facts.cluster_size;
                f.features = v.facts.features.take();
                v.facts = f;
            }
        }
        d.publish(&pool);
        Ok(())
    })
    .await?;
    result
}

pub async fn delete_vol(drv: &Driver, vol: NonnullStorageVol) -> Result<()> {
    let (pool, facts) = with(drv, move |d| {
        let (p, v) = d.vol_by_wire(&vol)?;
        if v.building {
            return Err(Error::OperationInvalid(format!(
                "volume '{}' is still being allocated.",
                v.facts.name
            )));
        }
        if v.in_use > 0 {
            return Err(Error::OperationInvalid(format!(
                "volume '{}' is still in use.",
                v.facts.name
            )));
        }
        let (pname, facts) = (p.def.name.clone(), v.facts.clone());
        // Gone from the driver before the file goes, so nothing new uses it.
        d.pool_mut(&pname)?.volumes.remove(&facts.name);
        d.publish(&pname);
        Ok((pname, facts))
    })
    .await?;
    let path = PathBuf::from(&facts.path);
    let is_dir = facts.vol_type == "dir";
    let removed = blocking(move || {
        let r = if is_dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::System(format!(
                "cannot unlink file '{}': {}",
                path.display(),
                disk::strip_os_error(&e)
            ))),
        }
    })
    .await;
    if removed.is_err() {
        // Still on disk: make it known again.
        let f = facts.clone();
        let pool2 = pool.clone();
        let _ = with(drv, move |d| {
            let p = d.pool_mut(&pool2)?;
            p.volumes.insert(
                f.name.clone(),
                Vol {
                    facts: f,
                    building: false,
                    in_use: 0,
                },
            );
            d.publish(&pool2);
            Ok(())
        })
        .await;
    } else {
        info!(pool = %pool, volume = %facts.name, "volume deleted");
    }
    removed
}

/// `virStorageVolWipeAlgorithm` values qemud runs itself.
const WIPE_ZERO: u32 = 0;
const WIPE_RANDOM: u32 = 8;
const WIPE_TRIM: u32 = 9;
const WIPE_LAST: u32 = 10;

pub async fn wipe(drv: &Driver, vol: NonnullStorageVol, algorithm: u32) -> Result<()> {
    if algorithm >= WIPE_LAST {
        return Err(Error::InvalidArg(format!(
            "wiping algorithm {algorithm} not supported"
        )));
    }
    if algorithm == WIPE_TRIM {
        return Err(Error::ArgumentUnsupported(
            "'trim' algorithm not supported".into(),
        ));
    }
    let (pool, facts, _) = begin_use(drv, vol).await?;
    let path = PathBuf::from(&facts.path);
    // As libvirt: a sparse file is zeroed by truncating it; otherwise its
    // allocated bytes are overwritten.
    let len = facts.allocation;
    let sparse = facts.vol_type == "file" && facts.allocation < facts.physical;
    let result = if algorithm == WIPE_ZERO && sparse {
        let size = facts.physical;
        blocking(move || disk::zero_sparse(&path, size)).await
    } else if algorithm == WIPE_ZERO || algorithm == WIPE_RANDOM {
        blocking(move || disk::wipe(&path, len, algorithm == WIPE_RANDOM)).await
    } else {
        let pattern = [
            "",
            "nnsa",
            "dod",
            "bsi",
            "gutmann",
            "schneier",
            "pfitzner7",
            "pfitzner33",
        ][algorithm as usize];
        run_tool(
            "scrub",
            &["-f".into(), "-p".into(), pattern.into(), facts.path.clone()],
        )
        .await
    };
    end_use(drv, pool, facts.name, result).await
}

pub async fn resize(drv: &Driver, vol: NonnullStorageVol, capacity: u64, flags: u32) -> Result<()> {
    let (pool, facts, sizes) = begin_use(drv, vol).await?;
    let check = (|| {
        let abs = if flags & RESIZE_DELTA != 0 {
            if flags & RESIZE_SHRINK != 0 {
                facts.capacity - capacity.min(facts.capacity)
            } else {
                facts.capacity.saturating_add(capacity)
            }
        } else {
            capacity
        };
        if abs < facts.allocation {
            return Err(Error::InvalidArg(
                "can't shrink capacity below existing allocation".into(),
            ));
        }
        if abs < facts.capacity && flags & RESIZE_SHRINK == 0 {
            return Err(Error::InvalidArg(
                "Can't shrink capacity below current capacity unless shrink flag explicitly specified"
                    .into(),
            ));
        }
        let delta = if flags & RESIZE_ALLOCATE != 0 {
            abs - facts.allocation
        } else {
            0
        };
        if delta > sizes.available {
            return Err(Error::OperationFailed(
                "Not enough space left in storage pool".into(),
            ));
        }
        if flags & RESIZE_ALLOCATE != 0 && facts.format != "raw" {
            return Err(Error::OperationUnsupported(
                "preallocate is only supported for raw type volume".into(),
            ));
        }
        Ok(abs)
    })();
    let result = match check {
        Err(e) => Err(e),
        Ok(abs) if facts.format == "raw" => {
            let (path, old) = (PathBuf::from(&facts.path), facts.capacity);
            blocking(move || disk::resize_raw(&path, old, abs, flags & RESIZE_ALLOCATE != 0)).await
        }
        Ok(abs) => {
            let mut args = vec!["resize".to_owned()];
            if abs < facts.capacity {
                args.push("--shrink".into());
            }
            args.extend([
                "-f".into(),
                facts.format.clone(),
                facts.path.clone(),
                abs.to_string(),
            ]);
            disk::qemu_img(&args).await.map(|_| ())
        }
    };
    end_use(drv, pool, facts.name, result).await
}

//! The storage driver actor: sole owner of every pool and of what is known
//! of its volumes. Quick changes (define, undefine, autostart, marking a
//! volume as being created) happen inside the actor; slow work (scanning a
//! directory, qemu-img, wiping) runs in the calling future or a blocking
//! task between a "begin" and a "finish" step, so one pool's long operation
//! never holds up another pool, a domain or a query.
//!
//! Persistent definitions: `<state_dir>/storage/<name>.xml`, autostart marks
//! `<state_dir>/storage/autostart/<name>`; active pools (persistent or not)
//! are recorded under `<run_dir>/storage/` so a restarted daemon resumes them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, RwLock};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};
use uuid::Uuid;

use qemud_config::storage::{PoolDef, PoolSizes, PoolType, VolFacts};
use qemud_protocol::remote::procs::{STORAGE_POOL_EVENT_LIFECYCLE, STORAGE_POOL_EVENT_REFRESH};
use qemud_protocol::remote::{NonnullStoragePool, NonnullStorageVol};
use qemud_protocol::xdr::Uuid16;

use super::disk;
use crate::domain::store::write_atomic;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, Family, ObjectKey};

/// `virStoragePoolEventLifecycleType`.
pub mod lifecycle {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 3;
    pub const CREATED: i32 = 4;
    pub const DELETED: i32 = 5;
}

/// `virStoragePoolEventID`.
const EVENT_ID_LIFECYCLE: i32 = 0;
const EVENT_ID_REFRESH: i32 = 1;

/// One volume as the driver knows it.
#[derive(Debug, Clone)]
pub struct Vol {
    pub facts: VolFacts,
    /// Being created: not usable, not deletable.
    pub building: bool,
    /// Long operations (wipe, resize, clone source) in progress.
    pub in_use: u32,
}

#[derive(Debug)]
pub struct Pool {
    pub def: PoolDef,
    /// The definition that takes effect at the next start, when a define
    /// replaced the one of a running pool.
    pub pending_def: Option<PoolDef>,
    pub persistent: bool,
    pub autostart: bool,
    pub active: bool,
    /// A start is under way (scanning, mounting).
    pub starting: bool,
    pub sizes: PoolSizes,
    pub volumes: BTreeMap<String, Vol>,
    /// Creates, wipes and resizes running now.
    pub jobs: u32,
}

impl Pool {
    pub fn to_wire(&self) -> NonnullStoragePool {
        NonnullStoragePool {
            name: self.def.name.clone().into(),
            uuid: Uuid16(*self.def.uuid.as_bytes()),
        }
    }

    pub fn vol_wire(&self, v: &Vol) -> NonnullStorageVol {
        NonnullStorageVol {
            pool: self.def.name.clone().into(),
            name: v.facts.name.clone().into(),
            key: v.facts.path.clone().into(),
        }
    }

    pub fn target(&self) -> PathBuf {
        PathBuf::from(&self.def.target_path)
    }

    pub fn check_active(&self) -> Result<()> {
        if !self.active {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is not active",
                self.def.name
            )));
        }
        Ok(())
    }

    pub fn check_inactive(&self) -> Result<()> {
        if self.active {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{}' is still active",
                self.def.name
            )));
        }
        Ok(())
    }

    pub fn vol(&self, name: &str) -> Result<&Vol> {
        self.volumes.get(name).ok_or_else(|| {
            Error::NoStorageVol(format!("no storage vol with matching name '{name}'"))
        })
    }
}

/// What a domain start reads to resolve `<disk type='volume'>` without
/// waiting on the actor, which alone writes it.
/// A volume as a domain start needs it.
struct IndexedVol {
    path: String,
    format: String,
    building: bool,
}

/// Pool name → (active, volume name → volume).
type PoolVolumes = HashMap<String, (bool, HashMap<String, IndexedVol>)>;

#[derive(Default)]
pub struct VolumeIndex {
    pools: RwLock<PoolVolumes>,
}

pub static VOLUME_INDEX: LazyLock<VolumeIndex> = LazyLock::new(VolumeIndex::default);

impl VolumeIndex {
    fn publish(&self, pool: &Pool) {
        let vols = pool
            .volumes
            .values()
            .map(|v| {
                (
                    v.facts.name.clone(),
                    IndexedVol {
                        path: v.facts.path.clone(),
                        format: v.facts.format.clone(),
                        building: v.building,
                    },
                )
            })
            .collect();
        if let Ok(mut m) = self.pools.write() {
            m.insert(pool.def.name.clone(), (pool.active, vols));
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut m) = self.pools.write() {
            m.remove(name);
        }
    }

    /// The path and format of volume `vol` of pool `pool`, with libvirt's
    /// errors when the pool is unknown or inactive or the volume missing.
    pub fn resolve(&self, pool: &str, vol: &str) -> Result<(String, String)> {
        let m = self
            .pools
            .read()
            .map_err(|_| Error::Internal("volume index poisoned".into()))?;
        let (active, vols) = m.get(pool).ok_or_else(|| {
            Error::NoStoragePool(format!("no storage pool with matching name '{pool}'"))
        })?;
        if !active {
            return Err(Error::OperationInvalid(format!(
                "storage pool '{pool}' containing volume '{vol}' is not active"
            )));
        }
        let found = vols.get(vol).ok_or_else(|| {
            Error::NoStorageVol(format!("no storage vol with matching name '{vol}'"))
        })?;
        if found.building {
            return Err(Error::OperationInvalid(format!(
                "volume '{vol}' is still being allocated."
            )));
        }
        Ok((found.path.clone(), found.format.clone()))
    }
}

pub struct StorageDriver {
    pub pools: BTreeMap<String, Pool>,
    config_dir: PathBuf,
    autostart_dir: PathBuf,
    run_dir: PathBuf,
    events: Addr<EventBus>,
}

/// Runs a closure inside the actor; the way every handler reads or changes
/// the driver's state.
pub struct Exec(pub Box<ExecFn>);

type ExecFn = dyn FnOnce(&mut StorageDriver, &mut Context<StorageDriver>) + Send;

impl Message for Exec {
    type Result = ();
}

impl Actor for StorageDriver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}

impl Handler<Exec> for StorageDriver {
    type Result = ();

    fn handle(&mut self, msg: Exec, ctx: &mut Context<Self>) {
        (msg.0)(self, ctx)
    }
}

/// Runs `f` on the driver's state and returns its result.
pub async fn with<R, F>(addr: &Addr<StorageDriver>, f: F) -> Result<R>
where
    R: Send + 'static,
    F: FnOnce(&mut StorageDriver) -> Result<R> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    addr.send(Exec(Box::new(move |d, _| {
        let _ = tx.send(f(d));
    })))
    .await?;
    rx.await
        .map_err(|_| Error::Internal("storage driver dropped a request".into()))?
}

impl StorageDriver {
    pub fn new(state_dir: &Path, run_dir: &Path, events: Addr<EventBus>) -> StorageDriver {
        let config_dir = state_dir.join("storage");
        StorageDriver {
            pools: BTreeMap::new(),
            autostart_dir: config_dir.join("autostart"),
            config_dir,
            run_dir: run_dir.join("storage"),
            events,
        }
    }

    /// Loads persistent definitions and resumes pools that were active or
    /// are marked autostart; creates the `default` pool on first run.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let _ = std::fs::create_dir_all(&self.autostart_dir);
        let _ = std::fs::create_dir_all(&self.run_dir);
        let first_run = !self.config_dir.join(".initialised").exists();
        let mut resume = Vec::new();
        for (dir, persistent) in [
            (self.config_dir.clone(), true),
            (self.run_dir.clone(), false),
        ] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in rd.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                    continue;
                }
                let def = match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|x| PoolDef::parse(&x).map_err(|e| e.to_string()))
                {
                    Ok(d) => d,
                    Err(e) => {
                        warn!("skipping pool file {}: {e}", path.display());
                        continue;
                    }
                };
                if persistent {
                    let autostart = self.autostart_dir.join(&def.name).exists();
                    if autostart {
                        resume.push(def.name.clone());
                    }
                    self.pools
                        .insert(def.name.clone(), new_pool(def, true, autostart));
                } else {
                    // Was active when the daemon stopped.
                    if !self.pools.contains_key(&def.name) {
                        self.pools
                            .insert(def.name.clone(), new_pool(def.clone(), false, false));
                    }
                    resume.push(def.name.clone());
                }
            }
        }
        if first_run && self.pools.is_empty() {
            if let Some(parent) = self.config_dir.parent() {
                let target = parent.join("images");
                let xml = format!(
                    "<pool type='dir'><name>default</name><target><path>{}</path></target></pool>",
                    qemud_config::domain::esc(&target.to_string_lossy())
                );
                match PoolDef::parse(&xml) {
                    Ok(def) => {
                        let _ = std::fs::create_dir_all(&target);
                        use std::os::unix::fs::PermissionsExt;
                        let _ = std::fs::set_permissions(
                            &target,
                            std::fs::Permissions::from_mode(0o711),
                        );
                        if let Err(e) = self.save_config(&def) {
                            warn!("cannot create the default pool: {e}");
                        } else {
                            let _ = std::fs::write(self.autostart_dir.join("default"), b"");
                            self.pools
                                .insert("default".into(), new_pool(def, true, true));
                            resume.push("default".into());
                            info!("created storage pool 'default' at {}", target.display());
                        }
                    }
                    Err(e) => warn!("cannot create the default pool: {e}"),
                }
            }
        }
        let _ = std::fs::create_dir_all(&self.config_dir);
        let _ = std::fs::write(self.config_dir.join(".initialised"), b"");
        for p in self.pools.values() {
            VOLUME_INDEX.publish(p);
        }
        resume.sort();
        resume.dedup();
        let me = ctx.address();
        ctx.spawn(
            async move {
                for name in resume {
                    if let Err(e) = super::ops::start_pool(&me, &name, 0, false).await {
                        warn!(pool = %name, "cannot resume storage pool: {e}");
                    }
                }
            }
            .into_actor(self),
        );
    }

    pub fn save_config(&self, def: &PoolDef) -> Result<()> {
        let xml = def.format(PoolSizes::default(), None);
        write_atomic(
            &self.config_dir.join(format!("{}.xml", def.name)),
            xml.as_bytes(),
        )
        .map_err(|e| {
            Error::System(format!(
                "cannot write config file for pool '{}': {}",
                def.name,
                disk::strip_os_error(&e)
            ))
        })
    }

    pub fn remove_config(&self, name: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.autostart_dir.join(name));
        match std::fs::remove_file(self.config_dir.join(format!("{name}.xml"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::System(format!(
                "cannot remove config for {name}: {}",
                disk::strip_os_error(&e)
            ))),
        }
    }

    pub fn set_autostart_file(&self, name: &str, on: bool) -> Result<()> {
        let path = self.autostart_dir.join(name);
        let r = if on {
            write_atomic(&path, b"")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        r.map_err(|e| {
            Error::System(format!(
                "Failed to set autostart of pool '{name}': {}",
                disk::strip_os_error(&e)
            ))
        })
    }

    /// Records (or forgets) that a pool is active, for a daemon restart.
    pub fn save_state(&self, pool: &Pool) {
        let path = self.run_dir.join(format!("{}.xml", pool.def.name));
        if pool.active {
            let _ = write_atomic(
                &path,
                pool.def.format(PoolSizes::default(), None).as_bytes(),
            );
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }

    pub fn pool(&self, name: &str) -> Result<&Pool> {
        self.pools.get(name).ok_or_else(|| no_pool_name(name))
    }

    pub fn pool_mut(&mut self, name: &str) -> Result<&mut Pool> {
        self.pools.get_mut(name).ok_or_else(|| no_pool_name(name))
    }

    /// The pool a NonnullStoragePool names: by UUID, as libvirt does.
    pub fn pool_by_wire(&self, p: &NonnullStoragePool) -> Result<&Pool> {
        let uuid = Uuid::from_bytes(p.uuid.0);
        self.pools
            .values()
            .find(|x| x.def.uuid == uuid)
            .ok_or_else(|| {
                Error::NoStoragePool(format!(
                    "no storage pool with matching uuid '{uuid}' ({})",
                    p.name.as_str()
                ))
            })
    }

    pub fn name_by_wire(&self, p: &NonnullStoragePool) -> Result<String> {
        Ok(self.pool_by_wire(p)?.def.name.clone())
    }

    /// The pool and volume a NonnullStorageVol names.
    pub fn vol_by_wire(&self, v: &NonnullStorageVol) -> Result<(&Pool, &Vol)> {
        let pool = self.pool(v.pool.as_str())?;
        pool.check_active()?;
        let vol = pool.vol(v.name.as_str())?;
        Ok((pool, vol))
    }

    pub fn publish(&self, name: &str) {
        match self.pools.get(name) {
            Some(p) => VOLUME_INDEX.publish(p),
            None => VOLUME_INDEX.forget(name),
        }
    }

    pub fn lifecycle_event(&self, pool: &NonnullStoragePool, event: i32) {
        // The bus puts the subscriber's callback ID in front of the body.
        let msg = LifecycleBody {
            pool: pool.clone(),
            event,
            detail: 0,
        };
        self.send_event(pool, EVENT_ID_LIFECYCLE, STORAGE_POOL_EVENT_LIFECYCLE, &msg);
    }

    pub fn refresh_event(&self, pool: &NonnullStoragePool) {
        let msg = RefreshBody { pool: pool.clone() };
        self.send_event(pool, EVENT_ID_REFRESH, STORAGE_POOL_EVENT_REFRESH, &msg);
    }

    fn send_event<T: serde::Serialize>(
        &self,
        pool: &NonnullStoragePool,
        id: i32,
        proc_: i32,
        msg: &T,
    ) {
        match Event::new(
            Family::StoragePool,
            ObjectKey::Uuid(Uuid::from_bytes(pool.uuid.0)),
            id,
            proc_,
            msg,
        ) {
            Ok(ev) => self.events.do_send(ev),
            Err(e) => warn!("cannot encode storage pool event: {e}"),
        }
    }
}

/// `remote_storage_pool_event_lifecycle_msg` after its callback ID.
#[derive(serde::Serialize)]
struct LifecycleBody {
    pool: NonnullStoragePool,
    event: i32,
    detail: i32,
}

/// `remote_storage_pool_event_refresh_msg` after its callback ID.
#[derive(serde::Serialize)]
struct RefreshBody {
    pool: NonnullStoragePool,
}

pub fn new_pool(def: PoolDef, persistent: bool, autostart: bool) -> Pool {
    Pool {
        def,
        pending_def: None,
        persistent,
        autostart,
        active: false,
        starting: false,
        sizes: PoolSizes::default(),
        volumes: BTreeMap::new(),
        jobs: 0,
    }
}

pub fn no_pool_name(name: &str) -> Error {
    Error::NoStoragePool(format!("no storage pool with matching name '{name}'"))
}

/// Whether qemud can run pools of this type on this host.
pub fn type_supported(t: PoolType) -> Result<()> {
    match t {
        PoolType::Dir | PoolType::Fs | PoolType::Netfs => Ok(()),
        PoolType::Logical => Err(Error::NoSupport(
            "storage pool type 'logical' is not supported by qemud yet".into(),
        )),
    }
}

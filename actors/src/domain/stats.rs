//! Runtime statistics of domains: the collector behind
//! CONNECT_GET_ALL_DOMAIN_STATS (and the metrics endpoint), block,
//! interface, memory, CPU and job queries, and vCPU / emulator thread
//! affinity.
//!
//! Each running domain is probed concurrently, every QMP query under one
//! deadline: a QEMU that does not answer (stopped, wedged) costs only its
//! own record, which then carries what the kernel and the definition know,
//! as libvirt does for a domain whose job it could not acquire
//! (`VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use qemud_config::domain::DomainDef;
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::typed_params::{ParamList, STRING_OKAY};
use qemud_protocol::xdr::{Opaque, XdrVec};

use crate::call;
use crate::domain::index::{list_filter, DomainView};
use crate::domain::procedures::resolve;
use crate::domain::qemu::QmpCommand;
use crate::domain::registry::tune::{
    ConfigEdit, LiveHandle, LiveHandles, TuneOp, AFFECT_CONFIG, AFFECT_LIVE,
};
use crate::error::{Error, Result};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};
use crate::Services;

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_GET_ALL_DOMAIN_STATS, Read, get_all_domain_stats),
        call!(DOMAIN_BLOCK_STATS, Read, block_stats),
        call!(DOMAIN_BLOCK_STATS_FLAGS, Read, block_stats_flags),
        call!(DOMAIN_MEMORY_STATS, Read, memory_stats),
        call!(
            DOMAIN_SET_MEMORY_STATS_PERIOD,
            Write,
            set_memory_stats_period
        ),
        call!(DOMAIN_GET_CPU_STATS, Read, get_cpu_stats),
        call!(DOMAIN_GET_JOB_INFO, Read, get_job_info),
        call!(DOMAIN_GET_JOB_STATS, Read, get_job_stats),
        call!(DOMAIN_GET_BLOCK_INFO, Read, get_block_info),
        call!(DOMAIN_BLOCK_RESIZE, Write, block_resize),
        call!(DOMAIN_GET_VCPUS, Read, get_vcpus),
        call!(DOMAIN_GET_VCPU_PIN_INFO, Read, get_vcpu_pin_info),
        call!(DOMAIN_PIN_VCPU, Write, pin_vcpu),
        call!(DOMAIN_PIN_VCPU_FLAGS, Write, pin_vcpu_flags),
        call!(DOMAIN_GET_EMULATOR_PIN_INFO, Read, get_emulator_pin_info),
        call!(DOMAIN_PIN_EMULATOR, Write, pin_emulator),
        call!(DOMAIN_GET_IOTHREAD_INFO, Read, get_iothread_info),
    ]
}

/// `virDomainStatsTypes`.
pub mod group {
    pub const STATE: u32 = 1;
    pub const CPU_TOTAL: u32 = 2;
    pub const BALLOON: u32 = 4;
    pub const VCPU: u32 = 8;
    pub const INTERFACE: u32 = 16;
    pub const BLOCK: u32 = 32;
    pub const PERF: u32 = 64;
    pub const IOTHREAD: u32 = 128;
    pub const MEMORY: u32 = 256;
    pub const DIRTYRATE: u32 = 512;
    pub const VM: u32 = 1024;
    /// Groups this daemon answers (perf, iothread and memory bandwidth
    /// have nothing to report for the domains qemud runs, as in libvirt
    /// when none is configured).
    pub const SUPPORTED: u32 = STATE
        | CPU_TOTAL
        | BALLOON
        | VCPU
        | INTERFACE
        | BLOCK
        | PERF
        | IOTHREAD
        | MEMORY
        | DIRTYRATE;
}

/// `virConnectGetAllDomainStatsFlags` beyond the listing filters.
const STATS_NOWAIT: u32 = 1 << 29;
const STATS_BACKING: u32 = 1 << 30;
const STATS_ENFORCE: u32 = 1 << 31;
const LIST_FILTERS: u32 = 0xff;

/// How long one domain's monitor gets to answer a query for a single
/// domain's statistics.
const PROBE_DEADLINE: Duration = Duration::from_millis(1500);

/// The configured deadline of one domain's monitor in collections.
pub fn collect_deadline(svc: &Services) -> Duration {
    Duration::from_millis(svc.settings.stats_timeout_ms.max(1))
}

/// What the monitor answered for one domain; `None` where it did not in
/// time.
#[derive(Default)]
struct Probe {
    balloon: Option<Value>,
    guest_stats: Option<Value>,
    blockstats: Option<Value>,
    block: Option<Value>,
    dirty_rate: Option<Value>,
    /// query-stats of the vCPUs' halt polling (KVM; empty under TCG).
    halt_poll: Option<Value>,
}

/// vCPU thread ids by domain, remembered from the last answer of
/// query-cpus-fast so a stopped QEMU's vCPU times can still be read.
type ThreadsByDomain = HashMap<Uuid, (i32, Vec<(u32, i32)>)>;

static VCPU_THREADS: LazyLock<Mutex<ThreadsByDomain>> = LazyLock::new(Default::default);

async fn qmp(
    h: &LiveHandle,
    command: &'static str,
    arguments: Option<Value>,
    deadline: Duration,
) -> Option<Value> {
    let send = h.vm.send(QmpCommand { command, arguments });
    match tokio::time::timeout(deadline, send).await {
        Ok(Ok(Ok(v))) => Some(v),
        _ => None,
    }
}

async fn probe(h: &LiveHandle, groups: u32, deadline: Duration) -> Probe {
    let balloon_dev = h.def.devices.memballoon == "virtio";
    let want = |g: u32| groups & g != 0;
    // One monitor command per wanted group, all at once, each under the
    // deadline; a group not asked for costs nothing.
    let ask = |on: bool, command: &'static str, arguments: Option<Value>| async move {
        if on {
            qmp(h, command, arguments, deadline).await
        } else {
            None
        }
    };
    let balloon_on = want(group::BALLOON) && balloon_dev;
    let guest_stats_path =
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats"});
    let halt_poll_args = json!({"target": "vcpu", "providers": [
        {"provider": "kvm", "names": ["halt_poll_success_ns", "halt_poll_fail_ns"]}
    ]});
    let (balloon, guest_stats, blockstats, block, cpus, dirty_rate, halt_poll) = futures::join!(
        ask(balloon_on, "query-balloon", None),
        ask(balloon_on, "qom-get", Some(guest_stats_path)),
        ask(want(group::BLOCK), "query-blockstats", None),
        ask(want(group::BLOCK), "query-block", None),
        ask(want(group::VCPU), "query-cpus-fast", None),
        ask(want(group::DIRTYRATE), "query-dirty-rate", None),
        ask(want(group::CPU_TOTAL), "query-stats", Some(halt_poll_args)),
    );
    if let Some(list) = cpus.as_ref().and_then(Value::as_array) {
        let threads = list
            .iter()
            .filter_map(|c| {
                Some((
                    c.get("cpu-index")?.as_u64()? as u32,
                    c.get("thread-id")?.as_i64()? as i32,
                ))
            })
            .collect();
        if let Ok(mut m) = VCPU_THREADS.lock() {
            m.insert(h.uuid, (h.pid, threads));
        }
    }
    Probe {
        balloon,
        guest_stats,
        blockstats,
        block,
        dirty_rate,
        halt_poll,
    }
}

/// vCPU threads of a running domain: fresh from QEMU when it answers,
/// else the last known ones.
async fn vcpu_threads(h: &LiveHandle, deadline: Duration) -> Vec<(u32, i32)> {
    if let Some(list) = qmp(h, "query-cpus-fast", None, deadline).await {
        if let Some(a) = list.as_array() {
            let threads: Vec<(u32, i32)> = a
                .iter()
                .filter_map(|c| {
                    Some((
                        c.get("cpu-index")?.as_u64()? as u32,
                        c.get("thread-id")?.as_i64()? as i32,
                    ))
                })
                .collect();
            if let Ok(mut m) = VCPU_THREADS.lock() {
                m.insert(h.uuid, (h.pid, threads.clone()));
            }
            return threads;
        }
    }
    cached_threads(h)
}

fn cached_threads(h: &LiveHandle) -> Vec<(u32, i32)> {
    let cached = VCPU_THREADS
        .lock()
        .ok()
        .and_then(|m| {
            m.get(&h.uuid)
                .filter(|(pid, _)| *pid == h.pid)
                .map(|(_, t)| t.clone())
        })
        .unwrap_or_default();
    if cached.is_empty() {
        named_vcpu_threads(h.pid)
    } else {
        cached
    }
}

/// vCPU threads by name: QEMU runs with debug-threads=on, which names
/// them "CPU N/TCG" or "CPU N/KVM"; used when the monitor has not answered.
fn named_vcpu_threads(pid: i32) -> Vec<(u32, i32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u32, i32)> = dir
        .filter_map(|e| {
            let tid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let n = comm.strip_prefix("CPU ")?.split('/').next()?.parse().ok()?;
            Some((n, tid))
        })
        .collect();
    threads.sort();
    threads
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64
}

/// From a `/proc/.../stat` line: (user ns, system ns, last CPU, rss pages).
fn proc_stat(path: &str) -> Option<(u64, u64, i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let after = text.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the name start at field 3 (state) = index 0.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ns = 1_000_000_000 / clock_ticks();
    Some((
        ticks(11)? * ns,
        ticks(12)? * ns,
        f.get(36).and_then(|v| v.parse().ok()).unwrap_or(0),
        ticks(21).unwrap_or(0),
    ))
}

/// Nanoseconds a thread waited on a run queue (`schedstat`, second field).
fn thread_delay(pid: i32, tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn page_kib() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
        / 1024
}

/// `virDomainMemoryStatTags` and the names libvirt gives them.
const MEM_TAGS: &[(i32, &str, &str)] = &[
    (0, "swap_in", "stat-swap-in"),
    (1, "swap_out", "stat-swap-out"),
    (2, "major_fault", "stat-major-faults"),
    (3, "minor_fault", "stat-minor-faults"),
    (4, "unused", "stat-free-memory"),
    (5, "available", "stat-total-memory"),
    (8, "usable", "stat-available-memory"),
    (10, "disk_caches", "stat-disk-caches"),
    (11, "hugetlb_pgalloc", "stat-htlb-pgalloc"),
    (12, "hugetlb_pgfail", "stat-htlb-pgfail"),
];
const MEM_ACTUAL: i32 = 6;
const MEM_RSS: i32 = 7;
const MEM_LAST_UPDATE: i32 = 9;

/// Memory statistics in libvirt's order: actual balloon, the guest's own
/// counters (kibibytes), last update, then QEMU's resident set.
fn memory_records(h: &LiveHandle, p: &Probe) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    if let Some(actual) = p
        .balloon
        .as_ref()
        .and_then(|b| b.get("actual"))
        .and_then(Value::as_u64)
    {
        out.push((MEM_ACTUAL, actual / 1024));
    }
    if let Some(gs) = &p.guest_stats {
        if let Some(stats) = gs.get("stats") {
            for (tag, _, qemu_name) in MEM_TAGS {
                // -1: the guest does not report it.
                let value = stats.get(*qemu_name).and_then(Value::as_u64);
                if let Some(v) = value.filter(|v| *v != u64::MAX) {
                    let v = if matches!(*tag, 0..=3 | 11 | 12) {
                        v
                    } else {
                        v / 1024
                    };
                    out.push((*tag, v));
                }
            }
            if let Some(t) = gs.get("last-update").and_then(Value::as_u64) {
                out.push((MEM_LAST_UPDATE, t));
            }
        }
    }
    if let Some((_, _, _, rss)) = proc_stat(&format!("/proc/{}/stat", h.pid)) {
        out.push((MEM_RSS, rss * page_kib()));
    }
    out
}

fn mem_tag_name(tag: i32) -> Option<&'static str> {
    match tag {
        MEM_RSS => Some("rss"),
        MEM_LAST_UPDATE => Some("last-update"),
        t => MEM_TAGS
            .iter()
            .find(|(x, _, _)| *x == t)
            .map(|(_, n, _)| *n),
    }
}

/// QEMU's block backend name of disk `i`, as cmdline.rs names it.
fn drive_id(i: usize) -> String {
    format!("drive{i}")
}

fn by_device<'a>(list: Option<&'a Value>, device: &str) -> Option<&'a Value> {
    list?
        .as_array()?
        .iter()
        .find(|e| e.get("device").and_then(Value::as_str) == Some(device))
}

fn file_sizes(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.blocks() * 512))
}

/// The typed parameters of one domain's record, group by group, with
/// libvirt's names and units.
fn record(view: &DomainView, live: Option<(&LiveHandle, &Probe)>, groups: u32) -> ParamList {
    let mut l = ParamList::new();
    let def_owned;
    let def: &DomainDef = match live {
        Some((h, _)) => &h.def,
        None => {
            def_owned = DomainDef::parse(view.inactive_xml.as_deref().unwrap_or(&view.xml)).ok();
            match &def_owned {
                Some(d) => d,
                None => {
                    l.int("state.state", view.state as i32)
                        .int("state.reason", view.reason);
                    return l;
                }
            }
        }
    };
    if groups & group::STATE != 0 {
        l.int("state.state", view.state as i32)
            .int("state.reason", view.reason);
    }
    if groups & group::CPU_TOTAL != 0 {
        if let Some((h, _)) = live {
            if let Some((user, sys, _, _)) = proc_stat(&format!("/proc/{}/stat", h.pid)) {
                l.ullong("cpu.time", user + sys)
                    .ullong("cpu.user", user)
                    .ullong("cpu.system", sys);
            }
            // No cache monitors (resctrl) are ever defined.
            l.uint("cpu.cache.monitor.count", 0);
            if let Some((success, fail)) = live.and_then(|(_, p)| halt_poll(p)) {
                l.ullong("cpu.haltpoll.success.time", success)
                    .ullong("cpu.haltpoll.fail.time", fail);
            }
        }
    }
    if groups & group::BALLOON != 0 {
        let current = live
            .and_then(|(_, p)| p.balloon.as_ref())
            .and_then(|b| b.get("actual"))
            .and_then(Value::as_u64)
            .map(|b| b / 1024)
            .unwrap_or(def.current_memory_kib);
        l.ullong("balloon.current", current)
            .ullong("balloon.maximum", def.memory_kib);
        if let Some((h, p)) = live {
            for (tag, v) in memory_records(h, p) {
                if let Some(name) = mem_tag_name(tag) {
                    l.ullong(format!("balloon.{name}"), v);
                }
            }
        }
    }
    if groups & group::VCPU != 0 {
        let current = def.current_vcpus.min(def.vcpus).max(1);
        l.uint("vcpu.current", current)
            .uint("vcpu.maximum", def.vcpus);
        if let Some((h, _)) = live {
            let threads = cached_threads(h);
            for (i, tid) in threads {
                l.int(format!("vcpu.{i}.state"), 1);
                let (user, sys, _, _) =
                    proc_stat(&format!("/proc/{}/task/{tid}/stat", h.pid)).unwrap_or_default();
                l.ullong(format!("vcpu.{i}.time"), user + sys)
                    .ullong(format!("vcpu.{i}.wait"), 0)
                    .ullong(format!("vcpu.{i}.delay"), thread_delay(h.pid, tid));
            }
        }
    }
    if groups & group::INTERFACE != 0 && live.is_some() {
        l.uint("net.count", def.devices.interfaces.len() as u32);
        // NICs with a tap (network, bridge, ethernet) are counted on the
        // host side, seen from the guest (rx and tx swapped) as libvirt
        // does; user-mode NICs have no host interface, hence no counters.
        for (i, nic) in def.devices.interfaces.iter().enumerate() {
            let Some(tap) = crate::network::nic_tap(&def.uuid, i, &nic.kind) else {
                continue;
            };
            let Some(c) = crate::network::sys::link_counters(&tap).filter(|c| c.len() >= 12) else {
                continue;
            };
            let n = |v: i64| v.max(0) as u64;
            l.string(format!("net.{i}.name"), tap.clone())
                .ullong(format!("net.{i}.rx.bytes"), n(c[8]))
                .ullong(format!("net.{i}.rx.pkts"), n(c[9]))
                .ullong(format!("net.{i}.rx.errs"), n(c[10]))
                .ullong(format!("net.{i}.rx.drop"), n(c[11]))
                .ullong(format!("net.{i}.tx.bytes"), n(c[0]))
                .ullong(format!("net.{i}.tx.pkts"), n(c[1]))
                .ullong(format!("net.{i}.tx.errs"), n(c[2]))
                .ullong(format!("net.{i}.tx.drop"), n(c[3]));
        }
    }
    if groups & group::BLOCK != 0 {
        l.uint("block.count", def.devices.disks.len() as u32);
        for (i, disk) in def.devices.disks.iter().enumerate() {
            l.string(format!("block.{i}.name"), disk.target_dev.clone());
            let local = disk.source_type == "file" || disk.source_type == "block";
            if let Some(src) = disk.source.as_ref().filter(|_| local) {
                l.string(format!("block.{i}.path"), src.clone());
            }
            // The index libvirt gives each disk's top image; qemud disks
            // have no backing chains, so one image per disk.
            if disk.source.is_some() && live.is_some() {
                l.uint(format!("block.{i}.backingIndex"), i as u32 + 1);
            }
            match live {
                Some((_, p)) => {
                    let id = drive_id(i);
                    let Some(entry) = by_device(p.blockstats.as_ref(), &id) else {
                        continue;
                    };
                    let s = &entry["stats"];
                    let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
                    l.ullong(format!("block.{i}.rd.reqs"), n("rd_operations"))
                        .ullong(format!("block.{i}.rd.bytes"), n("rd_bytes"))
                        .ullong(format!("block.{i}.rd.times"), n("rd_total_time_ns"))
                        .ullong(format!("block.{i}.wr.reqs"), n("wr_operations"))
                        .ullong(format!("block.{i}.wr.bytes"), n("wr_bytes"))
                        .ullong(format!("block.{i}.wr.times"), n("wr_total_time_ns"))
                        .ullong(format!("block.{i}.fl.reqs"), n("flush_operations"))
                        .ullong(format!("block.{i}.fl.times"), n("flush_total_time_ns"))
                        .ullong(format!("block.{i}.allocation"), n("wr_highest_offset"));
                    let capacity = by_device(p.block.as_ref(), &id)
                        .and_then(|b| b.pointer("/inserted/image/virtual-size"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if capacity > 0 {
                        l.ullong(format!("block.{i}.capacity"), capacity);
                    }
                    if let Some((size, _)) = disk.source.as_deref().and_then(file_sizes) {
                        l.ullong(format!("block.{i}.physical"), size);
                    }
                }
                None => {
                    // Offline, a raw file's sizes come from the file itself.
                    if disk.format == "raw" {
                        if let Some((size, alloc)) = disk.source.as_deref().and_then(file_sizes) {
                            if alloc > 0 {
                                l.ullong(format!("block.{i}.allocation"), alloc);
                            }
                            l.ullong(format!("block.{i}.capacity"), size)
                                .ullong(format!("block.{i}.physical"), size);
                        }
                    }
                }
            }
        }
    }
    if groups & group::DIRTYRATE != 0 {
        if let Some(d) = live.and_then(|(_, p)| p.dirty_rate.as_ref()) {
            let status = match d.get("status").and_then(Value::as_str) {
                Some("measuring") => 1,
                Some("measured") => 2,
                _ => 0,
            };
            l.int("dirtyrate.calc_status", status)
                .llong(
                    "dirtyrate.calc_start_time",
                    d.get("start-time").and_then(Value::as_i64).unwrap_or(0),
                )
                .int(
                    "dirtyrate.calc_period",
                    d.get("calc-time").and_then(Value::as_i64).unwrap_or(0) as i32,
                )
                .string(
                    "dirtyrate.calc_mode",
                    d.get("mode")
                        .and_then(Value::as_str)
                        .unwrap_or("page-sampling"),
                );
            if status == 2 {
                if let Some(r) = d.get("dirty-rate").and_then(Value::as_i64) {
                    l.llong("dirtyrate.megabytes_per_second", r);
                }
            }
        }
    }
    l
}

/// Sum of the vCPUs' halt-polling nanoseconds (success, fail).
fn halt_poll(p: &Probe) -> Option<(u64, u64)> {
    let list = p.halt_poll.as_ref()?.as_array()?;
    let mut sum = (0, 0);
    for target in list {
        for provider in target.get("stats")?.as_array()? {
            let name = provider.get("name").and_then(Value::as_str);
            let v = provider.get("value").and_then(Value::as_u64).unwrap_or(0);
            match name {
                Some("halt_poll_success_ns") => sum.0 += v,
                Some("halt_poll_fail_ns") => sum.1 += v,
                _ => {}
            }
        }
    }
    Some(sum)
}

/// One collected record.
pub struct DomainStats {
    pub view: Arc<DomainView>,
    pub params: ParamList,
}

/// Collects the records of `views` concurrently: one registry message for
/// the live handles, then every running domain's monitor at once, each
/// under `deadline`.
pub async fn collect(
    svc: &Services,
    views: Vec<Arc<DomainView>>,
    groups: u32,
    deadline: Duration,
) -> Result<Vec<DomainStats>> {
    let handles: HashMap<Uuid, LiveHandle> = if views.iter().any(|v| v.is_active()) {
        svc.registry
            .send(LiveHandles { only: None })
            .await?
            .into_iter()
            .map(|h| (h.uuid, h))
            .collect()
    } else {
        HashMap::new()
    };
    if let Ok(mut m) = VCPU_THREADS.lock() {
        // Forget the threads of domains that no longer run.
        if views.len() == svc.index.len() {
            m.retain(|u, _| handles.contains_key(u));
        }
    }
    let jobs = views.into_iter().map(|view| {
        let h = handles.get(&view.uuid).cloned();
        async move {
            let params = match h {
                Some(h) => {
                    let p = probe(&h, groups, deadline).await;
                    record(&view, Some((&h, &p)), groups)
                }
                None => record(&view, None, groups),
            };
            DomainStats { view, params }
        }
    });
    Ok(join_all(jobs).await)
}

async fn get_all_domain_stats(
    call: &Call,
    a: ConnectGetAllDomainStatsArgs,
) -> Result<ConnectGetAllDomainStatsRet> {
    check_flags(
        a.flags,
        LIST_FILTERS | STATS_NOWAIT | STATS_BACKING | STATS_ENFORCE,
        if a.doms.0.is_empty() {
            "qemuConnectGetAllDomainStats"
        } else {
            "virDomainListGetStats"
        },
    )?;
    let mut groups = a.stats;
    if groups == 0 {
        groups = group::SUPPORTED;
    } else if a.flags & STATS_ENFORCE != 0 && groups & !group::SUPPORTED != 0 {
        return Err(Error::ArgumentUnsupported(format!(
            "Stats types bits 0x{:x} are not supported by this daemon or QEMU",
            groups & !group::SUPPORTED
        )));
    }
    groups &= group::SUPPORTED;
    let filter = a.flags & LIST_FILTERS;
    let views: Vec<Arc<DomainView>> = if a.doms.0.is_empty() {
        call.svc.index.all()
    } else {
        // Like libvirt, domains that vanished meanwhile are left out.
        a.doms
            .0
            .iter()
            .filter_map(|d| call.svc.index.resolve(d).ok())
            .collect()
    };
    let views = views
        .into_iter()
        .filter(|v| list_filter(v, filter))
        .collect();
    let records = collect(&call.svc, views, groups, collect_deadline(&call.svc)).await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let params = r
            .params
            .serialize(CONNECT_GET_ALL_DOMAIN_STATS_MAX, STRING_OKAY)
            .map_err(param_error)?;
        out.push(DomainStatsRecord {
            dom: r.view.to_wire(),
            params: XdrVec(params),
        });
    }
    Ok(ConnectGetAllDomainStatsRet {
        ret_stats: XdrVec(out),
    })
}

pub fn param_error(e: qemud_protocol::typed_params::ParamError) -> Error {
    Error::Other {
        code: e.code,
        domain: e.domain,
        message: e.message,
    }
}

/// The running domain a call names, with its handle.
async fn live(
    call: &Call,
    dom: &NonnullDomain,
    inactive_msg: &str,
) -> Result<(Arc<DomainView>, LiveHandle)> {
    let v = resolve(call, dom)?;
    if !v.is_active() {
        return Err(Error::OperationInvalid(inactive_msg.into()));
    }
    let h = call
        .svc
        .registry
        .send(LiveHandles { only: Some(v.uuid) })
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::OperationInvalid(inactive_msg.into()))?;
    Ok((v, h))
}

const NOT_RUNNING: &str = "domain is not running";

/// A disk by target name or source path, as `virDomainDiskByName`.
fn disk_index(def: &DomainDef, path: &str) -> Result<usize> {
    def.devices
        .disks
        .iter()
        .position(|d| d.target_dev == path || d.source.as_deref() == Some(path))
        .ok_or_else(|| Error::InvalidArg(format!("invalid path: {path}")))
}

async fn blockstats_of(
    call: &Call,
    dom: &NonnullDomain,
    path: &str,
) -> Result<serde_json::Map<String, Value>> {
    let (_, h) = live(call, dom, NOT_RUNNING).await?;
    let i = disk_index(&h.def, path)?;
    let list = qmp(&h, "query-blockstats", None, PROBE_DEADLINE)
        .await
        .ok_or_else(|| Error::Timeout("QEMU did not answer 'query-blockstats' in time".into()))?;
    by_device(Some(&list), &drive_id(i))
        .and_then(|e| e.get("stats"))
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| {
            Error::Internal(format!(
                "cannot find statistics for device '{}'",
                drive_id(i)
            ))
        })
}

async fn block_stats(call: &Call, a: DomainBlockStatsArgs) -> Result<DomainBlockStatsRet> {
    let s = blockstats_of(call, &a.dom, &a.path.0).await?;
    let n = |k: &str| s.get(k).and_then(Value::as_i64).unwrap_or(0);
    Ok(DomainBlockStatsRet {
        rd_req: n("rd_operations"),
        rd_bytes: n("rd_bytes"),
        wr_req: n("wr_operations"),
        wr_bytes: n("wr_bytes"),
        // QEMU does not count errors.
        errs: -1,
    })
}

async fn block_stats_flags(
    call: &Call,
    a: DomainBlockStatsFlagsArgs,
) -> Result<DomainBlockStatsFlagsRet> {
    check_flags(a.flags, STRING_OKAY, "qemuDomainBlockStatsFlags")?;
    const FIELDS: &[(&str, &str)] = &[
        ("wr_bytes", "wr_bytes"),
        ("wr_operations", "wr_operations"),
        ("rd_bytes", "rd_bytes"),
        ("rd_operations", "rd_operations"),
        ("flush_operations", "flush_operations"),
        ("wr_total_times", "wr_total_time_ns"),
        ("rd_total_times", "rd_total_time_ns"),
        ("flush_total_times", "flush_total_time_ns"),
    ];
    if a.nparams == 0 {
        resolve(call, &a.dom)?;
        return Ok(DomainBlockStatsFlagsRet {
            params: XdrVec::default(),
            nparams: FIELDS.len() as i32,
        });
    }
    let s = blockstats_of(call, &a.dom, &a.path.0).await?;
    let mut l = ParamList::new();
    for (name, qemu) in FIELDS.iter().take(a.nparams.max(0) as usize) {
        l.llong(*name, s.get(*qemu).and_then(Value::as_i64).unwrap_or(0));
    }
    let n = l.len() as i32;
    Ok(DomainBlockStatsFlagsRet {
        params: XdrVec(l.0),
        nparams: n,
    })
}

async fn memory_stats(call: &Call, a: DomainMemoryStatsArgs) -> Result<DomainMemoryStatsRet> {
    if a.max_stats as usize > DOMAIN_MEMORY_STATS_MAX {
        return Err(Error::Rpc(
            "maxStats > REMOTE_DOMAIN_MEMORY_STATS_MAX".into(),
        ));
    }
    check_flags(a.flags, 0, "qemuDomainMemoryStats")?;
    let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
    let p = probe(&h, group::BALLOON, PROBE_DEADLINE).await;
    let mut stats: Vec<DomainMemoryStat> = memory_records(&h, &p)
        .into_iter()
        .map(|(tag, val)| DomainMemoryStat { tag, val })
        .collect();
    stats.truncate(a.max_stats as usize);
    Ok(DomainMemoryStatsRet {
        stats: XdrVec(stats),
    })
}

async fn set_memory_stats_period(call: &Call, a: DomainSetMemoryStatsPeriodArgs) -> Result<()> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainSetMemoryStatsPeriod",
    )?;
    let v = resolve(call, &a.dom)?;
    let live_wanted = a.flags & AFFECT_LIVE != 0 || (a.flags & AFFECT_CONFIG == 0 && v.is_active());
    if a.flags & AFFECT_CONFIG != 0 || !live_wanted {
        return Err(Error::ConfigUnsupported(
            "the statistics period of the memory balloon cannot be stored in the persistent definition".into(),
        ));
    }
    let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
    if h.def.devices.memballoon != "virtio" {
        return Err(Error::Internal(
            "No memory balloon device configured, can not set the collection period".into(),
        ));
    }
    let args = json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval", "value": a.period.max(0)});
    h.vm.send(QmpCommand {
        command: "qom-set",
        arguments: Some(args),
    })
    .await
    .map_err(|_| Error::OperationInvalid(NOT_RUNNING.into()))?
    .map_err(|_| {
        Error::OperationInvalid("unable to set balloon driver collection period".into())
    })?;
    Ok(())
}

async fn get_cpu_stats(call: &Call, a: DomainGetCpuStatsArgs) -> Result<DomainGetCpuStatsRet> {
    check_flags(a.flags, STRING_OKAY, "qemuDomainGetCPUStats")?;
    let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
    if a.start_cpu != -1 {
        // Per-host-CPU accounting needs a cpuacct cgroup per domain.
        return Err(Error::OperationInvalid(
            "cgroup CPUACCT controller is not mounted".into(),
        ));
    }
    if a.nparams == 0 {
        return Ok(DomainGetCpuStatsRet {
            params: XdrVec::default(),
            nparams: 3,
        });
    }
    let (user, sys, _, _) = proc_stat(&format!("/proc/{}/stat", h.pid)).unwrap_or_default();
    let mut l = ParamList::new();
    l.ullong("cpu_time", user + sys)
        .ullong("user_time", user)
        .ullong("system_time", sys);
    l.0.truncate(a.nparams as usize);
    let n = l.len() as i32;
    Ok(DomainGetCpuStatsRet {
        params: XdrVec(l.0),
        nparams: n,
    })
}

async fn get_job_info(call: &Call, a: DomainGetJobInfoArgs) -> Result<DomainGetJobInfoRet> {
    let v = resolve(call, &a.dom)?;
    if !v.is_active() {
        return Err(Error::OperationInvalid(NOT_RUNNING.into()));
    }
    // No migration, save or dump job exists in qemud: VIR_DOMAIN_JOB_NONE.
    Ok(DomainGetJobInfoRet {
        type_: 0,
        time_elapsed: 0,
        time_remaining: 0,
        data_total: 0,
        data_processed: 0,
        data_remaining: 0,
        mem_total: 0,
        mem_processed: 0,
        mem_remaining: 0,
        file_total: 0,
        file_processed: 0,
        file_remaining: 0,
    })
}

async fn get_job_stats(call: &Call, a: DomainGetJobStatsArgs) -> Result<DomainGetJobStatsRet> {
    // VIR_DOMAIN_JOB_STATS_COMPLETED (1), KEEP_COMPLETED (2).
    check_flags(a.flags, 1 | 2, "qemuDomainGetJobStats")?;
    let v = resolve(call, &a.dom)?;
    if a.flags & 1 == 0 && !v.is_active() {
        return Err(Error::OperationInvalid(NOT_RUNNING.into()));
    }
    Ok(DomainGetJobStatsRet {
        type_: 0,
        params: XdrVec::default(),
    })
}

async fn get_block_info(call: &Call, a: DomainGetBlockInfoArgs) -> Result<DomainGetBlockInfoRet> {
    check_flags(a.flags, 0, "qemuDomainGetBlockInfo")?;
    let v = resolve(call, &a.dom)?;
    let def = DomainDef::parse(&v.xml).map_err(|e| Error::Internal(e.to_string()))?;
    let i = disk_index(&def, &a.path.0)?;
    let disk = &def.devices.disks[i];
    let Some(src) = disk.source.as_deref() else {
        return Err(Error::OperationInvalid(format!(
            "disk '{}' does not currently have a source assigned",
            disk.target_dev
        )));
    };
    let (size, alloc) = file_sizes(src).ok_or_else(|| {
        Error::System(format!(
            "cannot stat file '{src}': No such file or directory"
        ))
    })?;
    let mut capacity = size;
    if v.is_active() {
        if let Ok((_, h)) = live(call, &a.dom, NOT_RUNNING).await {
            if let Some(c) = qmp(&h, "query-block", None, PROBE_DEADLINE)
                .await
                .as_ref()
                .and_then(|b| by_device(Some(b), &drive_id(i)).cloned())
                .and_then(|b| {
                    b.pointer("/inserted/image/virtual-size")
                        .and_then(Value::as_u64)
                })
            {
                capacity = c;
            }
        }
    }
    Ok(DomainGetBlockInfoRet {
        allocation: alloc,
        capacity,
        physical: size,
    })
}

async fn block_resize(call: &Call, a: DomainBlockResizeArgs) -> Result<()> {
    // VIR_DOMAIN_BLOCK_RESIZE_BYTES = 1: size in bytes, else KiB.
    check_flags(a.flags, 1, "qemuDomainBlockResize")?;
    let bytes = if a.flags & 1 != 0 {
        a.size
    } else {
        a.size.checked_mul(1024).ok_or_else(|| Error::Other {
            code: qemud_protocol::ErrorCode::Overflow,
            domain: qemud_protocol::ErrorDomain::Qemu,
            message: format!(
                "value too large: size must be less than {}",
                u64::MAX / 1024
            ),
        })?
    };
    let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
    let i = disk_index(&h.def, &a.disk.0)?;
    let args = json!({"device": drive_id(i), "size": bytes});
    h.vm.send(QmpCommand {
        command: "block_resize",
        arguments: Some(args),
    })
    .await
    .map_err(|_| Error::OperationInvalid(NOT_RUNNING.into()))??;
    Ok(())
}

// vCPUs and thread affinity.

pub(crate) fn host_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    n.max(1) as usize
}

/// The affinity of a thread as a libvirt CPU map of `maplen` bytes.
fn affinity(tid: i32, maplen: usize) -> Vec<u8> {
    let mut map = vec![0u8; maplen];
    // SAFETY: cpu_set_t is plain data; the kernel fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    for cpu in 0..(maplen * 8).min(libc::CPU_SETSIZE as usize) {
        // SAFETY: cpu is below CPU_SETSIZE.
        let on = if ok {
            unsafe { libc::CPU_ISSET(cpu, &set) }
        } else {
            cpu < host_cpus()
        };
        if on {
            map[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    map
}

pub(crate) fn set_affinity(pid: i32, tid: i32, map: &[u8]) -> Result<()> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for (i, byte) in map.iter().enumerate() {
        for bit in 0..8 {
            let cpu = i * 8 + bit;
            if byte & (1 << bit) != 0 && cpu < libc::CPU_SETSIZE as usize {
                unsafe { libc::CPU_SET(cpu, &mut set) };
            }
        }
    }
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::System(format!(
            "cannot set CPU affinity on process {pid}: {}",
            errno_text(&e)
        )));
    }
    Ok(())
}

fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

/// The CPUs a map selects, as a libvirt CPU list.
fn map_to_cpuset(map: &[u8]) -> String {
    let cpus: Vec<usize> = (0..map.len() * 8)
        .filter(|c| map[c / 8] & (1 << (c % 8)) != 0)
        .collect();
    qemud_config::tune::format_cpuset(&cpus)
}

/// A libvirt CPU list as a map of `maplen` bytes.
pub(crate) fn cpuset_to_map(cpuset: &str, maplen: usize) -> Vec<u8> {
    let mut m = vec![0u8; maplen];
    for cpu in qemud_config::tune::parse_cpuset(cpuset).unwrap_or_default() {
        if cpu / 8 < maplen {
            m[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    m
}

/// The persistent definition of a domain (the only one when inactive).
fn persistent_def(v: &DomainView) -> Result<DomainDef> {
    if !v.persistent {
        return Err(Error::OperationInvalid(
            "transient domains do not have any persistent config".into(),
        ));
    }
    DomainDef::parse(v.inactive_xml.as_deref().unwrap_or(&v.xml))
        .map_err(|e| Error::Internal(e.to_string()))
}

async fn edit_config(call: &Call, uuid: Uuid, edit: ConfigEdit) -> Result<()> {
    call.svc
        .registry
        .send(TuneOp::EditConfig { uuid, edit })
        .await?
        .map(drop)
}

fn check_map(map: &[u8]) -> Result<()> {
    if map.iter().all(|b| *b == 0) {
        return Err(Error::InvalidArg("Empty cpu list for pinning".into()));
    }
    Ok(())
}

async fn get_vcpus(call: &Call, a: DomainGetVcpusArgs) -> Result<DomainGetVcpusRet> {
    if a.maxinfo < 0 || a.maxinfo as usize > VCPUINFO_MAX {
        return Err(Error::Internal("maxinfo > REMOTE_VCPUINFO_MAX".into()));
    }
    if a.maplen < 0 || (a.maxinfo as i64) * (a.maplen as i64) > CPUMAPS_MAX as i64 {
        return Err(Error::Internal(
            "maxinfo * maplen > REMOTE_CPUMAPS_MAX".into(),
        ));
    }
    let (_, h) = live(
        call,
        &a.dom,
        "cannot retrieve vcpu information for inactive domain",
    )
    .await?;
    let threads = vcpu_threads(&h, PROBE_DEADLINE).await;
    let maplen = a.maplen as usize;
    let mut cpumaps = vec![0u8; a.maxinfo as usize * maplen];
    let mut info = Vec::new();
    for (n, (i, tid)) in threads.iter().take(a.maxinfo as usize).enumerate() {
        let (user, sys, cpu, _) =
            proc_stat(&format!("/proc/{}/task/{tid}/stat", h.pid)).unwrap_or_default();
        info.push(VcpuInfo {
            number: *i,
            state: 1,
            cpu_time: user + sys,
            cpu,
        });
        if maplen > 0 {
            cpumaps[n * maplen..(n + 1) * maplen].copy_from_slice(&affinity(*tid, maplen));
        }
    }
    Ok(DomainGetVcpusRet {
        info: XdrVec(info),
        cpumaps: Opaque(cpumaps),
    })
}

async fn get_vcpu_pin_info(
    call: &Call,
    a: DomainGetVcpuPinInfoArgs,
) -> Result<DomainGetVcpuPinInfoRet> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainGetVcpuPinInfo",
    )?;
    if a.ncpumaps < 0
        || a.maplen < 0
        || (a.ncpumaps as i64) * (a.maplen as i64) > CPUMAPS_MAX as i64
    {
        return Err(Error::Internal(
            "maxinfo * maplen > REMOTE_CPUMAPS_MAX".into(),
        ));
    }
    let v = resolve(call, &a.dom)?;
    let live_wanted = match a.flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => v.is_active(),
        f => f & AFFECT_LIVE != 0,
    };
    let maplen = a.maplen as usize;
    let all = {
        let mut m = vec![0u8; maplen];
        for cpu in 0..host_cpus().min(maplen * 8) {
            m[cpu / 8] |= 1 << (cpu % 8);
        }
        m
    };
    let mut maps = vec![0u8; a.ncpumaps as usize * maplen];
    let count;
    if live_wanted {
        let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
        let threads = vcpu_threads(&h, PROBE_DEADLINE).await;
        count = (h.def.vcpus as usize).min(a.ncpumaps as usize);
        for n in 0..count {
            let map = match threads.iter().find(|(i, _)| *i as usize == n) {
                Some((_, tid)) => affinity(*tid, maplen),
                None => all.clone(),
            };
            maps[n * maplen..(n + 1) * maplen].copy_from_slice(&map);
        }
    } else {
        let def = persistent_def(&v)?;
        count = (def.vcpus as usize).min(a.ncpumaps as usize);
        for n in 0..count {
            let map = match def.cputune.vcpu(n as u32) {
                Some(cpuset) => cpuset_to_map(cpuset, maplen),
                None => all.clone(),
            };
            maps[n * maplen..(n + 1) * maplen].copy_from_slice(&map);
        }
    }
    Ok(DomainGetVcpuPinInfoRet {
        cpumaps: Opaque(maps),
        num: count as i32,
    })
}

async fn pin(call: &Call, dom: &NonnullDomain, vcpu: u32, map: &[u8], flags: u32) -> Result<()> {
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainPinVcpuFlags")?;
    let v = resolve(call, dom)?;
    let (live_wanted, config) = impact(&v, flags)?;
    check_map(map)?;
    if !live_wanted {
        return edit_config(
            call,
            v.uuid,
            ConfigEdit::VcpuPin {
                vcpu,
                cpuset: map_to_cpuset(map),
            },
        )
        .await;
    }
    let (_, h) = live(call, dom, NOT_RUNNING).await?;
    let threads = vcpu_threads(&h, PROBE_DEADLINE).await;
    let Some((_, tid)) = threads.iter().find(|(i, _)| *i == vcpu) else {
        return Err(Error::InvalidArg(format!(
            "vcpu {vcpu} is out of range of live cpu count {}",
            threads.len()
        )));
    };
    set_affinity(h.pid, *tid, map)?;
    if config {
        edit_config(
            call,
            v.uuid,
            ConfigEdit::VcpuPin {
                vcpu,
                cpuset: map_to_cpuset(map),
            },
        )
        .await?;
    }
    Ok(())
}

/// `virDomainModificationImpact`: (live, config) for a domain.
fn impact(v: &DomainView, flags: u32) -> Result<(bool, bool)> {
    let (live, config) = match flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => (v.is_active(), !v.is_active()),
        f => (f & AFFECT_LIVE != 0, f & AFFECT_CONFIG != 0),
    };
    if live && !v.is_active() {
        return Err(Error::OperationInvalid(NOT_RUNNING.into()));
    }
    if config && !v.persistent {
        return Err(Error::OperationInvalid(
            "transient domains do not have any persistent config".into(),
        ));
    }
    Ok((live, config))
}

async fn pin_vcpu(call: &Call, a: DomainPinVcpuArgs) -> Result<()> {
    pin(call, &a.dom, a.vcpu, &a.cpumap.0, AFFECT_LIVE).await
}

async fn pin_vcpu_flags(call: &Call, a: DomainPinVcpuFlagsArgs) -> Result<()> {
    pin(call, &a.dom, a.vcpu, &a.cpumap.0, a.flags).await
}

/// QEMU's threads that are not vCPUs: the main loop, I/O and helpers.
fn emulator_threads(h: &LiveHandle, vcpus: &[(u32, i32)]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", h.pid)) else {
        return vec![h.pid];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|tid| !vcpus.iter().any(|(_, t)| t == tid))
        .collect()
}

async fn get_emulator_pin_info(
    call: &Call,
    a: DomainGetEmulatorPinInfoArgs,
) -> Result<DomainGetEmulatorPinInfoRet> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainGetEmulatorPinInfo",
    )?;
    if a.maplen < 0 || a.maplen as usize > CPUMAPS_MAX {
        return Err(Error::Internal("maplen > REMOTE_CPUMAPS_MAX".into()));
    }
    let v = resolve(call, &a.dom)?;
    let maplen = a.maplen as usize;
    let live_wanted = match a.flags & (AFFECT_LIVE | AFFECT_CONFIG) {
        0 => v.is_active(),
        f => f & AFFECT_LIVE != 0,
    };
    let map = if live_wanted {
        let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
        affinity(h.pid, maplen)
    } else {
        match persistent_def(&v)?.cputune.emulatorpin {
            Some(cpuset) => cpuset_to_map(&cpuset, maplen),
            None => {
                let mut m = vec![0u8; maplen];
                for cpu in 0..host_cpus().min(maplen * 8) {
                    m[cpu / 8] |= 1 << (cpu % 8);
                }
                m
            }
        }
    };
    Ok(DomainGetEmulatorPinInfoRet {
        cpumaps: Opaque(map),
        ret: 1,
    })
}

async fn pin_emulator(call: &Call, a: DomainPinEmulatorArgs) -> Result<()> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainPinEmulator",
    )?;
    let v = resolve(call, &a.dom)?;
    let (live_wanted, config) = impact(&v, a.flags)?;
    check_map(&a.cpumap.0)?;
    let cpuset = map_to_cpuset(&a.cpumap.0);
    if !live_wanted {
        return edit_config(call, v.uuid, ConfigEdit::EmulatorPin { cpuset }).await;
    }
    let (_, h) = live(call, &a.dom, NOT_RUNNING).await?;
    let vcpus = vcpu_threads(&h, PROBE_DEADLINE).await;
    let threads = emulator_threads(&h, &vcpus);
    // The main thread first: if the map is refused, nothing changed.
    set_affinity(h.pid, h.pid, &a.cpumap.0)?;
    for tid in threads.into_iter().filter(|t| *t != h.pid) {
        // A helper thread may exit meanwhile.
        let _ = set_affinity(h.pid, tid, &a.cpumap.0);
    }
    if config {
        edit_config(call, v.uuid, ConfigEdit::EmulatorPin { cpuset }).await?;
    }
    Ok(())
}

async fn get_iothread_info(
    call: &Call,
    a: DomainGetIothreadInfoArgs,
) -> Result<DomainGetIothreadInfoRet> {
    check_flags(
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG,
        "qemuDomainGetIOThreadInfo",
    )?;
    let v = resolve(call, &a.dom)?;
    if a.flags & AFFECT_LIVE != 0 && !v.is_active() {
        return Err(Error::OperationInvalid(NOT_RUNNING.into()));
    }
    // qemud defines no <iothreads>.
    Ok(DomainGetIothreadInfoRet {
        info: XdrVec::default(),
        ret: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_thread_affinity_round_trips() {
        let me = nix::unistd::gettid().as_raw();
        let map = affinity(me, 8);
        assert!(map.iter().any(|b| *b != 0));
        set_affinity(me, me, &map).unwrap();
        let none_existing = {
            let mut m = vec![0u8; 128];
            m[127] = 0x80;
            m
        };
        let e = set_affinity(me, me, &none_existing).unwrap_err();
        assert!(e.to_string().contains("cannot set CPU affinity"), "{e}");
        assert!(check_map(&[0, 0]).is_err());
    }
}

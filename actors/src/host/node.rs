//! Node statistics and facts read from the kernel, as libvirt reports them:
//! CPU times, memory, free memory per cell, the CPU map, KSM parameters,
//! the SMBIOS sysinfo and KVM's vCPU limit.

use std::fmt::Write;
use std::fs;
use std::path::Path;

use qemud_config::domain::esc;
use qemud_protocol::remote::{TypedParam, TypedParamValue};
use qemud_protocol::{ErrorCode, ErrorDomain};

use crate::error::{Error, Result};

/// `VIR_NODE_CPU_STATS_ALL_CPUS` / `VIR_NODE_MEMORY_STATS_ALL_CELLS`.
pub const ALL: i32 = -1;

/// libvirt's argument checks in its host helpers report INVALID_ARG with
/// the bare message, without the usual "invalid argument: " prefix.
fn raw_invalid_arg(message: &str) -> Error {
    Error::Other {
        code: ErrorCode::InvalidArg,
        domain: ErrorDomain::None,
        message: message.to_owned(),
    }
}

/// The host CPU's features (libvirt names) from the kernel's flags.
pub fn cpuinfo_features() -> Vec<String> {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: std::collections::HashSet<String> = text
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| {
            v.split_whitespace()
                .map(|f| match f {
                    "sse4_1" => "sse4.1".to_owned(),
                    "sse4_2" => "sse4.2".to_owned(),
                    "pclmulqdq" => "pclmuldq".to_owned(),
                    "sha_ni" => "sha-ni".to_owned(),
                    "tsc_deadline_timer" => "tsc-deadline".to_owned(),
                    "avx512_vnni" => "avx512vnni".to_owned(),
                    "avx512_bf16" => "avx512-bf16".to_owned(),
                    "avx512_fp16" => "avx512-fp16".to_owned(),
                    "avx512_vpopcntdq" => "avx512-vpopcntdq".to_owned(),
                    "avx512_bitalg" => "avx512bitalg".to_owned(),
                    "avx512_vbmi2" => "avx512vbmi2".to_owned(),
                    "avx_vnni" => "avx-vnni".to_owned(),
                    "tsxldtrk" => "tsx-ldtrk".to_owned(),
                    "amx_bf16" => "amx-bf16".to_owned(),
                    "amx_tile" => "amx-tile".to_owned(),
                    "amx_int8" => "amx-int8".to_owned(),
                    "arch_capabilities" => "arch-capabilities".to_owned(),
                    "nonstop_tsc" => "invtsc".to_owned(),
                    other => other.to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    super::probe::feature_order()
        .iter()
        .filter(|f| flags.contains(*f))
        .cloned()
        .collect()
}

/// The host CPU's vendor (`Intel`, `AMD`, `Hygon`) from the kernel.
pub fn cpu_vendor() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let id = text
        .lines()
        .find(|l| l.starts_with("vendor_id"))?
        .split_once(':')?
        .1
        .trim()
        .to_owned();
    Some(
        match id.as_str() {
            "GenuineIntel" => "Intel",
            "AuthenticAMD" => "AMD",
            "HygonGenuine" => "Hygon",
            other => other,
        }
        .to_owned(),
    )
}

/// A kernel CPU list ("0-3,6") as ids.
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    // Bounded: a CPU list never names more than a few thousand.
                    out.extend((a..=b).take(65_536));
                }
            }
            None => {
                if let Ok(n) = part.trim().parse() {
                    out.push(n);
                }
            }
        }
    }
    out
}

fn cpu_list(file: &str) -> Vec<u32> {
    fs::read_to_string(Path::new("/sys/devices/system/cpu").join(file))
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default()
}

pub fn online_cpus() -> Vec<u32> {
    cpu_list("online")
}

pub fn present_cpus() -> Vec<u32> {
    cpu_list("present")
}

/// `virNodeGetCPUStats`: kernel, user, idle, iowait in nanoseconds, for one
/// CPU or (`ALL`) the whole host. `nparams` 0 asks only for the count.
pub fn cpu_stats(cpu_num: i32, nparams: i32) -> Result<(Vec<(String, u64)>, i32)> {
    const COUNT: i32 = 4;
    if nparams == 0 {
        return Ok((Vec::new(), COUNT));
    }
    if nparams != COUNT {
        return Err(raw_invalid_arg(&format!(
            "nparams in virHostCPUGetStatsLinux must be equal to {COUNT}"
        )));
    }
    let stat = fs::read_to_string("/proc/stat")
        .map_err(|e| Error::System(format!("cannot open /proc/stat: {e}")))?;
    let header = if cpu_num == ALL {
        "cpu ".to_owned()
    } else {
        format!("cpu{cpu_num} ")
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick_ns = 1_000_000_000u64 / if hz > 0 { hz as u64 } else { 100 };
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix(&header) else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 4 {
            continue;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        return Ok((
            vec![
                ("kernel".into(), (at(2) + at(5) + at(6)) * tick_ns),
                ("user".into(), (at(0) + at(1)) * tick_ns),
                ("idle".into(), at(3) * tick_ns),
                ("iowait".into(), at(4) * tick_ns),
            ],
            COUNT,
        ));
    }
    Err(raw_invalid_arg("Invalid cpuNum in virHostCPUGetStatsLinux"))
}

/// The highest NUMA node number, 0 without NUMA.
fn max_node() -> i32 {
    fs::read_to_string("/sys/devices/system/node/online")
        .map(|t| parse_cpu_list(&t).into_iter().max().unwrap_or(0) as i32)
        .unwrap_or(0)
}

fn numa() -> bool {
    Path::new("/sys/devices/system/node/node0/meminfo").exists()
}

/// `virNodeGetMemoryStats`: total, free, buffers, cached in KiB for the
/// host; total and free for one cell.
pub fn memory_stats(cell_num: i32, nparams: i32) -> Result<(Vec<(String, u64)>, i32)> {
    let mut cell = cell_num;
    if !numa() && cell == 0 {
        cell = ALL;
    }
    let count = if cell == ALL { 4 } else { 2 };
    let text = if cell == ALL {
        fs::read_to_string("/proc/meminfo")
    } else {
        let max = max_node();
        if cell < 0 || cell > max {
            return Err(raw_invalid_arg(&format!(
                "cellNum in virHostMemGetStats must be less than or equal to {max}"
            )));
        }
        fs::read_to_string(format!("/sys/devices/system/node/node{cell}/meminfo"))
    }
    .map_err(|e| Error::System(format!("cannot read memory information: {e}")))?;
    if nparams == 0 {
        return Ok((Vec::new(), count));
    }
    if nparams != count {
        return Err(raw_invalid_arg(&format!(
            "nparams in virHostMemGetStatsLinux must be {count}"
        )));
    }
    let fields = [
        ("MemTotal:", "total"),
        ("MemFree:", "free"),
        ("Buffers:", "buffers"),
        ("Cached:", "cached"),
    ];
    let mut out = Vec::new();
    for line in text.lines() {
        // Per-node files prefix each line with "Node N ".
        let line = match line.strip_prefix("Node ") {
            Some(rest) => rest.split_once(' ').map(|(_, r)| r).unwrap_or(rest),
            None => line,
        };
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        if let Some((_, field)) = fields.iter().find(|(k, _)| *k == key) {
            out.push((field.to_string(), val.parse().unwrap_or(0)));
            if out.len() as i32 >= count {
                break;
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Internal("no available memory line found".into()));
    }
    Ok((out, count))
}

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .map(|l| match l.strip_prefix("Node ") {
            Some(rest) => rest.split_once(' ').map(|(_, r)| r).unwrap_or(rest),
            None => l,
        })
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `virNodeGetCellsFreeMemory`: free bytes of cells `start..start+max`.
pub fn cells_free_memory(start: i32, max_cells: i32) -> Result<Vec<u64>> {
    let last = max_node();
    if start < 0 || start > last {
        return Err(Error::Internal(format!(
            "start cell {start} out of range (0-{last})"
        )));
    }
    if !numa() {
        let text = fs::read_to_string("/proc/meminfo")
            .map_err(|e| Error::System(format!("cannot read /proc/meminfo: {e}")))?;
        return Ok(vec![meminfo_kib(&text, "MemFree:") * 1024]);
    }
    let end = (start as i64 + max_cells.max(0) as i64 - 1).min(last as i64) as i32;
    let mut out = Vec::new();
    for cell in start..=end {
        let text = fs::read_to_string(format!("/sys/devices/system/node/node{cell}/meminfo"))
            .unwrap_or_default();
        out.push(meminfo_kib(&text, "MemFree:") * 1024);
    }
    Ok(out)
}

/// Free pages of one size on one cell (`None`: the whole host).
fn free_pages_of(cell: Option<i32>, page_kib: u32) -> Result<u64> {
    // SAFETY: sysconf has no memory effects.
    let system_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u32 / 1024;
    if page_kib == system_kib {
        let text = match cell {
            Some(c) => fs::read_to_string(format!("/sys/devices/system/node/node{c}/meminfo")),
            None => fs::read_to_string("/proc/meminfo"),
        }
        .map_err(|e| Error::System(format!("cannot read memory information: {e}")))?;
        return Ok(meminfo_kib(&text, "MemFree:") / u64::from(system_kib));
    }
    let dir = match cell {
        Some(c) => format!("/sys/devices/system/node/node{c}/hugepages/hugepages-{page_kib}kB"),
        None => format!("/sys/kernel/mm/hugepages/hugepages-{page_kib}kB"),
    };
    let text = fs::read_to_string(Path::new(&dir).join("free_hugepages")).map_err(|_| {
        Error::OperationFailed(match cell {
            Some(c) => format!("page size {page_kib} is not available on node {c}"),
            None => format!("page size {page_kib} is not available"),
        })
    })?;
    Ok(text.trim().parse().unwrap_or(0))
}

/// `virNodeGetFreePages`: free pages of each size on each cell of
/// `start..start+count`, cell by cell.
pub fn free_pages(pages: &[u32], start: i32, count: u32) -> Result<Vec<u64>> {
    let last = max_node();
    let whole_host = !numa() && last == 0 && start == 0 && count == 1;
    if start > last {
        return Err(Error::Internal(format!(
            "start cell {start} out of range (0-{last})"
        )));
    }
    let end = (i64::from(start) + i64::from(count) - 1).min(i64::from(last)) as i32;
    let mut out = Vec::new();
    if whole_host {
        for p in pages {
            out.push(free_pages_of(None, *p)?);
        }
    } else {
        for cell in start.max(0)..=end {
            for p in pages {
                out.push(free_pages_of(Some(cell), *p)?);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Internal("no suitable info found".into()));
    }
    Ok(out)
}

/// The page sizes (KiB) of the host with their total counts: the system
/// page, then each huge page size the kernel offers.
pub fn page_sizes(memory_kib: u64) -> Vec<(u32, u64)> {
    // SAFETY: sysconf has no memory effects.
    let system_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u32 / 1024;
    let mut huge: Vec<(u32, u64)> = fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let size = name
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    let count = fs::read_to_string(e.path().join("nr_hugepages"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .unwrap_or(0);
                    Some((size, count))
                })
                .collect()
        })
        .unwrap_or_default();
    huge.sort_unstable();
    let huge_kib: u64 = huge.iter().map(|(s, c)| u64::from(*s) * c).sum();
    let mut out = vec![(
        system_kib,
        memory_kib.saturating_sub(huge_kib) / u64::from(system_kib),
    )];
    out.extend(huge);
    out
}

/// `virNodeGetCPUMap`: a bitmap of online CPUs over the present ones.
pub fn cpu_map() -> (Vec<u8>, u32, i32) {
    let present = present_cpus();
    let total = present.iter().max().map(|m| m + 1).unwrap_or(0);
    let online = online_cpus();
    let mut map = vec![0u8; total.div_ceil(8) as usize];
    for c in &online {
        if let Some(b) = map.get_mut((*c / 8) as usize) {
            *b |= 1 << (c % 8);
        }
    }
    (map, online.len() as u32, total as i32)
}

/// `virNodeGetMemoryParameters`: the kernel's KSM settings and counters.
pub fn memory_parameters(nparams: i32) -> (Vec<TypedParam>, i32) {
    const FIELDS: &[(&str, &str, bool)] = &[
        ("pages_to_scan", "shm_pages_to_scan", false),
        ("sleep_millisecs", "shm_sleep_millisecs", false),
        ("pages_shared", "shm_pages_shared", true),
        ("pages_sharing", "shm_pages_sharing", true),
        ("pages_unshared", "shm_pages_unshared", true),
        ("pages_volatile", "shm_pages_volatile", true),
        ("full_scans", "shm_full_scans", true),
        ("merge_across_nodes", "shm_merge_across_nodes", false),
    ];
    if nparams == 0 {
        return (Vec::new(), FIELDS.len() as i32);
    }
    let mut out = Vec::new();
    for (file, field, wide) in FIELDS.iter().take(nparams.max(0) as usize) {
        let Ok(text) = fs::read_to_string(Path::new("/sys/kernel/mm/ksm").join(file)) else {
            continue;
        };
        let v: u64 = text.trim().parse().unwrap_or(0);
        out.push(TypedParam {
            field: (*field).into(),
            value: if *wide {
                TypedParamValue::Ul(v)
            } else {
                TypedParamValue::Ui(v as u32)
            },
        });
    }
    let n = out.len() as i32;
    (out, n)
}

/// `virConnectGetSysinfo`: the host's SMBIOS data as the kernel exposes it.
pub fn sysinfo_xml() -> Result<String> {
    let dir = Path::new("/sys/class/dmi/id");
    if !dir.is_dir() {
        return Err(Error::ConfigUnsupported(
            "Host SMBIOS information is not available".into(),
        ));
    }
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let section = |x: &mut String, tag: &str, entries: &[(&str, &str)]| {
        let vals: Vec<(&str, String)> = entries
            .iter()
            .filter_map(|(name, file)| read(file).map(|v| (*name, v)))
            .collect();
        if vals.is_empty() {
            return;
        }
        let _ = writeln!(x, "  <{tag}>");
        for (name, v) in vals {
            let _ = writeln!(x, "    <entry name='{name}'>{}</entry>", esc(&v));
        }
        let _ = writeln!(x, "  </{tag}>");
    };
    let mut x = String::from("<sysinfo type='smbios'>\n");
    section(
        &mut x,
        "bios",
        &[
            ("vendor", "bios_vendor"),
            ("version", "bios_version"),
            ("date", "bios_date"),
            ("release", "bios_release"),
        ],
    );
    section(
        &mut x,
        "system",
        &[
            ("manufacturer", "sys_vendor"),
            ("product", "product_name"),
            ("version", "product_version"),
            ("serial", "product_serial"),
            ("uuid", "product_uuid"),
            ("sku", "product_sku"),
            ("family", "product_family"),
        ],
    );
    section(
        &mut x,
        "baseBoard",
        &[
            ("manufacturer", "board_vendor"),
            ("product", "board_name"),
            ("version", "board_version"),
            ("serial", "board_serial"),
            ("asset", "board_asset_tag"),
        ],
    );
    section(
        &mut x,
        "chassis",
        &[
            ("manufacturer", "chassis_vendor"),
            ("version", "chassis_version"),
            ("serial", "chassis_serial"),
            ("asset", "chassis_asset_tag"),
        ],
    );
    x.push_str("</sysinfo>\n");
    Ok(x)
}

/// KVM's vCPU limit, as libvirt asks /dev/kvm for it.
pub fn kvm_max_vcpus() -> std::result::Result<i32, String> {
    use std::os::fd::AsRawFd;
    const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
    const KVM_CAP_NR_VCPUS: libc::c_ulong = 9;
    const KVM_CAP_MAX_VCPUS: libc::c_ulong = 66;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("Unable to open /dev/kvm: {e}"))?;
    for cap in [KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS] {
        // SAFETY: KVM_CHECK_EXTENSION takes an integer and writes nothing.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CHECK_EXTENSION as _, cap) };
        if r > 0 {
            return Ok(r);
        }
    }
    Ok(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6\n"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn host_stats_have_libvirts_fields() {
        let (_, n) = cpu_stats(ALL, 0).expect("count");
        assert_eq!(n, 4);
        let (v, _) = cpu_stats(ALL, 4).expect("stats");
        let names: Vec<_> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["kernel", "user", "idle", "iowait"]);
        assert!(cpu_stats(100_000, 4).is_err());
        let (m, _) = memory_stats(ALL, 4).expect("memory");
        assert_eq!(m[0].0, "total");
        assert!(m[0].1 > 0);
    }
}

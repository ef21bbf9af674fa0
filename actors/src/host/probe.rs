//! What an emulator can do, asked of QEMU itself over QMP: machine types
//! and their aliases, CPU models, the host-model CPU, device types and
//! commands. One probe per (emulator, virt type), run once on first need
//! and cached for the daemon's life.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use qemud_config::domcaps::HostModelCap;

use crate::domain::qmp::QmpClient;

/// Longest a whole probe may take: QEMU start, every query, quit.
const PROBE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest one QMP query of the probe may take.
const QUERY_DEADLINE: Duration = Duration::from_secs(20);

/// Where libvirt keeps its CPU model definitions; used for model vendors
/// and the names and order of x86 CPU features.
const CPU_MAP_DIR: &str = "/usr/share/libvirt/cpu_map";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineType {
    pub name: String,
    pub alias: Option<String>,
    pub max_cpus: u32,
    pub is_default: bool,
    pub deprecated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuDefinition {
    pub name: String,
    pub usable: bool,
    pub deprecated: bool,
}

/// The answers of one emulator under one accelerator.
#[derive(Clone, Debug, Default)]
pub struct EmulatorCaps {
    pub emulator: PathBuf,
    /// libvirt's virt type: `qemu` (TCG) or `kvm`.
    pub virt_type: String,
    /// The default machine type first, then QEMU's order.
    pub machines: Vec<MachineType>,
    pub cpu_definitions: Vec<CpuDefinition>,
    pub host_model: Option<HostModelCap>,
    /// Features (libvirt names) of the host CPU (`host` under KVM, `max`
    /// under TCG), in cpu_map order.
    pub host_cpu_features: Vec<String>,
    /// Instantiable QOM device types.
    pub device_types: HashSet<String>,
    pub commands: HashSet<String>,
}

impl EmulatorCaps {
    /// The machine type (canonical or alias) called `name`.
    pub fn machine(&self, name: &str) -> Option<&MachineType> {
        self.machines
            .iter()
            .find(|m| m.name == name || m.alias.as_deref() == Some(name))
    }

    pub fn default_machine(&self) -> Option<&MachineType> {
        self.machines
            .iter()
            .find(|m| m.is_default)
            .or(self.machines.first())
    }

    pub fn has_device(&self, ty: &str) -> bool {
        self.device_types.contains(ty)
    }
}

type Slot = Arc<OnceCell<Result<Arc<EmulatorCaps>, String>>>;

/// (emulator, virt type, the binary's modification time): a replaced
/// binary is probed again, as libvirt does.
type Key = (PathBuf, String, Option<std::time::SystemTime>);

/// Probe results by emulator and virt type. Callers that arrive while a
/// probe runs share it; a failed probe is forgotten once reported, so the
/// next request tries again.
#[derive(Default)]
pub struct ProbeCache {
    slots: Mutex<HashMap<Key, Slot>>,
}

impl std::fmt::Debug for ProbeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeCache")
    }
}

impl ProbeCache {
    /// The capabilities of `emulator` under `virt_type`, probing on first
    /// use; concurrent callers share one probe.
    pub async fn get(&self, emulator: &Path, virt_type: &str) -> Result<Arc<EmulatorCaps>, String> {
        let mtime = std::fs::metadata(emulator).and_then(|m| m.modified()).ok();
        let key: Key = (emulator.to_path_buf(), virt_type.to_owned(), mtime);
        let slot = {
            let mut slots = match self.slots.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            slots.entry(key.clone()).or_default().clone()
        };
        let result = slot
            .get_or_init(|| async {
                let started = std::time::Instant::now();
                let r = match tokio::time::timeout(PROBE_DEADLINE, probe(emulator, virt_type)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "probing {} timed out after {}s",
                        emulator.display(),
                        PROBE_DEADLINE.as_secs()
                    )),
                };
                match &r {
                    Ok(c) => info!(
                        emulator = %emulator.display(),
                        virt_type,
                        machines = c.machines.len(),
                        cpu_models = c.cpu_definitions.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "probed emulator"
                    ),
                    Err(e) => warn!(emulator = %emulator.display(), virt_type, "probe failed: {e}"),
                }
                r.map(Arc::new)
            })
            .await
            .clone();
        if result.is_err() {
            let mut slots = match self.slots.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&key);
            }
        }
        result
    }
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

async fn probe(emulator: &Path, virt_type: &str) -> Result<EmulatorCaps, String> {
    let accel = if virt_type == "kvm" { "kvm" } else { "tcg" };
    let socket = std::env::temp_dir().join(format!(
        "qemud-probe-{}-{}.sock",
        std::process::id(),
        PROBE_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&socket);
    let mut child = tokio::process::Command::new(emulator)
        .args(["-S", "-no-user-config", "-nodefaults", "-display", "none"])
        .arg("-machine")
        .arg(format!("none,accel={accel}"))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", emulator.display()))?;
    let result = async {
        let (qmp, _events) = QmpClient::connect(&socket, QUERY_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        let r = query_all(&qmp, emulator, virt_type).await;
        let _ = qmp
            .execute_within("quit", None, Duration::from_secs(2))
            .await;
        r
    }
    .await;
    let _ = std::fs::remove_file(&socket);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    match result {
        Ok(c) => Ok(c),
        Err(e) => {
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                {
                    stderr = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                }
            }
            Err(if stderr.is_empty() {
                e
            } else {
                format!("{e}: {stderr}")
            })
        }
    }
}

async fn query(qmp: &QmpClient, cmd: &str, args: Option<Value>) -> Result<Value, String> {
    qmp.execute_within(cmd, args, QUERY_DEADLINE)
        .await
        .map_err(|e| e.to_string())
}

async fn query_all(
    qmp: &QmpClient,
    emulator: &Path,
    virt_type: &str,
) -> Result<EmulatorCaps, String> {
    let machines = parse_machines(&query(qmp, "query-machines", None).await?);
    let cpu_definitions = parse_cpu_definitions(&query(qmp, "query-cpu-definitions", None).await?);
    let device_types = query(
        qmp,
        "qom-list-types",
        Some(json!({"implements": "device", "abstract": false})),
    )
    .await
    .map(|v| names(&v))
    .unwrap_or_default();
    let commands = query(qmp, "query-commands", None)
        .await
        .map(|v| names(&v))
        .unwrap_or_default();

    // The host-model CPU: the emulator's own idea of the host (KVM) or its
    // most capable CPU (TCG), described as the closest usable named model
    // plus and minus features.
    let base = if virt_type == "kvm" { "host" } else { "max" };
    let mut host_model = None;
    let mut host_cpu_features = Vec::new();
    if let Ok(host) = expand(qmp, base).await {
        host_cpu_features = feature_order()
            .iter()
            .filter(|f| host.features.contains(*f))
            .cloned()
            .collect();
        let mut best: Option<(usize, HostModelCap)> = None;
        // Every offered model is a candidate, usable or not: the disabled
        // features of the answer make it fit, as libvirt's decoding does.
        for def in &cpu_definitions {
            // A model of another vendor never describes this CPU.
            let vendor = model_vendor(&def.name);
            if vendor != "unknown" && host.vendor.as_deref().is_some_and(|v| v != vendor) {
                continue;
            }
            let Ok(model) = expand(qmp, &def.name).await else {
                continue;
            };
            let require: Vec<String> = feature_order()
                .iter()
                .filter(|f| host.features.contains(*f) && !model.features.contains(*f))
                .cloned()
                .collect();
            let disable: Vec<String> = feature_order()
                .iter()
                .filter(|f| model.features.contains(*f) && !host.features.contains(*f))
                .cloned()
                .collect();
            let cost = require.len() + disable.len();
            // On a tie the later (newer) model wins.
            if best.as_ref().map(|(c, _)| cost <= *c).unwrap_or(true) {
                best = Some((
                    cost,
                    HostModelCap {
                        model: def.name.clone(),
                        vendor: host.vendor.clone(),
                        require,
                        disable,
                    },
                ));
            }
        }
        host_model = best.map(|(_, h)| h);
    }
    Ok(EmulatorCaps {
        emulator: emulator.to_path_buf(),
        virt_type: virt_type.to_owned(),
        machines,
        cpu_definitions,
        host_model,
        host_cpu_features,
        device_types,
        commands,
    })
}

fn names(v: &Value) -> HashSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A full expansion of one CPU model: its enabled features (libvirt
/// names) and vendor.
struct Expansion {
    features: HashSet<String>,
    vendor: Option<String>,
}

async fn expand(qmp: &QmpClient, model: &str) -> Result<Expansion, String> {
    let v = query(
        qmp,
        "query-cpu-model-expansion",
        Some(json!({"type": "full", "model": {"name": model}})),
    )
    .await?;
    let props = v
        .get("model")
        .and_then(|m| m.get("props"))
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no properties in the expansion of {model}"))?;
    let known: HashSet<&String> = feature_order().iter().collect();
    let mut features = HashSet::new();
    for (name, value) in props {
        if value.as_bool() != Some(true) {
            continue;
        }
        let name = feature_from_qemu(name);
        if known.is_empty() || known.contains(&name) {
            features.insert(name);
        }
    }
    let vendor = props
        .get("vendor")
        .and_then(Value::as_str)
        .map(vendor_name)
        .map(str::to_owned);
    Ok(Expansion { features, vendor })
}

fn vendor_name(cpuid_vendor: &str) -> &str {
    match cpuid_vendor {
        "GenuineIntel" => "Intel",
        "AuthenticAMD" => "AMD",
        "HygonGenuine" => "Hygon",
        other => other,
    }
}

/// libvirt's spelling of the few x86 features QEMU spells differently.
const FEATURE_NAMES: &[(&str, &str)] = &[
    ("cmp-legacy", "cmp_legacy"),
    ("ds-cpl", "ds_cpl"),
    ("fxsr-opt", "fxsr_opt"),
    ("kvm-pv-eoi", "kvm_pv_eoi"),
    ("kvm-pv-unhalt", "kvm_pv_unhalt"),
    ("lahf-lm", "lahf_lm"),
    ("nodeid-msr", "nodeid_msr"),
    ("pclmulqdq", "pclmuldq"),
    ("perfctr-core", "perfctr_core"),
    ("perfctr-nb", "perfctr_nb"),
    ("tsc-adjust", "tsc_adjust"),
];

pub fn feature_from_qemu(name: &str) -> String {
    FEATURE_NAMES
        .iter()
        .find(|(q, _)| *q == name)
        .map(|(_, l)| (*l).to_owned())
        .unwrap_or_else(|| name.to_owned())
}

/// The x86 feature names libvirt knows, in its cpu_map order (empty when
/// libvirt's cpu_map is not installed).
pub fn feature_order() -> &'static [String] {
    static ORDER: LazyLock<Vec<String>> = LazyLock::new(|| {
        let text = std::fs::read_to_string(Path::new(CPU_MAP_DIR).join("x86_features.xml"))
            .unwrap_or_default();
        let mut seen = HashSet::new();
        attr_values(&text, "<feature name='")
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect()
    });
    &ORDER
}

fn attr_values(text: &str, prefix: &str) -> Vec<String> {
    text.split(prefix)
        .skip(1)
        .filter_map(|rest| rest.split('\'').next())
        .map(str::to_owned)
        .collect()
}

/// The vendor libvirt's cpu_map gives a CPU model, `unknown` without one.
pub fn model_vendor(model: &str) -> String {
    static CACHE: LazyLock<Mutex<BTreeMap<String, String>>> = LazyLock::new(Default::default);
    if let Ok(c) = CACHE.lock() {
        if let Some(v) = c.get(model) {
            return v.clone();
        }
    }
    let file = Path::new(CPU_MAP_DIR).join(format!("x86_{model}.xml"));
    let vendor = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| attr_values(&t, "<vendor name='").into_iter().next())
        .unwrap_or_else(|| "unknown".to_owned());
    if let Ok(mut c) = CACHE.lock() {
        c.insert(model.to_owned(), vendor.clone());
    }
    vendor
}

fn parse_machines(v: &Value) -> Vec<MachineType> {
    let mut out: Vec<MachineType> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let name = m.get("name")?.as_str()?.to_owned();
            if name == "none" {
                return None;
            }
            Some(MachineType {
                name,
                alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                max_cpus: m.get("cpu-max").and_then(Value::as_u64).unwrap_or(1) as u32,
                is_default: m
                    .get("is-default")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                deprecated: m
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect();
    // The default first, as libvirt lists it.
    if let Some(i) = out.iter().position(|m| m.is_default) {
        let d = out.remove(i);
        out.insert(0, d);
    }
    out
}

/// Whether a model name is one libvirt offers: not QEMU's versioned
/// aliases (`Skylake-Client-v2`) nor its special `host`/`max`/`base`.
fn offered_model(name: &str) -> bool {
    if matches!(name, "host" | "max" | "base") {
        return false;
    }
    if let Some((_, v)) = name.rsplit_once("-v") {
        if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    let map = Path::new(CPU_MAP_DIR);
    !map.is_dir() || map.join(format!("x86_{name}.xml")).is_file()
}

fn parse_cpu_definitions(v: &Value) -> Vec<CpuDefinition> {
    v.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            let name = d.get("name")?.as_str()?.to_owned();
            if !offered_model(&name) {
                return None;
            }
            let usable = d
                .get("unavailable-features")
                .and_then(Value::as_array)
                .map(|f| f.is_empty())
                .unwrap_or(true);
            Some(CpuDefinition {
                name,
                usable,
                deprecated: d
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect()
}

/// A firmware descriptor of QEMU's (`/usr/share/qemu/firmware/*.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub executable: String,
    pub secure_boot: bool,
}

/// Firmware descriptors for `arch` whose machine globs match `machine`,
/// in the order QEMU's descriptor rules give (file name order).
pub fn firmware_for(dirs: &[&Path], arch: &str, machine: &str) -> Vec<Firmware> {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    // A later directory (/etc) overrides a file of the same name.
    for dir in dirs {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") {
                    files.insert(name, e.path());
                }
            }
        }
    }
    let mut out: Vec<Firmware> = Vec::new();
    for path in files.values() {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(exe) = v
            .pointer("/mapping/executable/filename")
            .or_else(|| v.pointer("/mapping/filename"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let matches = v
            .get("targets")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter().any(|t| {
                    t.get("architecture").and_then(Value::as_str) == Some(arch)
                        && t.get("machines")
                            .and_then(Value::as_array)
                            .map(|ms| {
                                ms.iter()
                                    .filter_map(Value::as_str)
                                    .any(|g| qemud_config::wildcard_match(g, machine))
                            })
                            .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if !matches || !Path::new(exe).exists() {
            continue;
        }
        let secure_boot = v
            .get("features")
            .and_then(Value::as_array)
            .map(|f| f.iter().any(|x| x.as_str() == Some("secure-boot")))
            .unwrap_or(false);
        if !out.iter().any(|f| f.executable == exe) {
            out.push(Firmware {
                executable: exe.to_owned(),
                secure_boot,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(qemud_config::wildcard_match("pc-q35-*", "pc-q35-7.2"));
        assert!(qemud_config::wildcard_match("pc-i440fx-*", "pc-i440fx-7.2"));
        assert!(!qemud_config::wildcard_match("pc-q35-*", "pc-i440fx-7.2"));
        assert!(qemud_config::wildcard_match("*", ""));
        assert!(qemud_config::wildcard_match("a?c", "abc"));
    }

    #[test]
    fn machines_default_first() {
        let v = json!([
            {"name": "microvm", "cpu-max": 288},
            {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": true, "cpu-max": 255},
            {"name": "none", "cpu-max": 1}
        ]);
        let m = parse_machines(&v);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "pc-i440fx-7.2");
        assert_eq!(m[0].alias.as_deref(), Some("pc"));
        assert_eq!(m[1].max_cpus, 288);
    }

    #[test]
    fn versioned_models_are_not_offered() {
        assert!(!offered_model("Skylake-Client-v2"));
        assert!(!offered_model("max"));
        assert_eq!(feature_from_qemu("tsc-adjust"), "tsc_adjust");
    }
}

//! CPU model names, comparison and baseline, from libvirt's own CPU model
//! definitions (the cpu_map) and the emulator's host CPU.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::path::Path;
use std::sync::LazyLock;

use qemud_config::domain::{esc, esc_attr, ARCHES};
use qemud_protocol::{ErrorCode, ErrorDomain};

use super::probe::{feature_order, model_vendor};
use crate::error::{Error, Result};

const CPU_MAP_DIR: &str = "/usr/share/libvirt/cpu_map";

/// `VIR_CPU_COMPARE_*` results.
pub const INCOMPATIBLE: i32 = 0;
pub const IDENTICAL: i32 = 1;
pub const SUPERSET: i32 = 2;
/// `VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE`.
pub const FAIL_INCOMPATIBLE: u32 = 1;
/// `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES`.
pub const EXPAND_FEATURES: u32 = 1;

fn attr_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.split_once(prefix)?.1.split('\'').next()
}

/// x86 model names in libvirt's cpu_map order.
fn x86_models() -> &'static [String] {
    static MODELS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let index =
            std::fs::read_to_string(Path::new(CPU_MAP_DIR).join("index.xml")).unwrap_or_default();
        let x86 = index
            .split("<arch name='x86'>")
            .nth(1)
            .and_then(|s| s.split("</arch>").next())
            .unwrap_or("");
        x86.split("<include filename='")
            .skip(1)
            .filter_map(|s| s.split('\'').next())
            .filter(|f| !matches!(*f, "x86_vendors.xml" | "x86_features.xml"))
            .filter_map(|f| f.strip_prefix("x86_")?.strip_suffix(".xml"))
            .map(str::to_owned)
            .collect()
    });
    &MODELS
}

/// The features (libvirt names) of a cpu_map model, with its ancestors'.
fn model_features(model: &str) -> Option<BTreeSet<String>> {
    static CACHE: LazyLock<std::sync::Mutex<HashMap<String, Option<BTreeSet<String>>>>> =
        LazyLock::new(Default::default);
    if let Ok(c) = CACHE.lock() {
        if let Some(v) = c.get(model) {
            return v.clone();
        }
    }
    let mut out = None;
    let mut name = model.to_owned();
    // Bounded walk up the parent chain.
    for _ in 0..8 {
        let Ok(text) =
            std::fs::read_to_string(Path::new(CPU_MAP_DIR).join(format!("x86_{name}.xml")))
        else {
            break;
        };
        let set = out.get_or_insert_with(BTreeSet::new);
        for f in text.split("<feature name='").skip(1) {
            if let Some(n) = f.split('\'').next() {
                set.insert(n.to_owned());
            }
        }
        // A model based on another names it as an empty <model name=.../>.
        let body = text
            .split_once("<model name='")
            .map(|(_, r)| r)
            .unwrap_or("");
        match attr_after(body, "<model name='") {
            Some(parent) if parent != name => name = parent.to_owned(),
            _ => break,
        }
    }
    if let Ok(mut c) = CACHE.lock() {
        c.insert(model.to_owned(), out.clone());
    }
    out
}

/// Names a CPU by its features: the libvirt model of its vendor with the
/// most features, all of which the CPU has, and the features it adds.
pub fn describe(features: &[String], vendor: Option<&str>) -> Option<(String, Vec<String>)> {
    let have: BTreeSet<&String> = features.iter().collect();
    let mut best: Option<(&String, BTreeSet<String>)> = None;
    for m in x86_models() {
        let v = model_vendor(m);
        if v != "unknown" && vendor.is_some_and(|h| h != v) {
            continue;
        }
        let Some(f) = model_features(m) else { continue };
        if !f.iter().all(|x| have.contains(x)) {
            continue;
        }
        // On a tie the later (newer) model wins.
        if best
            .as_ref()
            .map(|(_, b)| f.len() >= b.len())
            .unwrap_or(true)
        {
            best = Some((m, f));
        }
    }
    let (model, base) = best?;
    let extra = features
        .iter()
        .filter(|f| !base.contains(*f))
        .cloned()
        .collect();
    Some((model.clone(), extra))
}

/// `virConnectGetCPUModelNames`.
pub fn model_names(arch: &str) -> Result<Vec<String>> {
    if !ARCHES.contains(&arch) {
        return Err(Error::InvalidArg(format!(
            "cannot find architecture {arch}"
        )));
    }
    if arch == "x86_64" || arch == "i686" {
        Ok(x86_models().to_vec())
    } else {
        Ok(Vec::new())
    }
}

/// A `<cpu>` element: its model and the features it requires and forbids.
#[derive(Debug, Default)]
pub struct CpuSpec {
    pub mode: String,
    pub arch: Option<String>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub require: BTreeSet<String>,
    pub forbid: BTreeSet<String>,
}

fn cpu_error(msg: impl Into<String>) -> Error {
    Error::Other {
        code: ErrorCode::XmlError,
        domain: ErrorDomain::Cpu,
        message: format!("XML error: {}", msg.into()),
    }
}

/// Parses the first `<cpu>` element of `xml` (a bare `<cpu>`, or one inside
/// a domain or capabilities document).
pub fn parse_cpu(xml: &str) -> Result<CpuSpec> {
    let doc = roxml(xml)?;
    let cpu = doc
        .descendants()
        .find(|n| n.has_tag_name("cpu"))
        .ok_or_else(|| cpu_error("missing CPU definition"))?;
    let mut spec = CpuSpec {
        mode: cpu.attribute("mode").unwrap_or("custom").to_owned(),
        ..Default::default()
    };
    for n in cpu.children().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "model" => spec.model = n.text().map(|t| t.trim().to_owned()),
            "arch" => spec.arch = n.text().map(|t| t.trim().to_owned()),
            "vendor" => spec.vendor = n.text().map(|t| t.trim().to_owned()),
            "feature" => {
                let Some(name) = n.attribute("name") else {
                    return Err(cpu_error("missing CPU feature name"));
                };
                match n.attribute("policy").unwrap_or("require") {
                    "require" | "force" => {
                        spec.require.insert(name.to_owned());
                    }
                    "disable" | "forbid" => {
                        spec.forbid.insert(name.to_owned());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(spec)
}

fn roxml(xml: &str) -> Result<roxmltree::Document<'_>> {
    roxmltree::Document::parse(xml).map_err(|e| cpu_error(e.to_string()))
}

/// The full feature set a spec asks for.
fn wanted(spec: &CpuSpec) -> Result<BTreeSet<String>> {
    let mut set = match &spec.model {
        Some(m) => model_features(m).ok_or_else(|| Error::Other {
            code: ErrorCode::InternalError,
            domain: ErrorDomain::Cpu,
            message: format!("internal error: Unknown CPU model {m}"),
        })?,
        None => BTreeSet::new(),
    };
    set.extend(spec.require.iter().cloned());
    for f in &spec.forbid {
        set.remove(f);
    }
    Ok(set)
}

/// Compares a CPU description with a host CPU's features.
pub fn compare(xml: &str, host: &[String], flags: u32) -> Result<i32> {
    let spec = parse_cpu(xml)?;
    if spec.mode == "host-passthrough" || spec.mode == "host-model" || spec.mode == "maximum" {
        return Ok(IDENTICAL);
    }
    let host: BTreeSet<String> = host.iter().cloned().collect();
    let want = wanted(&spec)?;
    let missing: Vec<&String> = want.difference(&host).collect();
    let forbidden: Vec<&String> = spec.forbid.intersection(&host).collect();
    let result = if !missing.is_empty() || !forbidden.is_empty() {
        INCOMPATIBLE
    } else if want == host {
        IDENTICAL
    } else {
        SUPERSET
    };
    if result == INCOMPATIBLE && flags & FAIL_INCOMPATIBLE != 0 {
        let why = match (missing.first(), forbidden.first()) {
            (Some(f), _) => format!("Host CPU does not provide required features: {f}"),
            (None, Some(f)) => format!("Host CPU provides forbidden features: {f}"),
            _ => String::new(),
        };
        return Err(Error::Other {
            code: ErrorCode::CpuIncompatible,
            domain: ErrorDomain::Cpu,
            message: format!("the CPU is incompatible with host CPU: {why}"),
        });
    }
    Ok(result)
}

/// The most capable CPU every given CPU can run: the cpu_map model among
/// `candidates` with the most features all of them have, plus the common
/// features that model lacks.
pub fn baseline(xmls: &[String], candidates: &[String], flags: u32) -> Result<String> {
    if xmls.is_empty() {
        return Err(Error::InvalidArg(
            "nonzero ncpus doesn't match with NULL xmlCPUs".into(),
        ));
    }
    let mut common: Option<BTreeSet<String>> = None;
    let mut vendor = None;
    for xml in xmls {
        let spec = parse_cpu(xml)?;
        let set = wanted(&spec)?;
        if vendor.is_none() {
            vendor = spec.vendor.clone();
        }
        common = Some(match common {
            Some(c) => c.intersection(&set).cloned().collect(),
            None => set,
        });
    }
    let common = common.unwrap_or_default();
    let mut best: Option<(String, BTreeSet<String>)> = None;
    for m in candidates {
        let Some(f) = model_features(m) else { continue };
        if !f.is_subset(&common) {
            continue;
        }
        if vendor.is_some() {
            let v = model_vendor(m);
            if v != "unknown" && Some(&v) != vendor.as_ref() {
                continue;
            }
        }
        if best
            .as_ref()
            .map(|(_, b)| f.len() > b.len())
            .unwrap_or(true)
        {
            best = Some((m.clone(), f));
        }
    }
    let Some((model, base)) = best else {
        return Err(Error::Other {
            code: ErrorCode::OperationFailed,
            domain: ErrorDomain::Cpu,
            message: "operation failed: Cannot find suitable CPU model for given data".into(),
        });
    };
    let mut x = String::from("<cpu mode='custom' match='exact'>\n");
    let _ = writeln!(x, "  <model fallback='forbid'>{}</model>", esc(&model));
    if let Some(v) = &vendor {
        let _ = writeln!(x, "  <vendor>{}</vendor>", esc(v));
    }
    // Features in cpu_map order; with EXPAND_FEATURES the model's own too.
    for f in feature_order() {
        let listed = if flags & EXPAND_FEATURES != 0 {
            common.contains(f)
        } else {
            common.contains(f) && !base.contains(f)
        };
        if listed {
            let _ = writeln!(x, "  <feature policy='require' name='{}'/>", esc_attr(f));
        }
    }
    x.push_str("</cpu>\n");
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_baseline_with_cpu_map() {
        if !Path::new(CPU_MAP_DIR).is_dir() {
            return;
        }
        assert!(model_names("x86_64")
            .expect("models")
            .contains(&"Haswell".to_string()));
        assert!(model_names("z80").is_err());
        let host: Vec<String> = model_features("Haswell")
            .expect("Haswell")
            .into_iter()
            .collect();
        let older = "<cpu><model>Westmere</model></cpu>";
        assert_eq!(compare(older, &host, 0).expect("compare"), SUPERSET);
        let same = "<cpu><model>Haswell</model></cpu>";
        assert_eq!(compare(same, &host, 0).expect("compare"), IDENTICAL);
        let newer = "<cpu><model>Skylake-Client</model></cpu>";
        assert_eq!(compare(newer, &host, 0).expect("compare"), INCOMPATIBLE);
        assert!(compare(newer, &host, FAIL_INCOMPATIBLE).is_err());
        let b =
            baseline(&[same.to_string(), older.to_string()], x86_models(), 0).expect("baseline");
        assert!(b.contains("Westmere"), "{b}");
        let (model, extra) = describe(&host, Some("Intel")).expect("a model");
        assert_eq!(model, "Haswell");
        assert!(extra.is_empty(), "{extra:?}");
    }
}

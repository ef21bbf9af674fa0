//! `<cputune>` and `<memtune>` of a domain definition: CPU share and
//! whole-domain bandwidth, vCPU and emulator pinning, memory limits.

use std::fmt::Write as _;

use roxmltree::Node;

/// `<cputune>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuTune {
    pub shares: Option<u64>,
    pub global_period: Option<u64>,
    pub global_quota: Option<i64>,
    /// (vCPU, host CPU list), in vCPU order.
    pub vcpupin: Vec<(u32, String)>,
    pub emulatorpin: Option<String>,
}

/// `<memtune>`, in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemTune {
    pub hard_limit: Option<u64>,
    pub soft_limit: Option<u64>,
    pub swap_hard_limit: Option<u64>,
}

impl CpuTune {
    pub fn is_empty(&self) -> bool {
        *self == CpuTune::default()
    }

    /// The pinning of one vCPU, if any.
    pub fn vcpu(&self, vcpu: u32) -> Option<&str> {
        self.vcpupin
            .iter()
            .find(|(v, _)| *v == vcpu)
            .map(|(_, c)| c.as_str())
    }

    /// Pins `vcpu` to `cpuset` (None: unpinned).
    pub fn set_vcpu(&mut self, vcpu: u32, cpuset: Option<String>) {
        self.vcpupin.retain(|(v, _)| *v != vcpu);
        if let Some(c) = cpuset {
            self.vcpupin.push((vcpu, c));
            self.vcpupin.sort_by_key(|(v, _)| *v);
        }
    }
}

impl MemTune {
    pub fn is_empty(&self) -> bool {
        *self == MemTune::default()
    }
}

/// Parses a libvirt CPU list ("0-3,^2,5") into CPU numbers.
pub fn parse_cpuset(text: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("Failed to parse bitmap '{text}'");
    let mut on = std::collections::BTreeSet::new();
    let mut off = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (neg, part) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        let (a, b) = (a.map_err(|_| bad())?, b.map_err(|_| bad())?);
        if a > b || b >= 16384 {
            return Err(bad());
        }
        if neg {
            off.extend(a..=b);
        } else {
            on.extend(a..=b);
        }
    }
    for c in off {
        on.remove(&c);
    }
    Ok(on.into_iter().collect())
}

/// Formats CPU numbers as libvirt does ("0-2,5").
pub fn format_cpuset(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn text(n: Node, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name(name))
        .map(|c| c.text().unwrap_or("").trim().to_string())
}

fn number<T: std::str::FromStr>(n: Node, name: &str) -> Result<Option<T>, String> {
    match text(n, name) {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| format!("Cannot parse <{name}> value '{t}'")),
    }
}

/// `<cputune>` of the domain element.
pub fn parse_cputune(root: Node, vcpus: u32) -> Result<CpuTune, String> {
    let Some(ct) = root.children().find(|c| c.has_tag_name("cputune")) else {
        return Ok(CpuTune::default());
    };
    let mut t = CpuTune {
        shares: number(ct, "shares")?,
        global_period: number(ct, "global_period")?,
        global_quota: number(ct, "global_quota")?,
        ..CpuTune::default()
    };
    if let Some(p) = t.global_period {
        if !(1000..=1_000_000).contains(&p) {
            return Err(
                "Value of cputune 'global_period' must be in range [1000, 1000000]".to_string(),
            );
        }
    }
    for pin in ct.children().filter(|c| c.has_tag_name("vcpupin")) {
        let vcpu: u32 = pin
            .attribute("vcpu")
            .and_then(|v| v.parse().ok())
            .ok_or("vcpu id must be an unsigned integer")?;
        if vcpu >= vcpus {
            return Err("vcpuid must be less than maxvcpus".into());
        }
        let cpuset = pin
            .attribute("cpuset")
            .ok_or("missing cpuset for vcpupin")?;
        if parse_cpuset(cpuset)?.is_empty() {
            return Err("Invalid value of 'cpuset': empty".into());
        }
        if t.vcpu(vcpu).is_some() {
            return Err("duplicate vcpupin for same vcpu".into());
        }
        t.set_vcpu(vcpu, Some(cpuset.to_string()));
    }
    if let Some(e) = ct.children().find(|c| c.has_tag_name("emulatorpin")) {
        let cpuset = e
            .attribute("cpuset")
            .ok_or("missing cpuset for emulatorpin")?;
        parse_cpuset(cpuset)?;
        t.emulatorpin = Some(cpuset.to_string());
    }
    Ok(t)
}

fn unit_kib(n: Node, name: &str) -> Result<Option<u64>, String> {
    let Some(el) = n.children().find(|c| c.has_tag_name(name)) else {
        return Ok(None);
    };
    let v: u64 = el
        .text()
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| format!("Cannot parse <{name}> value"))?;
    let scale: u64 = match el.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => return Ok(Some(v / 1024)),
        "k" | "KiB" => 1,
        "KB" => return Ok(Some(v * 1000 / 1024)),
        "M" | "MiB" => 1024,
        "MB" => return Ok(Some(v * 1_000_000 / 1024)),
        "G" | "GiB" => 1024 * 1024,
        "GB" => return Ok(Some(v * 1_000_000_000 / 1024)),
        other => return Err(format!("unknown suffix '{other}'")),
    };
    Ok(Some(v.saturating_mul(scale)))
}

/// `<memtune>` of the domain element.
pub fn parse_memtune(root: Node) -> Result<MemTune, String> {
    let Some(mt) = root.children().find(|c| c.has_tag_name("memtune")) else {
        return Ok(MemTune::default());
    };
    let t = MemTune {
        hard_limit: unit_kib(mt, "hard_limit")?,
        soft_limit: unit_kib(mt, "soft_limit")?,
        swap_hard_limit: unit_kib(mt, "swap_hard_limit")?,
    };
    if let (Some(h), Some(s)) = (t.hard_limit, t.swap_hard_limit) {
        if h > s {
            return Err(
                "memory hard_limit tunable value must be lower than or equal to swap_hard_limit"
                    .into(),
            );
        }
    }
    Ok(t)
}

/// `<memtune>` as libvirt formats it (nothing when empty).
pub fn format_memtune(t: &MemTune, x: &mut String) {
    if t.is_empty() {
        return;
    }
    x.push_str("  <memtune>\n");
    for (name, v) in [
        ("hard_limit", t.hard_limit),
        ("soft_limit", t.soft_limit),
        ("swap_hard_limit", t.swap_hard_limit),
    ] {
        if let Some(v) = v {
            let _ = writeln!(x, "    <{name} unit='KiB'>{v}</{name}>");
        }
    }
    x.push_str("  </memtune>\n");
}

/// `<cputune>` as libvirt formats it (nothing when empty).
pub fn format_cputune(t: &CpuTune, x: &mut String) {
    if t.is_empty() {
        return;
    }
    x.push_str("  <cputune>\n");
    if let Some(s) = t.shares {
        let _ = writeln!(x, "    <shares>{s}</shares>");
    }
    if let Some(p) = t.global_period {
        let _ = writeln!(x, "    <global_period>{p}</global_period>");
    }
    if let Some(q) = t.global_quota {
        let _ = writeln!(x, "    <global_quota>{q}</global_quota>");
    }
    for (v, c) in &t.vcpupin {
        let _ = writeln!(x, "    <vcpupin vcpu='{v}' cpuset='{c}'/>");
    }
    if let Some(c) = &t.emulatorpin {
        let _ = writeln!(x, "    <emulatorpin cpuset='{c}'/>");
    }
    x.push_str("  </cputune>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets() {
        assert_eq!(parse_cpuset("0-3,^2,5").unwrap(), vec![0, 1, 3, 5]);
        assert_eq!(format_cpuset(&[0, 1, 3, 5, 6, 7]), "0-1,3,5-7");
        assert!(parse_cpuset("x").is_err());
        assert!(parse_cpuset("3-1").is_err());
    }

    #[test]
    fn tune_round_trips() {
        let xml = "<domain><memtune><hard_limit unit='MiB'>1</hard_limit></memtune>\
                   <cputune><shares>512</shares><vcpupin vcpu='1' cpuset='0-1'/>\
                   <emulatorpin cpuset='0'/></cputune></domain>";
        let doc = roxmltree::Document::parse(xml).unwrap();
        let ct = parse_cputune(doc.root_element(), 2).unwrap();
        assert_eq!(ct.shares, Some(512));
        assert_eq!(ct.vcpu(1), Some("0-1"));
        assert_eq!(ct.emulatorpin.as_deref(), Some("0"));
        let mt = parse_memtune(doc.root_element()).unwrap();
        assert_eq!(mt.hard_limit, Some(1024));
        let mut out = String::new();
        format_cputune(&ct, &mut out);
        assert!(out.contains("<vcpupin vcpu='1' cpuset='0-1'/>"), "{out}");
        assert!(parse_cputune(doc.root_element(), 1).is_err());
    }
}

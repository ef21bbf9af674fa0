//! The capabilities XML (`virConnectGetCapabilities`): the host and the
//! guests its emulators can run, in libvirt's layout.

use std::fmt::Write;

use crate::domain::{esc, esc_attr};

/// One `<machine>` line of a guest's arch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineEntry {
    pub name: String,
    /// For an alias (`pc`), the machine type it stands for.
    pub canonical: Option<String>,
    pub max_cpus: u32,
    pub deprecated: bool,
}

/// A logical CPU of the host topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCpu {
    pub id: u32,
    pub socket_id: u32,
    pub die_id: u32,
    pub core_id: u32,
    pub siblings: String,
}

#[derive(Clone, Debug, Default)]
pub struct HostCaps {
    pub uuid: String,
    pub arch: String,
    /// Named CPU model closest to the host, with its vendor and the
    /// features it adds to that model.
    pub cpu_model: Option<String>,
    pub cpu_vendor: Option<String>,
    pub cpu_features: Vec<String>,
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
    pub memory_kib: u64,
    pub cpus: Vec<HostCpu>,
    /// Page sizes (KiB) the host offers, the system page first, with the
    /// number of such pages of the cell.
    pub pages: Vec<(u32, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct GuestCaps {
    pub os_type: String,
    pub arch: String,
    pub wordsize: u32,
    pub emulator: String,
    pub machines: Vec<MachineEntry>,
    /// `qemu`, and `kvm` when KVM is usable.
    pub domain_types: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    pub host: HostCaps,
    pub guests: Vec<GuestCaps>,
}

impl Capabilities {
    pub fn to_xml(&self) -> String {
        let h = &self.host;
        let mut x = String::from("<capabilities>\n\n  <host>\n");
        let _ = writeln!(x, "    <uuid>{}</uuid>", esc(&h.uuid));
        x.push_str("    <cpu>\n");
        let _ = writeln!(x, "      <arch>{}</arch>", esc(&h.arch));
        if let Some(m) = &h.cpu_model {
            let _ = writeln!(x, "      <model>{}</model>", esc(m));
        }
        if let Some(v) = &h.cpu_vendor {
            let _ = writeln!(x, "      <vendor>{}</vendor>", esc(v));
        }
        let _ = writeln!(
            x,
            "      <topology sockets='{}' dies='{}' cores='{}' threads='{}'/>",
            h.sockets, h.dies, h.cores, h.threads
        );
        for f in &h.cpu_features {
            let _ = writeln!(x, "      <feature name='{}'/>", esc_attr(f));
        }
        for (size, _) in &h.pages {
            let _ = writeln!(x, "      <pages unit='KiB' size='{size}'/>");
        }
        x.push_str("    </cpu>\n");
        x.push_str("    <power_management/>\n    <iommu support='no'/>\n");
        x.push_str("    <migration_features>\n      <live/>\n      <uri_transports>\n");
        x.push_str("        <uri_transport>tcp</uri_transport>\n");
        x.push_str("        <uri_transport>rdma</uri_transport>\n");
        x.push_str("      </uri_transports>\n    </migration_features>\n");
        x.push_str("    <topology>\n      <cells num='1'>\n        <cell id='0'>\n");
        let _ = writeln!(x, "          <memory unit='KiB'>{}</memory>", h.memory_kib);
        for (size, count) in &h.pages {
            let _ = writeln!(
                x,
                "          <pages unit='KiB' size='{size}'>{count}</pages>"
            );
        }
        x.push_str("          <distances>\n            <sibling id='0' value='10'/>\n");
        x.push_str("          </distances>\n");
        let _ = writeln!(x, "          <cpus num='{}'>", h.cpus.len());
        for c in &h.cpus {
            let _ = writeln!(
                x,
                "            <cpu id='{}' socket_id='{}' die_id='{}' core_id='{}' siblings='{}'/>",
                c.id,
                c.socket_id,
                c.die_id,
                c.core_id,
                esc_attr(&c.siblings)
            );
        }
        x.push_str("          </cpus>\n        </cell>\n      </cells>\n    </topology>\n");
        x.push_str("    <secmodel>\n      <model>none</model>\n      <doi>0</doi>\n");
        x.push_str("    </secmodel>\n  </host>\n\n");
        for g in &self.guests {
            x.push_str("  <guest>\n");
            let _ = writeln!(x, "    <os_type>{}</os_type>", esc(&g.os_type));
            let _ = writeln!(x, "    <arch name='{}'>", esc_attr(&g.arch));
            let _ = writeln!(x, "      <wordsize>{}</wordsize>", g.wordsize);
            let _ = writeln!(x, "      <emulator>{}</emulator>", esc(&g.emulator));
            for m in &g.machines {
                x.push_str("      <machine");
                if let Some(c) = &m.canonical {
                    let _ = write!(x, " canonical='{}'", esc_attr(c));
                }
                let _ = write!(x, " maxCpus='{}'", m.max_cpus);
                if m.deprecated {
                    x.push_str(" deprecated='yes'");
                }
                let _ = writeln!(x, ">{}</machine>", esc(&m.name));
            }
            for t in &g.domain_types {
                let _ = writeln!(x, "      <domain type='{}'/>", esc_attr(t));
            }
            x.push_str("    </arch>\n    <features>\n");
            if g.arch == "i686" {
                x.push_str("      <pae/>\n      <nonpae/>\n");
            }
            x.push_str("      <acpi default='on' toggle='yes'/>\n");
            x.push_str("      <apic default='on' toggle='no'/>\n      <cpuselection/>\n");
            x.push_str("      <deviceboot/>\n      <disksnapshot default='on' toggle='no'/>\n");
            x.push_str("    </features>\n  </guest>\n\n");
        }
        x.push_str("</capabilities>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_with_aliases_parse_back() {
        let caps = Capabilities {
            host: HostCaps {
                uuid: "u".into(),
                arch: "x86_64".into(),
                sockets: 1,
                dies: 1,
                cores: 2,
                threads: 1,
                cpus: vec![HostCpu {
                    id: 0,
                    socket_id: 0,
                    die_id: 0,
                    core_id: 0,
                    siblings: "0".into(),
                }],
                ..Default::default()
            },
            guests: vec![GuestCaps {
                os_type: "hvm".into(),
                arch: "x86_64".into(),
                wordsize: 64,
                emulator: "/usr/bin/qemu-system-x86_64".into(),
                machines: vec![
                    MachineEntry {
                        name: "pc-i440fx-7.2".into(),
                        canonical: None,
                        max_cpus: 255,
                        deprecated: false,
                    },
                    MachineEntry {
                        name: "pc".into(),
                        canonical: Some("pc-i440fx-7.2".into()),
                        max_cpus: 255,
                        deprecated: false,
                    },
                ],
                domain_types: vec!["qemu".into()],
            }],
        };
        let xml = caps.to_xml();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let machines: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("machine"))
            .collect();
        assert_eq!(machines[0].text(), Some("pc-i440fx-7.2"));
        assert_eq!(machines[1].attribute("canonical"), Some("pc-i440fx-7.2"));
    }
}

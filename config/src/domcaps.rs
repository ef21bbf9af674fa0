//! The domain capabilities XML (`virConnectGetDomainCapabilities`): what a
//! guest of one emulator, arch, machine type and virt type can use, in
//! libvirt's layout.

use std::fmt::Write;

use crate::domain::{esc, esc_attr};

/// A CPU model of the `custom` mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuModelCap {
    pub name: String,
    pub usable: bool,
    /// `Intel`, `AMD`, `Hygon` or `unknown`.
    pub vendor: String,
    pub deprecated: bool,
}

/// The host-model CPU: a named model plus the features that make it the
/// host (or, under TCG, the emulator's `max` CPU).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostModelCap {
    pub model: String,
    pub vendor: Option<String>,
    pub require: Vec<String>,
    pub disable: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DomainCapabilities {
    pub path: String,
    pub domain: String,
    pub machine: String,
    pub arch: String,
    pub max_vcpus: u32,
    /// Firmware executables usable with this machine type, and the values
    /// of their `secure` attribute (`no`, `yes`).
    pub loaders: Vec<String>,
    pub loader_secure: Vec<String>,
    pub host_passthrough: bool,
    pub host_model: Option<HostModelCap>,
    pub cpu_models: Vec<CpuModelCap>,
    pub disk_devices: Vec<String>,
    pub disk_buses: Vec<String>,
    pub disk_models: Vec<String>,
    pub graphics: Vec<String>,
    pub video: Vec<String>,
    pub rng_models: Vec<String>,
    pub rng_backends: Vec<String>,
    pub tpm_models: Vec<String>,
    pub channels: Vec<String>,
    pub filesystem_drivers: Vec<String>,
}

fn enum_values(x: &mut String, indent: &str, name: &str, values: &[String]) {
    if values.is_empty() {
        let _ = writeln!(x, "{indent}<enum name='{name}'/>");
        return;
    }
    let _ = writeln!(x, "{indent}<enum name='{name}'>");
    for v in values {
        let _ = writeln!(x, "{indent}  <value>{}</value>", esc(v));
    }
    let _ = writeln!(x, "{indent}</enum>");
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A device element with its enums, or `supported='no'` without any.
fn device(x: &mut String, tag: &str, enums: &[(&str, &[String])]) {
    let supported = enums.first().map(|(_, v)| !v.is_empty()).unwrap_or(false);
    if !supported {
        let _ = writeln!(x, "    <{tag} supported='no'/>");
        return;
    }
    let _ = writeln!(x, "    <{tag} supported='yes'>");
    for (name, values) in enums {
        enum_values(x, "      ", name, values);
    }
    let _ = writeln!(x, "    </{tag}>");
}

impl DomainCapabilities {
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<domainCapabilities>\n");
        let _ = writeln!(x, "  <path>{}</path>", esc(&self.path));
        let _ = writeln!(x, "  <domain>{}</domain>", esc(&self.domain));
        let _ = writeln!(x, "  <machine>{}</machine>", esc(&self.machine));
        let _ = writeln!(x, "  <arch>{}</arch>", esc(&self.arch));
        let _ = writeln!(x, "  <vcpu max='{}'/>", self.max_vcpus);
        x.push_str("  <iothreads supported='yes'/>\n");
        x.push_str("  <os supported='yes'>\n");
        if self.loaders.is_empty() {
            x.push_str("    <enum name='firmware'/>\n");
            x.push_str("    <loader supported='no'/>\n");
        } else {
            enum_values(&mut x, "    ", "firmware", &strings(&["efi"]));
            x.push_str("    <loader supported='yes'>\n");
            for l in &self.loaders {
                let _ = writeln!(x, "      <value>{}</value>", esc(l));
            }
            enum_values(&mut x, "      ", "type", &strings(&["rom", "pflash"]));
            enum_values(&mut x, "      ", "readonly", &strings(&["yes", "no"]));
            enum_values(&mut x, "      ", "secure", &self.loader_secure);
            x.push_str("    </loader>\n");
        }
        x.push_str("  </os>\n  <cpu>\n");
        if self.host_passthrough {
            x.push_str("    <mode name='host-passthrough' supported='yes'>\n");
            enum_values(
                &mut x,
                "      ",
                "hostPassthroughMigratable",
                &strings(&["on", "off"]),
            );
            x.push_str("    </mode>\n");
        } else {
            x.push_str("    <mode name='host-passthrough' supported='no'/>\n");
        }
        x.push_str("    <mode name='maximum' supported='yes'>\n");
        enum_values(
            &mut x,
            "      ",
            "maximumMigratable",
            &strings(&["on", "off"]),
        );
        x.push_str("    </mode>\n");
        match &self.host_model {
            Some(h) => {
                x.push_str("    <mode name='host-model' supported='yes'>\n");
                let _ = writeln!(
                    x,
                    "      <model fallback='forbid'>{}</model>",
                    esc(&h.model)
                );
                if let Some(v) = &h.vendor {
                    let _ = writeln!(x, "      <vendor>{}</vendor>", esc(v));
                }
                for f in &h.require {
                    let _ = writeln!(
                        x,
                        "      <feature policy='require' name='{}'/>",
                        esc_attr(f)
                    );
                }
                for f in &h.disable {
                    let _ = writeln!(
                        x,
                        "      <feature policy='disable' name='{}'/>",
                        esc_attr(f)
                    );
                }
                x.push_str("    </mode>\n");
            }
            None => x.push_str("    <mode name='host-model' supported='no'/>\n"),
        }
        if self.cpu_models.is_empty() {
            x.push_str("    <mode name='custom' supported='no'/>\n");
        } else {
            x.push_str("    <mode name='custom' supported='yes'>\n");
            for m in &self.cpu_models {
                let _ = write!(
                    x,
                    "      <model usable='{}'",
                    if m.usable { "yes" } else { "no" }
                );
                if m.deprecated {
                    x.push_str(" deprecated='yes'");
                }
                let _ = writeln!(
                    x,
                    " vendor='{}'>{}</model>",
                    esc_attr(&m.vendor),
                    esc(&m.name)
                );
            }
            x.push_str("    </mode>\n");
        }
        x.push_str("  </cpu>\n");
        x.push_str("  <memoryBacking supported='yes'>\n");
        enum_values(
            &mut x,
            "    ",
            "sourceType",
            &strings(&["file", "anonymous", "memfd"]),
        );
        x.push_str("  </memoryBacking>\n  <devices>\n");
        device(
            &mut x,
            "disk",
            &[
                ("diskDevice", &self.disk_devices),
                ("bus", &self.disk_buses),
                ("model", &self.disk_models),
            ],
        );
        device(&mut x, "graphics", &[("type", &self.graphics)]);
        device(&mut x, "video", &[("modelType", &self.video)]);
        x.push_str("    <hostdev supported='no'/>\n");
        device(
            &mut x,
            "rng",
            &[
                ("model", &self.rng_models),
                ("backendModel", &self.rng_backends),
            ],
        );
        device(
            &mut x,
            "filesystem",
            &[("driverType", &self.filesystem_drivers)],
        );
        device(&mut x, "tpm", &[("model", &self.tpm_models)]);
        x.push_str("    <redirdev supported='no'/>\n");
        device(&mut x, "channel", &[("type", &self.channels)]);
        x.push_str("  </devices>\n  <features>\n");
        x.push_str("    <gic supported='no'/>\n    <vmcoreinfo supported='yes'/>\n");
        x.push_str("    <genid supported='yes'/>\n");
        x.push_str("    <backingStoreInput supported='yes'/>\n");
        x.push_str("    <backup supported='no'/>\n    <sev supported='no'/>\n");
        x.push_str("    <sgx supported='no'/>\n");
        x.push_str("  </features>\n</domainCapabilities>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_with_and_without_firmware() {
        let mut d = DomainCapabilities {
            path: "/usr/bin/qemu-system-x86_64".into(),
            domain: "qemu".into(),
            machine: "pc-i440fx-7.2".into(),
            arch: "x86_64".into(),
            max_vcpus: 255,
            host_model: Some(HostModelCap {
                model: "EPYC".into(),
                vendor: Some("AMD".into()),
                require: vec!["la57".into()],
                disable: vec!["vme".into()],
            }),
            cpu_models: vec![CpuModelCap {
                name: "qemu64".into(),
                usable: true,
                vendor: "unknown".into(),
                deprecated: false,
            }],
            disk_buses: vec!["virtio".into()],
            disk_devices: vec!["disk".into()],
            graphics: vec!["vnc".into()],
            ..Default::default()
        };
        for loaders in [vec![], vec!["/usr/share/OVMF/OVMF_CODE_4M.fd".to_string()]] {
            d.loaders = loaders;
            d.loader_secure = vec!["no".into()];
            let xml = d.to_xml();
            let doc = roxmltree::Document::parse(&xml).expect("well-formed");
            let disk = doc
                .descendants()
                .find(|n| n.has_tag_name("disk"))
                .expect("disk");
            assert_eq!(disk.attribute("supported"), Some("yes"));
            let video = doc
                .descendants()
                .find(|n| n.has_tag_name("video"))
                .expect("video");
            assert_eq!(video.attribute("supported"), Some("no"));
        }
    }
}

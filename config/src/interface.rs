//! The libvirt host interface XML model (`docs/formatnode.rst`'s sibling,
//! `formatinterface`), as libvirt's udev backend reports interfaces it reads
//! from the kernel: formatted only, since defining interfaces needs netcf.

use std::fmt::Write as _;

use crate::domain::esc;

/// The link as `virNetDevGetLinkInfo` reads it from sysfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// `operstate` (`up`, `down`, `unknown`, ...); None when unreadable.
    pub state: Option<String>,
    /// Mb/s; only reported while the link is up.
    pub speed: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfaceKind {
    Ethernet,
    /// Bridge with `stp` (-1, 0, 1), forward delay and its member ports.
    Bridge {
        stp: i32,
        delay: String,
        members: Vec<IfaceDef>,
    },
    Vlan {
        tag: String,
        device: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceDef {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: u32,
    pub link: Link,
    pub kind: IfaceKind,
}

impl IfaceDef {
    fn type_name(&self) -> &'static str {
        match self.kind {
            IfaceKind::Ethernet => "ethernet",
            IfaceKind::Bridge { .. } => "bridge",
            IfaceKind::Vlan { .. } => "vlan",
        }
    }

    /// libvirt's `virInterfaceDefFormat`.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.format(&mut out, 0, true);
        out
    }

    fn format(&self, out: &mut String, indent: usize, top: bool) {
        let pad = " ".repeat(indent);
        let _ = writeln!(
            out,
            "{pad}<interface type='{}' name='{}'>",
            self.type_name(),
            esc(&self.name)
        );
        if top && self.mtu != 0 {
            let _ = writeln!(out, "{pad}  <mtu size='{}'/>", self.mtu);
        }
        if !matches!(self.kind, IfaceKind::Bridge { .. }) {
            format_link(out, &pad, &self.link);
        }
        match &self.kind {
            IfaceKind::Ethernet => {
                if let Some(mac) = &self.mac {
                    let _ = writeln!(out, "{pad}  <mac address='{}'/>", esc(mac));
                }
            }
            IfaceKind::Bridge {
                stp,
                delay,
                members,
            } => {
                out.push_str(&pad);
                out.push_str("  <bridge");
                match stp {
                    1 => out.push_str(" stp='on'"),
                    0 => out.push_str(" stp='off'"),
                    _ => {}
                }
                let _ = writeln!(out, " delay='{}'>", esc(delay));
                for m in members {
                    m.format(out, indent + 4, false);
                }
                let _ = writeln!(out, "{pad}  </bridge>");
            }
            IfaceKind::Vlan { tag, device } => {
                let _ = writeln!(out, "{pad}  <vlan tag='{}'>", esc(tag));
                let _ = writeln!(out, "{pad}    <interface name='{}'/>", esc(device));
                let _ = writeln!(out, "{pad}  </vlan>");
            }
        }
        let _ = writeln!(out, "{pad}</interface>");
    }
}

/// `virInterfaceLinkFormat`, shared with node devices.
pub fn format_link(out: &mut String, pad: &str, link: &Link) {
    if link.state.is_none() && link.speed.is_none() {
        return;
    }
    out.push_str(pad);
    out.push_str("  <link");
    if let Some(s) = link.speed {
        let _ = write!(out, " speed='{s}'");
    }
    if let Some(st) = &link.state {
        let _ = write!(out, " state='{}'", esc(st));
    }
    out.push_str("/>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_as_libvirt_shows_it() {
        let d = IfaceDef {
            name: "eth0".into(),
            mac: Some("02:fc:00:00:00:01".into()),
            mtu: 1400,
            link: Link {
                state: Some("up".into()),
                speed: Some(4294967295),
            },
            kind: IfaceKind::Ethernet,
        };
        assert_eq!(
            d.to_xml(),
            "<interface type='ethernet' name='eth0'>\n  <mtu size='1400'/>\n  \
             <link speed='4294967295' state='up'/>\n  <mac address='02:fc:00:00:00:01'/>\n</interface>\n"
        );
    }
}

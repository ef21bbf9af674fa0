//! The libvirt storage pool and volume XML models (`formatstorage`): parsed
//! and validated from a client's XML, formatted back the way
//! `virsh pool-dumpxml` and `virsh vol-dumpxml` show them. Live values
//! (capacity, allocation, permissions, timestamps, backing chain) are given
//! to the formatters by the driver, which reads them from disk.

use std::fmt::Write as _;

type Node<'a> = roxmltree::Node<'a, 'a>;
use uuid::Uuid;

use crate::domain::{esc, esc_attr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageXmlError {
    /// Not well-formed or not a valid definition (VIR_ERR_XML_ERROR).
    #[error("{0}")]
    Xml(String),
    /// Valid libvirt XML qemud cannot honour (VIR_ERR_CONFIG_UNSUPPORTED).
    #[error("{0}")]
    Unsupported(String),
    /// A value out of range (VIR_ERR_INVALID_ARG).
    #[error("{0}")]
    InvalidArg(String),
}

type Result<T> = std::result::Result<T, StorageXmlError>;

fn xml_err(msg: impl Into<String>) -> StorageXmlError {
    StorageXmlError::Xml(msg.into())
}

fn unsupported(msg: impl Into<String>) -> StorageXmlError {
    StorageXmlError::Unsupported(msg.into())
}

fn child<'a>(n: Node<'a>, name: &str) -> Option<Node<'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(n: Option<Node>) -> Option<String> {
    n.map(|n| {
        n.descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect::<String>()
            .trim()
            .to_owned()
    })
}

/// The pool kinds qemud runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolType {
    Dir,
    Fs,
    Netfs,
    Logical,
}

impl PoolType {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Dir => "dir",
            PoolType::Fs => "fs",
            PoolType::Netfs => "netfs",
            PoolType::Logical => "logical",
        }
    }

    /// libvirt's `virStoragePoolType` string, for any type libvirt knows.
    fn parse(s: &str) -> Result<PoolType> {
        Ok(match s {
            "dir" => PoolType::Dir,
            "fs" => PoolType::Fs,
            "netfs" => PoolType::Netfs,
            "logical" => PoolType::Logical,
            "disk" | "iscsi" | "iscsi-direct" | "scsi" | "mpath" | "rbd" | "sheepdog"
            | "gluster" | "zfs" | "vstorage" => {
                return Err(unsupported(format!(
                    "storage pool type '{s}' is not supported"
                )))
            }
            other => {
                return Err(xml_err(format!(
                    "Invalid value for attribute 'type' in element 'pool': '{other}'."
                )))
            }
        })
    }
}

/// `<permissions>` of a pool target or volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Perms {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub label: Option<String>,
}

impl Perms {
    fn parse(node: Option<Node>) -> Result<Perms> {
        let Some(node) = node else {
            return Ok(Perms::default());
        };
        let mut p = Perms::default();
        if let Some(mode) = text_of(child(node, "mode")).filter(|m| !m.is_empty()) {
            p.mode = Some(
                u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| xml_err("malformed octal mode"))?,
            );
        }
        if let Some(owner) = text_of(child(node, "owner")).filter(|m| !m.is_empty()) {
            p.owner = parse_id(&owner).ok_or_else(|| xml_err("malformed owner element"))?;
        }
        if let Some(group) = text_of(child(node, "group")).filter(|m| !m.is_empty()) {
            p.group = parse_id(&group).ok_or_else(|| xml_err("malformed group element"))?;
        }
        p.label = text_of(child(node, "label")).filter(|l| !l.is_empty());
        Ok(p)
    }

    /// The `<permissions>` block at the given indentation.
    pub fn format(&self, x: &mut String, indent: &str) {
        let _ = writeln!(x, "{indent}<permissions>");
        if let Some(m) = self.mode {
            let _ = writeln!(x, "{indent}  <mode>0{m:o}</mode>");
        }
        let _ = writeln!(
            x,
            "{indent}  <owner>{}</owner>",
            self.owner.map(i64::from).unwrap_or(-1)
        );
        let _ = writeln!(
            x,
            "{indent}  <group>{}</group>",
            self.group.map(i64::from).unwrap_or(-1)
        );
        if let Some(l) = &self.label {
            let _ = writeln!(x, "{indent}  <label>{}</label>", esc(l));
        }
        let _ = writeln!(x, "{indent}</permissions>");
    }
}

/// An owner or group: a number, or -1 for "unset" (the outer None: malformed).
fn parse_id(s: &str) -> Option<Option<u32>> {
    if s == "-1" {
        return Some(None);
    }
    s.parse().ok().map(Some)
}

/// `<source>` of a pool: what fs, netfs and logical pools are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSource {
    pub devices: Vec<String>,
    pub host: Option<String>,
    pub dir: Option<String>,
    pub name: Option<String>,
    pub format: Option<String>,
}

/// A storage pool definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub pool_type: PoolType,
    pub name: String,
    pub uuid: Uuid,
    pub source: PoolSource,
    /// The directory (dir, fs, netfs) or `/dev/VG` (logical) volumes live in.
    pub target_path: String,
    pub perms: Perms,
}

/// Live figures of an active pool for its XML and `virStoragePoolGetInfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolSizes {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

/// `virFileSanitizePath`: collapses repeated slashes and drops a trailing one.
pub fn sanitize_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut prev_slash = false;
    for c in p.chars() {
        if c == '/' {
            if prev_slash {
                continue;
            }
            prev_slash = true;
        } else {
            prev_slash = false;
        }
        out.push(c);
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

impl PoolDef {
    pub fn parse(xml: &str) -> Result<PoolDef> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| xml_err(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "pool" {
            return Err(xml_err(format!(
                "unexpected root element <{}>, expecting <pool>",
                root.tag_name().name()
            )));
        }
        let type_attr = root
            .attribute("type")
            .ok_or_else(|| xml_err("Missing required attribute 'type' in element 'pool'"))?;
        let pool_type = PoolType::parse(type_attr)?;
        let mut source = PoolSource::default();
        if let Some(src) = child(root, "source") {
            for dev in src
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "device")
            {
                let path = dev
                    .attribute("path")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| xml_err("missing storage pool source device path"))?;
                source.devices.push(path.to_owned());
            }
            if let Some(h) = child(src, "host") {
                source.host = Some(
                    h.attribute("name")
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| xml_err("missing storage pool host name"))?
                        .to_owned(),
                );
            }
            source.dir = child(src, "dir")
                .and_then(|d| d.attribute("path"))
                .map(str::to_owned);
            source.name = text_of(child(src, "name")).filter(|n| !n.is_empty());
            source.format = child(src, "format")
                .and_then(|f| f.attribute("type"))
                .map(str::to_owned);
        }
        if let Some(fmt) = &source.format {
            let known: &[&str] = match pool_type {
                PoolType::Dir => &[],
                PoolType::Fs => FS_FORMATS,
                PoolType::Netfs => NETFS_FORMATS,
                PoolType::Logical => &["auto", "lvm2"],
            };
            if !known.is_empty() && !known.contains(&fmt.as_str()) {
                return Err(xml_err(format!("unknown pool format type {fmt}")));
            }
        } else {
            source.format = match pool_type {
                PoolType::Dir => None,
                PoolType::Fs | PoolType::Netfs => Some("auto".into()),
                PoolType::Logical => Some("auto".into()),
            };
        }
        let mut name = text_of(child(root, "name")).filter(|n| !n.is_empty());
        if name.is_none() && pool_type == PoolType::Logical {
            name = source.name.clone();
        }
        let name = name.ok_or_else(|| xml_err("missing pool source name element"))?;
        if name.contains('/') {
            return Err(xml_err(format!("name {name} cannot contain '/'")));
        }
        // The name also names the pool's files under the state directory.
        if name == "." || name == ".." {
            return Err(xml_err(format!("name {name} is not a valid pool name")));
        }
        let uuid = match text_of(child(root, "uuid")) {
            None => Uuid::new_v4(),
            Some(u) => Uuid::parse_str(&u).map_err(|_| xml_err("malformed uuid element"))?,
        };
        match pool_type {
            PoolType::Netfs => {
                if source.host.is_none() {
                    return Err(xml_err("missing storage pool source host name"));
                }
                if source.dir.is_none() {
                    return Err(xml_err("missing storage pool source path"));
                }
            }
            PoolType::Fs if source.devices.is_empty() => {
                return Err(xml_err("missing storage pool source device name"));
            }
            PoolType::Logical if source.name.is_none() => {
                source.name = Some(name.clone());
            }
            _ => {}
        }
        let target = child(root, "target");
        let target_path = if pool_type == PoolType::Logical {
            format!("/dev/{}", source.name.as_deref().unwrap_or(&name))
        } else {
            text_of(target.and_then(|t| child(t, "path")))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| xml_err("missing storage pool target path"))?
        };
        let target_path = sanitize_path(&target_path);
        if !target_path.starts_with('/') {
            return Err(xml_err(format!(
                "target path '{target_path}' must be absolute"
            )));
        }
        let perms = Perms::parse(target.and_then(|t| child(t, "permissions")))?;
        Ok(PoolDef {
            pool_type,
            name,
            uuid,
            source,
            target_path,
            perms,
        })
    }

    /// The pool's XML. `sizes` are zero for an inactive pool, as libvirt
    /// shows them; `perms` are the target directory's actual permissions
    /// when it exists.
    pub fn format(&self, sizes: PoolSizes, perms: Option<&Perms>) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<pool type='{}'>", self.pool_type.as_str());
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", self.uuid);
        let _ = writeln!(x, "  <capacity unit='bytes'>{}</capacity>", sizes.capacity);
        let _ = writeln!(
            x,
            "  <allocation unit='bytes'>{}</allocation>",
            sizes.allocation
        );
        let _ = writeln!(
            x,
            "  <available unit='bytes'>{}</available>",
            sizes.available
        );
        x.push_str("  <source>\n");
        let s = &self.source;
        if let Some(h) = &s.host {
            let _ = writeln!(x, "    <host name='{}'/>", esc_attr(h));
        }
        for d in &s.devices {
            let _ = writeln!(x, "    <device path='{}'/>", esc_attr(d));
        }
        if let Some(d) = &s.dir {
            let _ = writeln!(x, "    <dir path='{}'/>", esc_attr(d));
        }
        if let Some(n) = &s.name {
            let _ = writeln!(x, "    <name>{}</name>", esc(n));
        }
        if let Some(f) = &s.format {
            let _ = writeln!(x, "    <format type='{}'/>", esc_attr(f));
        }
        x.push_str("  </source>\n");
        x.push_str("  <target>\n");
        let _ = writeln!(x, "    <path>{}</path>", esc(&self.target_path));
        let shown = perms.unwrap_or(&self.perms);
        if self.pool_type != PoolType::Logical || perms.is_some() {
            shown.format(&mut x, "    ");
        }
        x.push_str("  </target>\n");
        x.push_str("</pool>\n");
        x
    }
}

/// Volume formats of file-based pools that qemud creates and recognises.
pub const FILE_FORMATS: &[&str] = &[
    "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop", "cow",
    "qcow", "qcow2", "qed", "vmdk",
];

/// A volume's definition as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolDef {
    pub name: String,
    pub capacity: Option<u64>,
    /// None when the XML gave none: libvirt then allocates the capacity.
    pub allocation: Option<u64>,
    pub format: Option<String>,
    pub perms: Perms,
    pub compat: Option<String>,
    pub cluster_size: Option<u64>,
    pub lazy_refcounts: bool,
    /// A `<features>` element was given (possibly empty).
    pub has_features: bool,
    pub backing_path: Option<String>,
    pub backing_format: Option<String>,
}

/// libvirt's scaled integers (`virScaleInteger`): bytes with an optional unit.
pub fn scale(value: &str, unit: Option<&str>) -> Option<u64> {
    let n: u64 = value.trim().parse().ok()?;
    let unit = unit.unwrap_or("bytes");
    let mult: u64 = match unit {
        "" | "b" | "byte" | "bytes" | "B" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "e" | "E" | "EiB" => 1 << 60,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl VolDef {
    /// Parses a volume definition. `need_capacity` is false for volumes
    /// cloned from another (the source gives it).
    pub fn parse(xml: &str, need_capacity: bool) -> Result<VolDef> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| xml_err(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "volume" {
            return Err(xml_err(format!(
                "unexpected root element <{}>, expecting <volume>",
                root.tag_name().name()
            )));
        }
        let name = text_of(child(root, "name"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| xml_err("missing volume name element"))?;
        if let Some(t) = root.attribute("type") {
            if !["file", "block", "dir", "network", "netdir", "ploop"].contains(&t) {
                return Err(unsupported(format!("unknown volume type '{t}'")));
            }
        }
        let sized = |el: &str| -> Result<Option<u64>> {
            match child(root, el) {
                None => Ok(None),
                Some(n) => {
                    let text = text_of(Some(n)).unwrap_or_default();
                    scale(&text, n.attribute("unit"))
                        .map(Some)
                        .ok_or_else(|| xml_err(format!("malformed {el} element")))
                }
            }
        };
        let backing = child(root, "backingStore");
        let backing_path =
            text_of(backing.and_then(|b| child(b, "path"))).filter(|p| !p.is_empty());
        let backing_format = backing
            .and_then(|b| child(b, "format"))
            .and_then(|f| f.attribute("type"))
            .map(str::to_owned);
        if let Some(f) = &backing_format {
            if !FILE_FORMATS.contains(&f.as_str()) {
                return Err(unsupported(format!("unknown volume format type {f}")));
            }
        }
        let capacity = sized("capacity")?;
        if capacity.is_none() && need_capacity && backing_path.is_none() {
            return Err(xml_err("missing capacity element"));
        }
        let allocation = sized("allocation")?;
        let target = child(root, "target");
        let format = target
            .and_then(|t| child(t, "format"))
            .and_then(|f| f.attribute("type"))
            .map(str::to_owned);
        if let Some(f) = &format {
            if !FILE_FORMATS.contains(&f.as_str()) {
                return Err(unsupported(format!("unknown volume format type {f}")));
            }
        }
        let perms = Perms::parse(target.and_then(|t| child(t, "permissions")))?;
        if target.and_then(|t| child(t, "encryption")).is_some() {
            return Err(unsupported("volume encryption is not supported"));
        }
        let mut compat = text_of(target.and_then(|t| child(t, "compat"))).filter(|c| !c.is_empty());
        if let Some(c) = &compat {
            let ok = c.split('.').count() == 2
                && c.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|d| d.is_ascii_digit()));
            if !ok {
                return Err(xml_err("forbidden characters in 'compat' attribute"));
            }
        }
        let cluster_size = match target.and_then(|t| child(t, "clusterSize")) {
            None => None,
            Some(n) => Some(
                scale(&text_of(Some(n)).unwrap_or_default(), n.attribute("unit"))
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| xml_err("malformed clusterSize element"))?,
            ),
        };
        let mut lazy_refcounts = false;
        let features_el = target.and_then(|t| child(t, "features"));
        if let Some(features) = features_el {
            if compat.is_none() {
                compat = Some("1.1".into());
            }
            for f in features.children().filter(|c| c.is_element()) {
                match f.tag_name().name() {
                    "lazy_refcounts" => lazy_refcounts = true,
                    "extended_l2" => {
                        return Err(unsupported("unsupported feature extended_l2"));
                    }
                    other => return Err(unsupported(format!("unsupported feature {other}"))),
                }
            }
        }
        Ok(VolDef {
            name,
            capacity,
            allocation,
            format,
            perms,
            compat,
            cluster_size,
            lazy_refcounts,
            has_features: features_el.is_some(),
            backing_path,
            backing_format,
        })
    }
}

/// A file's times as libvirt prints them: seconds.nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// What a volume is on disk, read by the driver, for its XML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolFacts {
    pub name: String,
    pub path: String,
    /// "file" or "dir" or "block".
    pub vol_type: String,
    pub format: String,
    pub capacity: u64,
    pub allocation: u64,
    pub physical: u64,
    pub perms: Perms,
    pub times: Timestamps,
    pub compat: Option<String>,
    /// qcow2 cluster size, known once a pool refresh read the header.
    pub cluster_size: Option<u64>,
    /// `<features>`: None for no element, empty for `<features/>`.
    pub features: Option<Vec<String>>,
    pub backing: Option<Box<VolFacts>>,
}

fn format_time(x: &mut String, tag: &str, (s, ns): (i64, i64)) {
    if ns == 0 {
        let _ = writeln!(x, "      <{tag}>{s}</{tag}>");
    } else {
        let _ = writeln!(x, "      <{tag}>{s}.{ns:09}</{tag}>");
    }
}

impl VolFacts {
    fn format_target_body(&self, x: &mut String, in_target: bool) {
        let _ = writeln!(x, "    <path>{}</path>", esc(&self.path));
        let _ = writeln!(x, "    <format type='{}'/>", esc_attr(&self.format));
        self.perms.format(x, "    ");
        x.push_str("    <timestamps>\n");
        format_time(x, "atime", self.times.atime);
        format_time(x, "mtime", self.times.mtime);
        format_time(x, "ctime", self.times.ctime);
        x.push_str("      <btime>0</btime>\n");
        x.push_str("    </timestamps>\n");
        if in_target {
            if let Some(c) = &self.compat {
                let _ = writeln!(x, "    <compat>{}</compat>", esc(c));
            }
            if let Some(c) = self.cluster_size {
                let _ = writeln!(x, "    <clusterSize unit='B'>{c}</clusterSize>");
            }
            match self.features.as_deref() {
                None => {}
                Some([]) => x.push_str("    <features/>\n"),
                Some(list) => {
                    x.push_str("    <features>\n");
                    for f in list {
                        let _ = writeln!(x, "      <{f}/>");
                    }
                    x.push_str("    </features>\n");
                }
            }
        }
    }

    /// The volume's XML as `virsh vol-dumpxml` shows it.
    pub fn format(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<volume type='{}'>", esc_attr(&self.vol_type));
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <key>{}</key>", esc(&self.path));
        let _ = writeln!(x, "  <capacity unit='bytes'>{}</capacity>", self.capacity);
        let _ = writeln!(
            x,
            "  <allocation unit='bytes'>{}</allocation>",
            self.allocation
        );
        let _ = writeln!(x, "  <physical unit='bytes'>{}</physical>", self.physical);
        x.push_str("  <target>\n");
        self.format_target_body(&mut x, true);
        x.push_str("  </target>\n");
        if let Some(b) = &self.backing {
            x.push_str("  <backingStore>\n");
            b.format_target_body(&mut x, false);
            x.push_str("  </backingStore>\n");
        }
        x.push_str("</volume>\n");
        x
    }
}

/// Source formats of fs pools, in libvirt's order.
const FS_FORMATS: &[&str] = &[
    "auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat", "hfs+", "xfs",
    "ocfs2", "vmfs",
];
/// Source formats of netfs pools.
const NETFS_FORMATS: &[&str] = &["auto", "nfs", "glusterfs", "cifs"];

/// `virConnectGetStoragePoolCapabilities`: the pool types qemud runs, with
/// their formats, and the other libvirt types marked unsupported.
pub fn pool_capabilities_xml() -> String {
    fn options(x: &mut String, kind: &str, enum_name: &str, default: &str, values: &[&str]) {
        let _ = writeln!(x, "    <{kind}>");
        let _ = writeln!(x, "      <defaultFormat type='{default}'/>");
        let _ = writeln!(x, "      <enum name='{enum_name}'>");
        for v in values {
            let _ = writeln!(x, "        <value>{}</value>", esc(v));
        }
        x.push_str("      </enum>\n");
        let _ = writeln!(x, "    </{kind}>");
    }
    let mut vol_formats = vec!["none"];
    vol_formats.extend_from_slice(FILE_FORMATS);
    let mut x = String::from("<storagepoolCapabilities>\n");
    for (ty, pool_formats) in [
        ("dir", None),
        ("fs", Some(FS_FORMATS)),
        ("netfs", Some(NETFS_FORMATS)),
    ] {
        let _ = writeln!(x, "  <pool type='{ty}' supported='yes'>");
        if let Some(f) = pool_formats {
            options(&mut x, "poolOptions", "sourceFormatType", "auto", f);
        }
        options(
            &mut x,
            "volOptions",
            "targetFormatType",
            "raw",
            &vol_formats,
        );
        x.push_str("  </pool>\n");
    }
    for ty in [
        "logical",
        "disk",
        "iscsi",
        "iscsi-direct",
        "scsi",
        "mpath",
        "rbd",
        "sheepdog",
        "gluster",
        "zfs",
        "vstorage",
    ] {
        let _ = writeln!(x, "  <pool type='{ty}' supported='no'>\n  </pool>");
    }
    x.push_str("</storagepoolCapabilities>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_pool_round_trip() {
        let def = PoolDef::parse(
            "<pool type='dir'><name>p1</name><uuid>5794222f-1866-4aae-8afa-53f7c7417ad2</uuid>\
             <target><path>/tmp//x/</path></target></pool>",
        )
        .unwrap();
        assert_eq!(def.target_path, "/tmp/x");
        let perms = Perms {
            mode: Some(0o711),
            owner: Some(0),
            group: Some(0),
            label: None,
        };
        let xml = def.format(
            PoolSizes {
                capacity: 3,
                allocation: 2,
                available: 1,
            },
            Some(&perms),
        );
        assert_eq!(
            xml,
            "<pool type='dir'>\n  <name>p1</name>\n  <uuid>5794222f-1866-4aae-8afa-53f7c7417ad2</uuid>\n  \
             <capacity unit='bytes'>3</capacity>\n  <allocation unit='bytes'>2</allocation>\n  \
             <available unit='bytes'>1</available>\n  <source>\n  </source>\n  <target>\n    \
             <path>/tmp/x</path>\n    <permissions>\n      <mode>0711</mode>\n      <owner>0</owner>\n      \
             <group>0</group>\n    </permissions>\n  </target>\n</pool>\n"
        );
        assert_eq!(PoolDef::parse(&xml).unwrap().name, "p1");
    }

    #[test]
    fn pool_errors() {
        let e = PoolDef::parse("<pool type='dir'><target><path>/x</path></target></pool>");
        assert_eq!(
            e.unwrap_err().to_string(),
            "missing pool source name element"
        );
        let e = PoolDef::parse(
            "<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>",
        );
        assert_eq!(e.unwrap_err().to_string(), "name a/b cannot contain '/'");
        let e = PoolDef::parse("<pool type='dir'><name>a</name></pool>");
        assert_eq!(
            e.unwrap_err().to_string(),
            "missing storage pool target path"
        );
        let e = PoolDef::parse(
            "<pool type='netfs'><name>a</name><target><path>/x</path></target></pool>",
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "missing storage pool source host name"
        );
        let l = PoolDef::parse("<pool type='logical'><name>vg0</name></pool>").unwrap();
        assert_eq!(l.target_path, "/dev/vg0");
    }

    #[test]
    fn volume_parse() {
        let v = VolDef::parse(
            "<volume><name>v.qcow2</name><capacity unit='G'>1</capacity>\
             <target><format type='qcow2'/><features><lazy_refcounts/></features></target>\
             <backingStore><path>/b</path><format type='raw'/></backingStore></volume>",
            true,
        )
        .unwrap();
        assert_eq!(v.capacity, Some(1 << 30));
        assert_eq!(v.allocation, None);
        assert_eq!(v.compat.as_deref(), Some("1.1"));
        assert!(v.lazy_refcounts);
        assert_eq!(v.backing_path.as_deref(), Some("/b"));
        let e = VolDef::parse("<volume><name>v</name></volume>", true).unwrap_err();
        assert_eq!(e.to_string(), "missing capacity element");
        let e = VolDef::parse("<volume><capacity>1</capacity></volume>", true).unwrap_err();
        assert_eq!(e.to_string(), "missing volume name element");
        let e = VolDef::parse(
            "<volume><name>v</name><capacity unit='zz'>1</capacity></volume>",
            true,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "malformed capacity element");
    }

    #[test]
    fn volume_format() {
        let f = VolFacts {
            name: "r.img".into(),
            path: "/p/r.img".into(),
            vol_type: "file".into(),
            format: "raw".into(),
            capacity: 10,
            allocation: 10,
            physical: 10,
            perms: Perms {
                mode: Some(0o600),
                owner: Some(0),
                group: Some(0),
                label: None,
            },
            times: Timestamps {
                atime: (1, 5),
                mtime: (2, 0),
                ctime: (3, 1),
            },
            ..Default::default()
        };
        let x = f.format();
        assert!(x.contains("<atime>1.000000005</atime>"), "{x}");
        assert!(x.contains("<mtime>2</mtime>"), "{x}");
        assert!(x.contains("      <mode>0600</mode>\n"), "{x}");
    }
}

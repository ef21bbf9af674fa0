//! The libvirt network XML model (`virsh net-dumpxml`): forward mode, bridge,
//! MAC, MTU, domain name, DNS and IPv4/IPv6 addresses with DHCP. Parsed and
//! validated from a client's XML and formatted back in libvirt's element
//! order. Elements qemud cannot honour (portgroups, virtualport, hostdev
//! forwarding, ...) are refused rather than dropped.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use uuid::Uuid;

use crate::domain::{esc, esc_attr, generate_mac, parse_uuid, validate_name, DomainXmlError};

type Result<T> = std::result::Result<T, DomainXmlError>;

fn invalid(msg: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> DomainXmlError {
    DomainXmlError::Unsupported(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    Nat,
    Route,
    Open,
    /// An existing host bridge the network only names.
    Bridge,
}

impl ForwardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Route => "route",
            Self::Open => "open",
            Self::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub mode: ForwardMode,
    /// `<forward dev=...>`: the host interface traffic leaves through.
    pub dev: Option<String>,
    /// `<nat><port start end/></nat>`.
    pub nat_ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ip: Option<IpAddr>,
}

impl DhcpHost {
    fn format(&self) -> String {
        let mut s = String::from("<host");
        if let Some(m) = &self.mac {
            let _ = write!(s, " mac='{m}'");
        }
        if let Some(n) = &self.name {
            let _ = write!(s, " name='{}'", esc_attr(n));
        }
        if let Some(ip) = &self.ip {
            let _ = write!(s, " ip='{ip}'");
        }
        s.push_str("/>");
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpDef {
    pub address: IpAddr,
    pub prefix: u8,
    /// Whether the client wrote `netmask=` (formatted back the same way).
    pub netmask_given: bool,
    pub ranges: Vec<(IpAddr, IpAddr)>,
    pub hosts: Vec<DhcpHost>,
}

impl IpDef {
    pub fn is_v4(&self) -> bool {
        self.address.is_ipv4()
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        mask(self.address, self.prefix)
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.is_v4() && mask(a, self.prefix) == self.network()
    }

    /// `address/prefix` as `ip addr add` takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    /// `network/prefix`, as a firewall rule matches it.
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }

    pub fn has_dhcp(&self) -> bool {
        !self.ranges.is_empty() || !self.hosts.is_empty()
    }
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v) & m))
        }
    }
}

fn netmask_string(prefix: u8) -> String {
    mask(IpAddr::V4(Ipv4Addr::BROADCAST), prefix).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    pub ip: IpAddr,
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// `enable='no'` turns dnsmasq's DNS off.
    pub enable: Option<bool>,
    /// `<forwarder addr=... domain=.../>`.
    pub forwarders: Vec<(Option<IpAddr>, Option<String>)>,
    pub hosts: Vec<DnsHost>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.enable.is_none() && self.forwarders.is_empty() && self.hosts.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    pub name: String,
    pub uuid: Uuid,
    /// None: an isolated network (no `<forward>`).
    pub forward: Option<Forward>,
    pub bridge: Option<String>,
    pub stp: bool,
    pub delay: u32,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub domain: Option<String>,
    pub domain_local_only: Option<bool>,
    pub dns: Dns,
    pub ips: Vec<IpDef>,
}

/// `virNetworkUpdateSection` values qemud edits.
pub const SECTION_IP_DHCP_HOST: u32 = 4;
pub const SECTION_DNS_HOST: u32 = 10;
/// `virNetworkUpdateCommand`.
pub const UPDATE_MODIFY: u32 = 1;
pub const UPDATE_DELETE: u32 = 2;
pub const UPDATE_ADD_LAST: u32 = 3;
pub const UPDATE_ADD_FIRST: u32 = 4;

type Node<'a> = roxmltree::Node<'a, 'a>;

fn child<'a>(n: Node<'a>, name: &str) -> Option<Node<'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a>(n: Node<'a>, name: &'a str) -> impl Iterator<Item = Node<'a>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn parse_mac(m: &str, what: &str) -> Result<String> {
    let bytes: Option<Vec<u8>> = m
        .split(':')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect();
    let bytes = bytes
        .filter(|b| b.len() == 6)
        .ok_or_else(|| invalid(format!("Cannot parse MAC address '{m}' in {what}")))?;
    if bytes.first().is_some_and(|b| b & 1 == 1) {
        return Err(invalid(format!(
            "expected unicast mac address, found multicast '{m}' in {what}"
        )));
    }
    Ok(m.to_ascii_lowercase())
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr> {
    text.trim()
        .parse()
        .map_err(|_| invalid(format!("Invalid {what} '{text}'")))
}

/// One `<host>` of `<dhcp>`, also what `net-update ... ip-dhcp-host` sends.
pub fn parse_dhcp_host(xml: &str, network: &str) -> Result<DhcpHost> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "host" {
        return Err(invalid(format!(
            "unexpected element <{}>, expecting <host>, while updating network '{network}'",
            root.tag_name().name()
        )));
    }
    parse_host(root, network)
}

fn parse_host(el: Node, network: &str) -> Result<DhcpHost> {
    let mac = el
        .attribute("mac")
        .map(|m| parse_mac(m, &format!("network '{network}'")))
        .transpose()?;
    let name = el.attribute("name").map(str::to_owned);
    if let Some(n) = &name {
        if !n.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "Cannot use host name '{n}' in network '{network}'"
            )));
        }
    }
    let ip = el
        .attribute("ip")
        .map(|i| {
            i.trim().parse::<IpAddr>().map_err(|_| {
                invalid(format!(
                    "Invalid IP address in static host definition for network '{network}'"
                ))
            })
        })
        .transpose()?;
    if mac.is_some() && ip.is_some_and(|i| i.is_ipv6()) {
        return Err(invalid(format!(
            "Invalid to specify MAC address '{}' in network '{network}' IPv6 static host definition",
            mac.as_deref().unwrap_or_default()
        )));
    }
    if mac.is_none() && name.is_none() && ip.is_none() {
        return Err(invalid(
            "At least one of name, mac, or ip attribute must be specified for static host definition in network",
        ));
    }
    Ok(DhcpHost { mac, name, ip })
}

fn parse_ip_el(el: Node, network: &str) -> Result<IpDef> {
    let family = el.attribute("family");
    let address = el.attribute("address").ok_or_else(|| {
        invalid(format!(
            "Missing required address attribute in network '{network}'"
        ))
    })?;
    let address: IpAddr = address.trim().parse().map_err(|_| {
        invalid(format!(
            "Invalid address '{address}' in network '{network}'"
        ))
    })?;
    match (family, address) {
        (None, _) | (Some("ipv4"), IpAddr::V4(_)) | (Some("ipv6"), IpAddr::V6(_)) => {}
        (Some(f), _) => {
            return Err(invalid(format!(
                "Family '{f}' specified for IP address '{address}' in network '{network}' does not match the address"
            )))
        }
    }
    let mut netmask_given = false;
    let prefix = match (el.attribute("netmask"), el.attribute("prefix")) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "Network '{network}' IP address cannot have both a prefix and a netmask"
            )))
        }
        (Some(m), None) => {
            if address.is_ipv6() {
                return Err(invalid(format!(
                    "netmask not allowed for IPv6 address '{address}' in network '{network}'"
                )));
            }
            let mask: Ipv4Addr = m
                .trim()
                .parse()
                .map_err(|_| invalid(format!("Invalid netmask '{m}' in network '{network}'")))?;
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(invalid(format!(
                    "Invalid netmask '{m}' in network '{network}'"
                )));
            }
            netmask_given = true;
            bits.leading_ones() as u8
        }
        (None, Some(p)) => {
            let max = if address.is_ipv4() { 32 } else { 128 };
            match p.trim().parse::<u8>() {
                Ok(v) if v <= max => v,
                _ => {
                    let fam = if address.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(invalid(format!(
                        "Invalid {fam} prefix '{p}' in network '{network}'"
                    )));
                }
            }
        }
        (None, None) => match address {
            // The classful default, as libvirt does.
            IpAddr::V4(v) => match v.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
            IpAddr::V6(_) => 64,
        },
    };
    let mut ip = IpDef {
        address,
        prefix,
        netmask_given,
        ranges: Vec::new(),
        hosts: Vec::new(),
    };
    if child(el, "tftp").is_some() {
        return Err(unsupported("<tftp> in a network is not supported"));
    }
    if let Some(dhcp) = child(el, "dhcp") {
        if child(dhcp, "bootp").is_some() {
            return Err(unsupported("<bootp> in a network is not supported"));
        }
        for r in children(dhcp, "range") {
            let start = r.attribute("start").ok_or_else(|| {
                invalid(format!(
                    "Missing 'start' attribute in dhcp range for network '{network}'"
                ))
            })?;
            let end = r.attribute("end").ok_or_else(|| {
                invalid(format!(
                    "Missing 'end' attribute in dhcp range for network '{network}'"
                ))
            })?;
            let start = parse_ip(start, "dhcp range 'start' address")?;
            let end = parse_ip(end, "dhcp range 'end' address")?;
            check_range(&ip, start, end, network)?;
            ip.ranges.push((start, end));
        }
        for h in children(dhcp, "host") {
            ip.hosts.push(parse_host(h, network)?);
        }
    }
    Ok(ip)
}

/// A DHCP range must lie within its subnet, in order, and (IPv4) avoid the
/// network and broadcast addresses: libvirt's checks and wording.
fn check_range(ip: &IpDef, start: IpAddr, end: IpAddr, network: &str) -> Result<()> {
    let internal = |msg: String| DomainXmlError::Invalid(format!("internal error: {msg}"));
    if start.is_ipv4() != end.is_ipv4() || start.is_ipv4() != ip.is_v4() {
        return Err(internal(format!(
            "range {start} - {end} is not entirely within network {}/{}",
            ip.address, ip.prefix
        )));
    }
    if !ip.contains(start) || !ip.contains(end) {
        return Err(internal(format!(
            "range {start} - {end} is not entirely within network {}/{}",
            ip.address, ip.prefix
        )));
    }
    if let (IpAddr::V4(s), IpAddr::V4(e)) = (start, end) {
        let net = u32::from(match ip.network() {
            IpAddr::V4(n) => n,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        });
        let host_bits = 32 - u32::from(ip.prefix);
        let broadcast = if host_bits >= 32 {
            u32::MAX
        } else {
            net | ((1u32 << host_bits) - 1)
        };
        if u32::from(s) == net || u32::from(e) == broadcast {
            return Err(internal(format!(
                "range {start} - {end} includes the network address or broadcast address of network {}/{}",
                ip.address, ip.prefix
            )));
        }
        if u32::from(s) > u32::from(e) {
            return Err(internal(format!(
                "range {start} - {end} is reversed for network {network}"
            )));
        }
    }
    if let (IpAddr::V6(s), IpAddr::V6(e)) = (start, end) {
        if u128::from(s) > u128::from(e) {
            return Err(internal(format!(
                "range {start} - {end} is reversed for network {network}"
            )));
        }
    }
    Ok(())
}

/// Elements of a network definition qemud does not implement.
const UNSUPPORTED: &[&str] = &[
    "portgroup",
    "virtualport",
    "vlan",
    "bandwidth",
    "route",
    "port",
];

impl NetworkDef {
    pub fn parse(xml: &str) -> Result<NetworkDef> {
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "network" {
            return Err(invalid(format!(
                "unexpected root element <{}>, expecting <network>",
                root.tag_name().name()
            )));
        }
        let name = child(root, "name")
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing name information"))?;
        validate_name(&name)?;
        let uuid = match child(root, "uuid").and_then(|n| n.text()) {
            Some(t) => parse_uuid(t)
                .ok_or_else(|| invalid(format!("malformed uuid element for network '{name}'")))?,
            None => Uuid::new_v4(),
        };
        for el in root.children().filter(|c| c.is_element()) {
            let tag = el.tag_name().name();
            if UNSUPPORTED.contains(&tag) {
                return Err(unsupported(format!(
                    "<{tag}> in network '{name}' is not supported"
                )));
            }
        }
        let forward = match child(root, "forward") {
            None => None,
            Some(f) => {
                let mode = match f.attribute("mode").unwrap_or("nat") {
                    "nat" => ForwardMode::Nat,
                    "route" => ForwardMode::Route,
                    "open" => ForwardMode::Open,
                    "bridge" => ForwardMode::Bridge,
                    m @ ("private" | "vepa" | "passthrough" | "hostdev") => {
                        return Err(unsupported(format!(
                            "forward mode '{m}' of network '{name}' is not supported"
                        )))
                    }
                    m => return Err(invalid(format!("unknown forwarding type '{m}'"))),
                };
                let nat_ports = child(f, "nat")
                    .and_then(|n| child(n, "port"))
                    .map(|p| -> Result<(u16, u16)> {
                        let port = |a: &str| {
                            p.attribute(a)
                                .and_then(|v| v.trim().parse::<u16>().ok())
                                .ok_or_else(|| {
                                    invalid(format!("Invalid port {a} in network '{name}'"))
                                })
                        };
                        Ok((port("start")?, port("end")?))
                    })
                    .transpose()?;
                if child(f, "interface").is_some() || child(f, "pf").is_some() {
                    return Err(unsupported(format!(
                        "forward interface pools of network '{name}' are not supported"
                    )));
                }
                Some(Forward {
                    mode,
                    dev: f.attribute("dev").map(str::to_owned),
                    nat_ports,
                })
            }
        };
        let bridge_el = child(root, "bridge");
        let bridge = bridge_el
            .and_then(|b| b.attribute("name"))
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        if let Some(b) = &bridge {
            // IFNAMSIZ (16, with the NUL).
            if b.len() > 15 || b.contains('/') || b.chars().any(char::is_whitespace) {
                return Err(invalid(format!("invalid bridge name '{b}'")));
            }
        }
        let stp = match bridge_el.and_then(|b| b.attribute("stp")) {
            None | Some("on") => true,
            Some("off") => false,
            Some(v) => {
                return Err(invalid(format!(
                    "Invalid stp setting '{v}' in network '{name}'"
                )))
            }
        };
        let delay = match bridge_el.and_then(|b| b.attribute("delay")) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid(format!("Invalid delay value in network '{name}'")))?,
        };
        let mac = child(root, "mac")
            .and_then(|m| m.attribute("address"))
            .map(|m| {
                parse_mac(m, &format!("network '{name}'")).map_err(|_| {
                    invalid(format!(
                        "Invalid bridge mac address '{m}' in network '{name}'"
                    ))
                })
            })
            .transpose()?;
        let mtu = child(root, "mtu")
            .and_then(|m| m.attribute("size"))
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| invalid(format!("Invalid mtu size '{v}' in network '{name}'")))
            })
            .transpose()?;
        let domain_el = child(root, "domain");
        let domain = domain_el
            .and_then(|d| d.attribute("name"))
            .map(str::to_owned);
        let domain_local_only = match domain_el.and_then(|d| d.attribute("localOnly")) {
            None => None,
            Some("yes") => Some(true),
            Some("no") => Some(false),
            Some(v) => {
                return Err(invalid(format!(
                    "Invalid domain localOnly setting '{v}' in network '{name}'"
                )))
            }
        };
        let mut dns = Dns::default();
        if let Some(d) = child(root, "dns") {
            dns.enable = match d.attribute("enable") {
                None => None,
                Some("yes") => Some(true),
                Some("no") => Some(false),
                Some(v) => {
                    return Err(invalid(format!(
                        "Invalid dns enable setting '{v}' in network '{name}'"
                    )))
                }
            };
            for f in children(d, "forwarder") {
                let addr = f
                    .attribute("addr")
                    .map(|a| parse_ip(a, "forwarder address"))
                    .transpose()?;
                let dom = f.attribute("domain").map(str::to_owned);
                if addr.is_none() && dom.is_none() {
                    return Err(invalid(format!(
                        "Invalid forwarder element, must contain at least one of addr or domain in network '{name}'"
                    )));
                }
                dns.forwarders.push((addr, dom));
            }
            for h in children(d, "host") {
                let ip = h.attribute("ip").ok_or_else(|| {
                    invalid(format!(
                        "Missing IP address in network '{name}' DNS HOST record"
                    ))
                })?;
                let ip = parse_ip(ip, "IP address in DNS HOST record")?;
                let hostnames: Vec<String> = children(h, "hostname")
                    .filter_map(|n| n.text())
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect();
                if hostnames.is_empty() {
                    return Err(invalid(format!(
                        "Missing hostname in network '{name}' DNS HOST record"
                    )));
                }
                dns.hosts.push(DnsHost { ip, hostnames });
            }
            if child(d, "srv").is_some() || child(d, "txt").is_some() {
                return Err(unsupported(format!(
                    "DNS SRV and TXT records of network '{name}' are not supported"
                )));
            }
        }
        let mut ips = Vec::new();
        for el in children(root, "ip") {
            ips.push(parse_ip_el(el, &name)?);
        }
        let def = NetworkDef {
            name,
            uuid,
            forward,
            bridge,
            stp,
            delay,
            mac,
            mtu,
            domain,
            domain_local_only,
            dns,
            ips,
        };
        def.validate()?;
        Ok(def)
    }

    fn validate(&self) -> Result<()> {
        let name = &self.name;
        if let Some(f) = &self.forward {
            if f.mode == ForwardMode::Bridge {
                if self.bridge.is_none() {
                    return Err(invalid(format!(
                        "network '{name}' has forward mode 'bridge' but no bridge device"
                    )));
                }
                if !self.ips.is_empty() || !self.dns.is_empty() || self.domain.is_some() {
                    return Err(invalid(format!(
                        "Unsupported <ip>, <dns> or <domain> element in network {name} with forward mode='bridge'"
                    )));
                }
                if self.mac.is_some() {
                    return Err(invalid(format!(
                        "Unsupported <mac> element in network {name} with forward mode='bridge'"
                    )));
                }
            }
        }
        let v4_dhcp = self
            .ips
            .iter()
            .filter(|i| i.is_v4() && i.has_dhcp())
            .count();
        if v4_dhcp > 1 {
            return Err(invalid(
                "Multiple IPv4 dhcp sections found -- dhcp is supported only for a single IPv4 address on each network",
            ));
        }
        let v6_dhcp = self
            .ips
            .iter()
            .filter(|i| !i.is_v4() && i.has_dhcp())
            .count();
        if v6_dhcp > 1 {
            return Err(invalid(
                "Multiple IPv6 dhcp sections found -- dhcp is supported only for a single IPv6 address on each network",
            ));
        }
        // Two subnets of one network that overlap would route ambiguously.
        for (i, a) in self.ips.iter().enumerate() {
            for b in &self.ips[i + 1..] {
                if subnets_overlap(a, b) {
                    return Err(invalid(format!(
                        "overlapping subnets {} and {} in network '{name}'",
                        a.subnet(),
                        b.subnet()
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn is_bridge_mode(&self) -> bool {
        self.forward
            .as_ref()
            .is_some_and(|f| f.mode == ForwardMode::Bridge)
    }

    pub fn forward_mode(&self) -> Option<ForwardMode> {
        self.forward.as_ref().map(|f| f.mode)
    }

    pub fn ipv4(&self) -> Option<&IpDef> {
        self.ips.iter().find(|i| i.is_v4())
    }

    /// Fills in what libvirt fills in at define time: a bridge name from
    /// the `virbr%d` template (the first not in `taken`) and a MAC for it.
    pub fn fill_defaults(&mut self, taken: &[String]) {
        if !self.is_bridge_mode() {
            if self.bridge.as_deref().is_none_or(|b| b.contains("%d")) {
                let template = self.bridge.clone().unwrap_or_else(|| "virbr%d".into());
                let mut n = 0;
                loop {
                    let candidate = template.replacen("%d", &n.to_string(), 1);
                    if !taken.contains(&candidate) {
                        self.bridge = Some(candidate);
                        break;
                    }
                    n += 1;
                }
            }
            if self.mac.is_none() {
                self.mac = Some(generate_mac());
            }
        }
    }

    /// The definition as `net-dumpxml` shows it; `connections` is the
    /// number of guests plugged in (shown only when live and non-zero).
    pub fn to_xml(&self, connections: Option<u32>) -> String {
        let mut x = String::from("<network");
        if let Some(c) = connections.filter(|c| *c > 0) {
            let _ = write!(x, " connections='{c}'");
        }
        x.push_str(">\n");
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <uuid>{}</uuid>", self.uuid.hyphenated());
        if let Some(f) = &self.forward {
            x.push_str("  <forward");
            if let Some(d) = &f.dev {
                let _ = write!(x, " dev='{}'", esc_attr(d));
            }
            let _ = write!(x, " mode='{}'", f.mode.as_str());
            match f.nat_ports {
                Some((s, e)) => {
                    x.push_str(">\n    <nat>\n");
                    let _ = writeln!(x, "      <port start='{s}' end='{e}'/>");
                    x.push_str("    </nat>\n  </forward>\n");
                }
                None => x.push_str("/>\n"),
            }
        }
        let has_bridge = !self.is_bridge_mode();
        if has_bridge || self.bridge.is_some() {
            x.push_str("  <bridge");
            if let Some(b) = &self.bridge {
                let _ = write!(x, " name='{}'", esc_attr(b));
            }
            if has_bridge {
                let _ = write!(
                    x,
                    " stp='{}' delay='{}'",
                    if self.stp { "on" } else { "off" },
                    self.delay
                );
            }
            x.push_str("/>\n");
        }
        if let Some(m) = self.mtu {
            let _ = writeln!(x, "  <mtu size='{m}'/>");
        }
        if let Some(m) = &self.mac {
            let _ = writeln!(x, "  <mac address='{m}'/>");
        }
        if let Some(d) = &self.domain {
            let _ = write!(x, "  <domain name='{}'", esc_attr(d));
            if let Some(l) = self.domain_local_only {
                let _ = write!(x, " localOnly='{}'", if l { "yes" } else { "no" });
            }
            x.push_str("/>\n");
        }
        if !self.dns.is_empty() {
            x.push_str("  <dns");
            if let Some(e) = self.dns.enable {
                let _ = write!(x, " enable='{}'", if e { "yes" } else { "no" });
            }
            if self.dns.forwarders.is_empty() && self.dns.hosts.is_empty() {
                x.push_str("/>\n");
            } else {
                x.push_str(">\n");
                for (addr, dom) in &self.dns.forwarders {
                    x.push_str("    <forwarder");
                    if let Some(d) = dom {
                        let _ = write!(x, " domain='{}'", esc_attr(d));
                    }
                    if let Some(a) = addr {
                        let _ = write!(x, " addr='{a}'");
                    }
                    x.push_str("/>\n");
                }
                for h in &self.dns.hosts {
                    let _ = writeln!(x, "    <host ip='{}'>", h.ip);
                    for n in &h.hostnames {
                        let _ = writeln!(x, "      <hostname>{}</hostname>", esc(n));
                    }
                    x.push_str("    </host>\n");
                }
                x.push_str("  </dns>\n");
            }
        }
        for ip in &self.ips {
            x.push_str("  <ip");
            if !ip.is_v4() {
                x.push_str(" family='ipv6'");
            }
            let _ = write!(x, " address='{}'", ip.address);
            if ip.netmask_given {
                let _ = write!(x, " netmask='{}'", netmask_string(ip.prefix));
            } else {
                let _ = write!(x, " prefix='{}'", ip.prefix);
            }
            if ip.has_dhcp() {
                x.push_str(">\n    <dhcp>\n");
                for (s, e) in &ip.ranges {
                    let _ = writeln!(x, "      <range start='{s}' end='{e}'/>");
                }
                for h in &ip.hosts {
                    let _ = writeln!(x, "      {}", h.format());
                }
                x.push_str("    </dhcp>\n  </ip>\n");
            } else {
                x.push_str(">\n  </ip>\n");
            }
        }
        x.push_str("</network>\n");
        x
    }

    /// `net-update` of one section: libvirt's rules for add, delete and
    /// modify of DHCP hosts (of the `parent_index`th `<ip>`, or the first
    /// with the host's address family) and DNS hosts.
    pub fn update(
        &mut self,
        section: u32,
        command: u32,
        parent_index: i32,
        xml: &str,
    ) -> std::result::Result<(), UpdateError> {
        match section {
            SECTION_IP_DHCP_HOST => self.update_dhcp_host(command, parent_index, xml),
            SECTION_DNS_HOST => self.update_dns_host(command, xml),
            other => Err(UpdateError::Unsupported(format!(
                "can't update '{}' section of network '{}'",
                section_name(other),
                self.name
            ))),
        }
    }

    fn update_dhcp_host(
        &mut self,
        command: u32,
        parent_index: i32,
        xml: &str,
    ) -> std::result::Result<(), UpdateError> {
        let host = parse_dhcp_host(xml, &self.name)?;
        let name = self.name.clone();
        let family_v4 = host.ip.is_none_or(|i| i.is_ipv4());
        let ip = if parent_index >= 0 {
            self.ips.get_mut(parent_index as usize)
        } else {
            self.ips.iter_mut().find(|i| i.is_v4() == family_v4)
        }
        .ok_or_else(|| {
            UpdateError::Invalid(format!(
                "couldn't update dhcp host entry - no <ip> element found in network '{name}'"
            ))
        })?;
        if command != UPDATE_DELETE {
            if host.ip.is_some_and(|a| a.is_ipv4() != ip.is_v4()) {
                return Err(UpdateError::Invalid(
                    "the address family of a host entry IP must match the address family of the dhcp element's parent".into(),
                ));
            }
            if let Some(a) = host.ip.filter(|a| !ip.contains(*a)) {
                return Err(UpdateError::Xml(invalid(format!(
                    "Invalid IP address in static host definition for network '{name}': {a} is not within {}",
                    ip.subnet()
                ))));
            }
        }
        let fields = |h: &DhcpHost| {
            (
                h.mac.clone().unwrap_or_else(|| "unknown".into()),
                h.name.clone().unwrap_or_default(),
                h.ip.map(|i| i.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            )
        };
        match command {
            UPDATE_ADD_FIRST | UPDATE_ADD_LAST => {
                let clash = ip.hosts.iter().any(|h| {
                    (host.mac.is_some() && h.mac == host.mac)
                        || (host.name.is_some() && h.name == host.name)
                        || (host.ip.is_some() && h.ip == host.ip)
                });
                if clash {
                    let (m, n, a) = fields(&host);
                    return Err(UpdateError::Invalid(format!(
                        "there is an existing dhcp host entry in network '{name}' that matches \"<host mac='{m}' name='{n}' ip='{a}'/>\""
                    )));
                }
                if command == UPDATE_ADD_FIRST {
                    ip.hosts.insert(0, host);
                } else {
                    ip.hosts.push(host);
                }
            }
            UPDATE_DELETE => {
                // Every attribute given must match; the others are wildcards.
                let pos = ip.hosts.iter().position(|h| {
                    (host.mac.is_none() || h.mac.is_none() || h.mac == host.mac)
                        && (host.name.is_none() || h.name == host.name)
                        && (host.ip.is_none() || h.ip == host.ip)
                });
                let p = pos.ok_or_else(|| {
                    UpdateError::Invalid(format!(
                        "couldn't locate a matching dhcp host entry in network '{name}'"
                    ))
                })?;
                ip.hosts.remove(p);
            }
            UPDATE_MODIFY => {
                let pos = ip.hosts.iter().position(|h| {
                    (host.mac.is_some() && h.mac == host.mac)
                        || (host.ip.is_some() && h.ip == host.ip)
                        || (host.name.is_some() && h.name == host.name)
                });
                match pos {
                    Some(p) => ip.hosts[p] = host,
                    None => {
                        let (m, n, a) = fields(&host);
                        return Err(UpdateError::Invalid(format!(
                            "couldn't locate an existing dhcp host entry with \"mac='{m}'\" \"name='{n}'\" \"ip='{a}'\" in network '{name}'"
                        )));
                    }
                }
            }
            other => return Err(unknown_command(other)),
        }
        Ok(())
    }

    fn update_dns_host(&mut self, command: u32, xml: &str) -> std::result::Result<(), UpdateError> {
        let name = self.name.clone();
        if command == UPDATE_MODIFY {
            return Err(UpdateError::Unsupported(
                "DNS HOST records cannot be modified, only added or deleted".into(),
            ));
        }
        let is_add = matches!(command, UPDATE_ADD_FIRST | UPDATE_ADD_LAST);
        if !is_add && command != UPDATE_DELETE {
            return Err(unknown_command(command));
        }
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| DomainXmlError::Xml(e.to_string()))?;
        let el = doc.root_element();
        if el.tag_name().name() != "host" {
            return Err(UpdateError::Xml(invalid(format!(
                "unexpected element <{}>, expecting <host>, while updating network '{name}'",
                el.tag_name().name()
            ))));
        }
        let ip = el
            .attribute("ip")
            .map(|a| parse_ip(a, "IP address in DNS HOST record"))
            .transpose()?;
        let hostnames: Vec<String> = children(el, "hostname")
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if is_add && (ip.is_none() || hostnames.is_empty()) {
            return Err(UpdateError::Xml(invalid(format!(
                "Missing ip and hostname in network '{name}' DNS HOST record"
            ))));
        }
        let matches: Vec<usize> = self
            .dns
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                Some(h.ip) == ip || (!is_add && hostnames.iter().any(|n| h.hostnames.contains(n)))
            })
            .map(|(i, _)| i)
            .collect();
        if is_add {
            if !matches.is_empty() {
                return Err(UpdateError::Invalid(format!(
                    "there is already at least one DNS HOST record with a matching field in network {name}"
                )));
            }
            let host = DnsHost {
                ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                hostnames,
            };
            if command == UPDATE_ADD_FIRST {
                self.dns.hosts.insert(0, host);
            } else {
                self.dns.hosts.push(host);
            }
        } else {
            match matches.as_slice() {
                [] => {
                    return Err(UpdateError::Invalid(format!(
                        "couldn't locate a matching DNS HOST record in network {name}"
                    )))
                }
                [one] => {
                    self.dns.hosts.remove(*one);
                }
                _ => {
                    return Err(UpdateError::Invalid(format!(
                        "multiple matching DNS HOST records were found in network {name}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Why a `net-update` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// Malformed or invalid XML (libvirt: VIR_ERR_XML_ERROR).
    #[error("{0}")]
    Xml(#[from] DomainXmlError),
    /// The change does not fit the definition (VIR_ERR_OPERATION_INVALID).
    #[error("{0}")]
    Invalid(String),
    /// A section or command qemud or libvirt cannot update
    /// (VIR_ERR_OPERATION_UNSUPPORTED).
    #[error("{0}")]
    Unsupported(String),
}

fn unknown_command(command: u32) -> UpdateError {
    UpdateError::Unsupported(format!(
        "unrecognized network update command code {command}"
    ))
}

/// `virNetworkUpdateSection` names, as libvirt words its errors.
fn section_name(section: u32) -> &'static str {
    match section {
        1 => "bridge",
        2 => "domain",
        3 => "ip",
        4 => "ip-dhcp-host",
        5 => "ip-dhcp-range",
        6 => "forward",
        7 => "forward-interface",
        8 => "forward-pf",
        9 => "portgroup",
        10 => "dns-host",
        11 => "dns-txt",
        12 => "dns-srv",
        _ => "unknown",
    }
}

/// Whether two `<ip>` subnets share any address.
pub fn subnets_overlap(a: &IpDef, b: &IpDef) -> bool {
    if a.is_v4() != b.is_v4() {
        return false;
    }
    let p = a.prefix.min(b.prefix);
    mask(a.address, p) == mask(b.address, p)
}

/// The tap device of a domain's `index`th NIC. Derived from the domain's
/// UUID so that the command line, start, stop, the live XML and a
/// restarted daemon all agree on it without remembering it (at most 15
/// bytes, IFNAMSIZ, for up to 100 NICs).
pub fn tap_name(domain: &Uuid, index: usize) -> String {
    let hex = domain.simple().to_string();
    format!("vnet{}n{index}", &hex[..8])
}

/// The tap device of a NIC, if it has one: an ethernet NIC's own target,
/// else the daemon's name for it.
pub fn nic_tap(domain: &Uuid, index: usize, kind: &crate::domain::InterfaceKind) -> Option<String> {
    use crate::domain::InterfaceKind;
    match kind {
        InterfaceKind::User => None,
        InterfaceKind::Ethernet {
            target: Some(t), ..
        } => Some(t.clone()),
        _ => Some(tap_name(domain, index)),
    }
}

/// The `default` network as distributions ship it.
pub fn default_network_xml() -> String {
    format!(
        "<network>
  <name>default</name>
  <uuid>{}</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='{}'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
",
        Uuid::new_v4().hyphenated(),
        generate_mac()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = "<network>
  <name>net1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
  <bridge name='qbr1' stp='off' delay='2'/>
  <mtu size='1400'/>
  <mac address='52:54:00:AA:00:01'/>
  <domain name='example.test' localOnly='yes'/>
  <dns>
    <forwarder addr='10.0.0.53'/>
    <host ip='10.77.0.9'><hostname>db</hostname></host>
  </dns>
  <ip address='10.77.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.77.0.100' end='10.77.0.200'/>
      <host mac='52:54:00:00:00:09' name='db' ip='10.77.0.9'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:77::1' prefix='64'>
    <dhcp><range start='fd00:77::100' end='fd00:77::1ff'/></dhcp>
  </ip>
</network>";

    #[test]
    fn parse_format_round_trip() {
        let d = NetworkDef::parse(NAT).unwrap();
        assert_eq!(d.forward_mode(), Some(ForwardMode::Nat));
        assert_eq!(d.bridge.as_deref(), Some("qbr1"));
        assert!(!d.stp);
        assert_eq!(d.delay, 2);
        assert_eq!(d.mac.as_deref(), Some("52:54:00:aa:00:01"));
        assert_eq!(d.ips.len(), 2);
        assert_eq!(d.ips[0].prefix, 24);
        assert_eq!(d.ips[0].subnet(), "10.77.0.0/24");
        let xml = d.to_xml(None);
        assert!(
            xml.contains("<ip address='10.77.0.1' netmask='255.255.255.0'>"),
            "{xml}"
        );
        assert!(xml.contains("<host mac='52:54:00:00:00:09' name='db' ip='10.77.0.9'/>"));
        assert!(xml.contains("<ip family='ipv6' address='fd00:77::1' prefix='64'>"));
        assert!(xml.contains("<port start='1024' end='65535'/>"));
        assert_eq!(NetworkDef::parse(&xml).unwrap(), d);
        assert!(d.to_xml(Some(2)).starts_with("<network connections='2'>"));
    }

    #[test]
    fn defaults_filled() {
        let mut d = NetworkDef::parse(
            "<network><name>n</name><ip address='10.9.0.1' prefix='24'/></network>",
        )
        .unwrap();
        assert_eq!(d.forward, None);
        d.fill_defaults(&["virbr0".into()]);
        assert_eq!(d.bridge.as_deref(), Some("virbr1"));
        assert!(d.mac.as_deref().unwrap().starts_with("52:54:00:"));
        let xml = d.to_xml(None);
        assert!(
            xml.contains("<bridge name='virbr1' stp='on' delay='0'/>"),
            "{xml}"
        );
        assert!(!xml.contains("<forward"));
    }

    #[test]
    fn default_network_parses() {
        let d = NetworkDef::parse(&default_network_xml()).unwrap();
        assert_eq!(d.name, "default");
        assert_eq!(d.ipv4().unwrap().ranges.len(), 1);
    }

    #[test]
    fn bad_input_refused() {
        let cases = [
            (
                "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip></network>",
                "is not entirely within network 10.0.0.1/24",
            ),
            (
                "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.0' end='10.0.0.9'/></dhcp></ip></network>",
                "network address or broadcast address",
            ),
            (
                "<network><name>n</name><ip address='10.0.0.1' netmask='255.0.255.0'/></network>",
                "Invalid netmask",
            ),
            (
                "<network><name>n</name><ip address='10.0.0.1' prefix='24'/><ip address='10.0.0.2' prefix='16'/></network>",
                "overlapping subnets",
            ),
            (
                "<network><name>n</name><ip address='10.0.0.1' prefix='33'/></network>",
                "Invalid IPv4 prefix '33'",
            ),
            ("<network><uuid>x</uuid></network>", "missing name"),
            (
                "<network><name>n</name><forward mode='bridge'/></network>",
                "no bridge device",
            ),
            (
                "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><host name='-x'/></dhcp></ip></network>",
                "Cannot use host name '-x'",
            ),
        ];
        for (xml, want) in cases {
            let e = NetworkDef::parse(xml).unwrap_err().to_string();
            assert!(e.contains(want), "{xml}: {e}");
        }
        assert!(matches!(
            NetworkDef::parse("<network><name>n</name><portgroup name='a'/></network>"),
            Err(DomainXmlError::Unsupported(_))
        ));
    }

    #[test]
    fn dhcp_host_updates() {
        let mut d = NetworkDef::parse(NAT).unwrap();
        let h = "<host mac='52:54:00:00:00:10' name='web' ip='10.77.0.10'/>";
        let dhcp = SECTION_IP_DHCP_HOST;
        d.update(dhcp, UPDATE_ADD_LAST, -1, h).unwrap();
        assert_eq!(d.ips[0].hosts.len(), 2);
        assert!(matches!(
            d.update(dhcp, UPDATE_ADD_LAST, -1, h),
            Err(UpdateError::Invalid(_))
        ));
        let outside = "<host mac='52:54:00:00:00:11' ip='10.78.0.10'/>";
        assert!(d.update(dhcp, UPDATE_ADD_LAST, -1, outside).is_err());
        // Delete by MAC alone: the other attributes are wildcards.
        d.update(dhcp, UPDATE_DELETE, -1, "<host mac='52:54:00:00:00:10'/>")
            .unwrap();
        assert_eq!(d.ips[0].hosts.len(), 1);
        assert!(d.update(dhcp, UPDATE_DELETE, -1, h).is_err());

        let dns = SECTION_DNS_HOST;
        let host = "<host ip='10.77.0.20'><hostname>web</hostname></host>";
        d.update(dns, UPDATE_ADD_LAST, -1, host).unwrap();
        assert_eq!(d.dns.hosts.len(), 2);
        assert!(d.update(dns, UPDATE_ADD_LAST, -1, host).is_err());
        assert!(matches!(
            d.update(dns, UPDATE_MODIFY, -1, host),
            Err(UpdateError::Unsupported(_))
        ));
        d.update(
            dns,
            UPDATE_DELETE,
            -1,
            "<host><hostname>web</hostname></host>",
        )
        .unwrap();
        assert_eq!(d.dns.hosts.len(), 1);
        assert!(matches!(
            d.update(5, UPDATE_ADD_LAST, -1, "<range/>"),
            Err(UpdateError::Unsupported(_))
        ));
    }
}

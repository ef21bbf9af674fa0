//! The nftables rules of one network, in a table of its own
//! (`inet qemud_<bridge>`), so that destroying the network deletes exactly
//! its rules and nothing else. The rules follow libvirt's: DHCP and DNS
//! from guests to the host, forwarding for the network's subnets in the
//! directions the forward mode allows, masquerading for NAT.

use qemud_config::network::{ForwardMode, NetworkDef};

/// The table holding a network's rules.
pub fn table_name(bridge: &str) -> String {
    let clean: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("qemud_{clean}")
}

/// The `nft -f` script creating the network's table (None: no rules, as
/// for forward mode `open` and `bridge`).
pub fn ruleset(def: &NetworkDef) -> Option<String> {
    let mode = def.forward_mode();
    if matches!(mode, Some(ForwardMode::Open) | Some(ForwardMode::Bridge)) {
        return None;
    }
    let br = def.bridge.as_deref()?;
    let table = table_name(br);
    let q = |s: &str| format!("\"{}\"", s.replace('"', ""));
    let brq = q(br);
    let mut input = Vec::new();
    let mut forward = Vec::new();
    let mut nat = Vec::new();
    // Guests reach the host's DHCP and DNS servers.
    input.push(format!("iifname {brq} udp dport {{ 53, 67, 547 }} accept"));
    input.push(format!("iifname {brq} tcp dport 53 accept"));
    for ip in &def.ips {
        let fam = if ip.is_v4() { "ip" } else { "ip6" };
        let net = ip.subnet();
        match mode {
            Some(ForwardMode::Nat) => {
                forward.push(format!(
                    "oifname {brq} {fam} daddr {net} ct state related,established accept"
                ));
                forward.push(format!("iifname {brq} {fam} saddr {net} accept"));
                if ip.is_v4() {
                    nat.push(format!("ip saddr {net} ip daddr 224.0.0.0/24 return"));
                    nat.push(format!("ip saddr {net} ip daddr 255.255.255.255 return"));
                    let ports = def
                        .forward
                        .as_ref()
                        .and_then(|f| f.nat_ports)
                        .unwrap_or((1024, 65535));
                    nat.push(format!(
                        "meta l4proto {{ tcp, udp }} ip saddr {net} ip daddr != {net} masquerade to :{}-{}",
                        ports.0, ports.1
                    ));
                    nat.push(format!("ip saddr {net} ip daddr != {net} masquerade"));
                }
            }
            Some(ForwardMode::Route) => {
                forward.push(format!("oifname {brq} {fam} daddr {net} accept"));
                forward.push(format!("iifname {brq} {fam} saddr {net} accept"));
            }
            _ => {}
        }
    }
    // Guests of the network talk to each other; anything else crossing the
    // bridge that no rule above allowed is refused.
    forward.push(format!("iifname {brq} oifname {brq} accept"));
    forward.push(format!("iifname {brq} reject"));
    forward.push(format!("oifname {brq} reject"));
    let mut s = format!("table inet {table} {{\n");
    s.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
    for r in &input {
        s.push_str(&format!("    {r}\n"));
    }
    s.push_str("  }\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for r in &forward {
        s.push_str(&format!("    {r}\n"));
    }
    s.push_str("  }\n");
    if !nat.is_empty() {
        s.push_str(
            "  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n",
        );
        for r in &nat {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_rules() {
        let def = NetworkDef::parse(
            "<network><name>n</name><forward mode='nat'/><bridge name='br-x'/>\
             <ip address='10.5.0.1' prefix='24'><dhcp><range start='10.5.0.2' end='10.5.0.9'/></dhcp></ip></network>",
        )
        .unwrap();
        let r = ruleset(&def).unwrap();
        assert!(r.starts_with("table inet qemud_br_x {"), "{r}");
        assert!(r.contains("ip saddr 10.5.0.0/24 ip daddr != 10.5.0.0/24 masquerade"));
        assert!(r.contains("iifname \"br-x\" ip saddr 10.5.0.0/24 accept"));
        assert!(r.contains("udp dport { 53, 67, 547 } accept"));
    }

    #[test]
    fn isolated_and_open() {
        let iso = NetworkDef::parse(
            "<network><name>n</name><bridge name='b0'/><ip address='10.6.0.1' prefix='24'/></network>",
        )
        .unwrap();
        let r = ruleset(&iso).unwrap();
        assert!(!r.contains("masquerade") && !r.contains("saddr 10.6.0.0/24 accept"));
        assert!(r.contains("iifname \"b0\" reject"));
        let open = NetworkDef::parse(
            "<network><name>n</name><forward mode='open'/><bridge name='b0'/><ip address='10.6.0.1' prefix='24'/></network>",
        )
        .unwrap();
        assert!(ruleset(&open).is_none());
    }
}

//! qemud settings and the libvirt XML models.

pub mod capabilities;
pub mod domain;
pub mod domcaps;
pub mod interface;
pub mod network;
pub mod nodedev;
pub mod secret;
pub mod settings;
pub mod storage;
pub mod tune;
pub mod xml_depth;

/// Shell-style match with `*` and `?`, as libvirt's allow-lists
/// (`tls_allowed_dn_list`) and QEMU's firmware descriptors use.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("pc-q35-*", "pc-q35-7.2"));
        assert!(!wildcard_match("pc-q35-*", "pc-i440fx-7.2"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
    }
}

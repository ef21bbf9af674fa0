//! The libvirt secret XML model (`docs/formatsecret.rst`): parsed from a
//! client's XML with libvirt's rules and messages, formatted back the way
//! `virsh secret-dumpxml` shows it. Also the base64 form libvirt keeps
//! secret values in.

use std::fmt::Write as _;

use uuid::Uuid;

use crate::domain::{esc, parse_uuid};

/// Which libvirt error a bad secret definition gets; the message is
/// libvirt's text after the code's own prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretXmlError {
    /// Not well-formed: VIR_ERR_XML_DETAIL, the parser's own words.
    #[error("{0}")]
    Parse(String),
    /// Another root element: VIR_ERR_XML_ERROR from libvirt's XML layer
    /// (error domain VIR_FROM_XML).
    #[error("{0}")]
    Root(String),
    /// VIR_ERR_XML_ERROR ("XML error: ...").
    #[error("{0}")]
    Xml(String),
    /// VIR_ERR_CONFIG_UNSUPPORTED ("unsupported configuration: ...").
    #[error("{0}")]
    Unsupported(String),
    /// VIR_ERR_INTERNAL_ERROR ("internal error: ..."), which libvirt uses
    /// for a malformed UUID and a missing usage ID.
    #[error("{0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, SecretXmlError>;

/// `virSecretUsageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageType {
    None = 0,
    Volume = 1,
    Ceph = 2,
    Iscsi = 3,
    Tls = 4,
    Vtpm = 5,
}

impl UsageType {
    pub fn from_name(s: &str) -> Option<UsageType> {
        Some(match s {
            "none" => UsageType::None,
            "volume" => UsageType::Volume,
            "ceph" => UsageType::Ceph,
            "iscsi" => UsageType::Iscsi,
            "tls" => UsageType::Tls,
            "vtpm" => UsageType::Vtpm,
            _ => return None,
        })
    }

    pub fn from_i32(n: i32) -> Option<UsageType> {
        Some(match n {
            0 => UsageType::None,
            1 => UsageType::Volume,
            2 => UsageType::Ceph,
            3 => UsageType::Iscsi,
            4 => UsageType::Tls,
            5 => UsageType::Vtpm,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            UsageType::None => "none",
            UsageType::Volume => "volume",
            UsageType::Ceph => "ceph",
            UsageType::Iscsi => "iscsi",
            UsageType::Tls => "tls",
            UsageType::Vtpm => "vtpm",
        }
    }

    /// The child of `<usage>` holding the usage ID.
    fn id_element(self) -> Option<&'static str> {
        match self {
            UsageType::None => None,
            UsageType::Volume => Some("volume"),
            UsageType::Iscsi => Some("target"),
            UsageType::Ceph | UsageType::Tls | UsageType::Vtpm => Some("name"),
        }
    }

    /// libvirt's message when the usage ID is missing.
    fn missing_id(self) -> &'static str {
        match self {
            UsageType::None => "",
            UsageType::Volume => "volume usage specified, but volume path is missing",
            UsageType::Ceph => "Ceph usage specified, but name is missing",
            UsageType::Iscsi => "iSCSI usage specified, but target is missing",
            UsageType::Tls => "TLS usage specified, but name is missing",
            UsageType::Vtpm => "vTPM usage specified, but name is missing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    pub uuid: Uuid,
    pub ephemeral: bool,
    pub private: bool,
    pub description: Option<String>,
    pub usage_type: UsageType,
    /// None for usage type `none`.
    pub usage_id: Option<String>,
}

fn yes_no(v: &str, what: &str) -> Result<bool> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(SecretXmlError::Xml(format!("invalid value of '{what}'"))),
    }
}

/// The text of a child element, as libvirt's `string(./x)`: absent and
/// empty are both "none".
fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    let el = node.children().find(|c| c.has_tag_name(name))?;
    let text: String = el
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect();
    (!text.is_empty()).then_some(text)
}

impl SecretDef {
    pub fn parse(xml: &str) -> Result<SecretDef> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| {
            SecretXmlError::Parse(format!("(definition_of_secret):{}: {e}", e.pos().row))
        })?;
        let root = doc.root_element();
        if root.tag_name().name() != "secret" {
            return Err(SecretXmlError::Root(format!(
                "expecting root element of 'secret', not '{}'",
                root.tag_name().name()
            )));
        }
        let ephemeral = match root.attribute("ephemeral") {
            Some(v) if !v.is_empty() => yes_no(v, "ephemeral")?,
            _ => false,
        };
        let private = match root.attribute("private") {
            Some(v) if !v.is_empty() => yes_no(v, "private")?,
            _ => false,
        };
        let uuid = match child_text(root, "uuid") {
            None => Uuid::new_v4(),
            Some(u) => parse_uuid(&u)
                .ok_or_else(|| SecretXmlError::Internal("malformed uuid element".into()))?,
        };
        let description = child_text(root, "description");
        let (usage_type, usage_id) = match root.children().find(|c| c.has_tag_name("usage")) {
            None => (UsageType::None, None),
            Some(usage) => {
                let type_name = usage.attribute("type").unwrap_or_default();
                if type_name.is_empty() {
                    return Err(SecretXmlError::Xml("unknown secret usage type".into()));
                }
                let t = UsageType::from_name(type_name).ok_or_else(|| {
                    SecretXmlError::Unsupported(format!("unknown secret usage type {type_name}"))
                })?;
                let id = match t.id_element() {
                    None => None,
                    Some(el) => Some(
                        child_text(usage, el)
                            .ok_or_else(|| SecretXmlError::Internal(t.missing_id().into()))?,
                    ),
                };
                (t, id)
            }
        };
        Ok(SecretDef {
            uuid,
            ephemeral,
            private,
            description,
            usage_type,
            usage_id,
        })
    }

    /// The usage ID as clients see it: empty for usage type `none`.
    pub fn usage_id_str(&self) -> &str {
        self.usage_id.as_deref().unwrap_or("")
    }

    /// libvirt's `virSecretDefFormat`.
    pub fn to_xml(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "<secret ephemeral='{}' private='{}'>",
            yn(self.ephemeral),
            yn(self.private)
        );
        let _ = writeln!(out, "  <uuid>{}</uuid>", self.uuid.hyphenated());
        if let Some(d) = &self.description {
            let _ = writeln!(out, "  <description>{}</description>", esc(d));
        }
        if self.usage_type != UsageType::None {
            let _ = writeln!(out, "  <usage type='{}'>", self.usage_type.name());
            if let (Some(el), Some(id)) = (self.usage_type.id_element(), &self.usage_id) {
                let _ = writeln!(out, "    <{el}>{}</{el}>", esc(id));
            }
            out.push_str("  </usage>\n");
        }
        out.push_str("</secret>\n");
        out
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as libvirt stores values.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, ignoring whitespace; None when malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if padding > 2 || bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_like_libvirt() {
        let xml = "<secret ephemeral='no' private='yes'><uuid>c5e1b8a4-1a3c-4b8e-9d6c-3e1f2a4b5c6d</uuid>\
                   <description>a &amp; b</description><usage type='ceph'><name>client.admin</name></usage></secret>";
        let d = SecretDef::parse(xml).unwrap();
        assert!(d.private && !d.ephemeral);
        assert_eq!(d.usage_type, UsageType::Ceph);
        assert_eq!(d.usage_id.as_deref(), Some("client.admin"));
        assert_eq!(
            d.to_xml(),
            "<secret ephemeral='no' private='yes'>\n  <uuid>c5e1b8a4-1a3c-4b8e-9d6c-3e1f2a4b5c6d</uuid>\n  \
             <description>a &amp; b</description>\n  <usage type='ceph'>\n    <name>client.admin</name>\n  \
             </usage>\n</secret>\n"
        );
        assert_eq!(SecretDef::parse(&d.to_xml()).unwrap(), d);
    }

    #[test]
    fn errors_are_libvirts() {
        let e = SecretDef::parse("<secret><usage type='volume'/></secret>").unwrap_err();
        assert_eq!(
            e,
            SecretXmlError::Internal("volume usage specified, but volume path is missing".into())
        );
        let e = SecretDef::parse("<secret><usage type='bogus'/></secret>").unwrap_err();
        assert_eq!(
            e,
            SecretXmlError::Unsupported("unknown secret usage type bogus".into())
        );
        let e = SecretDef::parse("<secret private='maybe'/>").unwrap_err();
        assert_eq!(e, SecretXmlError::Xml("invalid value of 'private'".into()));
        let e = SecretDef::parse("<secret><uuid>nope</uuid></secret>").unwrap_err();
        assert_eq!(e, SecretXmlError::Internal("malformed uuid element".into()));
        assert_eq!(
            SecretDef::parse("<domain/>"),
            Err(SecretXmlError::Root(
                "expecting root element of 'secret', not 'domain'".into()
            ))
        );
        assert!(matches!(
            SecretDef::parse("<secret"),
            Err(SecretXmlError::Parse(_))
        ));
    }

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let e = base64_encode(data);
            assert_eq!(base64_decode(&e).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("Zm9v!").is_none());
    }
}

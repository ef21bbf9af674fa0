//! A nesting check run before any XML reaches the parser: roxmltree builds
//! its tree recursively, so a client's document nested a million levels
//! deep would overflow the stack and take the daemon down. libvirt's parser
//! (libxml2) refuses documents nested deeper than 256 elements.

/// libxml2's default nesting limit, which libvirt keeps.
pub const MAX_DEPTH: usize = 256;

fn skip_past(b: &[u8], from: usize, end: &[u8]) -> usize {
    b[from..]
        .windows(end.len())
        .position(|w| w == end)
        .map(|p| from + p + end.len())
        .unwrap_or(b.len())
}

/// Fails when elements nest deeper than `limit`. Comments, CDATA,
/// processing instructions and quoted attribute values are skipped, so
/// markup-like text inside them does not count.
pub fn check(xml: &str, limit: usize) -> Result<(), String> {
    let b = xml.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_past(b, i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(b, i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(b, i + 2, b"?>");
        } else if rest.starts_with(b"<!") || rest.starts_with(b"</") {
            if rest.starts_with(b"</") {
                depth = depth.saturating_sub(1);
            }
            i = skip_past(b, i + 2, b">");
        } else {
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, q @ (b'"' | b'\'')) => quote = Some(q),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if !(j < b.len() && b[j - 1] == b'/') {
                depth += 1;
                if depth > limit {
                    return Err(format!(
                        "Excessive depth in document: {limit} use XML_PARSE_HUGE option"
                    ));
                }
            }
            i = j + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_like_a_parser() {
        assert!(check("<a><b/><c x='>'><d>text</d></c></a>", 3).is_ok());
        assert!(check("<a><b><c><d/></c></b></a>", 3).is_ok());
        assert!(check("<a><b><c><d></d></c></b></a>", 3).is_err());
        assert!(check("<a><!-- <b><c><d> --><![CDATA[<x><y><z>]]></a>", 1).is_ok());
        let deep = format!("{}{}", "<a>".repeat(1_000_000), "</a>".repeat(1_000_000));
        assert!(check(&deep, MAX_DEPTH).is_err());
        let fine = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(check(&fine, MAX_DEPTH).is_ok());
    }
}

//! Minimal JSON string writing for the frames core renders (no parsing, no allocation per char).

/// Appends `value` as a JSON string literal (with quotes) to `out`.
pub(crate) fn write_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The JSON text written into `out`: only ASCII escapes were inserted into valid UTF-8.
pub(crate) fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(value: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, value);
        into_string(out)
    }

    #[test]
    fn escapes_exactly_what_json_requires_in_short_form_where_it_has_one() {
        assert_eq!(string(""), "\"\"");
        assert_eq!(string("plain é ☃"), "\"plain é ☃\"");
        assert_eq!(
            string("\"q\" \\ \n \r \t"),
            "\"\\\"q\\\" \\\\ \\n \\r \\t\""
        );
        assert_eq!(
            string("\u{0}\u{1f}\u{7f}\u{8}\u{c}"),
            "\"\\u0000\\u001f\\u007f\\u0008\\u000c\""
        );
        assert_eq!(
            string("a\u{1}b"),
            "\"a\\u0001b\"",
            "text around an escape is kept"
        );
        for text in ["\u{1}x\"\n\t", "tail\u{1f}", "\u{2028}"] {
            let parsed: String = serde_json::from_str(&string(text)).unwrap();
            assert_eq!(parsed, text);
        }
    }
}

//! JSON text as Python's `json.dumps` writes it with its defaults
//! (`ensure_ascii=True`, separators `", "` and `": "`), and with `indent=N`.
//!
//! The upstream collectd stores each policy and failure detail as
//! `json.dumps(obj)` text, and the reportd aggregates several fetchers by
//! comparing those texts. A replacement must therefore spell them exactly like
//! Python: key order as received, non-ASCII as `\uXXXX` (surrogate pairs above
//! the BMP), lower-case hex, and Python's float repr.

use serde_json::Value;

/// `json.dumps(value)`: one line, separators `", "` and `": "`.
pub fn dumps(value: &Value) -> String {
    let mut out = String::with_capacity(64);
    write_value(&mut out, value, None, 0);
    out
}

/// `json.dumps(value, indent=indent)`: one member per line, separators `","`
/// and `": "`, empty containers as `{}` and `[]`.
pub fn dumps_indent(value: &Value, indent: usize) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, Some(indent), 0);
    out
}

/// Append a JSON string literal with Python's `ensure_ascii` escaping.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, *unit);
                }
            }
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[usize::from((unit >> shift) & 0xf)] as char);
    }
}

fn newline(out: &mut String, indent: usize, level: usize) {
    out.push('\n');
    for _ in 0..indent * level {
        out.push(' ');
    }
}

fn write_value(out: &mut String, value: &Value, indent: Option<usize>, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, &n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, i, indent, level + 1);
                write_value(out, item, indent, level + 1);
            }
            close(out, ']', indent, level);
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                separator(out, i, indent, level + 1);
                write_str(out, key);
                out.push_str(": ");
                write_value(out, item, indent, level + 1);
            }
            close(out, '}', indent, level);
        }
    }
}

/// A JSON number token as Python re-writes it after `json.loads`: integers
/// become Python ints (any size, `-0` is `0`), everything else a float.
/// (serde_json keeps the token text: feature `arbitrary_precision`.)
fn write_number(out: &mut String, token: &str) {
    if token.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        let digits = token.trim_start_matches('-');
        if digits.bytes().all(|b| b == b'0') {
            out.push('0');
        } else {
            out.push_str(token);
        }
    } else {
        out.push_str(&float_repr(token.parse().unwrap_or(f64::NAN)));
    }
}

fn separator(out: &mut String, index: usize, indent: Option<usize>, level: usize) {
    match indent {
        None if index > 0 => out.push_str(", "),
        None => {}
        Some(n) => {
            if index > 0 {
                out.push(',');
            }
            newline(out, n, level);
        }
    }
}

fn close(out: &mut String, bracket: char, indent: Option<usize>, level: usize) {
    if let Some(n) = indent {
        newline(out, n, level);
    }
    out.push(bracket);
}

/// Python's `repr(float)`: the shortest round-tripping digits, in fixed
/// notation for decimal exponents -4..16 (with `.0` when integral) and as
/// `d.ddde+XX` otherwise.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.5e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // position of the decimal point within digits
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_form_uses_python_separators_and_keeps_key_order() {
        let v: Value =
            serde_json::from_str(r#"{"policy-type":2,"b":[1,"x"],"a":{"z":null,"y":true}}"#)
                .unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"policy-type": 2, "b": [1, "x"], "a": {"z": null, "y": true}}"#
        );
    }

    #[test]
    fn strings_are_escaped_like_ensure_ascii() {
        let v = json!("a\"b\\c\n\r\t\u{8}\u{c}\u{1c}\u{7f}äöü😀");
        assert_eq!(
            dumps(&v),
            r#""a\"b\\c\n\r\t\b\f\u001c\u007f\u00e4\u00f6\u00fc\ud83d\ude00""#
        );
    }

    #[test]
    fn indent_form_matches_python_layout() {
        let v: Value =
            serde_json::from_str(r#"{"d": "x", "p": {"k": {"n": 1, "e": {}}}, "l": []}"#).unwrap();
        let expected = "{\n    \"d\": \"x\",\n    \"p\": {\n        \"k\": {\n            \"n\": 1,\n            \"e\": {}\n        }\n    },\n    \"l\": []\n}";
        assert_eq!(dumps_indent(&v, 4), expected);
    }

    #[test]
    fn numbers_are_rewritten_as_python_reads_them() {
        let v: Value =
            serde_json::from_str("[-0, 0, 12345678901234567890123, -7, 1.50, 1E400, -0.0]")
                .unwrap();
        assert_eq!(
            dumps(&v),
            "[0, 0, 12345678901234567890123, -7, 1.5, Infinity, -0.0]"
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        for (x, text) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(float_repr(x), text, "repr of {x}");
        }
    }
}

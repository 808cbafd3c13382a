//! Regular expressions written for Python's `re` (the map files are shared
//! with upstream) run on Rust's `regex`. The differences an operator may
//! meet are listed in the documentation of [`crate::maps`].

use regex::Regex;

/// Compile a pattern written for Python's `re`.
pub(crate) fn compile(pattern: &str) -> Result<Regex, String> {
    let mut translated = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        translated.push(c);
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                translated.push(if escaped == 'Z' { 'z' } else { escaped });
            }
        }
    }
    Regex::new(&translated).map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

/// Python's `re.match`: is there a match that begins at the start of `text`?
/// (The leftmost match begins at 0 whenever any match does.)
pub(crate) fn matches_at_start(regex: &Regex, text: &str) -> bool {
    regex.find(text).is_some_and(|m| m.start() == 0)
}

/// Translate a Python `re.sub` replacement template into Rust's `$` syntax,
/// with the escapes Python processes (Python 3.11 `re._parser.parse_template`).
/// Group references are checked against `regex` now: Python would raise
/// only when a destination matches, in the middle of the daemon's work.
pub(crate) fn replacement(template: &str, regex: &Regex) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            push_literal(&mut out, c);
            continue;
        }
        let Some(escape) = chars.next() else {
            return Err("bad escape (end of replacement)".into());
        };
        match escape {
            'g' => {
                if chars.next() != Some('<') {
                    return Err("missing < after \\g".into());
                }
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('>') => break,
                        Some(c) => name.push(c),
                        None => return Err("missing > after \\g<".into()),
                    }
                }
                let index = group_index(&name, regex)?;
                push_group(&mut out, index, regex)?;
            }
            '0' => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                push_literal(&mut out, char::from((value & 0xff) as u8));
            }
            '1'..='9' => {
                let first = escape.to_digit(10).expect("a digit");
                let Some(second) = chars.peek().and_then(|c| c.to_digit(10)) else {
                    push_group(&mut out, first as usize, regex)?;
                    continue;
                };
                chars.next();
                let third = chars.peek().and_then(|c| c.to_digit(8));
                match third {
                    Some(third) if first < 8 && second < 8 => {
                        chars.next();
                        let value = first * 64 + second * 8 + third;
                        if value > 0o377 {
                            return Err(format!(
                                "octal escape \\{first}{second}{third} outside of range 0-0o377"
                            ));
                        }
                        push_literal(&mut out, char::from(value as u8));
                    }
                    _ => push_group(&mut out, (first * 10 + second) as usize, regex)?,
                }
            }
            'a' => out.push('\u{07}'),
            'b' => out.push('\u{08}'),
            'f' => out.push('\u{0c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{0b}'),
            '\\' => out.push('\\'),
            c if c.is_ascii_alphabetic() => return Err(format!("bad escape \\{c}")),
            // Python keeps other unknown escapes such as `\&` as they are.
            c => {
                out.push('\\');
                push_literal(&mut out, c);
            }
        }
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if c == '$' {
        out.push_str("$$");
    } else {
        out.push(c);
    }
}

fn push_group(out: &mut String, index: usize, regex: &Regex) -> Result<(), String> {
    if index >= regex.captures_len() {
        return Err(format!("invalid group reference {index}"));
    }
    out.push_str(&format!("${{{index}}}"));
    Ok(())
}

/// `\g<name>` takes a group name if it is an identifier, else a number.
fn group_index(name: &str, regex: &Regex) -> Result<usize, String> {
    let mut chars = name.chars();
    let is_identifier = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_');
    if is_identifier {
        return regex
            .capture_names()
            .position(|n| n == Some(name))
            .ok_or_else(|| format!("unknown group name {name:?}"));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad character in group name {name:?}"));
    }
    name.parse()
        .map_err(|_| format!("invalid group reference {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substitute(pattern: &str, template: &str, text: &str) -> Result<String, String> {
        let regex = compile(pattern)?;
        let rust = replacement(template, &regex)?;
        Ok(regex.replace_all(text, rust.as_str()).into_owned())
    }

    #[test]
    fn python_backreferences_and_escapes_are_translated() {
        let cases = [
            ("(a)(b)", r"\2\1", "xab", "xba"),
            (
                "(?P<user>[^@]+)@",
                r"\g<user>+r@",
                "mailto:u@x",
                "mailto:u+r@x",
            ),
            ("(a)", r"\g<1>\g<0>$", "a", "aa$"),
            ("a", r"\n\t\\", "a", "\n\t\\"),
            ("a", r"\&", "a", "\\&"),
            ("a", r"\101\0", "a", "A\0"),
            ("(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)", r"\10", "abcdefghij", "j"),
            ("x", "$1", "x", "$1"),
            ("b+", "-", "abba cbb", "a-a c-"),
        ];
        for (pattern, template, text, expected) in cases {
            assert_eq!(
                substitute(pattern, template, text).as_deref(),
                Ok(expected),
                "{pattern} {template}"
            );
        }
    }

    #[test]
    fn bad_templates_are_refused_at_load_time() {
        for (pattern, template) in [
            ("(a)", r"\2"),
            ("(a)", r"\g<name>"),
            ("(a)", r"\g<1"),
            ("(a)", r"\g1"),
            ("(a)", r"\g<-1>"),
            ("(a)", r"\q"),
            ("(a)", "x\\"),
            ("(a)", r"\477"),
        ] {
            let regex = compile(pattern).unwrap();
            assert!(replacement(template, &regex).is_err(), "{template}");
        }
    }

    #[test]
    fn patterns_follow_python_match_semantics() {
        let regex = compile(r"mailto:.*@example\.com\Z").unwrap();
        assert!(matches_at_start(&regex, "mailto:a@example.com"));
        assert!(!matches_at_start(&regex, "mailto:a@example.com.evil"));
        assert!(!matches_at_start(&regex, "xmailto:a@example.com"));
        let regex = compile(r"b|ab").unwrap();
        assert!(matches_at_start(&regex, "ab"));
        assert!(compile(r"(a)\1").is_err(), "no backreferences in Rust");
        assert!(
            compile(r"\\Z").unwrap().is_match("\\Z"),
            "an escaped backslash stays"
        );
    }
}

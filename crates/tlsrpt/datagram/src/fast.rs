//! A single-pass reader for well-formed datagrams: it validates and writes the
//! Python `json.dumps` texts of policies and failure details while it reads,
//! without building a JSON tree. It is the collector's hot path; the tree
//! based reader in [`crate::parse`] stays the reference.
//!
//! It answers `None` for anything unusual (a syntax or type error, duplicate
//! keys inside a policy, numbers beyond 64 bits): the reference reader then
//! decides, so both always agree. A property test checks that agreement.

use std::borrow::Cow;

use crate::delivery::{
    check_dns_name, check_domain, normalize_domain, Delivery, PolicyResult, POLICY_TYPES,
    PROTOCOL_VERSION,
};
use crate::pyjson;

/// Nesting beyond this is left to the reference reader, whose own limit
/// (serde_json's 128, counted from the top) is then what applies.
const MAX_DEPTH: usize = 100;

/// Read a datagram that is valid UTF-8; `None` means "ask the reference reader".
pub fn parse_str(text: &str) -> Option<Delivery> {
    let mut r = Reader {
        s: text.as_bytes(),
        text,
        pos: 0,
    };
    let delivery = r.datagram()?;
    r.ws();
    (r.pos == r.s.len()).then_some(delivery)
}

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Iterate the members of an object: calls `member` with each key, the
    /// reader positioned at the value.
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Iterate the elements of an array.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A JSON string, unescaped; borrowed from the input when it has no
    /// escapes (the common case: no allocation).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + memchr::memchr2(b'"', b'\\', &self.s[start..])?;
        if self.s[start..end].iter().any(|&b| b < 0x20) {
            return None;
        }
        self.pos = end + 1;
        if self.s[end] == b'"' {
            return Some(Cow::Borrowed(&self.text[start..end]));
        }
        self.pos = end;
        let mut out = self.text[start..end].to_string();
        loop {
            match *self.s.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    let e = *self.s.get(self.pos + 1)?;
                    self.pos += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&first) {
                                if self.s.get(self.pos..self.pos + 2)? != b"\\u" {
                                    return None;
                                }
                                self.pos += 2;
                                let second = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&second) {
                                    return None;
                                }
                                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                            } else {
                                first
                            };
                            out.push(char::from_u32(c)?);
                        }
                        _ => return None,
                    }
                }
                _ => {
                    // Copy the run up to the next quote or escape at once.
                    let run = self.pos;
                    let stop = run + memchr::memchr2(b'"', b'\\', &self.s[run..])?;
                    if self.s[run..stop].iter().any(|&b| b < 0x20) {
                        return None;
                    }
                    out.push_str(&self.text[run..stop]);
                    self.pos = stop;
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        let v = u32::from_str_radix(digits, 16).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        Some(v)
    }

    /// The text of a JSON number token, and whether it is an integer.
    fn number(&mut self) -> Option<(&'a str, bool)> {
        self.ws();
        let start = self.pos;
        if self.s.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let int_len = self.pos - int_start;
        if int_len == 0 || (int_len > 1 && self.s[int_start] == b'0') {
            return None;
        }
        let mut integer = true;
        if self.s.get(self.pos) == Some(&b'.') {
            integer = false;
            self.pos += 1;
            let frac = self.pos;
            while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            if self.pos == frac {
                return None;
            }
        }
        if matches!(self.s.get(self.pos), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.s.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            let exp = self.pos;
            while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            if self.pos == exp {
                return None;
            }
        }
        Some((&self.text[start..self.pos], integer))
    }

    /// An integer that fits in i64.
    fn integer(&mut self) -> Option<i64> {
        match self.number()? {
            (text, true) => text.parse().ok(),
            _ => None,
        }
    }

    /// Copy any JSON value as Python's `json.dumps` writes it.
    fn value_py(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                let s = self.string()?;
                pyjson::write_str(out, &s);
            }
            b'{' => {
                out.push('{');
                let mut keys: Vec<Cow<'a, str>> = Vec::new();
                self.object(|r, key| {
                    if keys.contains(&key) {
                        return None; // duplicate: the reference reader decides
                    }
                    if !keys.is_empty() {
                        out.push_str(", ");
                    }
                    pyjson::write_str(out, &key);
                    out.push_str(": ");
                    keys.push(key);
                    r.value_py(out, depth + 1)
                })?;
                out.push('}');
            }
            b'[' => {
                out.push('[');
                let mut first = true;
                self.array(|r| {
                    if !first {
                        out.push_str(", ");
                    }
                    first = false;
                    r.value_py(out, depth + 1)
                })?;
                out.push(']');
            }
            b't' => self.literal("true", out)?,
            b'f' => self.literal("false", out)?,
            b'n' => self.literal("null", out)?,
            _ => match self.number()? {
                (text, true) => {
                    let n: i64 = text.parse().ok()?;
                    out.push_str(&n.to_string());
                }
                (text, false) => {
                    let x: f64 = text.parse().ok()?;
                    if !x.is_finite() {
                        return None;
                    }
                    out.push_str(&pyjson::float_repr(x));
                }
            },
        }
        Some(())
    }

    fn literal(&mut self, word: &str, out: &mut String) -> Option<()> {
        if self.s.get(self.pos..self.pos + word.len())? != word.as_bytes() {
            return None;
        }
        self.pos += word.len();
        out.push_str(word);
        Some(())
    }

    fn datagram(&mut self) -> Option<Delivery> {
        let mut domain = None;
        let mut record = None;
        let mut policies = None;
        let mut mismatch = false;
        self.object(|r, key| {
            match &*key {
                "dpv" => {
                    if r.string()? != PROTOCOL_VERSION {
                        return None;
                    }
                }
                "d" => domain = Some(r.string()?),
                "pr" => record = Some(r.string()?.into_owned()),
                "policies" => {
                    let mut list = Vec::new();
                    mismatch = false;
                    r.array(|r| {
                        let (p, m) = r.policy()?;
                        mismatch |= m;
                        list.push(p);
                        Some(())
                    })?;
                    policies = Some(list);
                }
                _ => {
                    // Unknown top-level keys are ignored, but must be valid JSON.
                    let mut sink = String::new();
                    r.value_py(&mut sink, 1)?;
                }
            }
            Some(())
        })?;
        let domain = normalize_domain(&domain?);
        check_domain(&domain).ok()?;
        Some(Delivery {
            domain,
            record: record?,
            policies: policies?,
            replaced_invalid_utf8: false,
            failure_count_mismatch: mismatch,
            unexpected_version: None,
        })
    }

    fn policy(&mut self) -> Option<(PolicyResult, bool)> {
        let mut json = String::with_capacity(128);
        json.push('{');
        let mut keys: Vec<Cow<'a, str>> = Vec::with_capacity(8);
        let mut policy_type = None;
        let mut failed = None;
        let mut count = None;
        let mut failures = None;
        self.object(|r, key| {
            if keys.contains(&key) {
                return None;
            }
            match &*key {
                "f" => {
                    failed = Some(match r.integer()? {
                        0 => false,
                        1 => true,
                        _ => return None,
                    })
                }
                "t" => count = Some(u64::try_from(r.integer()?).ok()?),
                "failure-details" => {
                    let mut list = Vec::new();
                    r.array(|r| {
                        list.push(r.failure_detail()?);
                        Some(())
                    })?;
                    failures = Some(list);
                }
                _ => {
                    if json.len() > 1 {
                        json.push_str(", ");
                    }
                    pyjson::write_str(&mut json, &key);
                    json.push_str(": ");
                    match &*key {
                        "policy-type" => {
                            let t = r.integer()?;
                            POLICY_TYPES.iter().find(|(code, _)| *code == t)?;
                            policy_type = Some(t);
                            json.push_str(&t.to_string());
                        }
                        "policy-domain" => {
                            if r.peek()? != b'"' {
                                return None;
                            }
                            let start = json.len();
                            r.value_py(&mut json, 2)?;
                            let written: String = serde_json::from_str(&json[start..]).ok()?;
                            check_dns_name(&normalize_domain(&written)).ok()?;
                        }
                        "policy-string" | "mx-host" => {
                            json.push('[');
                            let mut first = true;
                            r.array(|r| {
                                if r.peek()? != b'"' {
                                    return None;
                                }
                                if !first {
                                    json.push_str(", ");
                                }
                                first = false;
                                r.value_py(&mut json, 3)
                            })?;
                            json.push(']');
                        }
                        _ => r.value_py(&mut json, 2)?,
                    }
                }
            }
            keys.push(key);
            Some(())
        })?;
        json.push('}');
        policy_type?;
        let failures: Vec<String> = failures.unwrap_or_default();
        let mismatch = count.is_some_and(|t| t != failures.len() as u64);
        Some((
            PolicyResult {
                policy_json: json,
                failed: failed?,
                failures,
            },
            mismatch,
        ))
    }

    fn failure_detail(&mut self) -> Option<String> {
        let mut json = String::with_capacity(128);
        json.push('{');
        let mut keys: Vec<Cow<'a, str>> = Vec::with_capacity(8);
        self.object(|r, key| {
            if keys.contains(&key) {
                return None;
            }
            if json.len() > 1 {
                json.push_str(", ");
            }
            pyjson::write_str(&mut json, &key);
            json.push_str(": ");
            match &*key {
                "c" => json.push_str(&r.integer()?.to_string()),
                "s" | "n" | "h" | "r" | "a" | "f" => {
                    if r.peek()? != b'"' {
                        return None;
                    }
                    r.value_py(&mut json, 4)?;
                }
                _ => r.value_py(&mut json, 4)?,
            }
            keys.push(key);
            Some(())
        })?;
        json.push('}');
        keys.iter().any(|k| k == "c").then_some(json)
    }
}

//! The Postfix socketmap protocol (Postfix `socketmap_table(5)`), framed as
//! netstrings (D. J. Bernstein, "Netstrings", 1997: `LENGTH:PAYLOAD,` with
//! LENGTH in decimal without leading zeros).
//!
//! Postfix sends one request per lookup, `NAME KEY` (`19:postfix
//! example.com,`), and may send the next one on the same connection after
//! reading the answer. The answer's payload is `OK VALUE`, `NOTFOUND `,
//! `TEMP REASON` or `PERM REASON`.
//!
//! The peer is trusted to be Postfix, but the socket may be reachable by
//! others: the [`Decoder`] holds at most one partial payload of at most its
//! cap, refuses an announced length over the cap before any payload byte
//! arrives, and never panics.

use std::fmt;

/// Default cap on a request payload, in bytes. Postfix sends a map name
/// and a next-hop domain or `[host]:port` (a host name is at most 253
/// bytes), so 1024 is generous; postfix-mta-sts-resolver uses the same
/// limit, postfix-tlspol 10 000. Postfix's own cap (`socketmap_max_reply`,
/// 100 000) is for what it reads, [`MAX_ANSWER_LEN`].
pub const MAX_REQUEST_LEN: usize = 1024;

/// Longest answer payload Postfix accepts: `socketmap_max_reply` defaults
/// to 100 000 bytes (`socketmap_table(5)`); [`Answer::encode`] refuses more.
pub const MAX_ANSWER_LEN: usize = 100_000;

/// Longest reason in a `TEMP` or `PERM` answer, in bytes. Postfix only logs
/// it; a bound keeps one bad upstream error from filling the log.
pub const MAX_REASON_LEN: usize = 200;

/// One lookup from Postfix: `NAME KEY`, split at the first space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The socketmap name (`postfix` in
    /// `socketmap:inet:127.0.0.1:8461:postfix`); the daemon may serve
    /// several.
    pub map: String,
    /// The lookup key as sent (a domain, `.domain` for a parent-domain
    /// lookup, or `[host]:port`); no normalization here.
    pub key: String,
}

/// Why the decoder refused input. [`is_fatal`](DecodeError::is_fatal)
/// framing errors leave the stream out of step: the connection must be
/// closed. The others concern one complete request: answer it `PERM` and
/// carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("netstring length has a leading zero")]
    LeadingZero,
    #[error("netstring length has the byte {0:#04x} where a digit or ':' belongs")]
    NotADigit(u8),
    #[error("netstring length is empty")]
    EmptyLength,
    #[error("netstring announces more than {max} bytes")]
    TooLong { max: usize },
    #[error("netstring payload is followed by {0:#04x}, not ','")]
    MissingComma(u8),
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("request has no space between map name and key")]
    NoSeparator,
    #[error("request has an empty map name or key")]
    Empty,
    #[error("request contains a control character")]
    ControlCharacter,
}

impl DecodeError {
    /// True when the stream is out of step and the connection must close.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::LeadingZero
                | DecodeError::NotADigit(_)
                | DecodeError::EmptyLength
                | DecodeError::TooLong { .. }
                | DecodeError::MissingComma(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading the length; `digits` counts the digits seen.
    Length { value: usize, digits: usize },
    /// Reading a payload of `len` bytes into `Decoder::payload`.
    Payload { len: usize },
    /// Payload complete, the comma is next.
    Comma,
    /// A framing error happened; it is repeated on every call.
    Failed(DecodeError),
}

/// Incremental request decoder: give it what the socket produced with
/// [`push`](Decoder::push); it consumes bytes up to the end of the first
/// complete request and says how many it took, so the caller keeps the rest
/// for the next call. The decoder itself holds at most the cap.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    payload: Vec<u8>,
    max_len: usize,
}

/// What one [`Decoder::push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed; the caller passes the rest next time.
    pub consumed: usize,
    /// A complete request (or why it is refused), if one ended in the
    /// consumed bytes. `None`: all input consumed, more needed.
    pub item: Option<Result<Request, DecodeError>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder with the cap [`MAX_REQUEST_LEN`].
    pub fn new() -> Decoder {
        Decoder::with_max_len(MAX_REQUEST_LEN)
    }

    /// A decoder that refuses payloads longer than `max_len` bytes.
    pub fn with_max_len(max_len: usize) -> Decoder {
        Decoder {
            state: State::Length {
                value: 0,
                digits: 0,
            },
            payload: Vec::new(),
            max_len,
        }
    }

    /// Bytes of a partial request held (at most the cap).
    pub fn buffered(&self) -> usize {
        self.payload.len()
    }

    /// True between requests: an end of stream here is clean, elsewhere it
    /// cut a request short.
    pub fn is_idle(&self) -> bool {
        self.state
            == State::Length {
                value: 0,
                digits: 0,
            }
    }

    /// Consumes `input` up to the end of the first complete request.
    pub fn push(&mut self, input: &[u8]) -> Step {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Failed(ref e) => {
                    return Step {
                        consumed: at,
                        item: Some(Err(e.clone())),
                    }
                }
                State::Length { value, digits } => {
                    let b = input[at];
                    at += 1;
                    match b {
                        b'0'..=b'9' => {
                            if digits > 0 && value == 0 {
                                return self.fail(at, DecodeError::LeadingZero);
                            }
                            let value = value
                                .checked_mul(10)
                                .and_then(|v| v.checked_add(usize::from(b - b'0')));
                            match value {
                                Some(value) if value <= self.max_len => {
                                    self.state = State::Length {
                                        value,
                                        digits: digits + 1,
                                    }
                                }
                                _ => {
                                    let max = self.max_len;
                                    return self.fail(at, DecodeError::TooLong { max });
                                }
                            }
                        }
                        b':' if digits == 0 => return self.fail(at, DecodeError::EmptyLength),
                        b':' => {
                            self.payload.clear();
                            self.payload.reserve_exact(value);
                            self.state = if value == 0 {
                                State::Comma
                            } else {
                                State::Payload { len: value }
                            };
                        }
                        other => return self.fail(at, DecodeError::NotADigit(other)),
                    }
                }
                State::Payload { len } => {
                    let want = len - self.payload.len();
                    let take = want.min(input.len() - at);
                    self.payload.extend_from_slice(&input[at..at + take]);
                    at += take;
                    if self.payload.len() == len {
                        self.state = State::Comma;
                    }
                }
                State::Comma => {
                    let b = input[at];
                    at += 1;
                    if b != b',' {
                        return self.fail(at, DecodeError::MissingComma(b));
                    }
                    self.state = State::Length {
                        value: 0,
                        digits: 0,
                    };
                    let payload = std::mem::take(&mut self.payload);
                    return Step {
                        consumed: at,
                        item: Some(parse_request(payload)),
                    };
                }
            }
        }
        let item = match &self.state {
            State::Failed(e) => Some(Err(e.clone())),
            _ => None,
        };
        Step { consumed: at, item }
    }

    fn fail(&mut self, consumed: usize, error: DecodeError) -> Step {
        self.payload = Vec::new();
        self.state = State::Failed(error.clone());
        Step {
            consumed,
            item: Some(Err(error)),
        }
    }
}

fn parse_request(payload: Vec<u8>) -> Result<Request, DecodeError> {
    let text = String::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(DecodeError::ControlCharacter);
    }
    let (map, key) = text.split_once(' ').ok_or(DecodeError::NoSeparator)?;
    if map.is_empty() || key.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(Request {
        map: map.to_string(),
        key: key.to_string(),
    })
}

/// An answer to Postfix (`socketmap_table(5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `OK VALUE`: the table's value for the key; for
    /// `smtp_tls_policy_maps`, a security level and its attributes
    /// (see [`crate::answer`]).
    Ok(String),
    /// `NOTFOUND `: no entry; Postfix applies `smtp_tls_security_level`.
    NotFound,
    /// `TEMP REASON`: lookup failed for now; Postfix defers the delivery.
    Temp(String),
    /// `PERM REASON`: lookup failed for good (e.g. a malformed request);
    /// Postfix treats it as a configuration error and defers.
    Perm(String),
}

/// Why an `OK` value cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("OK value is empty")]
    Empty,
    #[error("OK value contains a control character")]
    ControlCharacter,
    #[error("answer of {len} bytes is over Postfix's limit of {MAX_ANSWER_LEN}")]
    TooLong { len: usize },
}

impl Answer {
    /// The payload (`OK VALUE`, ...), unframed. An `OK` value must be
    /// non-empty, free of control characters (a newline or NUL would end
    /// Postfix's string) and fit [`MAX_ANSWER_LEN`]; the caller decides
    /// what to send instead (usually `TEMP`). Reasons are free text for
    /// Postfix's log: they are made one line (control characters become
    /// spaces) and cut to [`MAX_REASON_LEN`] bytes, never refused.
    pub fn payload(&self) -> Result<String, EncodeError> {
        match self {
            Answer::Ok(value) => {
                if value.is_empty() {
                    return Err(EncodeError::Empty);
                }
                if value.chars().any(char::is_control) {
                    return Err(EncodeError::ControlCharacter);
                }
                let len = value.len() + 3;
                if len > MAX_ANSWER_LEN {
                    return Err(EncodeError::TooLong { len });
                }
                Ok(format!("OK {value}"))
            }
            Answer::NotFound => Ok("NOTFOUND ".to_string()),
            Answer::Temp(reason) => Ok(format!("TEMP {}", one_line(reason))),
            Answer::Perm(reason) => Ok(format!("PERM {}", one_line(reason))),
        }
    }

    /// The answer framed as a netstring, ready for the socket.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let payload = self.payload()?;
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend_from_slice(payload.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(payload.as_bytes());
        out.push(b',');
        Ok(out)
    }

    /// Reads an answer payload (what a socketmap client such as Postfix
    /// sees), for tests and diagnostics. `None` when it is none of the four.
    pub fn parse(payload: &str) -> Option<Answer> {
        let (status, rest) = payload.split_once(' ')?;
        match status {
            "OK" => Some(Answer::Ok(rest.to_string())),
            "NOTFOUND" if rest.is_empty() => Some(Answer::NotFound),
            "TEMP" => Some(Answer::Temp(rest.to_string())),
            "PERM" => Some(Answer::Perm(rest.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.payload() {
            Ok(p) => f.write_str(&p),
            Err(e) => write!(f, "<unsendable answer: {e}>"),
        }
    }
}

/// A reason as one line of at most [`MAX_REASON_LEN`] bytes.
fn one_line(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON_LEN));
    for c in reason.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON_LEN {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut Decoder, mut input: &[u8]) -> Vec<Result<Request, DecodeError>> {
        let mut out = Vec::new();
        loop {
            let step = decoder.push(input);
            input = &input[step.consumed..];
            match step.item {
                Some(Err(e)) if e.is_fatal() => {
                    out.push(Err(e));
                    return out;
                }
                Some(item) => out.push(item),
                None => return out,
            }
        }
    }

    fn req(map: &str, key: &str) -> Result<Request, DecodeError> {
        Ok(Request {
            map: map.into(),
            key: key.into(),
        })
    }

    #[test]
    fn one_request() {
        let mut d = Decoder::new();
        assert_eq!(
            decode_all(&mut d, b"19:postfix example.com,"),
            [req("postfix", "example.com")]
        );
        assert!(d.is_idle());
    }

    #[test]
    fn pipelined_requests_one_at_a_time() {
        let mut d = Decoder::new();
        let input = b"11:postfix a.b,14:postfix [c]:25,";
        let step = d.push(input);
        assert_eq!(step.consumed, 15);
        assert_eq!(step.item, Some(req("postfix", "a.b")));
        let step = d.push(&input[15..]);
        assert_eq!(step.consumed, input.len() - 15);
        assert_eq!(step.item, Some(req("postfix", "[c]:25")));
    }

    #[test]
    fn byte_by_byte() {
        let mut d = Decoder::new();
        let input = b"19:postfix example.com,";
        for (i, b) in input.iter().enumerate() {
            let step = d.push(std::slice::from_ref(b));
            assert_eq!(step.consumed, 1);
            if i + 1 < input.len() {
                assert_eq!(step.item, None);
                assert!(!d.is_idle());
            } else {
                assert_eq!(step.item, Some(req("postfix", "example.com")));
            }
        }
    }

    #[test]
    fn key_keeps_spaces_after_the_first() {
        let mut d = Decoder::new();
        assert_eq!(decode_all(&mut d, b"5:a b c,"), [req("a", "b c")]);
    }

    #[test]
    fn framing_errors_are_fatal_and_sticky() {
        for (input, err) in [
            (&b"023:x,"[..], DecodeError::LeadingZero),
            (b"00:,", DecodeError::LeadingZero),
            (b":x,", DecodeError::EmptyLength),
            (b"2x:ab,", DecodeError::NotADigit(b'x')),
            (b"-1:", DecodeError::NotADigit(b'-')),
            (b" 3:a b,", DecodeError::NotADigit(b' ')),
            (b"3:a b;", DecodeError::MissingComma(b';')),
            (b"3:a bc,", DecodeError::MissingComma(b'c')),
            (b"1025:", DecodeError::TooLong { max: 1024 }),
            (
                b"99999999999999999999999999:",
                DecodeError::TooLong { max: 1024 },
            ),
        ] {
            let mut d = Decoder::new();
            let got = decode_all(&mut d, input);
            assert_eq!(got.last(), Some(&Err(err.clone())), "{input:?}");
            assert!(err.is_fatal());
            assert_eq!(d.push(b"3:a b,").item, Some(Err(err)));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversize_refused_before_payload() {
        let mut d = Decoder::new();
        // The fourth digit makes 1025: refused there, nothing buffered.
        let step = d.push(b"1025:");
        assert_eq!(step.consumed, 4);
        assert_eq!(step.item, Some(Err(DecodeError::TooLong { max: 1024 })));
        assert_eq!(d.buffered(), 0);
        let mut d = Decoder::with_max_len(5);
        assert_eq!(decode_all(&mut d, b"5:ab cd,"), [req("ab", "cd")]);
        assert_eq!(
            decode_all(&mut d, b"6:"),
            [Err(DecodeError::TooLong { max: 5 })]
        );
    }

    #[test]
    fn bad_requests_keep_the_stream() {
        let mut d = Decoder::new();
        let got = decode_all(&mut d, b"0:,7:postfix,2:\xff ,3:a\nb,2: x,2:x ,5:a b.c,");
        assert_eq!(
            got,
            [
                Err(DecodeError::NoSeparator),
                Err(DecodeError::NoSeparator),
                Err(DecodeError::NotUtf8),
                Err(DecodeError::ControlCharacter),
                Err(DecodeError::Empty),
                Err(DecodeError::Empty),
                req("a", "b.c"),
            ]
        );
        assert!(got[..6].iter().all(|r| !r.as_ref().unwrap_err().is_fatal()));
    }

    #[test]
    fn answers() {
        assert_eq!(Answer::NotFound.encode().unwrap(), b"9:NOTFOUND ,");
        assert_eq!(
            Answer::Ok("dane-only".into()).encode().unwrap(),
            b"12:OK dane-only,"
        );
        assert_eq!(
            Answer::Temp("dns timeout".into()).encode().unwrap(),
            b"16:TEMP dns timeout,"
        );
        assert_eq!(Answer::Perm(String::new()).encode().unwrap(), b"5:PERM ,");
    }

    #[test]
    fn ok_values_are_checked() {
        assert_eq!(Answer::Ok(String::new()).encode(), Err(EncodeError::Empty));
        assert_eq!(
            Answer::Ok("secure\nx".into()).encode(),
            Err(EncodeError::ControlCharacter)
        );
        assert_eq!(
            Answer::Ok("a\0".into()).encode(),
            Err(EncodeError::ControlCharacter)
        );
        let long = "x".repeat(MAX_ANSWER_LEN - 3);
        assert_eq!(
            Answer::Ok(long.clone()).payload().unwrap().len(),
            MAX_ANSWER_LEN
        );
        assert_eq!(
            Answer::Ok(format!("{long}x")).encode(),
            Err(EncodeError::TooLong {
                len: MAX_ANSWER_LEN + 1
            })
        );
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        let p = Answer::Temp("a\r\nb\0c".into()).payload().unwrap();
        assert_eq!(p, "TEMP a  b c");
        let p = Answer::Perm("é".repeat(500)).payload().unwrap();
        assert_eq!(p.len(), 5 + MAX_REASON_LEN);
        assert!(p.is_char_boundary(p.len()));
    }

    #[test]
    fn parse_answers() {
        for a in [
            Answer::NotFound,
            Answer::Ok("secure match=a".into()),
            Answer::Temp("x y".into()),
            Answer::Perm(String::new()),
        ] {
            assert_eq!(Answer::parse(&a.payload().unwrap()), Some(a));
        }
        assert_eq!(Answer::parse("NOTFOUND"), None);
        assert_eq!(Answer::parse("MAYBE x"), None);
    }

    proptest! {
        #[test]
        fn never_panics_never_buffers_over_cap(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            cap in 0usize..64,
        ) {
            let mut d = Decoder::with_max_len(cap);
            for chunk in &chunks {
                let mut input = &chunk[..];
                loop {
                    let step = d.push(input);
                    prop_assert!(step.consumed <= input.len());
                    prop_assert!(d.buffered() <= cap);
                    input = &input[step.consumed..];
                    match step.item {
                        Some(Err(e)) if e.is_fatal() => break,
                        Some(_) => continue,
                        None => { prop_assert!(input.is_empty()); break }
                    }
                }
            }
        }

        #[test]
        fn encoded_requests_round_trip(map in "[a-z]{1,10}", key in "[ -~]{1,50}", split in 0usize..80) {
            let payload = format!("{map} {key}");
            let wire = format!("{}:{payload},", payload.len());
            let split = split.min(wire.len());
            let mut d = Decoder::new();
            let first = d.push(&wire.as_bytes()[..split]);
            let mut got = first.item;
            let mut rest = &wire.as_bytes()[first.consumed..];
            if got.is_none() {
                let step = d.push(rest);
                rest = &rest[step.consumed..];
                got = step.item;
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(got, Some(Ok(Request { map, key })));
            prop_assert!(d.is_idle());
        }

        #[test]
        fn answers_frame_and_stay_one_line(reason in ".{0,400}") {
            for a in [Answer::Temp(reason.clone()), Answer::Perm(reason.clone())] {
                let wire = a.encode().unwrap();
                let text = std::str::from_utf8(&wire).unwrap();
                let (len, rest) = text.split_once(':').unwrap();
                let payload = rest.strip_suffix(',').unwrap();
                prop_assert_eq!(len.parse::<usize>().unwrap(), payload.len());
                prop_assert!(!payload.chars().any(char::is_control));
                prop_assert!(payload.len() <= 5 + MAX_REASON_LEN);
            }
        }
    }
}

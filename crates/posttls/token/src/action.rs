//! The action token: which message, which action, until when.
//!
//! Wire format (all of it inside the URL-safe base64 text, no padding):
//!
//! ```text
//! payload = version (1 byte, 1)
//!           action (1 byte: 1 view, 2 release, 3 delete)
//!           arrival_time, expires_at (i64, big endian, Unix seconds)
//!           nonce (16 bytes)
//!           instance, queue_id, sender (each a string)
//!           recipient count (varint), recipients (each a string, sorted, distinct)
//! string  = byte length (varint, LEB128) followed by UTF-8
//! text    = base64url(payload || HMAC-SHA256(key, "posttls action token v1\0" || payload))
//! ```
//!
//! Binary rather than JSON keeps a typical link near 200 characters; the
//! version byte comes first so that a later format can change everything
//! after it, including the MAC.

use std::fmt::Write as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::SecretKey;

/// The longest token text that [`ActionToken::sign`] makes and
/// [`ActionToken::verify`] reads, in characters: room for about a hundred
/// typical recipients, well inside the URL lengths that browsers, mail
/// clients and HTTP servers accept. Verification rejects longer input before
/// decoding it, so hostile links cost nothing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The format version, the first byte of every payload.
const VERSION: u8 = 1;

/// Domain separation: tags over action tokens of this version.
const MAC_CONTEXT: &[u8] = b"posttls action token v1\0";

/// The length of the HMAC-SHA256 tag at the end of the decoded text.
const TAG_LEN: usize = 32;

/// The length of the random nonce.
const NONCE_LEN: usize = 16;

/// What a token allows its holder to do with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Show the confirmation page. The notification links to this one, so
    /// following the link changes nothing.
    View,
    /// Send the message to the TLS-failed recipients without TLS.
    Release,
    /// Delete the message.
    Delete,
}

impl Action {
    /// The name used in URLs, forms and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Release => "release",
            Action::Delete => "delete",
        }
    }

    fn code(self) -> u8 {
        match self {
            Action::View => 1,
            Action::Release => 2,
            Action::Delete => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Action::View),
            2 => Some(Action::Release),
            3 => Some(Action::Delete),
            _ => None,
        }
    }
}

/// Why a token was not accepted, each with a message for the person who
/// clicked the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all: cut off, mangled by a mail client, or made up.
    #[error("the link is incomplete or damaged: open the whole link from the notification mail")]
    Malformed,
    /// A well-formed token whose tag does not match: forged, altered, or
    /// signed with another key (a key file that was replaced).
    #[error("the link was not issued by this server or was altered: use the link from the notification mail")]
    BadSignature,
    /// A genuine token past its expiry time.
    #[error(
        "the link has expired: a reminder mail brings a new one, or ask the mail administrator"
    )]
    Expired,
    /// [`ActionToken::sign`] only: the token would be longer than
    /// [`MAX_TOKEN_LEN`], because of a very long recipient list.
    #[error(
        "the token would be {len} characters long, more than the {MAX_TOKEN_LEN} a link may have"
    )]
    TooLarge {
        /// The length the text would have had.
        len: usize,
    },
}

/// A signed statement "the holder may do `action` to this message until
/// `expires_at`".
///
/// A message is named by instance, queue id AND arrival time, because
/// Postfix reuses short queue ids; sender and recipients are included so
/// that a token never applies to a message it was not written for. The
/// recipients are the ones whose delivery failed for lack of TLS, the ones a
/// release would send in the clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionToken {
    /// The Postfix instance (its config directory or name).
    pub instance: String,
    /// The queue id.
    pub queue_id: String,
    /// The message's arrival time, Unix seconds, from `postqueue -j`.
    pub arrival_time: i64,
    /// The envelope sender.
    pub sender: String,
    /// The TLS-failed recipients, sorted and without duplicates.
    pub recipients: Vec<String>,
    /// What the token allows.
    pub action: Action,
    /// Unix seconds from which the token is refused.
    pub expires_at: i64,
    /// Random bytes that make every token distinct, and its [`id`](Self::id).
    pub nonce: [u8; NONCE_LEN],
}

impl ActionToken {
    /// A token with a fresh random nonce; `recipients` are sorted and
    /// deduplicated, the form in which they are signed and compared.
    pub fn new(
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
        sender: &str,
        recipients: &[impl AsRef<str>],
        action: Action,
        expires_at: i64,
    ) -> Self {
        ActionToken {
            instance: instance.to_owned(),
            queue_id: queue_id.to_owned(),
            arrival_time,
            sender: sender.to_owned(),
            recipients: canonical(recipients)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            action,
            expires_at,
            nonce: random_nonce(),
        }
    }

    /// A token for another action on the same message, with the same
    /// expiry and a fresh nonce: how the confirmation page turns the View
    /// token of the mail into the Release and Delete tokens of its form.
    #[must_use]
    pub fn with_action(&self, action: Action) -> Self {
        ActionToken {
            action,
            nonce: random_nonce(),
            ..self.clone()
        }
    }

    /// The token as URL-safe text (`A-Z a-z 0-9 - _`), to put in a link path
    /// or query as it is.
    ///
    /// # Errors
    /// [`TokenError::TooLarge`] when the text would exceed
    /// [`MAX_TOKEN_LEN`], which takes about a hundred recipients.
    pub fn sign(&self, key: &SecretKey) -> Result<String, TokenError> {
        let mut bytes = self.payload();
        let len = base64::encoded_len(bytes.len() + TAG_LEN, false).unwrap_or(usize::MAX);
        if len > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge { len });
        }
        let mut mac = key.mac(MAC_CONTEXT);
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token in `text`, if it was signed with `key` and has not expired
    /// at `now` (Unix seconds): valid while `now < expires_at`.
    ///
    /// The tag is checked in constant time before anything but the version
    /// byte is read, so forged input never reaches the parser.
    ///
    /// # Errors
    /// [`TokenError::Malformed`] for text that is not a token of this
    /// format, [`TokenError::BadSignature`] for a wrong tag,
    /// [`TokenError::Expired`] for a genuine token at or after its expiry.
    pub fn verify(key: &SecretKey, text: &str, now: i64) -> Result<ActionToken, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() <= TAG_LEN || bytes[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = key.mac(MAC_CONTEXT);
        mac.update(payload);
        mac.verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let token = Self::parse(payload).ok_or(TokenError::Malformed)?;
        if now >= token.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }

    /// A stable name for this token (the nonce in hex, 32 characters), for
    /// the store's record of tokens already used.
    pub fn id(&self) -> String {
        self.nonce
            .iter()
            .fold(String::with_capacity(2 * NONCE_LEN), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    /// Whether the token describes this message: the same instance, queue
    /// id, arrival time and sender, and the same set of TLS-failed
    /// recipients (order and duplicates do not matter).
    ///
    /// The web layer calls this with what the queue holds at action time. A
    /// queue id reused for another message, or a message whose TLS-failed
    /// recipients changed since the mail was sent, is refused, so a token
    /// never acts on recipients its mail did not name.
    pub fn bound_to(
        &self,
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
        sender: &str,
        recipients: &[impl AsRef<str>],
    ) -> bool {
        self.instance == instance
            && self.queue_id == queue_id
            && self.arrival_time == arrival_time
            && self.sender == sender
            && canonical(&self.recipients) == canonical(recipients)
    }

    /// The signed bytes (see the module documentation).
    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.queue_id.len() + self.sender.len());
        out.push(VERSION);
        out.push(self.action.code());
        out.extend_from_slice(&self.arrival_time.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        for field in [&self.instance, &self.queue_id, &self.sender] {
            put_str(&mut out, field);
        }
        let recipients = canonical(&self.recipients);
        put_varint(&mut out, recipients.len());
        for recipient in recipients {
            put_str(&mut out, recipient);
        }
        out
    }

    /// The token in a payload whose tag was verified; `None` if it does not
    /// follow the format.
    fn parse(payload: &[u8]) -> Option<Self> {
        let mut r = Reader(payload);
        if r.byte()? != VERSION {
            return None;
        }
        let action = Action::from_code(r.byte()?)?;
        let arrival_time = i64::from_be_bytes(r.array()?);
        let expires_at = i64::from_be_bytes(r.array()?);
        let nonce = r.array()?;
        let instance = r.string()?;
        let queue_id = r.string()?;
        let sender = r.string()?;
        let count = r.varint()?;
        // Each recipient takes at least one byte: a count beyond what is
        // left cannot be honest, and must not size an allocation.
        if count > r.0.len() {
            return None;
        }
        let recipients = (0..count).map(|_| r.string()).collect::<Option<Vec<_>>>()?;
        if !r.0.is_empty() {
            return None;
        }
        Some(ActionToken {
            instance,
            queue_id,
            arrival_time,
            sender,
            recipients,
            action,
            expires_at,
            nonce,
        })
    }
}

/// Recipients in the form in which they are signed and compared: sorted,
/// without duplicates.
fn canonical(recipients: &[impl AsRef<str>]) -> Vec<&str> {
    let mut sorted: Vec<&str> = recipients.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a payload; every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A LEB128 number of at most four bytes (28 bits), more than any
    /// token can hold.
    fn varint(&mut self) -> Option<usize> {
        let mut n = 0;
        for shift in (0..28).step_by(7) {
            let byte = self.byte()?;
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn string(&mut self) -> Option<String> {
        let len = self.varint()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_780_000_000;

    fn sample() -> ActionToken {
        ActionToken::new(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &["bob@partner.example", "carol@other.example"],
            Action::View,
            NOW + 7 * 86400,
        )
    }

    /// The text of `token` under `key`, but with the tag of `signed_as`:
    /// what an attacker gets by editing a genuine token.
    fn with_tag_of(token: &ActionToken, signed_as: &str) -> String {
        let genuine = URL_SAFE_NO_PAD.decode(signed_as).unwrap();
        let mut bytes = token.payload();
        bytes.extend_from_slice(&genuine[genuine.len() - TAG_LEN..]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn round_trip() {
        let key = SecretKey::generate();
        for action in [Action::View, Action::Release, Action::Delete] {
            let token = sample().with_action(action);
            let text = token.sign(&key).unwrap();
            assert_eq!(ActionToken::verify(&key, &text, NOW), Ok(token));
        }
    }

    #[test]
    fn round_trip_of_empty_and_unicode_fields() {
        let key = SecretKey::generate();
        let empty = ActionToken::new(
            "",
            "",
            i64::MIN,
            "",
            &[] as &[&str],
            Action::Delete,
            i64::MAX,
        );
        assert_eq!(
            ActionToken::verify(&key, &empty.sign(&key).unwrap(), NOW),
            Ok(empty)
        );
        let long_field = "x".repeat(300); // a two-byte length
        let unicode = ActionToken::new(
            "ü",
            &long_field,
            -1,
            "jörg@bücher.example",
            &["δ@ελ.example"],
            Action::View,
            NOW + 1,
        );
        assert_eq!(
            ActionToken::verify(&key, &unicode.sign(&key).unwrap(), NOW),
            Ok(unicode)
        );
    }

    #[test]
    fn typical_tokens_are_short_and_url_safe() {
        let key = SecretKey::generate();
        let text = sample().sign(&key).unwrap();
        assert!(text.len() < 300, "{} characters", text.len());
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{text}"
        );
        let one = ActionToken::new(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW,
            "a.sender@example.org",
            &["r@partner.example"],
            Action::View,
            NOW,
        );
        assert!(one.sign(&key).unwrap().len() < 200);
    }

    #[test]
    fn recipients_are_kept_sorted_and_distinct() {
        let token = ActionToken::new(
            "i",
            "q",
            0,
            "s",
            &["c@x", "a@x", "c@x", "b@x"],
            Action::View,
            1,
        );
        assert_eq!(token.recipients, ["a@x", "b@x", "c@x"]);
        // A token built field by field with unsorted recipients still signs
        // the canonical order, so it verifies as the sorted token.
        let key = SecretKey::generate();
        let mut unsorted = token.clone();
        unsorted.recipients = vec!["c@x".into(), "b@x".into(), "a@x".into(), "a@x".into()];
        assert_eq!(unsorted.sign(&key), token.sign(&key));
    }

    #[test]
    fn tokens_differ_by_nonce_and_have_stable_ids() {
        let key = SecretKey::generate();
        let a = sample();
        let b = a.with_action(Action::View);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.id(), b.id());
        assert_ne!(a.sign(&key), b.sign(&key));
        let id = a.id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let verified = ActionToken::verify(&key, &a.sign(&key).unwrap(), NOW).unwrap();
        assert_eq!(verified.id(), id);
        let mut zero = a.clone();
        zero.nonce = [0; 16];
        zero.nonce[15] = 0xab;
        assert_eq!(zero.id(), "000000000000000000000000000000ab");
    }

    #[test]
    fn with_action_keeps_the_binding() {
        let view = sample();
        let release = view.with_action(Action::Release);
        assert_eq!(release.action, Action::Release);
        assert_eq!(
            (&release.instance, &release.queue_id, release.arrival_time),
            (&view.instance, &view.queue_id, view.arrival_time)
        );
        assert_eq!(
            (&release.sender, &release.recipients, release.expires_at),
            (&view.sender, &view.recipients, view.expires_at)
        );
    }

    /// A change an attacker makes to a token's fields.
    type Edit = fn(&mut ActionToken);

    #[test]
    fn every_tampered_field_is_a_bad_signature() {
        let key = SecretKey::generate();
        let token = sample();
        let text = token.sign(&key).unwrap();
        assert_eq!(with_tag_of(&token, &text), text);
        let edits: [(&str, Edit); 13] = [
            ("instance", |t| t.instance = "postfix-out".into()),
            ("queue id", |t| t.queue_id = "4dXyPq1Zk2z9Tn".into()),
            ("arrival time", |t| t.arrival_time += 1),
            ("sender", |t| t.sender = "mallory@example.org".into()),
            ("recipient changed", |t| {
                t.recipients[0] = "bob@evil.example".into()
            }),
            ("recipient added", |t| {
                t.recipients.push("zed@evil.example".into())
            }),
            ("recipient removed", |t| {
                t.recipients.pop();
            }),
            ("no recipients", |t| t.recipients.clear()),
            ("action release", |t| t.action = Action::Release),
            ("action delete", |t| t.action = Action::Delete),
            ("expiry", |t| t.expires_at += 86400),
            ("nonce", |t| t.nonce[0] ^= 1),
            ("fields shifted", |t| {
                // The same bytes split differently between two fields.
                t.instance.push('4');
                t.queue_id.remove(0);
            }),
        ];
        for (what, edit) in edits {
            let mut forged = token.clone();
            edit(&mut forged);
            assert_ne!(forged, token, "{what}");
            let forged_text = with_tag_of(&forged, &text);
            assert_eq!(
                ActionToken::verify(&key, &forged_text, NOW),
                Err(TokenError::BadSignature),
                "{what}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = SecretKey::generate();
        let text = sample().sign(&key).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let expected = if i == 0 {
                    TokenError::Malformed
                } else {
                    TokenError::BadSignature
                };
                assert_eq!(
                    ActionToken::verify(&key, &URL_SAFE_NO_PAD.encode(&flipped), NOW),
                    Err(expected),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_changed_character_is_refused() {
        let key = SecretKey::generate();
        let text = sample().sign(&key).unwrap();
        for i in 0..text.len() {
            for c in ['A', 'z', '0', '-', '_', '=', '.', '/', '+', ' '] {
                let mut changed = text.clone().into_bytes();
                if changed[i] == c as u8 {
                    continue;
                }
                changed[i] = c as u8;
                let changed = String::from_utf8(changed).unwrap();
                assert!(
                    ActionToken::verify(&key, &changed, NOW).is_err(),
                    "position {i} to {c:?}"
                );
            }
        }
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let text = sample().sign(&SecretKey::generate()).unwrap();
        assert_eq!(
            ActionToken::verify(&SecretKey::generate(), &text, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expires_at_the_boundary() {
        let key = SecretKey::generate();
        let token = sample();
        let text = token.sign(&key).unwrap();
        assert!(ActionToken::verify(&key, &text, token.expires_at - 1).is_ok());
        assert_eq!(
            ActionToken::verify(&key, &text, token.expires_at),
            Err(TokenError::Expired)
        );
        assert_eq!(
            ActionToken::verify(&key, &text, i64::MAX),
            Err(TokenError::Expired)
        );
        // A forged token is a forgery whatever its expiry says.
        let mut forged = token.clone();
        forged.expires_at = NOW - 1;
        assert_eq!(
            ActionToken::verify(&key, &with_tag_of(&forged, &text), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_input() {
        let key = SecretKey::generate();
        let text = sample().sign(&key).unwrap();
        let cases = [
            String::new(),
            "A".into(),
            "not a token".into(),
            "%41%42".into(),
            format!("{text}="), // padding
            format!("{text}\n"),
            text.replace('-', "+").replace('_', "/") + "+/", // standard alphabet
            text[..text.len() - 1].into(),                   // a dangling character
            URL_SAFE_NO_PAD.encode([VERSION; TAG_LEN]),      // a tag and nothing else
            URL_SAFE_NO_PAD.encode([2; 100]),                // an unknown version
            "A".repeat(MAX_TOKEN_LEN + 1),
            "A".repeat(10_000_000),
        ];
        for case in cases {
            let shown: String = case.chars().take(60).collect();
            let result = ActionToken::verify(&key, &case, NOW);
            assert!(
                matches!(
                    result,
                    Err(TokenError::Malformed | TokenError::BadSignature)
                ),
                "{shown:?}: {result:?}"
            );
        }
        assert_eq!(
            ActionToken::verify(&key, &"A".repeat(10_000_000), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            ActionToken::verify(&key, "", NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_truncated_token_is_refused_at_every_length() {
        let key = SecretKey::generate();
        let text = sample().sign(&key).unwrap();
        for len in 0..text.len() {
            let result = ActionToken::verify(&key, &text[..len], NOW);
            assert!(
                matches!(
                    result,
                    Err(TokenError::Malformed | TokenError::BadSignature)
                ),
                "{len}: {result:?}"
            );
        }
    }

    /// A payload that is correctly signed but breaks the format (only the
    /// key holder could make one) is Malformed, never a panic.
    #[test]
    fn signed_garbage_is_malformed() {
        let key = SecretKey::generate();
        let sign_raw = |payload: &[u8]| {
            let mut mac = key.mac(MAC_CONTEXT);
            mac.update(payload);
            let mut bytes = payload.to_vec();
            bytes.extend_from_slice(&mac.finalize().into_bytes());
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let good = sample().payload();
        let mut cases: Vec<Vec<u8>> = (1..good.len()).map(|n| good[..n].to_vec()).collect();
        cases.push([good.as_slice(), b"x"].concat()); // trailing bytes
        let mut bad_action = good.clone();
        bad_action[1] = 9;
        cases.push(bad_action);
        let mut bad_utf8 = good.clone();
        bad_utf8[35] = 0xff; // the first byte of the instance
        cases.push(bad_utf8);
        // A huge recipient count and a varint that never ends.
        let mut head = good[..34].to_vec();
        for s in ["i", "q", "s"] {
            put_str(&mut head, s);
        }
        cases.push([head.as_slice(), &[0xff, 0xff, 0xff, 0x7f]].concat());
        cases.push([head.as_slice(), &[0xff; 10]].concat());
        for payload in cases {
            assert_eq!(
                ActionToken::verify(&key, &sign_raw(&payload), NOW),
                Err(TokenError::Malformed),
                "{payload:?}"
            );
        }
        assert!(ActionToken::verify(&key, &sign_raw(&good), NOW).is_ok());
    }

    #[test]
    fn too_many_recipients_do_not_make_a_link() {
        let key = SecretKey::generate();
        let many: Vec<String> = (0..200)
            .map(|i| format!("user{i:03}@partner.example"))
            .collect();
        let token = ActionToken::new(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW,
            "alice@example.org",
            &many,
            Action::View,
            NOW + 1,
        );
        assert!(
            matches!(token.sign(&key), Err(TokenError::TooLarge { len }) if len > MAX_TOKEN_LEN)
        );
        let fewer = ActionToken::new(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW,
            "alice@example.org",
            &many[..100],
            Action::View,
            NOW + 1,
        );
        let text = fewer.sign(&key).unwrap();
        assert!(text.len() <= MAX_TOKEN_LEN);
        assert_eq!(ActionToken::verify(&key, &text, NOW), Ok(fewer));
    }

    #[test]
    fn cross_message_binding_is_refused() {
        let t = sample();
        let rcpts = [
            "carol@other.example",
            "bob@partner.example",
            "bob@partner.example",
        ];
        assert!(t.bound_to(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &rcpts
        ));
        let other = |i, q, a, s, r: &[&str]| t.bound_to(i, q, a, s, r);
        assert!(!other(
            "postfix-2",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &rcpts
        ));
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2zAAA",
            NOW - 3600,
            "alice@example.org",
            &rcpts
        ));
        // A reused queue id: same id, another message.
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 60,
            "alice@example.org",
            &rcpts
        ));
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "Alice@example.org",
            &rcpts
        ));
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &rcpts[1..]
        ));
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &["bob@partner.example", "carol@other.example", "dan@x"]
        ));
        assert!(!other(
            "postfix",
            "4dXyPq1Zk2z9Tm",
            NOW - 3600,
            "alice@example.org",
            &[]
        ));
    }

    #[test]
    fn actions_have_names_and_codes() {
        for (action, name) in [
            (Action::View, "view"),
            (Action::Release, "release"),
            (Action::Delete, "delete"),
        ] {
            assert_eq!(action.as_str(), name);
            assert_eq!(Action::from_code(action.code()), Some(action));
        }
        assert_eq!(Action::from_code(0), None);
        assert_eq!(Action::from_code(4), None);
    }

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, 16_383, 16_384, (1 << 28) - 1] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut r = Reader(&out);
            assert_eq!(r.varint(), Some(n), "{n}");
            assert!(r.0.is_empty());
        }
        assert_eq!(Reader(&[0x80, 0x80, 0x80, 0x80, 0x01]).varint(), None);
        assert_eq!(Reader(&[0x80]).varint(), None);
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        assert!(TokenError::Malformed.to_string().contains("whole link"));
        assert!(TokenError::BadSignature
            .to_string()
            .contains("notification mail"));
        assert!(TokenError::Expired.to_string().contains("expired"));
        assert!(TokenError::TooLarge { len: 5000 }
            .to_string()
            .contains("5000"));
    }

    fn any_token() -> impl Strategy<Value = ActionToken> {
        (
            ".{0,20}",
            "[0-9A-Za-z]{0,20}",
            any::<i64>(),
            ".{0,40}",
            proptest::collection::vec(".{0,40}", 0..5),
            prop_oneof![
                Just(Action::View),
                Just(Action::Release),
                Just(Action::Delete)
            ],
            any::<i64>(),
        )
            .prop_map(|(i, q, a, s, r, action, e)| ActionToken::new(&i, &q, a, &s, &r, action, e))
    }

    proptest! {
        #[test]
        fn any_token_round_trips(token in any_token()) {
            let key = SecretKey::generate();
            let text = token.sign(&key).unwrap();
            let result = ActionToken::verify(&key, &text, token.expires_at.saturating_sub(1));
            if token.expires_at == i64::MIN {
                prop_assert_eq!(result, Err(TokenError::Expired));
            } else {
                prop_assert_eq!(result, Ok(token));
            }
        }

        #[test]
        fn arbitrary_text_is_refused_without_panic(text in "\\PC{0,400}") {
            let key = SecretKey::generate();
            let result = ActionToken::verify(&key, &text, NOW);
            prop_assert!(matches!(result, Err(TokenError::Malformed | TokenError::BadSignature)));
        }

        #[test]
        fn arbitrary_bytes_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = SecretKey::generate();
            let result = ActionToken::verify(&key, &URL_SAFE_NO_PAD.encode(&bytes), NOW);
            prop_assert!(matches!(result, Err(TokenError::Malformed | TokenError::BadSignature)));
        }

        #[test]
        fn truncations_and_extensions_are_refused(token in any_token(), cut in 0usize..400, tail in "[A-Za-z0-9_-]{1,8}") {
            let key = SecretKey::generate();
            let text = token.sign(&key).unwrap();
            let cut = cut % text.len();
            prop_assert!(ActionToken::verify(&key, &text[..cut], i64::MIN).is_err());
            let extended = text.clone() + &tail;
            prop_assert!(ActionToken::verify(&key, &extended, i64::MIN).is_err());
        }
    }
}

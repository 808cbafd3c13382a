//! Session ids and the cookie that carries them.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The number of random bytes in a session id: 256 bits, beyond guessing.
const ID_BYTES: usize = 32;

/// The length of the text form: 32 bytes in unpadded base64.
const ID_LEN: usize = 43;

/// A session id: 32 random bytes, as 43 URL-safe base64 characters.
///
/// It is a bearer secret, so `Debug` does not show it; the store keeps
/// [`SessionId::digest`] instead, so that a copy of the database does not
/// hold live sessions.
#[derive(Clone)]
pub struct SessionId(String);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

impl SessionId {
    /// A new id from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut bytes = [0; ID_BYTES];
        OsRng.fill_bytes(&mut bytes);
        SessionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The id in a cookie value, if it has the form of one; anything else
    /// (a cookie set by someone else, a truncated value) is `None` and
    /// never reaches the store.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != ID_LEN {
            return None;
        }
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .map(|_| SessionId(text.to_owned()))
    }

    /// The id as it goes into the cookie.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lowercase hex SHA-256 of the id: the key under which the store
    /// keeps the session. The id has 256 random bits, so no salt or slow
    /// hash is needed.
    pub fn digest(&self) -> String {
        Sha256::digest(self.0.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }
}

/// The `Set-Cookie` value that gives the browser session `id` for
/// `max_age` (whole seconds).
///
/// `HttpOnly` keeps it from scripts, `SameSite=Strict` keeps other sites
/// from sending it (the first line of defence against CSRF), `Path=/` makes
/// it one cookie for the whole site, and `Secure` (for HTTPS deployments;
/// off only for plain-HTTP tests behind localhost) keeps it off the wire in
/// clear. With `Secure`, a name starting with `__Host-` also stops
/// subdomains from setting or overwriting it.
///
/// # Panics
/// If `name` is not an HTTP token (empty, or with spaces, `;`, `=`, ...),
/// which would let it break the header: the name is a constant of the
/// program, so this is a programming error.
pub fn session_cookie(name: &str, id: &SessionId, secure: bool, max_age: Duration) -> String {
    cookie(name, id.as_str(), secure, max_age.as_secs())
}

/// The `Set-Cookie` value that removes the session cookie `name` at
/// logout, with the same attributes so that the browser replaces it.
///
/// # Panics
/// As [`session_cookie`], for a `name` that is not an HTTP token.
pub fn expired_session_cookie(name: &str, secure: bool) -> String {
    cookie(name, "", secure, 0)
}

fn cookie(name: &str, value: &str, secure: bool, max_age: u64) -> String {
    assert!(is_token(name), "cookie name {name:?} is not an HTTP token");
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// An RFC 9110 token, which RFC 6265 requires of a cookie name.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_url_safe_and_parse_back() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 43);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(SessionId::parse(a.as_str()).unwrap().as_str(), a.as_str());
    }

    #[test]
    fn foreign_cookie_values_do_not_parse() {
        let id = SessionId::generate();
        let text = id.as_str();
        for bad in [
            String::new(),
            text[..42].to_string(),
            format!("{text}A"),
            format!("{}=", &text[..42]),
            format!("{}+", &text[..42]),
            format!("{} ", &text[..42]),
            "A".repeat(10_000),
            "é".repeat(21) + "A",
        ] {
            assert!(SessionId::parse(&bad).is_none(), "{bad:.50}");
        }
    }

    #[test]
    fn debug_hides_the_id() {
        assert_eq!(format!("{:?}", SessionId::generate()), "SessionId(..)");
    }

    #[test]
    fn digest_is_the_hex_sha256_of_the_text() {
        let id = SessionId::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let digest = id.digest();
        assert_eq!(digest.len(), 64);
        assert_eq!(digest, id.clone().digest());
        assert_ne!(digest, SessionId::generate().digest());
        // printf A%.0s $(seq 43) | sha256sum
        assert_eq!(
            digest,
            "0f007385b6f9d4b7eeb2748605afe1a984a0a3bfa3f014d09e2a784ce9e5cd1a"
        );
    }

    #[test]
    fn cookie_attributes() {
        let id = SessionId::generate();
        let cookie = session_cookie("__Host-posttls", &id, true, Duration::from_secs(8 * 3600));
        assert_eq!(
            cookie,
            format!(
                "__Host-posttls={}; Path=/; Max-Age=28800; HttpOnly; SameSite=Strict; Secure",
                id.as_str()
            )
        );
        let plain = session_cookie("posttls", &id, false, Duration::from_millis(1500));
        assert_eq!(
            plain,
            format!(
                "posttls={}; Path=/; Max-Age=1; HttpOnly; SameSite=Strict",
                id.as_str()
            )
        );
    }

    #[test]
    fn logout_cookie_expires_at_once() {
        assert_eq!(
            expired_session_cookie("__Host-posttls", true),
            "__Host-posttls=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(
            expired_session_cookie("s", false),
            "s=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn cookie_names_must_be_tokens() {
        assert!(
            is_token("posttls_session") && is_token("__Host-x") && is_token("a!#$%&'*+-.^_`|~")
        );
        for bad in [
            "",
            "a b",
            "a;b",
            "a=b",
            "a\r\nSet-Cookie: x",
            "a,b",
            "\"a\"",
            "é",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
        let refused =
            std::panic::catch_unwind(|| expired_session_cookie("x; Domain=evil.example", true));
        assert!(refused.is_err());
    }
}

//! CSRF tokens for the forms that act (release, delete, admin changes).
//!
//! A token is the HMAC of the session id and the form's name, so it needs no
//! storage, and a token shown on one form or to one session is useless for
//! another. Another site can make a browser POST to PostTLS, but it cannot
//! read our pages, so it cannot know the token.
//!
//! For an admin, `session_id` is the session cookie's value. A sender on the
//! confirmation page has no session: use the id of the View token that
//! opened the page, so the form only works next to the link it came from.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;

use crate::SecretKey;

/// Domain separation: tags over CSRF inputs of this version.
const MAC_CONTEXT: &[u8] = b"posttls csrf v1\0";

/// The CSRF token of `form` (a constant naming the form, such as
/// `"confirm"` or `"mandatory-domains"`) for `session_id`: 43 URL-safe
/// characters for a hidden form field.
pub fn csrf_token(key: &SecretKey, session_id: &str, form: &str) -> String {
    URL_SAFE_NO_PAD.encode(csrf_mac(key, session_id, form).finalize().into_bytes())
}

/// Whether `token` is the CSRF token of `form` for `session_id`, compared in
/// constant time.
pub fn verify_csrf(key: &SecretKey, session_id: &str, form: &str, token: &str) -> bool {
    // 32 bytes are 43 characters; anything else is refused before decoding.
    if token.len() != 43 {
        return false;
    }
    match URL_SAFE_NO_PAD.decode(token) {
        Ok(tag) => csrf_mac(key, session_id, form).verify_slice(&tag).is_ok(),
        Err(_) => false,
    }
}

/// The MAC over session id and form name. The session id's length goes
/// first, so that ("ab", "c") and ("a", "bc") are different inputs.
fn csrf_mac(key: &SecretKey, session_id: &str, form: &str) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac(MAC_CONTEXT);
    mac.update(&(session_id.len() as u64).to_be_bytes());
    mac.update(session_id.as_bytes());
    mac.update(form.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_verifies_for_its_session_and_form_only() {
        let key = SecretKey::generate();
        let token = csrf_token(&key, "session-1", "confirm");
        assert_eq!(token.len(), 43);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(
            token,
            csrf_token(&key, "session-1", "confirm"),
            "no state, no randomness"
        );
        assert!(verify_csrf(&key, "session-1", "confirm", &token));
        assert!(!verify_csrf(&key, "session-2", "confirm", &token));
        assert!(!verify_csrf(&key, "session-1", "mandatory-domains", &token));
        assert!(!verify_csrf(
            &SecretKey::generate(),
            "session-1",
            "confirm",
            &token
        ));
    }

    #[test]
    fn session_and_form_cannot_trade_characters() {
        let key = SecretKey::generate();
        assert_ne!(csrf_token(&key, "ab", "c"), csrf_token(&key, "a", "bc"));
        assert!(!verify_csrf(&key, "a", "bc", &csrf_token(&key, "ab", "c")));
        assert_ne!(csrf_token(&key, "", "x"), csrf_token(&key, "x", ""));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let key = SecretKey::generate();
        let token = csrf_token(&key, "s", "f");
        for bad in [
            String::new(),
            token[..42].to_string(),
            format!("{token}A"),
            format!("{token}="),
            token.replace(|_| true, "!").chars().take(43).collect(),
            "A".repeat(1 << 20),
        ] {
            assert!(!verify_csrf(&key, "s", "f", &bad), "{bad:.50}");
        }
        for i in 0..token.len() {
            let mut changed = token.clone().into_bytes();
            changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
            assert!(
                !verify_csrf(&key, "s", "f", &String::from_utf8(changed).unwrap()),
                "position {i}"
            );
        }
    }

    /// A CSRF tag is never an action token's tag over the same bytes: the
    /// two kinds have their own MAC contexts.
    #[test]
    fn csrf_tags_are_not_action_tags() {
        let key = SecretKey::generate();
        let mut action = key.mac(b"posttls action token v1\0");
        let mut csrf = key.mac(MAC_CONTEXT);
        action.update(b"same input");
        csrf.update(b"same input");
        assert_ne!(action.finalize().into_bytes(), csrf.finalize().into_bytes());
    }

    proptest! {
        #[test]
        fn any_session_and_form_round_trip(session in ".{0,60}", form in ".{0,20}", other in ".{0,60}") {
            let key = SecretKey::generate();
            let token = csrf_token(&key, &session, &form);
            prop_assert!(verify_csrf(&key, &session, &form, &token));
            prop_assert_eq!(verify_csrf(&key, &other, &form, &token), other == session);
        }

        #[test]
        fn arbitrary_text_is_refused(text in "\\PC{0,60}") {
            let key = SecretKey::generate();
            prop_assert!(!verify_csrf(&key, "s", "f", &text));
        }
    }
}

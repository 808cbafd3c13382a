//! RFC 3986 section 2.1 percent-decoding, strict: the `percent-encoding`
//! crate decodes, and a `%` not followed by two hex digits, or bytes that
//! are not UTF-8, are refused instead of passed through (a stranger's
//! `rua=` URI or a storage URL that means something else than it says).

use percent_encoding::percent_decode_str;

/// Why a text could not be percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("bad percent-encoding in {0:?}: '%' must be followed by two hex digits")]
    BadEscape(String),
    #[error("percent-encoding in {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// `text` with every `%XX` replaced by its byte, as UTF-8 text.
pub fn decode(text: &str) -> Result<String, PercentError> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(index, &byte)| {
        byte != b'%'
            || bytes
                .get(index + 1..index + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(PercentError::BadEscape(text.to_string()));
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| PercentError::NotUtf8(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses_what_is_not_percent_encoding() {
        assert_eq!(decode("a%2Bb%2cc%25").unwrap(), "a+b,c%");
        assert_eq!(decode("%C3%A4").unwrap(), "ä");
        assert_eq!(decode("plain").unwrap(), "plain");
        for bad in ["%zz", "%2", "abc%", "%%41"] {
            assert!(
                matches!(decode(bad), Err(PercentError::BadEscape(_))),
                "{bad}"
            );
        }
        assert!(matches!(decode("%FF"), Err(PercentError::NotUtf8(_))));
    }
}

use std::io::Write;

use flate2::{Compression, GzBuilder};

use crate::Error;

/// Compresses a report for mail and HTTPS delivery (RFC 8460 sections 5.3
/// and 5.4 send `application/tlsrpt+gzip`).
///
/// `compression_level` is the upstream option of the same name: -1 for the
/// zlib default (6), 0 (none) to 9 (best). The gzip header carries no file
/// name and a zero time stamp, so the same report always compresses to the
/// same bytes (the upstream stamps the current time).
pub fn gzip(report_json: &[u8], compression_level: i32) -> Result<Vec<u8>, Error> {
    let level = match compression_level {
        -1 => Compression::default(),
        0..=9 => Compression::new(compression_level.unsigned_abs()),
        _ => return Err(Error::BadCompressionLevel(compression_level)),
    };
    let mut encoder = GzBuilder::new().mtime(0).write(Vec::new(), level);
    encoder
        .write_all(report_json)
        .expect("writing to a Vec cannot fail");
    Ok(encoder.finish().expect("writing to a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    #[test]
    fn round_trips_and_is_deterministic() {
        let json = br#"{"organization-name": "Example Org"}"#.repeat(50);
        for level in [-1, 0, 1, 9] {
            let compressed = gzip(&json, level).unwrap();
            assert_eq!(compressed, gzip(&json, level).unwrap());
            let mut plain = Vec::new();
            GzDecoder::new(&compressed[..])
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, json);
        }
        assert!(gzip(&json, 9).unwrap().len() < gzip(&json, 0).unwrap().len());
    }

    #[test]
    fn rejects_levels_zlib_does_not_know() {
        for level in [-2, 10] {
            assert!(matches!(
                gzip(b"{}", level),
                Err(Error::BadCompressionLevel(l)) if l == level
            ));
        }
    }
}

//! Admin passwords as argon2id PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//!
//! The string carries its own parameters, so hashes made with older
//! parameters keep verifying after the defaults are raised, and tests can
//! use cheap parameters without a separate code path.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Version};
use rand::rngs::OsRng;
use rand::RngCore;

/// Argon2 cost parameters. [`Params::DEFAULT`] is OWASP's recommendation for
/// argon2id (19 MiB of memory, 2 passes, 1 lane); tests and other crates'
/// tests pass `Params::new(8, 1, 1, None)`, which is thousands of times
/// cheaper and must never be used for real passwords.
pub use argon2::Params;

/// The length of the random salt, the PHC format's recommendation.
const SALT_LEN: usize = 16;

/// The argon2id hash of `password` with the default (OWASP) parameters and a
/// fresh random salt, as a PHC string for the store.
pub fn hash_password(password: &str) -> String {
    hash_password_with(password, &Params::DEFAULT)
}

/// [`hash_password`] with other cost parameters.
pub fn hash_password_with(password: &str, params: &Params) -> String {
    let mut salt = [0; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_with_salt(password.as_bytes(), &salt)
        // Argon2 refuses only passwords over 4 GiB and salts or outputs
        // of invalid length, none of which can reach this point.
        .expect("argon2 hashes any password with valid parameters")
        .to_string()
}

/// Whether `password` matches `hash`, a PHC string from [`hash_password`];
/// false for a hash that cannot be read. The comparison is constant time,
/// and the cost is the one recorded in the hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password_with("correct horse", &cheap());
        assert!(verify_password(&hash, "correct horse"));
        for wrong in [
            "",
            "correct horse ",
            "Correct horse",
            "correct hors",
            "correct horse\0",
        ] {
            assert!(!verify_password(&hash, wrong), "{wrong:?}");
        }
    }

    #[test]
    fn hashes_are_salted_phc_strings() {
        let a = hash_password_with("pw", &cheap());
        let b = hash_password_with("pw", &cheap());
        assert_ne!(a, b, "a fresh salt each time");
        assert!(a.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{a}");
        assert!(verify_password(&a, "pw") && verify_password(&b, "pw"));
    }

    #[test]
    fn default_parameters_are_owasp_argon2id() {
        assert_eq!(
            (
                Params::DEFAULT.m_cost(),
                Params::DEFAULT.t_cost(),
                Params::DEFAULT.p_cost()
            ),
            (19 * 1024, 2, 1)
        );
        let hash = hash_password("an admin's password");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(&hash, "an admin's password"));
        assert!(!verify_password(&hash, "another password"));
    }

    #[test]
    fn unicode_and_long_passwords() {
        let long = "ä".repeat(10_000);
        let hash = hash_password_with(&long, &cheap());
        assert!(verify_password(&hash, &long));
        assert!(!verify_password(&hash, &long[..long.len() - 2]));
    }

    #[test]
    fn unreadable_hashes_verify_nothing() {
        let good = hash_password_with("pw", &cheap());
        for bad in [
            "",
            "pw",
            "$argon2id$",
            "$argon2id$v=19$m=8,t=1,p=1$",
            &good[..good.len() - 5],
            &good.replace("argon2id", "argon2x"),
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", // bcrypt
        ] {
            assert!(!verify_password(bad, "pw"), "{bad}");
            assert!(!verify_password(bad, ""), "{bad}");
        }
    }
}

//! The pieces of the PostTLS admin login, without I/O:
//!
//! - [`hash_password`] and [`verify_password`]: argon2id PHC strings, so a
//!   stolen database does not give away the passwords;
//! - [`SessionId`] and [`session_cookie`]: unguessable session ids in
//!   cookies that scripts cannot read and other sites cannot send;
//! - [`LoginThrottle`]: growing delays after failed logins, so that guessing
//!   passwords online takes years.
//!
//! The web layer glues them together: it asks the throttle before checking a
//! password, keeps only [`SessionId::digest`] in the store, and clears the
//! cookie with [`expired_session_cookie`] on logout.

mod password;
mod session;
mod throttle;

pub use password::{hash_password, hash_password_with, verify_password, Params};
pub use session::{expired_session_cookie, session_cookie, SessionId};
pub use throttle::{
    LoginThrottle, Name, BUSY_DELAY, FIRST_DELAY, FORGET_AFTER, FREE_FAILURES, MAX_DELAY,
    MAX_KEY_LEN,
};

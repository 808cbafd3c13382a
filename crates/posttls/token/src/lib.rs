//! Signed, expiring action tokens for the links in PostTLS notification
//! mails, and the CSRF tokens of the confirmation forms.
//!
//! The original PostTLS put bare queue ids in its links, so anyone could
//! release or delete anyone's message by guessing ids. Here a link carries an
//! [`ActionToken`]: the instance, queue id, arrival time, sender and
//! TLS-failed recipients of one message, the action, an expiry time and a
//! random nonce, authenticated with HMAC-SHA256 under a [`SecretKey`] that
//! only the PostTLS processes can read.
//!
//! The flow the web layer builds from these pieces:
//!
//! 1. The notification links to a [`Action::View`] token. Opening it (GET)
//!    only shows a confirmation page, so mail scanners that follow every
//!    link change nothing.
//! 2. The page carries [`ActionToken::with_action`] tokens for
//!    [`Action::Release`] and [`Action::Delete`] with the same binding, and a
//!    [`csrf_token`]; only the POST of that form acts.
//! 3. Before acting, [`ActionToken::verify`] checks signature and expiry,
//!    [`ActionToken::bound_to`] checks that the queue still holds the same
//!    message with the same TLS-failed recipients, and the store records
//!    [`ActionToken::id`] so that each token is used once.
//!
//! Everything here is pure apart from [`SecretKey::load_or_create`] and the
//! random numbers of [`SecretKey::generate`] and [`ActionToken::new`].

mod action;
mod csrf;
mod key;

pub use action::{Action, ActionToken, TokenError, MAX_TOKEN_LEN};
pub use csrf::{csrf_token, verify_csrf};
pub use key::{KeyError, SecretKey};

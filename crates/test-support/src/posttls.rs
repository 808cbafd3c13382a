//! The message the PostTLS web tests (and the browser test) show: a
//! deferred message of our sender in instance `lab`.

use posttls_store::{MessageState, SeenMessage};
use posttls_token::{Action, ActionToken};

pub const INSTANCE: &str = "lab";
pub const QUEUE_ID: &str = "4A0AF98C232";
pub const ARRIVAL: i64 = 1_795_308_412;
pub const SENDER: &str = "alice@example.org";

/// The test message, deferred, with `subject`.
pub fn deferred_message(subject: &'static str) -> SeenMessage<'static> {
    SeenMessage {
        instance: INSTANCE,
        queue_id: QUEUE_ID,
        arrival_time: ARRIVAL,
        sender: SENDER,
        subject: Some(subject),
        own_sender: true,
        requiretls: false,
        state: MessageState::Deferred,
    }
}

/// The recipient of the test message that waits for TLS.
pub const RECIPIENT: &str = "bob@notls.example";

/// A link token (unsigned) for the test message's waiting recipient.
pub fn token(action: Action, expires: i64) -> ActionToken {
    ActionToken::new(
        INSTANCE,
        QUEUE_ID,
        ARRIVAL,
        SENDER,
        &[RECIPIENT],
        action,
        expires,
    )
}

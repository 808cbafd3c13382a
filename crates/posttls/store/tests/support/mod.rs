//! What the store's tests record: a message of instance `mx1` and a
//! recipient that waits for TLS.

use posttls_classify::TlsFailureKind;
use posttls_store::{MessageState, SeenMessage, SeenRecipient};

/// A deferred message of instance `mx1`.
pub fn seen(queue_id: &str, arrival_time: i64) -> SeenMessage<'_> {
    SeenMessage {
        instance: "mx1",
        queue_id,
        arrival_time,
        sender: "alice@example.org",
        subject: Some("Hello"),
        own_sender: true,
        requiretls: false,
        state: MessageState::Deferred,
    }
}

/// A recipient deferred because its server offered no TLS.
pub fn rcpt(address: &str) -> SeenRecipient {
    SeenRecipient {
        address: address.into(),
        delay_reason: Some("TLS is required, but was not offered by host x[1.2.3.4]".into()),
        tls_kind: Some(TlsFailureKind::NotOffered),
        mandatory: false,
    }
}

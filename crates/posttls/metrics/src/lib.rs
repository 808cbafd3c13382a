//! PostTLS's Prometheus metrics, counted from the database: what both the
//! worker (on `metrics_listen`) and the web pages (at `/metrics`, to local
//! clients) serve, in a crate of its own so that neither depends on the
//! other.

use mailtls_common::metrics::{registry, text};
use posttls_store::{ActionKind, ActionState, Counts, MessageState, NotificationKind, SendResult};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

/// The states of an action that has ended; the others are still open.
const FINISHED: [ActionState; 3] = [ActionState::Done, ActionState::Refused, ActionState::Failed];
const UNFINISHED: [ActionState; 2] = [ActionState::Queued, ActionState::Running];

/// The text exposition of `counts`. Every label combination is written,
/// zeros included, so that a series exists before its first event.
pub fn render(counts: &Counts) -> String {
    let messages = IntGaugeVec::new(
        Opts::new(
            "posttls_messages",
            "Messages PostTLS has seen, by state: deferred (waiting for TLS; the sender is told), \
             ignored (not ours or not TLS), released, deleted, returned, gone (left the queue)",
        ),
        &["state"],
    )
    .expect("valid metric");
    for &state in MessageState::ALL {
        let n = counts.messages.get(&state).copied().unwrap_or(0);
        messages
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let notifications = IntCounterVec::new(
        Opts::new(
            "posttls_notifications_total",
            "Notifications to senders, by kind (first, reminder, expired, mandatory) and outcome \
             (sent, or failed and tried again)",
        ),
        &["kind", "outcome"],
    )
    .expect("valid metric");
    for &kind in NotificationKind::ALL {
        for &result in SendResult::ALL {
            let n = counts.notifications.get(&(kind, result)).copied();
            notifications
                .with_label_values(&[kind.as_str(), result.as_str()])
                .inc_by(n.unwrap_or(0));
        }
    }
    let actions = IntCounterVec::new(
        Opts::new(
            "posttls_actions_total",
            "Finished release and delete requests, by action and outcome: done, refused (the \
             queue or the policy did not allow it) or failed (the queue is as it was)",
        ),
        &["action", "outcome"],
    )
    .expect("valid metric");
    let unfinished = IntGaugeVec::new(
        Opts::new(
            "posttls_actions_unfinished",
            "Release and delete requests the worker has not finished, by action and state \
             (queued, running)",
        ),
        &["action", "state"],
    )
    .expect("valid metric");
    for &kind in ActionKind::ALL {
        for state in FINISHED {
            let n = counts.actions.get(&(kind, state)).copied();
            actions
                .with_label_values(&[kind.as_str(), state.as_str()])
                .inc_by(n.unwrap_or(0));
        }
        for state in UNFINISHED {
            let n = counts.actions.get(&(kind, state)).copied().unwrap_or(0);
            unfinished
                .with_label_values(&[kind.as_str(), state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    text(&registry(vec![
        Box::new(messages),
        Box::new(notifications),
        Box::new(actions),
        Box::new(unfinished),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_written_with_the_counts() {
        let mut counts = Counts::default();
        counts.messages.insert(MessageState::Deferred, 3);
        counts
            .notifications
            .insert((NotificationKind::First, SendResult::Sent), 2);
        counts
            .actions
            .insert((ActionKind::Release, ActionState::Done), 1);
        counts
            .actions
            .insert((ActionKind::Delete, ActionState::Queued), 4);
        let text = render(&counts);
        for line in [
            "posttls_messages{state=\"deferred\"} 3",
            "posttls_messages{state=\"gone\"} 0",
            "posttls_notifications_total{kind=\"first\",outcome=\"sent\"} 2",
            "posttls_notifications_total{kind=\"reminder\",outcome=\"failed\"} 0",
            "posttls_actions_total{action=\"release\",outcome=\"done\"} 1",
            "posttls_actions_total{action=\"delete\",outcome=\"refused\"} 0",
            "posttls_actions_unfinished{action=\"delete\",state=\"queued\"} 4",
            "# TYPE posttls_messages gauge",
            "# TYPE posttls_actions_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            series,
            MessageState::ALL.len()
                + NotificationKind::ALL.len() * SendResult::ALL.len()
                + ActionKind::ALL.len() * (FINISHED.len() + UNFINISHED.len())
        );
    }
}

//! The third stage of the PostTLS flow: for one queued message, whom to ask
//! and what may be offered.
//!
//! The scanner reads the queue ([`posttls_queue`]), the classifier sorts
//! each delay reason ([`posttls_classify`]), and [`decide`] turns both into a
//! [`Decision`]: leave the message alone, or tell its sender which
//! recipients failed TLS, which of them the sender may release for an
//! unencrypted send, and which never.
//!
//! Two rules carry the safety of the whole product and live here:
//!
//! - Only our own senders are asked ([`OwnSenders`]): an address in one of
//!   our domains is not enough, because anyone can put our domain into the
//!   envelope of mail we relay. The queue file must also show that the
//!   message was submitted locally or by an authenticated user.
//! - Recipients in mandatory-TLS domains ([`DomainSet`]) and messages that
//!   demand TLS themselves (REQUIRETLS, RFC 8689) are never releasable,
//!   whatever the sender clicks.
//!
//! Everything is a pure function of its inputs: no clock, no I/O, no
//! configuration read behind the caller's back, so every rule is tested
//! directly and the action worker can re-run the same decision at action
//! time to confirm that nothing changed.

mod domains;

use posttls_classify::{Classification, TlsFailure, TlsFailureKind};
use posttls_queue::{QueuedMessage, QueuedRecipient};

pub use domains::{address_domain, DomainError, DomainSet};

/// What the queue file says about how a message entered the mail system
/// (`postcat -e`, Postfix `src/global/mail_proto.h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmissionEvidence {
    /// `named_attribute: rewrite_context=local`: submitted through the
    /// local `sendmail`/pickup path or by a client listed in
    /// `local_header_rewrite_clients`.
    pub local_submission: bool,
    /// `named_attribute: sasl_username=...`: submitted by a client that
    /// authenticated with SMTP AUTH (RFC 4954) under this name.
    pub sasl_username: Option<String>,
}

impl SubmissionEvidence {
    /// Whether the message was submitted by one of our users rather than
    /// relayed from outside.
    pub fn is_submission(&self) -> bool {
        self.local_submission || self.sasl_username.as_deref().is_some_and(|u| !u.is_empty())
    }
}

/// The senders of our organisation: the only ones PostTLS ever writes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnSenders {
    /// Our sender domains.
    pub domains: DomainSet,
}

impl OwnSenders {
    /// Whether `sender` (the envelope sender as `postqueue` shows it) is one
    /// of ours: its domain is one of our domains AND the message was
    /// submitted locally or by an authenticated user.
    ///
    /// Both are needed. The domain alone can be forged by anyone sending
    /// mail through us (backup MX, relay for other hosts); submission alone
    /// also covers users who send with a foreign envelope domain, whose
    /// replies would go elsewhere. A notification must never go to, or be
    /// triggered for, someone outside the organisation: it carries links
    /// that release mail unencrypted.
    pub fn is_own(&self, sender: &str, evidence: &SubmissionEvidence) -> bool {
        evidence.is_submission() && self.domains.contains_address(sender)
    }
}

/// Why a message needs nothing from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// A bounce or other notification (null sender): nobody to ask, and
    /// notifications about notifications would loop.
    NullSender,
    /// The sender is not one of ours (see [`OwnSenders::is_own`]).
    NotOwnSender,
    /// An admin marked the message for expiry (`postsuper -e/-f`): it will
    /// bounce, and a sender must not be able to override that.
    ForcedExpire,
    /// The message is on hold: put there by an admin, or by a release in
    /// progress. Either way not the sender's to act on now.
    OnHold,
    /// No pending recipient is waiting because of TLS.
    NoTlsFailure,
}

impl IgnoreReason {
    /// A stable snake_case name for databases, JSON and logs.
    pub fn short_name(self) -> &'static str {
        match self {
            IgnoreReason::NullSender => "null_sender",
            IgnoreReason::NotOwnSender => "not_own_sender",
            IgnoreReason::ForcedExpire => "forced_expire",
            IgnoreReason::OnHold => "on_hold",
            IgnoreReason::NoTlsFailure => "no_tls_failure",
        }
    }
}

/// What the sender of a message is told and may do, per recipient. Every
/// pending recipient of the message is in exactly one of `tls_failed` and
/// `other_pending`; `mandatory` and `releasable` split `tls_failed`.
/// Recipients that are already done (bounce reason set) are in none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice<'m> {
    /// The pending recipients whose last attempt failed because of TLS,
    /// with how, in queue order.
    pub tls_failed: Vec<(&'m QueuedRecipient, TlsFailure)>,
    /// The TLS-failed recipients that must never be released: in a
    /// mandatory-TLS domain (their address or their original address), or
    /// of a message that demanded REQUIRETLS (RFC 8689 section 4: such a
    /// message must not be sent without verified TLS).
    pub mandatory: Vec<&'m QueuedRecipient>,
    /// The TLS-failed recipients the sender may choose to send to without
    /// encryption.
    pub releasable: Vec<&'m QueuedRecipient>,
    /// The other pending recipients (other deferrals, unrecognised reasons,
    /// delivery in progress): Postfix keeps handling them normally and an
    /// action never touches them.
    pub other_pending: Vec<&'m QueuedRecipient>,
}

/// The decision about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'m> {
    Ignore(IgnoreReason),
    Notify(Notice<'m>),
}

/// Decide about `message`.
///
/// - `classify`: the delay-reason classifier, normally
///   [`posttls_classify::classify`] (a parameter so that a scanner can put a
///   cache in front of it: a full queue repeats the same few reasons).
/// - `own`: whether the sender is ours, from [`OwnSenders::is_own`] with the
///   message's envelope evidence (which needs `postcat`, so the caller
///   gathers it).
/// - `mandatory`: the mandatory-TLS recipient domains.
///
/// Recipients with an unrecognised reason are left alone
/// (`other_pending`), as are those without a reason.
pub fn decide<'m>(
    message: &'m QueuedMessage,
    classify: impl Fn(&str) -> Classification,
    own: bool,
    requiretls: bool,
    mandatory: &DomainSet,
) -> Decision<'m> {
    if message.is_null_sender() {
        return Decision::Ignore(IgnoreReason::NullSender);
    }
    if !own {
        return Decision::Ignore(IgnoreReason::NotOwnSender);
    }
    if message.forced_expire {
        return Decision::Ignore(IgnoreReason::ForcedExpire);
    }
    if message.queue_name == "hold" {
        return Decision::Ignore(IgnoreReason::OnHold);
    }

    let mut tls_failed = Vec::new();
    let mut other_pending = Vec::new();
    for recipient in message.pending_recipients() {
        match recipient.delay_reason.as_deref().map(&classify) {
            Some(Classification::Tls(failure)) => tls_failed.push((recipient, failure)),
            _ => other_pending.push(recipient),
        }
    }
    if tls_failed.is_empty() {
        return Decision::Ignore(IgnoreReason::NoTlsFailure);
    }

    // The queue file's REQUIRETLS flag, or one REQUIRETLS failure, binds
    // all of its recipients.
    let requiretls = requiretls
        || tls_failed
            .iter()
            .any(|(_, f)| f.kind == TlsFailureKind::RequireTls);
    let (mandatory, releasable) = tls_failed.iter().map(|(r, _)| *r).partition(|r| {
        requiretls
            || mandatory.contains_address(&r.address)
            || r.orig_address
                .as_deref()
                .is_some_and(|a| mandatory.contains_address(a))
    });
    Decision::Notify(Notice {
        tls_failed,
        mandatory,
        releasable,
        other_pending,
    })
}

#[cfg(test)]
mod tests;

//! The PostTLS scenarios of `crate::posttls` on Debian 13's Postfix 3.10:
//! the instance in the lab's root, `mailtls` installed there and run
//! inside it (its database, key and Postfix commands those of the root).
//! Releases go the 3.10 way: `TLS-Required: No` through `posttls-reinject`
//! and the instance's own routing; the instance has no `posttls-release`.

crate::posttls::scenarios_on!(crate::posttls::On::Root(crate::support::lab::Suite::Trixie) =>
    a_tls_deferral_notifies_our_sender_once_and_nothing_else_does,
    releases_and_deletes_act_on_the_real_queue_and_mandatory_domains_are_kept,
    mandatory_policy_delete_removes_the_message_and_tells_the_sender,
    the_link_in_the_notification_releases_the_message_through_the_web_pages,
    a_failed_release_leaves_the_queue_as_it_was,
    a_release_killed_at_each_step_is_finished_or_undone_after_a_restart,
    a_delete_killed_at_each_step_is_finished_or_undone_after_a_restart,
    a_released_copy_is_the_message_the_sender_sent,
    forged_rows_do_not_make_the_worker_touch_foreign_mail,
    a_released_copy_takes_the_route_of_its_postfix_version,
);

/// REQUIRETLS is Postfix 3.11's (Debian unstable).
#[test]
fn a_message_that_asked_for_requiretls_is_never_released_on_postfix_3_11() {
    crate::posttls::a_message_that_asked_for_requiretls_is_never_released(
        crate::posttls::On::Root(crate::support::lab::Suite::Sid),
    );
}

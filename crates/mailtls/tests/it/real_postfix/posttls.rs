//! The PostTLS scenarios of `crate::posttls` on Debian 13's Postfix 3.10:
//! the instance in the lab's root, `mailtls` installed there and run
//! inside it (its database, key and Postfix commands those of the root).
//! Releases go the 3.10 way: `TLS-Required: No` through `posttls-reinject`
//! and the instance's own routing; the instance has no `posttls-release`.

crate::posttls::every_scenario_on!(crate::posttls::On::Root(crate::support::lab::Suite::Trixie));

/// REQUIRETLS is Postfix 3.11's (Debian unstable).
#[test]
fn a_message_that_asked_for_requiretls_is_never_released_on_postfix_3_11() {
    crate::posttls::a_message_that_asked_for_requiretls_is_never_released(
        crate::posttls::On::Root(crate::support::lab::Suite::Sid),
    );
}

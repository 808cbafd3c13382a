//! The pure core of `mailtls policyd`: an MTA-STS (RFC 8461) and DANE
//! (RFC 7672) policy server for Postfix's `smtp_tls_policy_maps`, speaking
//! the socketmap protocol and handing Postfix 3.10+ the TLSRPT (RFC 8460)
//! attributes of the policy it applies.
//!
//! This crate does no I/O and reads no clock: the daemon above it resolves
//! DNS, fetches policies over HTTPS, stores the cache and serves the socket,
//! and asks this crate what every byte means and what to answer. Each step
//! is a function of its inputs, so every rule is tested directly.
//!
//! The flow of one lookup, and the module for each step:
//!
//! 1. [`netstring`]: Postfix sends `NAME KEY` as a netstring
//!    ([`netstring::Decoder`] -> [`netstring::Request`]).
//! 2. [`txt`]: the `_mta-sts.DOMAIN` TXT records are reduced to the one
//!    usable record ([`txt::select`]) or to "no policy".
//! 3. [`cache`]: given the record's `id`, the cached policy and the time,
//!    whether to use the cache, fetch, or refresh in the background
//!    ([`cache::plan`]).
//! 4. [`policy`]: a fetched policy file is parsed ([`policy::StsPolicy::parse`]);
//!    MX patterns match host names ([`policy::mx_matches`]).
//! 5. [`answer`]: the outcome ([`answer::Decision`]) becomes the Postfix
//!    answer ([`answer::postfix_answer`]), which [`netstring::Answer::encode`]
//!    frames for the socket.
//!
//! Host names here are ASCII (A-labels for internationalized names); the
//! daemon converts U-labels before asking.

pub mod answer;
pub mod cache;
mod names;
pub mod netstring;
pub mod policy;
pub mod txt;

pub use answer::{
    postfix_answer, AnswerError, AnswerOptions, DaneLevel, Decision, FailureKind, TestingAnswer,
};
pub use cache::{plan, CacheAction, CachedPolicy, TxtLookup};
pub use netstring::{Answer, DecodeError, Decoder, Request};
pub use policy::{mx_matches, Mode, MxPattern, PolicyError, StsPolicy};
pub use txt::{select, StsRecord, TxtError};

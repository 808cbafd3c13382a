//! The real-Postfix lab: Debian's own Postfix 3.10 (Debian 13, built with
//! libtlsrpt) and 3.11 (Debian unstable) in debootstrap roots, a signed
//! lab DNS and lab MX servers, all on loopback, so that the tests see what
//! a Debian 13 host sends.
//!
//! ```text
//! target/lab/trixie, target/lab/sid     the roots (root.rs), cached
//! 127.53.N.1   Knot: the signed zone lab.test of the test (dns.rs)
//! 127.53.N.2   Unbound: validating resolver, in the instance's resolv.conf
//! 127.53.N.10+ lab MXes (smtp_sink::SmtpSink::start_mx), port 25
//! ROOT/tmp/pf.XXXXX  a private Postfix instance inside the root
//!                    (postfix::Options::in_root), smtp chrooted as Debian ships it
//! ```
//!
//! A test owns everything it starts: dropping its values stops the
//! processes and, with the last user of a root, unmounts its `proc` and
//! `/dev`.

pub mod dns;
pub mod root;

pub use dns::{LabDns, Net, ZONE};
pub use root::{Root, Suite};

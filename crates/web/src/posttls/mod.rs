//! PostTLS's pages: the sender's page behind each notification link
//! ([`confirm`]), and behind the admin login the dashboard with the actions
//! on messages ([`dashboard`]) and the mandatory-TLS domains managed in the
//! UI ([`domains`]); [`view`] puts stored rows in the words a person reads.

pub mod confirm;
mod dashboard;
mod domains;
pub mod view;

pub use dashboard::{dashboard, message_action};
pub use domains::{domains_change, domains_page, DomainForm};

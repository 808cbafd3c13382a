//! Integration tests of the delivery stage against independent parties:
//! Python's `email` package, parsedmarc and dkimpy (installed into `.venv`
//! by `scripts/setup-oracle`), the `openssl` command, and small local
//! servers for HTTPS and SMTP on 127.0.0.1.

mod common;
mod directory;
mod https;
mod report_mail;
mod sendmail;
mod smtp;

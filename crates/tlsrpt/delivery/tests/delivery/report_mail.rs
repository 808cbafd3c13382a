//! The report mail read by others: Python's `email` package, parsedmarc
//! (as a receiver of SMTP TLS reports would), and dkimpy for the signature.

use std::path::Path;

use serde_json::Value;
use tlsrpt_delivery::{DkimAlgorithm, DkimSigner, Error};

use crate::common::{
    gzip_report, openssl_key, render_mail, run, venv_python, ATTACHMENT_NAME, RECIPIENT, REPORT_ID,
    REPORT_JSON, SENDER,
};

/// Prints what Python's `email` package makes of the message on stdin.
const PYTHON_EMAIL: &str = r#"
import email, gzip, json, sys
from email import policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
parts = list(msg.iter_parts())
attachment = parts[1]
print(json.dumps({
    "defects": [str(d) for part in msg.walk() for d in part.defects],
    "headers": {name: str(value) for name, value in msg.items()},
    "content_type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "parts": [part.get_content_type() for part in parts],
    "text": parts[0].get_content(),
    "transfer_encoding": attachment["Content-Transfer-Encoding"],
    "disposition": attachment.get_content_disposition(),
    "filename": attachment.get_filename(),
    "report": gzip.decompress(attachment.get_content()).decode(),
}))
"#;

/// Prints what parsedmarc makes of the message on stdin, offline.
const PYTHON_PARSEDMARC: &str = r#"
import json, sys, parsedmarc
result = parsedmarc.parse_report_email(sys.stdin.buffer.read(), offline=True)
print(json.dumps(result, default=str))
"#;

/// Prints dkimpy's verdict on the message on stdin, with the key record
/// (argv[1]) served for its name (argv[2]) and nothing else in DNS.
/// `tlsrpt="strict"` also demands `s=tlsrpt` (RFC 8460 section 3).
const PYTHON_DKIM_VERIFY: &str = r#"
import logging, sys, dkim
record, name = sys.argv[1].encode(), sys.argv[2].encode()
def dnsfunc(qname, timeout=5):
    return record if qname.rstrip(b".") == name else None
logging.basicConfig(stream=sys.stderr)
ok = dkim.verify(sys.stdin.buffer.read(), logger=logging.getLogger("dkim"), dnsfunc=dnsfunc, tlsrpt="strict")
print("pass" if ok else "fail")
"#;

fn python(script: &str, args: &[&str], message: &[u8]) -> String {
    let mut all_args = vec!["-c", script];
    all_args.extend_from_slice(args);
    run(venv_python(), &all_args, message)
}

#[test]
fn python_email_reads_structure_headers_and_attachment() {
    let compressed = gzip_report();
    let parsed: Value =
        serde_json::from_str(&python(PYTHON_EMAIL, &[], &render_mail(&compressed))).unwrap();

    assert_eq!(parsed["defects"], Value::Array(vec![]));
    let headers = &parsed["headers"];
    assert_eq!(headers["From"], SENDER);
    assert_eq!(headers["To"], RECIPIENT);
    assert_eq!(
        headers["Subject"],
        format!("Report Domain: example.com Submitter: example.net Report-ID: <{REPORT_ID}@example.net>")
    );
    assert_eq!(headers["Date"], "Sun, 22 Nov 2026 00:06:40 +0000");
    let message_id = headers["Message-ID"].as_str().unwrap();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@example.net>"),
        "{message_id}"
    );
    assert_eq!(headers["TLS-Report-Domain"], "example.com");
    assert_eq!(headers["TLS-Report-Submitter"], "example.net");
    assert_eq!(headers["TLS-Required"], "No");
    assert_eq!(headers["MIME-Version"], "1.0");

    assert_eq!(parsed["content_type"], "multipart/report");
    assert_eq!(parsed["report_type"], "tlsrpt");
    assert_eq!(
        parsed["parts"],
        serde_json::json!(["text/plain", "application/tlsrpt+gzip"])
    );
    assert_eq!(
        parsed["text"].as_str().unwrap().trim_end(),
        "This is an aggregate TLS report from Example Org"
    );
    assert_eq!(parsed["transfer_encoding"], "base64");
    assert_eq!(parsed["disposition"], "attachment");
    assert_eq!(parsed["filename"], ATTACHMENT_NAME);
    assert_eq!(parsed["report"], REPORT_JSON);
}

#[test]
fn parsedmarc_accepts_it_as_an_smtp_tls_report() {
    let signer_dir = tempfile::tempdir().unwrap();
    let key = openssl_key(signer_dir.path(), "ed25519.pem", &["-algorithm", "ed25519"]);
    let signer = DkimSigner::from_key_file(&key, "tlsrpt", "example.net").unwrap();
    let message = signer.sign(&render_mail(&gzip_report())).unwrap();

    let parsed: Value = serde_json::from_str(&python(PYTHON_PARSEDMARC, &[], &message)).unwrap();
    assert_eq!(parsed["report_type"], "smtp_tls");
    let report = &parsed["report"];
    assert_eq!(report["report_id"], REPORT_ID);
    assert_eq!(report["organization_name"], "Example Org");
    assert_eq!(report["begin_date"], "2026-11-21T00:00:00Z");
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    assert_eq!(
        policies[0]["failure_details"][0]["result_type"],
        "certificate-expired"
    );
    assert_eq!(policies[1]["policy_type"], "no-policy-found");
}

/// Signs with the key, lets dkimpy verify with our `dns_record`, and checks
/// that a changed subject fails, so a pass means something.
fn assert_dkimpy_verifies(key: &Path, algorithm: DkimAlgorithm) {
    let signer = DkimSigner::from_key_file(key, "report2026", "example.net").unwrap();
    assert_eq!(signer.algorithm(), algorithm);
    assert_eq!(signer.dns_name(), "report2026._domainkey.example.net");
    let record = signer.dns_record();
    let name = signer.dns_name();

    let signed = signer.sign(&render_mail(&gzip_report())).unwrap();
    let text = String::from_utf8(signed.clone()).unwrap();
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    let signature_header = text.split("\r\nFrom: ").next().unwrap();
    assert!(signature_header.contains(&format!("a={algorithm};")));
    assert!(signature_header.contains("c=relaxed/relaxed"));
    assert!(
        !signature_header.contains("l="),
        "RFC 8460 section 3 forbids l="
    );
    let signed_names = signature_header
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let mime = ["mime-version", "content-type"];
    for header in mailtls_test_support::DKIM_SIGNED_HEADERS
        .iter()
        .chain(&mime)
    {
        assert!(
            signed_names.split(':').any(|name| name.trim() == *header),
            "{header} not signed: {signed_names}"
        );
    }
    for line in text.split("\r\n") {
        assert!(line.len() <= 78, "line longer than 78: {line:?}");
    }

    assert_eq!(
        python(PYTHON_DKIM_VERIFY, &[&record, &name], &signed).trim(),
        "pass"
    );
    let tampered = text.replace("Submitter: example.net", "Submitter: example.org");
    assert_eq!(
        python(PYTHON_DKIM_VERIFY, &[&record, &name], tampered.as_bytes()).trim(),
        "fail"
    );
}

#[test]
fn dkimpy_verifies_rsa_pkcs8_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_key(
        dir.path(),
        "rsa-pkcs8.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_dkimpy_verifies(&key, DkimAlgorithm::RsaSha256);
}

#[test]
fn dkimpy_verifies_rsa_pkcs1_signatures_and_the_record_holds_the_spki() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa-pkcs1.pem");
    run(
        "openssl",
        &[
            "genrsa",
            "-traditional",
            "-out",
            key.to_str().unwrap(),
            "2048",
        ],
        b"",
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert_dkimpy_verifies(&key, DkimAlgorithm::RsaSha256);

    // p= is what `openssl pkey -pubout` gives: SubjectPublicKeyInfo.
    let spki_pem = run(
        "openssl",
        &["pkey", "-in", key.to_str().unwrap(), "-pubout"],
        b"",
    );
    let spki_base64: String = spki_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let signer = DkimSigner::from_key_file(&key, "s", "example.net").unwrap();
    assert_eq!(
        signer.dns_record(),
        format!("v=DKIM1; k=rsa; s=tlsrpt; p={spki_base64}")
    );
}

#[test]
fn dkimpy_verifies_ed25519_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_key(dir.path(), "ed25519.pem", &["-algorithm", "ed25519"]);
    assert_dkimpy_verifies(&key, DkimAlgorithm::Ed25519Sha256);
    let record = DkimSigner::from_key_file(&key, "s", "example.net")
        .unwrap()
        .dns_record();
    let p = record
        .strip_prefix("v=DKIM1; k=ed25519; s=tlsrpt; p=")
        .unwrap();
    assert_eq!(p.len(), 44, "RFC 8463: the raw 32-byte key, base64: {p}");
}

#[test]
fn unusable_keys_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ec = openssl_key(
        dir.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let small = openssl_key(
        dir.path(),
        "rsa512.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"],
    );
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    for (path, expected) in [
        (&ec, "neither an RSA key"),
        (&small, "512 bits"),
        (&not_a_key, "no unencrypted PEM private key"),
    ] {
        let err = DkimSigner::from_key_file(path, "s", "example.net").unwrap_err();
        assert!(
            matches!(&err, Error::BadDkimKey { .. }) && err.to_string().contains(expected),
            "{}: {err}",
            path.display()
        );
    }
    let missing = DkimSigner::from_key_file(&dir.path().join("missing.pem"), "s", "d").unwrap_err();
    assert!(matches!(missing, Error::ReadFile { .. }), "{missing}");
}

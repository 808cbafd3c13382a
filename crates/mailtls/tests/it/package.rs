//! `scripts/package` where cargo's target directory is not `./target`
//! (`CARGO_TARGET_DIR` set): the script asks cargo where the programs are
//! and puts the package there too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of the programs under test (`target/debug` or wherever
/// `CARGO_TARGET_DIR` put them).
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mailtls"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_package_script_follows_cargo_target_dir() {
    // Another target directory, not the repository's `target`: the script
    // asks cargo for it and makes the package there. The programs are
    // this test's own build (`--bins`), so nothing is built again while
    // other tests run them.
    let elsewhere = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(repo.join("scripts/package"))
        .arg("--debug")
        .arg("--bins")
        .arg(profile_dir())
        .env("CARGO_TARGET_DIR", elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let deb = PathBuf::from(stdout.lines().last().unwrap());
    assert_eq!(
        deb.parent().unwrap(),
        elsewhere.path().join("debian"),
        "the package is made in cargo's target directory: {stdout}"
    );
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for program in [
        "usr/sbin/tlsrpt-collectd",
        "usr/sbin/posttls",
        "usr/bin/mailtls",
    ] {
        assert!(listing.contains(program), "{program} in\n{listing}");
    }
}

//! The lab itself: the roots hold the Postfix they promise, and a root with
//! something mounted under it is never deleted.

use std::process::Command;

use crate::support::lab::root::{mounts_under, remove_root};
use crate::support::lab::{Root, Suite};

#[test]
fn the_trixie_root_has_postfix_3_10_built_with_libtlsrpt() {
    let root = Root::enter(Suite::Trixie);
    let version = root.run("/usr/sbin/postconf", &["-dh", "mail_version"]);
    assert!(version.starts_with("3.10."), "{version}");
    // Built with libtlsrpt: the smtp client links it, and the TLSRPT
    // parameters exist.
    let ldd = root.run("/usr/bin/ldd", &["/usr/lib/postfix/sbin/smtp"]);
    assert!(ldd.contains("libtlsrpt.so"), "{ldd}");
    let enable = root.run("/usr/sbin/postconf", &["-dh", "smtp_tlsrpt_enable"]);
    assert_eq!(enable.trim(), "no");
    // proc and /dev are mounted while the root is in use.
    let mounts = mounts_under(root.path());
    assert!(mounts.contains(&root.path().join("proc")), "{mounts:?}");
    assert!(mounts.contains(&root.path().join("dev")), "{mounts:?}");
}

#[test]
fn the_sid_root_has_postfix_3_11_with_requiretls() {
    let root = Root::enter(Suite::Sid);
    let version = root.run("/usr/sbin/postconf", &["-dh", "mail_version"]);
    assert!(version.starts_with("3.11."), "{version}");
    let requiretls = root.run("/usr/sbin/postconf", &["-dh", "requiretls_enable"]);
    assert_eq!(requiretls.trim(), "yes");
}

#[test]
fn a_directory_with_a_mount_under_it_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    // A tmpfs stands in for the bind-mounted /dev (whose nodes are the
    // host's): something that must survive.
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&dev)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(dev.join("node"), "host's").unwrap();
    let refused = remove_root(dir.path()).unwrap_err();
    assert!(refused.contains("refusing to delete"), "{refused}");
    assert!(refused.contains(&dev.display().to_string()), "{refused}");
    assert_eq!(std::fs::read_to_string(dev.join("node")).unwrap(), "host's");
    assert!(dir.path().join("file").exists(), "nothing deleted");

    assert!(Command::new("umount").arg(&dev).status().unwrap().success());
    remove_root(dir.path()).unwrap();
    assert!(!dir.path().exists());
}

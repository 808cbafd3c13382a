//! `mailtls generate-docs`: the manual pages and shell completions of every
//! program, rendered from the same clap commands (and so the same option
//! declarations) as `--help`, so that they cannot disagree with it. The
//! Debian package runs it at build time (`scripts/package`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Arg, ArgMatches, Command};
use clap_complete::Shell;

use super::{collectd, fetcher, posttls, reportd, tlsrptctl};

/// Every program installed under its own name, with its manual section:
/// 8 for the daemons and what an administrator runs, 1 for the rest.
pub fn programs() -> Vec<(Command, &'static str)> {
    let version = env!("CARGO_PKG_VERSION");
    vec![
        (super::cli(), "1"),
        (collectd::command().version(version), "8"),
        (reportd::command().version(version), "8"),
        (fetcher::command().version(version), "1"),
        (tlsrptctl::command().version(version), "1"),
        (posttls::command().version(version), "8"),
    ]
}

pub fn command() -> Command {
    Command::new("generate-docs")
        .about("Write the manual pages and shell completions of every program")
        .arg(
            Arg::new("man")
                .long("man")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Directory for the manual pages (NAME.SECTION, one per program and subcommand)"),
        )
        .arg(
            Arg::new("completions")
                .long("completions")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Directory for bash, zsh and fish completions (bash/NAME.bash, zsh/_NAME, fish/NAME.fish)"),
        )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let result = (|| -> anyhow::Result<()> {
        if let Some(dir) = matches.get_one::<PathBuf>("man") {
            write_man_pages(dir)?;
        }
        if let Some(dir) = matches.get_one::<PathBuf>("completions") {
            write_completions(dir)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mailtls generate-docs: {e:#}");
            1
        }
    }
}

/// One page per program, and one per subcommand (`posttls-worker.8`),
/// which lists that subcommand's options.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut written = Vec::new();
    for (program, section) in programs() {
        let name = program.get_name().to_string();
        let mut pages = vec![(name.clone(), program.clone())];
        for sub in program.get_subcommands().filter(|s| !s.is_hide_set()) {
            let full = format!("{name}-{}", sub.get_name());
            pages.push((full.clone(), sub.clone().name(full)));
        }
        for (page_name, cmd) in pages {
            let man = clap_mangen::Man::new(cmd)
                .section(section)
                .manual("mailtls")
                .source(format!("mailtls {}", env!("CARGO_PKG_VERSION")));
            let mut text = Vec::new();
            man.render(&mut text)?;
            let path = dir.join(format!("{page_name}.{section}"));
            std::fs::write(&path, text).with_context(|| path.display().to_string())?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Completions of every program for bash, zsh and fish.
pub fn write_completions(dir: &Path) -> anyhow::Result<()> {
    for (shell, sub) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let out = dir.join(sub);
        std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
        for (mut program, _) in programs() {
            let name = program.get_name().to_string();
            clap_complete::generate_to(shell, &mut program, name, &out)
                .with_context(|| out.display().to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtls_common::config::ProgramOptions;

    /// Every option of every program is in its manual page, with its help
    /// text: the pages come from the declarations, not from a copy.
    #[test]
    fn man_pages_name_every_option_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "mailtls.1",
            "tlsrpt-collectd.8",
            "tlsrpt-reportd.8",
            "tlsrpt-fetcher.1",
            "tlsrptctl.1",
            "tlsrptctl-render.1",
            "posttls.8",
            "posttls-worker.8",
            "posttls-web.8",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let collectd = page("tlsrpt-collectd.8");
        for option in collectd::CollectdOptions::OPTIONS {
            // roff escapes '-' and '_' is kept.
            let flag = format!("\\-\\-{}", option.name);
            assert!(collectd.contains(&flag), "{flag} in tlsrpt-collectd.8");
        }
        assert!(collectd.contains(".TH tlsrpt-collectd 8"), "{collectd}");
        let worker = page("posttls-worker.8");
        assert!(worker.contains("scan_interval"), "{worker}");
        let reportd = page("tlsrpt-reportd.8");
        assert!(reportd.contains("max_records_per_domain"), "{reportd}");
    }

    #[test]
    fn completions_are_written_for_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        write_completions(dir.path()).unwrap();
        let bash = std::fs::read_to_string(dir.path().join("bash/tlsrpt-collectd.bash")).unwrap();
        assert!(bash.contains("--socketname"), "{bash}");
        assert!(dir.path().join("zsh/_posttls").exists());
        assert!(dir.path().join("fish/tlsrptctl.fish").exists());
    }
}

//! One option loader for every program, with upstream's precedence.
//!
//! Each program declares its options once, with [`options!`](crate::options):
//! a struct whose fields are the options (name, raw type, default and help
//! text in one place). From that one declaration come the `--help` text
//! ([`add_options`]), the loading from the command line, environment and
//! config file ([`resolve`]), the start-up log ([`Settings::log_lines`]) and
//! the typed struct the program reads, so a misspelt option name does not
//! compile. Each program then validates the raw values into its ready
//! configuration. An option's
//! value comes from the first of these that has it, as in upstream
//! tlsrpt-reporter (`options_from` with the order "cefd"):
//!
//! 1. the command line, `--name=value` or `--name value` (upstream spelling,
//!    with underscores);
//! 2. the environment, `<env_prefix><NAME>`, e.g. `TLSRPT_COLLECTD_STORAGE`;
//! 3. the program's section of the config file (`--config_file`, otherwise
//!    the default file if it exists), read with [`crate::ini`];
//! 4. the built-in default.
//!
//! Like upstream, every value found is checked, even one that a source with
//! higher precedence overrides: a bad integer in the config file stops the
//! program although the command line sets the same option.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::ini::{Ini, IniError};

/// The command-line option that selects the config file.
const CONFIG_FILE_OPTION: &str = "config_file";

/// How an option's text is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A whole number, accepted in the forms Python's `int()` accepts.
    Int,
}

/// One option of a program.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The upstream name: command line `--name`, config key `name`,
    /// environment `<prefix>NAME`.
    pub name: &'static str,
    pub kind: Kind,
    /// The default as text; it must convert by `kind`.
    pub default: &'static str,
    pub help: &'static str,
}

impl OptionSpec {
    /// The help text (a doc comment's leading space removed).
    pub fn help(&self) -> &'static str {
        self.help.trim()
    }
}

/// The raw type of an option's value: a field type of an
/// [`options!`](crate::options) struct.
pub trait OptionValue: Sized {
    const KIND: Kind;
    /// The value converted by [`Self::KIND`].
    fn from_value(value: &Value) -> Self;
}

impl OptionValue for String {
    const KIND: Kind = Kind::Str;
    fn from_value(value: &Value) -> String {
        match value {
            Value::Str(text) => text.clone(),
            Value::Int(_) => unreachable!("a Str option is converted to Value::Str"),
        }
    }
}

impl OptionValue for i64 {
    const KIND: Kind = Kind::Int;
    fn from_value(value: &Value) -> i64 {
        match value {
            Value::Int(number) => *number,
            Value::Str(_) => unreachable!("an Int option is converted to Value::Int"),
        }
    }
}

/// The options of one program, as a struct with one field per option:
/// implemented by [`options!`](crate::options).
pub trait ProgramOptions: Sized {
    /// One entry per field, in declaration order (the order they are logged).
    const OPTIONS: &'static [OptionSpec];

    /// Each field's value from settings resolved against [`Self::OPTIONS`].
    fn from_settings(settings: &Settings) -> Self;

    /// Every option at its default.
    fn defaults() -> Self {
        let settings = defaults(Self::OPTIONS).expect("every built-in default converts");
        Self::from_settings(&settings)
    }
}

/// Declares a program's options: a struct with one public field per option
/// (its doc comment is the `--help` text, its type `String` or `i64`, after
/// `=` its default as text), a struct of the same fields telling where each
/// value came from, and the [`ProgramOptions`](crate::config::ProgramOptions)
/// implementation that [`resolve`](crate::config::resolve) and
/// [`add_options`](crate::config::add_options) use.
///
/// ```
/// mailtls_common::options! {
///     /// The options of an example program.
///     pub struct ExampleOptions, sources ExampleSources {
///         /// Seconds to wait
///         timeout: i64 = "5",
///         /// Where to write
///         path: String = "",
///     }
/// }
/// use mailtls_common::config::ProgramOptions;
/// let options = ExampleOptions::defaults();
/// assert_eq!(options.timeout, 5);
/// assert_eq!(ExampleOptions::OPTIONS[1].name, "path");
/// ```
#[macro_export]
macro_rules! options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident, sources $sources:ident {
            $(
                $(#[doc = $help:literal])+
                $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $name {
            $(
                $(#[doc = $help])+
                pub $field: $ty,
            )*
            /// Where each value came from.
            pub sources: $sources,
        }

        #[doc = concat!("Where each option of [`", stringify!($name), "`] got its value.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis struct $sources {
            $(
                #[doc = concat!("Where `", stringify!($field), "` came from.")]
                pub $field: $crate::config::Source,
            )*
        }

        impl $crate::config::ProgramOptions for $name {
            const OPTIONS: &'static [$crate::config::OptionSpec] = &[
                $(
                    $crate::config::OptionSpec {
                        name: stringify!($field),
                        kind: <$ty as $crate::config::OptionValue>::KIND,
                        default: $default,
                        help: concat!($($help),+),
                    },
                )*
            ];

            fn from_settings(settings: &$crate::config::Settings) -> Self {
                $name {
                    $(
                        $field: <$ty as $crate::config::OptionValue>::from_value(
                            settings.value(stringify!($field)),
                        ),
                    )*
                    sources: $sources {
                        $($field: settings.source(stringify!($field)),)*
                    },
                }
            }
        }
    };
}

/// Everything the loader needs to know about a program besides its options.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Program name for help and messages, e.g. `tlsrpt-collectd`.
    pub name: &'static str,
    /// The config file section that holds its settings, e.g. `tlsrpt_collectd`.
    pub section: &'static str,
    /// Prefix of its environment variables, e.g. `TLSRPT_COLLECTD_`.
    pub env_prefix: &'static str,
    /// Read when `--config_file` is not given, if it exists.
    pub default_config_file: &'static str,
    /// Options of another program whose keys the section may contain and
    /// which are skipped, because the section belongs to that program too
    /// (tlsrptctl reads the tlsrpt_reportd section but uses few of its
    /// keys). They are not command line options, and environment variables
    /// for them are ignored silently.
    pub ignored: &'static [OptionSpec],
}

impl ProgramSpec {
    fn knows(&self, options: &[OptionSpec], name: &str) -> bool {
        options
            .iter()
            .chain(self.ignored)
            .any(|option| option.name == name)
    }

    fn env_var(&self, option: &OptionSpec) -> String {
        format!("{}{}", self.env_prefix, option.name.to_uppercase())
    }
}

/// Where a value came from; displayed as upstream logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cmd,
    Env,
    Cfg,
    Def,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmd => "cmd",
            Source::Env => "env",
            Source::Cfg => "cfg",
            Source::Def => "def",
        })
    }
}

/// A converted option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
        }
    }
}

/// One resolved option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: Value,
    pub source: Source,
}

/// The resolved options of a program, in the order of its option table.
#[derive(Debug, Clone)]
pub struct Settings {
    settings: Vec<Setting>,
    warnings: Vec<String>,
}

impl Settings {
    /// Only [`options!`](crate::options) looks settings up by name, with
    /// names from the same declaration as the table they were resolved
    /// against; a miss is a mistake in the program.
    fn setting(&self, name: &str) -> &Setting {
        self.settings
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no option {name:?} in this program's option table"))
    }

    #[doc(hidden)]
    pub fn value(&self, name: &str) -> &Value {
        &self.setting(name).value
    }

    #[doc(hidden)]
    pub fn source(&self, name: &str) -> Source {
        self.setting(name).source
    }

    /// All settings in option-table order.
    pub fn iter(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter()
    }

    /// Problems that do not stop the program: environment variables with the
    /// program's prefix that name no option. Upstream logs them as warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The lines upstream logs at startup, which people grep for:
    /// `CONFIGURATION with N settings:`, then one
    /// `CONFIG from SOURCE option NAME is VALUE` per option.
    pub fn log_lines(&self) -> Vec<String> {
        let header = format!("CONFIGURATION with {} settings:", self.settings.len());
        let lines = self.settings.iter().map(|s| {
            format!(
                "CONFIG from {} option {} is {}",
                s.source,
                s.name,
                crate::redact::passwords_in(&s.value.to_string())
            )
        });
        std::iter::once(header).chain(lines).collect()
    }

    /// Logs [`Settings::log_lines`] at info level and the warnings at warning
    /// level, as upstream does once logging is set up.
    pub fn log(&self) {
        for line in self.log_lines() {
            log::info!("{line}");
        }
        for warning in &self.warnings {
            log::warn!("{warning}");
        }
    }
}

/// Why the options could not be resolved; the program cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} (given by --config_file) does not exist or is not a regular file; \
         check the path, or leave out --config_file to use {default}"
    )]
    ConfigFileNotFound {
        path: PathBuf,
        default: &'static str,
    },
    /// The config file is unreadable or not valid for Python's configparser
    /// (boxed: it is large, and rare).
    #[error(transparent)]
    Ini(Box<IniError>),
    #[error(
        "config file {file} has no section [{section}]; the {program} settings \
         must follow a line \"[{section}]\""
    )]
    MissingSection {
        file: PathBuf,
        section: &'static str,
        program: &'static str,
    },
    #[error(
        "config file {file}, section [{section}]: key {key:?} has an empty value; \
         give it a value, or remove the line to use the default"
    )]
    EmptyValue {
        file: PathBuf,
        section: &'static str,
        key: String,
    },
    #[error(
        "config file {file}, section [{section}] (or [DEFAULT]): unknown key {key:?}; \
         remove it or correct its spelling (known keys: {known})"
    )]
    UnknownKey {
        file: PathBuf,
        section: &'static str,
        key: String,
        known: String,
    },
    #[error(
        "option {option}: {value:?} from {origin} is {problem}; \
         expected a whole number such as 10 or -1"
    )]
    InvalidInt {
        option: &'static str,
        value: String,
        /// Which source the value came from.
        from: Source,
        /// Where exactly, e.g. "environment variable TLSRPT_COLLECTD_SOCKETTIMEOUT".
        origin: String,
        /// "not a whole number" or "out of range".
        problem: &'static str,
    },
}

impl From<IniError> for ConfigError {
    fn from(error: IniError) -> ConfigError {
        ConfigError::Ini(Box::new(error))
    }
}

/// Adds `--NAME` for every option of `O` and `--config_file` to `cmd`.
///
/// Each takes one value, as `--name=value` or `--name value`; given twice, the
/// last wins (as with upstream's argparse). Negative numbers are values, not
/// options. The help text shows the default, the environment variable and
/// the config file section. Values are not checked here but by [`resolve`], so
/// that all sources report bad values alike.
pub fn add_options<O: ProgramOptions>(cmd: Command, spec: &ProgramSpec) -> Command {
    add_table(cmd, spec, O::OPTIONS)
}

fn add_table(mut cmd: Command, spec: &ProgramSpec, options: &[OptionSpec]) -> Command {
    for option in options {
        let default = if option.default.is_empty() {
            "\"\"".to_owned()
        } else {
            option.default.to_owned()
        };
        let help = format!(
            "{} [default: {default}] [env: {}] [config: [{}] {}]",
            option.help(),
            spec.env_var(option),
            spec.section,
            option.name,
        );
        let value_name = match option.kind {
            Kind::Str => "VALUE",
            Kind::Int => "NUMBER",
        };
        cmd = cmd.arg(value_arg(option.name).value_name(value_name).help(help));
    }
    let help = format!(
        "Configuration file [default: {}, if it exists]",
        spec.default_config_file
    );
    cmd.arg(value_arg(CONFIG_FILE_OPTION).value_name("FILE").help(help))
}

fn value_arg(name: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(String))
        .allow_negative_numbers(true)
        .overrides_with(name)
}

/// The process environment as text, for [`resolve`]. Names or values that are
/// not UTF-8 are converted lossily instead of making the program fail.
pub fn process_env() -> Vec<(String, String)> {
    let lossy = |s: OsString| s.to_string_lossy().into_owned();
    std::env::vars_os()
        .map(|(name, value)| (lossy(name), lossy(value)))
        .collect()
}

/// Resolves every option of `O` from the command line (`matches` of a
/// command built with [`add_options`]), the environment (`env`, e.g.
/// [`process_env`]), the config file and the defaults. Returns the typed
/// options and the settings they came from (for the start-up log).
///
/// Panics if `matches` lacks the options of [`add_options`], a mistake in the
/// program.
pub fn resolve<O: ProgramOptions>(
    spec: &ProgramSpec,
    matches: &ArgMatches,
    env: &[(String, String)],
) -> Result<(O, Settings), ConfigError> {
    let settings = resolve_table(spec, O::OPTIONS, matches, env)?;
    Ok((O::from_settings(&settings), settings))
}

/// Every option of the table at its default.
fn defaults(options: &'static [OptionSpec]) -> Result<Settings, ConfigError> {
    let settings = options
        .iter()
        .map(|option| {
            let origin = || "the built-in default".to_owned();
            Ok(Setting {
                name: option.name,
                value: convert(option, option.default, Source::Def, origin)?,
                source: Source::Def,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(Settings {
        settings,
        warnings: Vec::new(),
    })
}

fn resolve_table(
    spec: &ProgramSpec,
    options: &'static [OptionSpec],
    matches: &ArgMatches,
    env: &[(String, String)],
) -> Result<Settings, ConfigError> {
    // Per option, the value from the command line, environment and file.
    let mut found: Vec<[Option<Value>; 3]> = vec![[None, None, None]; options.len()];
    let slot = |name: &str| options.iter().position(|o| o.name == name);

    for (index, option) in options.iter().enumerate() {
        if let Some(text) = matches.get_one::<String>(option.name) {
            let origin = || format!("the command line (--{})", option.name);
            found[index][0] = Some(convert(option, text, Source::Cmd, origin)?);
        }
    }

    if let Some((file, ini)) = read_config_file(spec, matches)? {
        if !ini.has_section(spec.section) {
            return Err(ConfigError::MissingSection {
                file,
                section: spec.section,
                program: spec.name,
            });
        }
        for (key, text) in ini.items(spec.section)? {
            if text.is_empty() {
                return Err(ConfigError::EmptyValue {
                    file,
                    section: spec.section,
                    key,
                });
            }
            if let Some(index) = slot(&key) {
                let option = &options[index];
                let origin = || format!("section [{}] of {}", spec.section, file.display());
                found[index][2] = Some(convert(option, &text, Source::Cfg, origin)?);
            } else if !spec.knows(&[], &key) {
                let known: Vec<&str> = options.iter().map(|o| o.name).collect();
                return Err(ConfigError::UnknownKey {
                    file,
                    section: spec.section,
                    key,
                    known: known.join(", "),
                });
            }
        }
    }

    for (index, option) in options.iter().enumerate() {
        let var = spec.env_var(option);
        if let Some((_, text)) = env.iter().rev().find(|(name, _)| *name == var) {
            let origin = || format!("environment variable {var}");
            found[index][1] = Some(convert(option, text, Source::Env, origin)?);
        }
    }
    let warnings = env
        .iter()
        .filter_map(|(name, _)| env_warning(spec, options, name))
        .collect();

    let mut settings = Vec::with_capacity(options.len());
    for (option, [from_cmd, from_env, from_cfg]) in options.iter().zip(found) {
        let origin = || "the built-in default".to_owned();
        let (value, source) = match (from_cmd, from_env, from_cfg) {
            (Some(v), _, _) => (v, Source::Cmd),
            (None, Some(v), _) => (v, Source::Env),
            (None, None, Some(v)) => (v, Source::Cfg),
            (None, None, None) => (
                convert(option, option.default, Source::Def, origin)?,
                Source::Def,
            ),
        };
        settings.push(Setting {
            name: option.name,
            value,
            source,
        });
    }
    Ok(Settings { settings, warnings })
}

/// The config file to read, if any: the one named by `--config_file`, which
/// must exist, or else the default one if it exists.
fn read_config_file(
    spec: &ProgramSpec,
    matches: &ArgMatches,
) -> Result<Option<(PathBuf, Ini)>, ConfigError> {
    let path = match matches.get_one::<String>(CONFIG_FILE_OPTION) {
        Some(explicit) => {
            let path = PathBuf::from(explicit);
            if !path.is_file() {
                return Err(ConfigError::ConfigFileNotFound {
                    path,
                    default: spec.default_config_file,
                });
            }
            path
        }
        None => {
            let path = PathBuf::from(spec.default_config_file);
            if !path.is_file() {
                return Ok(None);
            }
            path
        }
    };
    let ini = Ini::read_file(&path)?;
    Ok(Some((path, ini)))
}

/// A warning for an environment variable that has the program's prefix but
/// sets nothing. Upstream warns when the rest is no option name; a name that
/// differs from an option only in case is also ignored (the lookup is by the
/// upper-case name), so it gets a warning too.
fn env_warning(spec: &ProgramSpec, options: &[OptionSpec], var: &str) -> Option<String> {
    let rest = var.strip_prefix(spec.env_prefix)?;
    let name = rest.to_lowercase();
    if !spec.knows(options, &name) {
        return Some(format!(
            "environment variable {var} is ignored: {name:?} is not an option of {}",
            spec.name
        ));
    }
    let wanted = format!("{}{}", spec.env_prefix, name.to_uppercase());
    (var != wanted)
        .then(|| format!("environment variable {var} is ignored; its name must be {wanted}"))
}

fn convert(
    option: &'static OptionSpec,
    text: &str,
    source: Source,
    origin: impl FnOnce() -> String,
) -> Result<Value, ConfigError> {
    match option.kind {
        Kind::Str => Ok(Value::Str(text.to_owned())),
        Kind::Int => {
            parse_python_int(text)
                .map(Value::Int)
                .map_err(|problem| ConfigError::InvalidInt {
                    option: option.name,
                    value: text.to_owned(),
                    from: source,
                    origin: origin(),
                    problem,
                })
        }
    }
}

/// A number of seconds below zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must not be negative, not {value}")]
pub struct NegativeSeconds {
    pub name: String,
    pub value: i64,
}

/// An option's whole number of seconds as a duration; a negative number is
/// refused with the option's `name`.
pub fn seconds(name: &str, value: i64) -> Result<std::time::Duration, NegativeSeconds> {
    u64::try_from(value)
        .map(std::time::Duration::from_secs)
        .map_err(|_| NegativeSeconds {
            name: name.to_string(),
            value,
        })
}

/// A `HOST:PORT` option whose host is not an IP address or whose port is
/// missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name} = {value:?} is not an address to listen on: give an IP address and a port, \
     e.g. {name} = 127.0.0.1:9150 or {name} = [::1]:9150, or leave it empty for none"
)]
pub struct BadListenAddress {
    pub name: String,
    pub value: String,
}

/// `metrics_max_connections` or `metrics_request_timeout` below 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} = {value}: it must be at least 1")]
pub struct BadMetricsLimit {
    pub name: &'static str,
    pub value: i64,
}

/// The limits of a `metrics_listen` endpoint from `metrics_max_connections`
/// and `metrics_request_timeout` (seconds).
pub fn metrics_limits(
    max_connections: i64,
    request_timeout: i64,
) -> Result<crate::metrics::Limits, BadMetricsLimit> {
    let at_least_one = |name, value: i64| {
        u32::try_from(value)
            .ok()
            .filter(|&v| v >= 1)
            .ok_or(BadMetricsLimit { name, value })
    };
    Ok(crate::metrics::Limits {
        max_connections: at_least_one("metrics_max_connections", max_connections)? as usize,
        deadline: std::time::Duration::from_secs(u64::from(at_least_one(
            "metrics_request_timeout",
            request_timeout,
        )?)),
    })
}

/// An optional `HOST:PORT` to listen on (such as `metrics_listen`): empty
/// is `None`, otherwise an IP address (IPv6 in brackets) and a port. Host
/// names are refused, so that what is bound does not depend on the
/// resolver at start.
pub fn listen_address(
    name: &str,
    value: &str,
) -> Result<Option<std::net::SocketAddr>, BadListenAddress> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| BadListenAddress {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// Parses a whole number as Python's `int(text)` does: surrounding whitespace,
/// an optional sign, decimal digits with single underscores between them, and
/// leading zeros are fine. Unlike Python, only ASCII digits are accepted and
/// the value must fit in an `i64`.
fn parse_python_int(text: &str) -> Result<i64, &'static str> {
    const INVALID: &str = "not a whole number";
    let trimmed = text.trim_matches(char::is_whitespace);
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let well_formed = !digits.is_empty()
        && digits
            .split('_')
            .all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(INVALID);
    }
    let mut value: i64 = 0;
    for digit in digits.bytes().filter(u8::is_ascii_digit) {
        let digit = i64::from(digit - b'0');
        // Accumulating towards the sign lets i64::MIN through.
        let next = value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        });
        value = next.ok_or("out of range")?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::path::Path;

    crate::options! {
        /// The options of a test program.
        struct TestOptions, sources TestSources {
            /// Storage backend
            storage: String = "",
            /// Read timeout
            sockettimeout: i64 = "5",
            /// Log level
            log_level: String = "warn",
            /// Commit after that
            /// many datagrams
            max_uncommited_datagrams: i64 = "1000",
        }
    }

    /// An option of another program that the test section may hold.
    const DBNAME: &[OptionSpec] = &[OptionSpec {
        name: "dbname",
        kind: Kind::Str,
        default: "",
        help: "",
    }];

    /// A spec whose default config file is `default_file` (leaked: the spec
    /// wants `'static` strings, as real programs have).
    fn spec(default_file: &Path) -> ProgramSpec {
        ProgramSpec {
            name: "tlsrpt-test",
            section: "tlsrpt_test",
            env_prefix: "TLSRPT_TEST_",
            default_config_file: Box::leak(default_file.display().to_string().into_boxed_str()),
            ignored: DBNAME,
        }
    }

    struct Case {
        dir: tempfile::TempDir,
        args: Vec<String>,
        env: Vec<(String, String)>,
    }

    impl Case {
        fn new() -> Case {
            Case {
                dir: tempfile::tempdir().unwrap(),
                args: vec!["tlsrpt-test".to_owned()],
                env: Vec::new(),
            }
        }

        fn default_file(&self) -> PathBuf {
            self.dir.path().join("default.cfg")
        }

        /// Writes the default config file.
        fn file(self, text: &str) -> Case {
            let mut f = std::fs::File::create(self.default_file()).unwrap();
            f.write_all(text.as_bytes()).unwrap();
            self
        }

        fn args(mut self, args: &[&str]) -> Case {
            self.args.extend(args.iter().map(|a| a.to_string()));
            self
        }

        fn env(mut self, name: &str, value: &str) -> Case {
            self.env.push((name.to_owned(), value.to_owned()));
            self
        }

        fn resolve(&self) -> Result<(TestOptions, Settings), ConfigError> {
            let spec = spec(&self.default_file());
            let matches = add_options::<TestOptions>(Command::new("tlsrpt-test"), &spec)
                .try_get_matches_from(&self.args)
                .unwrap();
            resolve(&spec, &matches, &self.env)
        }
    }

    #[test]
    fn defaults_without_any_file() {
        let (options, settings) = Case::new().resolve().unwrap();
        assert_eq!(options.storage, "");
        assert_eq!(options.sockettimeout, 5);
        assert_eq!(options.log_level, "warn");
        assert!(settings.iter().all(|s| s.source == Source::Def));
        assert!(settings.warnings().is_empty());
    }

    #[test]
    fn precedence_is_cmd_env_cfg_def() {
        let (_, settings) = Case::new()
            .file("[tlsrpt_test]\nstorage = cfg\nsockettimeout = 7\nlog_level = info\n")
            .env("TLSRPT_TEST_STORAGE", "env")
            .env("TLSRPT_TEST_SOCKETTIMEOUT", "8")
            .args(&["--storage=cmd"])
            .resolve()
            .unwrap();
        let got: Vec<_> = settings
            .iter()
            .map(|s| (s.name, s.value.to_string(), s.source))
            .collect();
        assert_eq!(
            got,
            [
                ("storage", "cmd".to_owned(), Source::Cmd),
                ("sockettimeout", "8".to_owned(), Source::Env),
                ("log_level", "info".to_owned(), Source::Cfg),
                ("max_uncommited_datagrams", "1000".to_owned(), Source::Def),
            ]
        );
    }

    #[test]
    fn command_line_forms() {
        let (options, _) = Case::new()
            .args(&[
                "--max_uncommited_datagrams",
                "5",
                "--sockettimeout=-1",
                "--log_level",
                "debug",
                "--log_level=info",
                "--storage=",
            ])
            .resolve()
            .unwrap();
        assert_eq!(options.max_uncommited_datagrams, 5);
        assert_eq!(options.sockettimeout, -1);
        assert_eq!(options.log_level, "info");
        // An empty value on the command line is a value, as upstream.
        assert_eq!(options.storage, "");
        assert_eq!(options.sources.storage, Source::Cmd);
    }

    #[test]
    fn ignored_keys_are_not_command_line_options() {
        let case = Case::new();
        let spec = spec(&case.default_file());
        let result = add_options::<TestOptions>(Command::new("t"), &spec)
            .try_get_matches_from(["t", "--dbname=x"]);
        assert!(result.is_err());
    }

    #[test]
    fn explicit_config_file_is_read() {
        let case = Case::new();
        let path = case.dir.path().join("other.cfg");
        std::fs::write(&path, "[tlsrpt_test]\nstorage: sqlite:///x\n").unwrap();
        let (options, _) = case
            .args(&["--config_file", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(options.storage, "sqlite:///x");
        assert_eq!(options.sources.storage, Source::Cfg);
    }

    #[test]
    fn missing_explicit_config_file_is_an_error() {
        let case = Case::new().file("[tlsrpt_test]\n");
        let missing = case.dir.path().join("missing.cfg");
        let error = case
            .args(&["--config_file", missing.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(
            matches!(error, ConfigError::ConfigFileNotFound { ref path, .. } if *path == missing)
        );
        assert!(error.to_string().contains("missing.cfg"), "{error}");
        // A directory is not a config file either, nor is an empty name.
        let case = Case::new();
        let dir = case.dir.path().to_str().unwrap().to_owned();
        let error = case.args(&["--config_file", &dir]).resolve().unwrap_err();
        assert!(matches!(error, ConfigError::ConfigFileNotFound { .. }));
        let error = Case::new().args(&["--config_file="]).resolve().unwrap_err();
        assert!(matches!(error, ConfigError::ConfigFileNotFound { .. }));
    }

    #[test]
    fn missing_section_is_an_error() {
        let error = Case::new()
            .file("[tlsrpt_other]\nstorage = x\n")
            .resolve()
            .unwrap_err();
        assert!(matches!(error, ConfigError::MissingSection { .. }));
        let message = error.to_string();
        assert!(
            message.contains("default.cfg") && message.contains("[tlsrpt_test]"),
            "{message}"
        );
        // [DEFAULT] alone does not count as the section.
        let error = Case::new()
            .file("[DEFAULT]\nstorage = x\n")
            .resolve()
            .unwrap_err();
        assert!(matches!(error, ConfigError::MissingSection { .. }));
    }

    #[test]
    fn empty_value_is_an_error() {
        let error = Case::new()
            .file("[tlsrpt_test]\nstorage =\n")
            .resolve()
            .unwrap_err();
        assert!(matches!(error, ConfigError::EmptyValue { ref key, .. } if key == "storage"));
        let message = error.to_string();
        assert!(
            message.contains("\"storage\"") && message.contains("[tlsrpt_test]"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_even_from_default_section() {
        let error = Case::new()
            .file("[tlsrpt_test]\nstorrage = x\n")
            .resolve()
            .unwrap_err();
        assert!(matches!(error, ConfigError::UnknownKey { ref key, .. } if key == "storrage"));
        assert!(
            error
                .to_string()
                .contains("known keys: storage, sockettimeout"),
            "{error}"
        );
        let error = Case::new()
            .file("[DEFAULT]\nconfig_file = x\n[tlsrpt_test]\n")
            .resolve()
            .unwrap_err();
        assert!(matches!(error, ConfigError::UnknownKey { ref key, .. } if key == "config_file"));
    }

    #[test]
    fn ignored_keys_are_accepted_in_the_file_and_environment() {
        let (_, settings) = Case::new()
            .file("[tlsrpt_test]\ndbname = /var/x.sqlite\n")
            .env("TLSRPT_TEST_DBNAME", "y")
            .resolve()
            .unwrap();
        assert!(settings.iter().all(|s| s.name != "dbname"));
        assert!(settings.warnings().is_empty(), "{:?}", settings.warnings());
    }

    #[test]
    fn file_is_read_with_configparser_semantics() {
        let result = Case::new()
            .file("[DEFAULT]\nbase = /var/lib\n[tlsrpt_test]\nStorage = sqlite://%(base)s/x?a=100%%\n")
            .resolve();
        // `base` is inherited from [DEFAULT] and so is an unknown key.
        assert!(matches!(result, Err(ConfigError::UnknownKey { ref key, .. }) if key == "base"));
        let (options, _) = Case::new()
            .file("[tlsrpt_test]\nlog_level = debug\nStorage = sqlite://%(log_level)s/x?a=100%%\n")
            .resolve()
            .unwrap();
        assert_eq!(options.storage, "sqlite://debug/x?a=100%");
        let error = Case::new()
            .file("[tlsrpt_test]\nstorage = 100%\n")
            .resolve()
            .unwrap_err();
        assert!(
            matches!(error, ConfigError::Ini(ref e) if matches!(**e, IniError::InterpolationSyntax { .. })),
            "{error}"
        );
        let error = Case::new().file("storage = x\n").resolve().unwrap_err();
        assert!(
            matches!(error, ConfigError::Ini(ref e) if matches!(**e, IniError::MissingSectionHeader { .. })),
            "{error}"
        );
    }

    #[test]
    fn unknown_environment_variables_are_warnings() {
        let (options, settings) = Case::new()
            .env("TLSRPT_TEST_STORAGEX", "1")
            .env("TLSRPT_TEST_Storage", "2")
            .env("TLSRPT_TEST_CONFIG_FILE", "3")
            .env("TLSRPT_OTHER_STORAGEX", "4")
            .env("PATH", "/bin")
            .resolve()
            .unwrap();
        let warnings = settings.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("TLSRPT_TEST_STORAGEX") && warnings[0].contains("\"storagex\"")
        );
        assert!(
            warnings[1].contains("TLSRPT_TEST_Storage")
                && warnings[1].contains("TLSRPT_TEST_STORAGE")
        );
        assert!(warnings[2].contains("TLSRPT_TEST_CONFIG_FILE"));
        // The wrongly cased variable did not set the option.
        assert_eq!(options.sources.storage, Source::Def);
    }

    #[test]
    fn empty_environment_value_is_a_value() {
        let (options, _) = Case::new()
            .file("[tlsrpt_test]\nlog_level = info\n")
            .env("TLSRPT_TEST_LOG_LEVEL", "")
            .resolve()
            .unwrap();
        assert_eq!(options.log_level, "");
        assert_eq!(options.sources.log_level, Source::Env);
    }

    /// The source a bad integer is blamed on, and the error's text.
    fn bad_int(case: Case) -> (Source, String) {
        match case.resolve().unwrap_err() {
            error @ ConfigError::InvalidInt { from, .. } => (from, error.to_string()),
            other => panic!("not a bad integer: {other}"),
        }
    }

    #[test]
    fn bad_integers_name_option_and_source() {
        let (from, text) = bad_int(Case::new().args(&["--sockettimeout=5s"]));
        assert_eq!(from, Source::Cmd);
        assert!(
            text.contains("option sockettimeout") && text.contains("--sockettimeout"),
            "{text}"
        );

        let (from, text) = bad_int(Case::new().env("TLSRPT_TEST_SOCKETTIMEOUT", ""));
        assert_eq!(from, Source::Env);
        assert!(text.contains("TLSRPT_TEST_SOCKETTIMEOUT"), "{text}");

        let (from, text) = bad_int(Case::new().file("[tlsrpt_test]\nsockettimeout = ten\n"));
        assert_eq!(from, Source::Cfg);
        assert!(text.contains("[tlsrpt_test] of"), "{text}");

        // Checked even where a source with higher precedence wins, as upstream.
        let (from, _) = bad_int(
            Case::new()
                .file("[tlsrpt_test]\nsockettimeout = ten\n")
                .args(&["--sockettimeout=3"]),
        );
        assert_eq!(from, Source::Cfg);
    }

    #[test]
    fn bad_default_is_reported() {
        static BAD: &[OptionSpec] = &[OptionSpec {
            name: "n",
            kind: Kind::Int,
            default: "",
            help: "",
        }];
        let spec = spec(Path::new("/nonexistent/x.cfg"));
        let matches = add_table(Command::new("t"), &spec, BAD).get_matches_from(["t"]);
        let error = resolve_table(&spec, BAD, &matches, &[]).unwrap_err();
        assert!(matches!(
            error,
            ConfigError::InvalidInt {
                from: Source::Def,
                ..
            }
        ));
    }

    #[test]
    fn the_declaration_gives_names_kinds_defaults_and_help() {
        let names: Vec<(&str, Kind, &str)> = TestOptions::OPTIONS
            .iter()
            .map(|o| (o.name, o.kind, o.default))
            .collect();
        assert_eq!(
            names,
            [
                ("storage", Kind::Str, ""),
                ("sockettimeout", Kind::Int, "5"),
                ("log_level", Kind::Str, "warn"),
                ("max_uncommited_datagrams", Kind::Int, "1000"),
            ]
        );
        assert_eq!(
            TestOptions::OPTIONS[3].help(),
            "Commit after that many datagrams"
        );
        let defaults = TestOptions::defaults();
        assert_eq!(defaults.sockettimeout, 5);
        assert_eq!(defaults.log_level, "warn");
        assert_eq!(defaults.sources.storage, Source::Def);
    }

    #[test]
    fn listen_addresses_are_ip_and_port_or_nothing() {
        assert_eq!(listen_address("metrics_listen", ""), Ok(None));
        assert_eq!(listen_address("metrics_listen", "  "), Ok(None));
        assert_eq!(
            listen_address("metrics_listen", "127.0.0.1:9150"),
            Ok(Some("127.0.0.1:9150".parse().unwrap()))
        );
        assert_eq!(
            listen_address("metrics_listen", "[::1]:0"),
            Ok(Some("[::1]:0".parse().unwrap()))
        );
        for bad in [
            "localhost:9150",
            "127.0.0.1",
            ":9150",
            "::1:9150",
            "127.0.0.1:99999",
        ] {
            let error = listen_address("metrics_listen", bad).unwrap_err();
            let text = error.to_string();
            assert!(
                text.starts_with(&format!("metrics_listen = {bad:?} is not")),
                "{text}"
            );
        }
    }

    #[test]
    fn python_int_forms() {
        let good = [
            ("0", 0),
            ("007", 7),
            (" +5 ", 5),
            ("\t-3\n", -3),
            ("1_000", 1000),
            ("0_7", 7),
            ("-0", 0),
            ("\u{a0}12\u{3000}", 12),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (text, value) in good {
            assert_eq!(parse_python_int(text), Ok(value), "{text:?}");
        }
        let bad = [
            "", " ", "+", "-", "1__0", "_1", "1_", "+_1", "1 0", "0x10", "1.0", "5s", "+-1",
            "\x1f5", "\u{ff15}",
        ];
        for text in bad {
            assert_eq!(
                parse_python_int(text),
                Err("not a whole number"),
                "{text:?}"
            );
        }
        assert_eq!(parse_python_int("9223372036854775808"), Err("out of range"));
    }

    #[test]
    fn log_lines_are_upstream_format() {
        let (_, settings) = Case::new()
            .args(&["--sockettimeout=+07"])
            .env("TLSRPT_TEST_LOG_LEVEL", "debug")
            .resolve()
            .unwrap();
        assert_eq!(
            settings.log_lines(),
            [
                "CONFIGURATION with 4 settings:",
                "CONFIG from def option storage is ",
                "CONFIG from cmd option sockettimeout is 7",
                "CONFIG from env option log_level is debug",
                "CONFIG from def option max_uncommited_datagrams is 1000",
            ]
        );
    }

    #[test]
    fn help_shows_default_env_and_section() {
        let case = Case::new();
        let spec = spec(&case.default_file());
        // A wide terminal keeps each help text on one line.
        let cmd = Command::new("t").term_width(1000);
        let help = add_options::<TestOptions>(cmd, &spec)
            .render_help()
            .to_string();
        for part in [
            "--sockettimeout <NUMBER>",
            "--storage <VALUE>",
            "[default: 5]",
            "[env: TLSRPT_TEST_SOCKETTIMEOUT]",
            "[config: [tlsrpt_test] sockettimeout]",
            "--config_file <FILE>",
            "default.cfg",
        ] {
            assert!(help.contains(part), "{part:?} missing in {help}");
        }
    }
}

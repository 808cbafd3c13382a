//! Logging in the upstream programs' format, to standard error and optionally
//! to a file that can be reopened (SIGHUP) after log rotation.
//!
//! Line format, as the Python reporter writes it so that existing log parsing
//! keeps working: `2026-11-22 01:11:14,123 tlsrpt_collectd INFO receiver : text`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use log::{LevelFilter, Log, Metadata, Record};

/// Parse a log level as the upstream accepts it: a name (`debug`, `info`,
/// `warn`, `warning`, `error`, `critical`, any case) or a Python logging
/// number (10 debug, 20 info, 30 warning, 40 error, 50 critical).
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    let level = match text.trim().to_ascii_lowercase().as_str() {
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "warn" | "warning" => LevelFilter::Warn,
        "error" | "critical" | "fatal" => LevelFilter::Error,
        other => match other.parse::<i64>() {
            Ok(n) if n <= 0 => LevelFilter::Trace,
            Ok(n) if n <= 10 => LevelFilter::Debug,
            Ok(n) if n <= 20 => LevelFilter::Info,
            Ok(n) if n <= 30 => LevelFilter::Warn,
            Ok(n) if n <= 50 => LevelFilter::Error,
            Ok(_) => LevelFilter::Off,
            Err(_) => {
                return Err(format!(
                "invalid log level '{text}': use debug, info, warning, error, critical or a number"
            ))
            }
        },
    };
    Ok(level)
}

struct Logger {
    component: &'static str,
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    to_stderr: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn open_log(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Install the process-wide logger. `component` is the upstream program name
/// with underscores (`tlsrpt_collectd`), `logfile` an empty string for none.
/// Fails when the log file cannot be opened: a daemon told to log somewhere
/// must not start silently without it.
pub fn init(component: &'static str, logfile: &str, level: LevelFilter) -> Result<(), String> {
    init_with(component, logfile, level, true)
}

/// Like [`init`], but only to the file when `to_stderr` is false (for programs
/// whose standard error is read by another program).
pub fn init_with(
    component: &'static str,
    logfile: &str,
    level: LevelFilter,
    to_stderr: bool,
) -> Result<(), String> {
    let path = (!logfile.is_empty()).then(|| PathBuf::from(logfile));
    let file = match &path {
        Some(p) => {
            Some(open_log(p).map_err(|e| format!("cannot open log file {}: {e}", p.display()))?)
        }
        None => None,
    };
    let logger = LOGGER.get_or_init(|| Logger {
        component,
        path,
        file: Mutex::new(file),
        to_stderr,
    });
    log::set_logger(logger).map_err(|e| e.to_string())?;
    log::set_max_level(level);
    Ok(())
}

/// Reopen the log file (after logrotate moved it away). Errors are reported
/// on standard error and logging to the old handle continues.
pub fn reopen() {
    let Some(logger) = LOGGER.get() else { return };
    let Some(path) = &logger.path else { return };
    match open_log(path) {
        Ok(f) => {
            *logger.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
            log::info!("log file {} reopened", path.display());
        }
        Err(e) => eprintln!("cannot reopen log file {}: {e}", path.display()),
    }
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "ERROR",
        log::Level::Warn => "WARNING",
        log::Level::Info => "INFO",
        log::Level::Debug => "DEBUG",
        log::Level::Trace => "TRACE",
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // The PostgreSQL client logs every statement with its parameters
        // (the counters, the PostTLS rows) at debug level and the server's
        // notices at info: only its warnings and errors are ours to show.
        let quiet_library = metadata.target().starts_with("tokio_postgres")
            || metadata.target().starts_with("postgres");
        let limit = if quiet_library {
            log::max_level().min(log::LevelFilter::Warn)
        } else {
            log::max_level()
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = chrono::Local::now();
        let module = record
            .module_path()
            .and_then(|m| m.rsplit("::").next())
            .unwrap_or("-");
        let line = format!(
            "{},{:03} {} {} {} : {}\n",
            now.format("%Y-%m-%d %H:%M:%S"),
            now.timestamp_subsec_millis(),
            self.component,
            level_name(record.level()),
            module,
            record.args()
        );
        if self.to_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_and_numbers_parse_like_python_logging() {
        assert_eq!(parse_level("debug").unwrap(), LevelFilter::Debug);
        assert_eq!(parse_level("WARN").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("critical").unwrap(), LevelFilter::Error);
        assert_eq!(parse_level("20").unwrap(), LevelFilter::Info);
        assert_eq!(parse_level("40").unwrap(), LevelFilter::Error);
        assert!(parse_level("loud")
            .unwrap_err()
            .contains("invalid log level"));
    }
}

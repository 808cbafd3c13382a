//! INI files read the way Python's `configparser.ConfigParser()` reads them.
//!
//! The upstream tlsrpt-reporter reads `/etc/tlsrpt/*.cfg` with a default
//! `ConfigParser`, so existing files depend on its dialect, quirks included.
//! This module reproduces that dialect (default settings only) so every file
//! yields the same values, and fails exactly where Python fails:
//!
//! - `[name]` starts a section; names are case-sensitive and taken verbatim
//!   between the first `[` and the last `]` of the line. `[DEFAULT]` is not a
//!   section of its own: its keys are inherited by every section.
//! - `key = value` or `key: value`; the first `=` or `:` separates. Keys are
//!   lower-cased, keys and values are stripped of surrounding whitespace.
//! - Lines whose first non-blank character is `#` or `;` are comments. There
//!   are no inline comments: `a = 1 # x` has the value `1 # x`.
//! - A line indented deeper than its key line continues the value (joined with
//!   a newline). Blank lines between continuation lines are kept as empty lines
//!   of the value; trailing blank lines are dropped. Comment lines inside a
//!   value are skipped without ending it.
//! - Values are interpolated when read: `%%` is `%`, `%(key)s` is the value of
//!   `key` from the same section or `[DEFAULT]`, nested at most 10 deep; any
//!   other `%` is an error.
//! - A section or a key given twice, a line that is neither header, comment nor
//!   `key = value`, and a key before the first section header are errors.
//!
//! Lines end at `\n`, `\r\n` or a lone `\r` (Python's universal newlines), and
//! "whitespace" means what Python's `str.isspace()` means, which is Rust's
//! [`char::is_whitespace`] plus the ASCII separators U+001C..U+001F.

use std::fmt::Write as _;
use std::path::Path;

/// The pseudo-section whose keys every section inherits.
const DEFAULT_SECTION: &str = "DEFAULT";

/// Python's limit for nested `%(key)s` references (`MAX_INTERPOLATION_DEPTH`).
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// Why a file could not be read or a value could not be interpolated.
///
/// Each variant corresponds to one exception class of Python's `configparser`
/// (named in its documentation), so callers and tests can tell which Python
/// error the same input would raise. `file` is the name given to
/// [`Ini::parse`] or the path given to [`Ini::read_file`].
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    /// The file could not be read, or is not UTF-8 (Python: `OSError`,
    /// `UnicodeDecodeError`).
    #[error("cannot read config file {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A non-comment line comes before the first `[section]` header
    /// (Python: `MissingSectionHeaderError`).
    #[error(
        "{file}, line {line}: {text:?} comes before any [section] header; \
         settings must follow a header such as [name]"
    )]
    MissingSectionHeader {
        file: String,
        line: usize,
        text: String,
    },
    /// Lines that are neither a header, a comment nor `key = value`; all of
    /// them are reported at once, as Python does (Python: `ParsingError`).
    #[error(
        "{file}: {lines} not understood; expected \"key = value\", \"key: value\", \
         a [section] header or a comment starting with # or ;",
        lines = describe_lines(.lines)
    )]
    Parsing {
        file: String,
        /// Line number and text of every offending line.
        lines: Vec<(usize, String)>,
    },
    /// A section header appears twice (Python: `DuplicateSectionError`).
    #[error(
        "{file}, line {line}: section [{section}] appears a second time; \
         merge both into one section"
    )]
    DuplicateSection {
        file: String,
        line: usize,
        section: String,
    },
    /// A key is set twice in the same section (Python: `DuplicateOptionError`).
    #[error(
        "{file}, line {line}: key {key:?} is set again in section [{section}] \
         (first set on line {first_line}); keep only one of the two lines"
    )]
    DuplicateOption {
        file: String,
        line: usize,
        first_line: usize,
        section: String,
        key: String,
    },
    /// A `%` that is neither `%%` nor `%(name)s` (Python:
    /// `InterpolationSyntaxError`).
    #[error(
        "{file}, section [{section}], key {key:?}: {problem} in the value {raw:?}; \
         write %% for a literal percent sign"
    )]
    InterpolationSyntax {
        file: String,
        section: String,
        key: String,
        raw: String,
        /// What is wrong, e.g. "'%' followed by 'd'".
        problem: String,
    },
    /// `%(name)s` names a key that is neither in the section nor in
    /// `[DEFAULT]` (Python: `InterpolationMissingOptionError`).
    #[error(
        "{file}, section [{section}], key {key:?}: the value {raw:?} refers to \
         %({reference})s, but there is no key {reference:?} in [{section}] or [DEFAULT]; \
         define it, or write %% for a literal percent sign"
    )]
    InterpolationMissingOption {
        file: String,
        section: String,
        key: String,
        raw: String,
        /// The referenced key, lower-cased as it was looked up.
        reference: String,
    },
    /// References nest deeper than Python allows, usually because they form a
    /// loop (Python: `InterpolationDepthError`).
    #[error(
        "{file}, section [{section}], key {key:?}: the references in {raw:?} nest \
         more than {MAX_INTERPOLATION_DEPTH} levels deep; do they refer to each other in a loop?"
    )]
    InterpolationDepth {
        file: String,
        section: String,
        key: String,
        raw: String,
    },
    /// [`Ini::items`] was asked for a section the file lacks (Python:
    /// `NoSectionError`).
    #[error("{file} has no section [{section}]")]
    NoSection { file: String, section: String },
}

/// "line 3 \"x\"" or "lines 3 \"x\", 7 \"y\"" for [`IniError::Parsing`].
fn describe_lines(lines: &[(usize, String)]) -> String {
    let mut out = String::from(if lines.len() == 1 { "line" } else { "lines" });
    for (i, (number, text)) in lines.iter().enumerate() {
        let separator = if i == 0 { " " } else { ", " };
        let _ = write!(out, "{separator}{number} {text:?}");
    }
    out
}

/// One `key = value`, its value already joined from continuation lines but
/// not interpolated (interpolation depends on the section it is read from).
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    raw: String,
    /// Where the key was set, for error messages.
    line: usize,
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    entries: Vec<Entry>,
}

/// A parsed INI file: its sections and the `[DEFAULT]` keys, in file order.
#[derive(Debug, Clone)]
pub struct Ini {
    file: String,
    defaults: Vec<Entry>,
    sections: Vec<Section>,
}

/// Which key list a line currently adds to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Defaults,
    Section(usize),
}

impl Ini {
    /// Reads and parses a UTF-8 file (Python reads it in the locale's encoding,
    /// which is UTF-8 on the systems this runs on).
    pub fn read_file(path: &Path) -> Result<Ini, IniError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ini::parse(&text, &file),
            Err(source) => Err(IniError::Io { file, source }),
        }
    }

    /// Parses INI text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Ini, IniError> {
        let mut ini = Ini {
            file: file.to_owned(),
            defaults: Vec::new(),
            sections: Vec::new(),
        };
        let mut target: Option<Target> = None;
        // The entry that continuation lines extend; None right after a header
        // (a section cannot start with a continuation line) and after a key
        // line with an empty key, because Python tests the key for truth.
        let mut open_entry: Option<usize> = None;
        // Indentation of the last header or key line (not of continuations).
        let mut indent_level = 0;
        let mut bad_lines = Vec::new();

        for (index, line) in universal_lines(text).enumerate() {
            let number = index + 1;
            let content = line.trim_matches(is_py_space);
            let is_comment = content.starts_with('#') || content.starts_with(';');
            if content.is_empty() || is_comment {
                // A blank line may be part of a multi-line value; Python only
                // trims blank lines at its end. Comment lines are dropped.
                if !is_comment {
                    if let (Some(t), Some(e)) = (target, open_entry) {
                        ini.entries_mut(t)[e].raw.push('\n');
                    }
                }
                continue;
            }
            let indent = line.chars().take_while(|&c| is_py_space(c)).count();
            if let (Some(t), Some(e)) = (target, open_entry) {
                if indent > indent_level {
                    let raw = &mut ini.entries_mut(t)[e].raw;
                    raw.push('\n');
                    raw.push_str(content);
                    continue;
                }
            }
            indent_level = indent;

            if let Some(name) = section_header(content) {
                open_entry = None;
                if name == DEFAULT_SECTION {
                    target = Some(Target::Defaults);
                } else if ini.sections.iter().any(|s| s.name == name) {
                    return Err(IniError::DuplicateSection {
                        file: ini.file,
                        line: number,
                        section: name.to_owned(),
                    });
                } else {
                    ini.sections.push(Section {
                        name: name.to_owned(),
                        entries: Vec::new(),
                    });
                    target = Some(Target::Section(ini.sections.len() - 1));
                }
                continue;
            }
            let Some(t) = target else {
                return Err(IniError::MissingSectionHeader {
                    file: ini.file,
                    line: number,
                    text: content.to_owned(),
                });
            };
            let Some((key, value)) = split_key_value(content) else {
                // Python collects these and reports them all at the end; the
                // value being continued stays open, which can matter for
                // which error is raised first.
                bad_lines.push((number, content.to_owned()));
                continue;
            };
            if key.is_empty() {
                bad_lines.push((number, content.to_owned()));
            }
            let key = key.to_lowercase();
            let entries = ini.entries_mut(t);
            if let Some(first) = entries.iter().find(|e| e.key == key) {
                let first_line = first.line;
                let section = match t {
                    Target::Defaults => DEFAULT_SECTION.to_owned(),
                    Target::Section(s) => ini.sections[s].name.clone(),
                };
                return Err(IniError::DuplicateOption {
                    file: ini.file,
                    line: number,
                    first_line,
                    section,
                    key,
                });
            }
            open_entry = (!key.is_empty()).then_some(entries.len());
            entries.push(Entry {
                key,
                raw: value.to_owned(),
                line: number,
            });
        }
        if !bad_lines.is_empty() {
            return Err(IniError::Parsing {
                file: ini.file,
                lines: bad_lines,
            });
        }
        // Trailing blank lines of multi-line values are not part of them.
        let sections = ini.sections.iter_mut().map(|s| &mut s.entries);
        for entries in std::iter::once(&mut ini.defaults).chain(sections) {
            for entry in entries {
                let kept = entry.raw.trim_end_matches(is_py_space).len();
                entry.raw.truncate(kept);
            }
        }
        Ok(ini)
    }

    fn entries_mut(&mut self, target: Target) -> &mut Vec<Entry> {
        match target {
            Target::Defaults => &mut self.defaults,
            Target::Section(index) => &mut self.sections[index].entries,
        }
    }

    /// Section names in file order, without `DEFAULT` (like `cp.sections()`).
    pub fn sections(&self) -> Vec<&str> {
        self.sections.iter().map(|s| s.name.as_str()).collect()
    }

    /// Whether the file has this section; always false for `DEFAULT`.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }

    /// All keys of a section with their interpolated values, like Python's
    /// `cp.items(section)`: the `[DEFAULT]` keys first (with the section's
    /// value where it overrides them), then the section's own keys, in file
    /// order. Every value is interpolated, so one bad value anywhere in the
    /// section or in `[DEFAULT]` is an error even if the caller needs only
    /// others — as in Python. `items("DEFAULT")` gives the defaults alone.
    pub fn items(&self, section: &str) -> Result<Vec<(String, String)>, IniError> {
        let mut merged: Vec<&Entry> = self.defaults.iter().collect();
        if section != DEFAULT_SECTION {
            let Some(own) = self.sections.iter().find(|s| s.name == section) else {
                return Err(IniError::NoSection {
                    file: self.file.clone(),
                    section: section.to_owned(),
                });
            };
            for entry in &own.entries {
                match merged.iter_mut().find(|e| e.key == entry.key) {
                    Some(slot) => *slot = entry,
                    None => merged.push(entry),
                }
            }
        }
        merged
            .iter()
            .map(|entry| {
                let mut value = String::new();
                expand(&mut value, &entry.raw, 1, &merged)
                    .map_err(|fault| fault.into_error(&self.file, section, entry))?;
                Ok((entry.key.clone(), value))
            })
            .collect()
    }
}

/// What went wrong while expanding one value, before the context is added.
enum Fault {
    Syntax(String),
    Missing(String),
    TooDeep,
}

impl Fault {
    fn into_error(self, file: &str, section: &str, entry: &Entry) -> IniError {
        let (file, section, key, raw) = (
            file.to_owned(),
            section.to_owned(),
            entry.key.clone(),
            entry.raw.clone(),
        );
        match self {
            Fault::Syntax(problem) => IniError::InterpolationSyntax {
                file,
                section,
                key,
                raw,
                problem,
            },
            Fault::Missing(reference) => IniError::InterpolationMissingOption {
                file,
                section,
                key,
                raw,
                reference,
            },
            Fault::TooDeep => IniError::InterpolationDepth {
                file,
                section,
                key,
                raw,
            },
        }
    }
}

/// Appends `text` with its `%` escapes and references expanded to `out`;
/// references are looked up in `keys`, the section merged with `[DEFAULT]`.
///
/// Mirrors Python's `BasicInterpolation`: a referenced value is expanded in
/// turn only if it contains a `%`, one level deeper, and the depth is checked
/// on entry, so ten nested levels work and the eleventh fails.
fn expand(out: &mut String, text: &str, depth: usize, keys: &[&Entry]) -> Result<(), Fault> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(Fault::TooDeep);
    }
    let mut rest = text;
    while let Some(percent) = rest.find('%') {
        out.push_str(&rest[..percent]);
        rest = &rest[percent..];
        let mut after = rest[1..].chars();
        match after.next() {
            Some('%') => {
                out.push('%');
                rest = &rest[2..];
            }
            Some('(') => {
                // `%(name)s`: the name runs to the first ')', which must be
                // followed by 's'.
                let body = &rest[2..];
                let reference = body
                    .find(')')
                    .filter(|&close| close > 0 && body[close + 1..].starts_with('s'));
                let Some(close) = reference else {
                    return Err(Fault::Syntax(format!(
                        "a reference must look like %(name)s, not {rest:?}"
                    )));
                };
                let name = body[..close].to_lowercase();
                rest = &body[close + 2..];
                let Some(entry) = keys.iter().find(|e| e.key == name) else {
                    return Err(Fault::Missing(name));
                };
                let value = entry.raw.as_str();
                if value.contains('%') {
                    expand(out, value, depth + 1, keys)?;
                } else {
                    out.push_str(value);
                }
            }
            Some(other) => {
                return Err(Fault::Syntax(format!(
                    "'%' is followed by {other:?} instead of '%' or '('"
                )))
            }
            None => return Err(Fault::Syntax("a lone '%' ends the value".to_owned())),
        }
    }
    out.push_str(rest);
    Ok(())
}

/// Python's `str.isspace()`, which strips keys, values and lines.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Splits like a Python text file: at `\n`, `\r\n` or a lone `\r`, with no
/// empty line after a final line terminator.
fn universal_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match rest.find(['\r', '\n']) {
            Some(end) if rest[end..].starts_with("\r\n") => (&rest[..end], &rest[end + 2..]),
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, ""),
        };
        rest = next;
        Some(line)
    })
}

/// The name in a `[name]` line: everything between the leading `[` and the
/// last `]`, which must enclose at least one character; text after the last
/// `]` is ignored, as Python's regular expression ignores it.
fn section_header(content: &str) -> Option<&str> {
    let inner = content.strip_prefix('[')?;
    let close = inner.rfind(']')?;
    (close > 0).then(|| &inner[..close])
}

/// Splits a `key = value` or `key: value` line at its first delimiter; the
/// key may come out empty (an error the caller reports).
fn split_key_value(content: &str) -> Option<(&str, &str)> {
    let delimiter = content.find(['=', ':'])?;
    let key = content[..delimiter].trim_end_matches(is_py_space);
    let value = content[delimiter + 1..].trim_matches(is_py_space);
    Some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str, section: &str) -> Vec<(String, String)> {
        Ini::parse(text, "test.cfg")
            .unwrap()
            .items(section)
            .unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_keys_come_first_and_are_overridden_in_place() {
        let text = "[DEFAULT]\na = 1\nb = 2\n[s]\nc = 3\nb = x\n";
        assert_eq!(
            items(text, "s"),
            pairs(&[("a", "1"), ("b", "x"), ("c", "3")])
        );
        assert_eq!(items(text, "DEFAULT"), pairs(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn sections_lists_real_sections_only() {
        let ini = Ini::parse("[DEFAULT]\n[b]\n[a]\n", "t").unwrap();
        assert_eq!(ini.sections(), ["b", "a"]);
        assert!(ini.has_section("a"));
        assert!(!ini.has_section("DEFAULT"));
        assert!(matches!(ini.items("c"), Err(IniError::NoSection { .. })));
    }

    #[test]
    fn universal_newlines() {
        let lines: Vec<_> = universal_lines("a\r\nb\rc\n\nd").collect();
        assert_eq!(lines, ["a", "b", "c", "", "d"]);
        assert_eq!(universal_lines("a\n").count(), 1);
    }

    #[test]
    fn python_whitespace_includes_ascii_separators() {
        for c in ['\x1c', '\x1f', '\u{a0}', '\u{3000}', '\x0b'] {
            assert!(is_py_space(c), "{c:?}");
        }
        assert!(!is_py_space('\u{200b}'));
    }

    #[test]
    fn errors_name_file_section_and_key() {
        let ini = Ini::parse("[s]\nk = 50%\n", "/etc/x.cfg").unwrap();
        let message = ini.items("s").unwrap_err().to_string();
        for part in ["/etc/x.cfg", "[s]", "\"k\"", "%%"] {
            assert!(message.contains(part), "{message}");
        }
        let message = Ini::parse("[s]\nfoo\nbar\n", "x.cfg")
            .unwrap_err()
            .to_string();
        assert!(message.contains("lines 2 \"foo\", 3 \"bar\""), "{message}");
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let error = Ini::read_file(Path::new("/nonexistent/x.cfg")).unwrap_err();
        assert!(matches!(error, IniError::Io { .. }));
        assert!(error.to_string().contains("/nonexistent/x.cfg"));
    }
}

//! Golden tests: [`mailtls_common::ini`] against Python's own `configparser`.
//!
//! Every input of the corpus below is written to a file and read twice: by
//! `python3` (stdlib `configparser.ConfigParser()`, the reader of upstream
//! tlsrpt-reporter) and by `Ini::read_file`. Both results are rendered as the
//! same JSON — per section (DEFAULT first) either its `items()` or the class
//! of the error they raise, or the class of the error raised while reading —
//! and must be equal. Python is required: without it this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use mailtls_common::ini::{Ini, IniError};
use serde_json::{json, Value};

/// Reads each file named on the command line; prints a JSON list of results.
const PYTHON_READER: &str = r#"
import configparser, json, sys

def read(path):
    cp = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f, path)
    except Exception as e:
        return {"error": type(e).__name__}
    sections = []
    for name in ["DEFAULT"] + cp.sections():
        try:
            sections.append([name, {"items": [[k, v] for k, v in cp.items(name)]}])
        except Exception as e:
            sections.append([name, {"error": type(e).__name__}])
    return {"sections": sections}

print(json.dumps([read(p) for p in sys.argv[1:]]))
"#;

/// The tricky inputs, by name.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = [
        ("basic", "[s]\na = 1\nb: 2\n"),
        (
            "first delimiter wins",
            "[s]\na = b:c\nd: e=f\nurl = http://x:80/?q=1\ng:=h\ni =: j\n",
        ),
        (
            "key case and whitespace",
            "[s]\n  KeyName   =   Value with  inner  spaces   \nMiXeD:x\nsp ace\t= tab\t\n",
        ),
        (
            "sections are case-sensitive",
            "[S]\na=1\n[s]\na=2\n[default]\nb=3\n",
        ),
        (
            "DEFAULT inheritance, override and order",
            "[DEFAULT]\nz = 1\na = 2\n[s]\nb = 3\na = 4\n[t]\n[DEFAULT]\nc = 5\n",
        ),
        (
            "comments are whole lines only",
            "# c\n; c\n[s]\n  # indented comment\na = 1 ; not a comment\nb = 2 # neither\n;c=3\n#d=4\n",
        ),
        (
            "continuation lines",
            "[s]\na = line1\n  line2\n\tline3\n        line4\nb = x\n",
        ),
        (
            "empty lines inside values",
            "[s]\na = 1\n\n  2\n\n\n  3\n\n\nb = 4\n\n",
        ),
        (
            "empty first line of a multi-line value",
            "[s]\na =\n  x\n  y\nb =\n\n\n",
        ),
        (
            "comment lines inside a value",
            "[s]\na = 1\n# comment\n  2\n  ; comment too\n\n  3\n#\n",
        ),
        (
            "continuation relative to an indented key",
            "[s]\n  a = 1\n   2\n  b = 3\n c = 4\n  5\n",
        ),
        (
            "a tab indents as much as one space",
            "[s]\n\ta = 1\n        b = 2\n\tc = 3\n",
        ),
        (
            "an indented section header continues a value",
            "[s]\na = 1\n  [t]\nb = 2\n",
        ),
        (
            "blank line after a header does not open a value",
            "[s]\n\n  a = 1\n\n  b = 2\n",
        ),
        (
            "section header forms",
            "[a] trailing\nx=1\n[b]]\ny=2\n[ c ]\nz=3\n[d] ] e\nw=4\n[]]\nv=5\n[f=g\n",
        ),
        ("empty brackets before any section", "[]\n"),
        ("empty brackets inside a section", "[s]\n[]\n"),
        (
            "interpolation",
            "[DEFAULT]\nbase = /var\n[s]\npath = %(base)s/lib\nHome = %(PATH)s/home\npct = 100%%\nboth = %%(base)s\n",
        ),
        (
            "interpolation through escaped percent",
            "[s]\na = 1%%\nb = %(a)s and %%\nc = %(b)s!\n",
        ),
        (
            "interpolation of multi-line values",
            "[s]\na = x\n  %(b)s\nb = y\n  z\n",
        ),
        (
            "reference names are lower-cased and may have spaces",
            "[s]\nmy key = v\nref = %(MY KEY)s\nÄ = 1\nb = %(ä)s\n",
        ),
        ("lone percent at end", "[s]\na = 50%\n"),
        ("percent before a letter", "[s]\na = 50% off\n"),
        ("reference with wrong conversion", "[s]\na = %(b)d\nb = 1\n"),
        ("unclosed reference", "[s]\na = %(b\nb = 1\n"),
        ("empty reference name", "[s]\na = %()s\n"),
        ("missing reference", "[s]\na = %(nope)s\n"),
        (
            "references do not reach other sections",
            "[s]\nx = 1\n[t]\na = %(x)s\n",
        ),
        (
            "a DEFAULT value referring to section keys",
            "[DEFAULT]\nd = %(x)s/y\n[s]\nx = 1\n[t]\n",
        ),
        (
            "a bad DEFAULT value overridden by the section",
            "[DEFAULT]\na = 50%\n[s]\na = fine\n",
        ),
        ("self reference", "[s]\na = %(a)s\n"),
        ("mutual references", "[s]\na = %(b)s\nb = %(a)s\n"),
        ("duplicate section", "[s]\na=1\n[s]\nb=2\n"),
        ("duplicate key differing in case", "[s]\na=1\nA=2\n"),
        ("same key in two sections", "[s]\na=1\n[t]\na=2\n"),
        (
            "two DEFAULT sections with different keys",
            "[DEFAULT]\na=1\n[s]\n[DEFAULT]\nb=2\n",
        ),
        (
            "two DEFAULT sections with the same key",
            "[DEFAULT]\na=1\n[DEFAULT]\na=2\n",
        ),
        ("key without delimiter", "[s]\njustakey\nother = 1\nmore\n"),
        ("empty key", "[s]\n= value\n"),
        ("two empty keys", "[s]\n= a\n: b\n"),
        ("value before any section", "a = 1\n[s]\n"),
        ("indented first line", "  a = 1\n"),
        (
            "only comments and blank lines before the first section",
            "\n# x\n\n; y\n[s]\na=1\n",
        ),
        (
            "a bad line keeps the previous value open",
            "[s]\na = 1\nbad\n  a = 2\n",
        ),
        (
            "a duplicate is raised before earlier bad lines",
            "[s]\nbad\n[s]\n",
        ),
        (
            "unicode",
            "[sección]\nÄpfel = Grüße\nΣΑΣ = 日本語\nİ = x\n",
        ),
        (
            "CRLF line ends",
            "[s]\r\na = 1\r\n  2\r\n\r\n  3\r\nb = x\r\n\r\n",
        ),
        ("lone CR line ends", "[s]\ra = 1\r  2\rb=3\r"),
        (
            "Python whitespace",
            "[s]\nk\u{a0}= \x1c\u{a0}v\u{3000}\x1f\n\u{2003}cont\u{85}\n\x0b\x0c\nj = \u{2028}x\u{2029}\n",
        ),
        ("empty values", "[s]\nkey =\nother:\nthird = \t \n"),
        ("no final newline", "[s]\na = 1"),
        ("empty file", ""),
        ("byte order mark", "\u{feff}[s]\na=1\n"),
        ("no inline comment in header", "[s] ; comment\na = 1\n"),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.as_bytes().to_vec()))
    .collect();

    // Nested references: Python allows a chain of ten levels, not eleven.
    for levels in [9, 10] {
        let mut text = String::from("[s]\n");
        for i in 0..levels {
            text.push_str(&format!("k{i} = <%(k{})s>\n", i + 1));
        }
        text.push_str(&format!("k{levels} = end%%\n"));
        cases.push((format!("reference chain of {levels}"), text.into_bytes()));
    }
    cases.push(("invalid UTF-8".to_owned(), b"[s]\na = \xff\xfe\n".to_vec()));
    cases
}

/// Our result in the JSON shape the Python reader prints.
fn ours(path: &Path) -> Value {
    let ini = match Ini::read_file(path) {
        Ok(ini) => ini,
        Err(error) => return json!({ "error": python_class(&error) }),
    };
    let sections: Vec<Value> = std::iter::once("DEFAULT")
        .chain(ini.sections())
        .map(|name| match ini.items(name) {
            Ok(items) => json!([name, { "items": items }]),
            Err(error) => json!([name, { "error": python_class(&error) }]),
        })
        .collect();
    json!({ "sections": sections })
}

/// The Python exception class that corresponds to each of our errors.
fn python_class(error: &IniError) -> &'static str {
    match error {
        IniError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            "UnicodeDecodeError"
        }
        IniError::Io { .. } => "OSError",
        IniError::MissingSectionHeader { .. } => "MissingSectionHeaderError",
        IniError::Parsing { .. } => "ParsingError",
        IniError::DuplicateSection { .. } => "DuplicateSectionError",
        IniError::DuplicateOption { .. } => "DuplicateOptionError",
        IniError::InterpolationSyntax { .. } => "InterpolationSyntaxError",
        IniError::InterpolationMissingOption { .. } => "InterpolationMissingOptionError",
        IniError::InterpolationDepth { .. } => "InterpolationDepthError",
        IniError::NoSection { .. } => "NoSectionError",
    }
}

/// Runs the Python reader on `paths` with the first python3 that starts.
fn python(paths: &[PathBuf]) -> Vec<Value> {
    for interpreter in ["python3", "/usr/bin/python3"] {
        let output = match Command::new(interpreter)
            .arg("-c")
            .arg(PYTHON_READER)
            .args(paths)
            .output()
        {
            Ok(output) => output,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => panic!("cannot run {interpreter}: {error}"),
        };
        assert!(
            output.status.success(),
            "{interpreter} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return serde_json::from_slice(&output.stdout).expect("python3 printed no JSON list");
    }
    panic!("python3 is needed for this test but was not found");
}

#[test]
fn reads_like_python_configparser() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus();
    let paths: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, bytes))| {
            let path = dir.path().join(format!("case{i:02}.cfg"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let expected = python(&paths);
    assert_eq!(expected.len(), cases.len());

    let mut mismatches = Vec::new();
    for (((name, bytes), path), want) in cases.iter().zip(&paths).zip(&expected) {
        let got = ours(path);
        if got != *want {
            mismatches.push(format!(
                "{name}: input {:?}\n  python: {want}\n  ours:   {got}",
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from Python:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );

    // Guard against a corpus that stopped testing anything: both outcomes
    // must occur, with several different error classes.
    let text = serde_json::to_string(&expected).unwrap();
    for class in [
        "ParsingError",
        "MissingSectionHeaderError",
        "DuplicateSectionError",
        "DuplicateOptionError",
        "InterpolationSyntaxError",
        "InterpolationMissingOptionError",
        "InterpolationDepthError",
        "UnicodeDecodeError",
    ] {
        assert!(text.contains(class), "no case raises {class}");
    }
    let clean = expected
        .iter()
        .filter(|r| !r.to_string().contains("\"error\""))
        .count();
    assert!(clean >= 20, "only {clean} cases read without any error");
}

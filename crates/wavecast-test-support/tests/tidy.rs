//! Tidy: the repository checks its own architecture under plain `cargo test`, as
//! rust-analyzer's `tidy` test does. ARCHITECTURE.md states these rules as absences; each
//! check here turns one into a failure that names the file, the line and the rule.
//!
//! - `wavecast-core` does no IO: no files, sockets, processes, environment, clock or
//!   randomness in its code, and no runtime, network, database or randomness crate in its
//!   dependencies.
//! - SQL appears only in `wavecast-server`'s `store/` (and its `.sql` migrations).
//! - HTTP routes are declared only in `wavecast-server`'s `api/`.
//! - The wall clock is read in one function, `wavecast_os::clock::now`.
//! - Every module starts with a `//!` line that says what it is for.
//!
//! Sources are read as text: comments are skipped, and string literals are looked at only
//! where a rule is about them (SQL), so prose and messages never trip a rule.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files allowed to read the wall clock directly.
///
/// Every entry must say why; an entry whose file no longer reads the clock fails the test.
const CLOCK_ALLOWED: &[(&str, &str)] =
    &[("crates/wavecast-os/src/clock.rs", "the one place that reads the wall clock")];

/// What reads the wall clock.
const CLOCK_READS: &[&str] = &["Timestamp::now(", "SystemTime::now(", "Zoned::now(", "Utc::now(", "Local::now("];

/// What core's code must not name: IO, the clock, randomness, and the crates that do them.
const CORE_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "std::io::stdin",
    "std::io::stdout",
    "File::",
    "SystemTime",
    "Instant",
    "Timestamp::now",
    "tokio",
    "reqwest",
    "hyper",
    "axum",
    "sqlx",
    "rand::",
    "getrandom",
    "OsRng",
    "thread_rng",
    "tough",
];

/// Crates core must not depend on.
/// (aws-lc-rs is allowed as core's SHA-256 and nothing else: `core_does_no_io` refuses every
/// other use of it, for its random numbers and keys are IO.)
const CORE_FORBIDDEN_DEPS: &[&str] =
    &["tokio", "reqwest", "hyper", "axum", "sqlx", "rand", "getrandom", "tough", "wavecast-os"];

/// SQL statements, as they start inside a string literal.
const SQL: &[&str] = &[
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "CREATE TABLE",
    "CREATE INDEX",
    "CREATE TRIGGER",
    "DROP TABLE",
    "DROP TRIGGER",
    "ALTER TABLE",
];

/// Where SQL may appear: the store, and the test-only crate that creates and drops the
/// databases tests run on.
const SQL_ALLOWED: &[&str] = &["crates/wavecast-server/src/store/", "crates/wavecast-test-support/src/"];

/// What declares HTTP routes.
const ROUTES: &[&str] = &["Router::new(", ".route("];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// One Rust file, split into what the rules look at.
struct Source {
    /// Path relative to the workspace, with `/`.
    path: String,
    /// Per line: the code without comments, string literals emptied to `""`.
    code: Vec<String>,
    /// Every string literal's content, with the line it starts on (1-based).
    strings: Vec<(usize, String)>,
    /// The file's first line.
    first_line: String,
}

/// Splits Rust source into code lines and string literals. Handles line and (nested) block
/// comments, string, raw string and byte string literals, and tells char literals from
/// lifetimes; that is all the rules need.
fn lex(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let chars: Vec<char> = text.chars().collect();
    let mut code = vec![String::new()];
    let mut strings = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let newline = |code: &mut Vec<String>, line: &mut usize| {
        code.push(String::new());
        *line += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => {
                newline(&mut code, &mut line);
                i += 1;
            }
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            newline(&mut code, &mut line);
                        }
                        i += 1;
                    }
                }
            }
            'r' | 'b' if is_string_start(&chars, i) => {
                // r"…", r#"…"#, b"…", br#"…"#: skip the prefix, count the hashes.
                let mut j = i;
                let mut raw = false;
                while chars[j] == 'b' || chars[j] == 'r' {
                    raw |= chars[j] == 'r';
                    j += 1;
                }
                let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
                j += hashes;
                let (content, end) = string_body(&chars, j, raw, hashes, &mut code, &mut line);
                strings.push(content);
                emit(&mut code, "\"\"");
                i = end;
            }
            '"' => {
                let (content, end) = string_body(&chars, i, false, 0, &mut code, &mut line);
                strings.push(content);
                emit(&mut code, "\"\"");
                i = end;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
                if next == Some('\\') {
                    // Past the escaped character, which may itself be a quote.
                    let mut j = i + 3;
                    while j < chars.len() && chars[j] != '\'' {
                        j += 1;
                    }
                    emit(&mut code, "' '");
                    i = j + 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    emit(&mut code, "' '");
                    i += 3;
                } else {
                    emit(&mut code, "'");
                    i += 1;
                }
            }
            _ => {
                // An identifier ending in r or b (`for`, `sub`) is not a string prefix.
                if c.is_alphanumeric() || c == '_' {
                    let start = i;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    let word: String = chars[start..i].iter().collect();
                    emit(&mut code, &word);
                } else {
                    emit(&mut code, &c.to_string());
                    i += 1;
                }
            }
        }
    }
    (code, strings)
}

/// Appends to the current line of code.
fn emit(code: &mut [String], s: &str) {
    if let Some(line) = code.last_mut() {
        line.push_str(s);
    }
}

/// Whether a string literal with a `b`/`r` prefix starts at `i` (and not an identifier).
fn is_string_start(chars: &[char], i: usize) -> bool {
    let mut j = i;
    while j < chars.len() && (chars[j] == 'b' || chars[j] == 'r') && j - i < 2 {
        j += 1;
    }
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    let starts_raw = chars[i..j].contains(&'r');
    chars.get(j + hashes) == Some(&'"') && (hashes == 0 || starts_raw)
}

/// Reads a string literal whose opening quote is at `quote`; returns its (line, content)
/// and the index after it. Newlines inside it still count lines.
fn string_body(
    chars: &[char],
    quote: usize,
    raw: bool,
    hashes: usize,
    code: &mut Vec<String>,
    line: &mut usize,
) -> ((usize, String), usize) {
    let start_line = *line;
    let mut content = String::new();
    let mut i = quote + 1;
    while i < chars.len() {
        let c = chars[i];
        if !raw && c == '\\' {
            if let Some(&escaped) = chars.get(i + 1) {
                if escaped == '\n' {
                    code.push(String::new());
                    *line += 1;
                }
                content.push(c);
                content.push(escaped);
            }
            i += 2;
            continue;
        }
        if c == '"' && chars[i + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes {
            return ((start_line, content), i + 1 + hashes);
        }
        if c == '\n' {
            code.push(String::new());
            *line += 1;
        }
        content.push(c);
        i += 1;
    }
    ((start_line, content), i)
}

fn rust_files(root: &Path, dir: &Path, out: &mut Vec<Source>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(root, &path, out);
            }
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let (code, strings) = lex(&text);
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            let first_line = text.lines().next().unwrap_or_default().to_owned();
            out.push(Source { path: rel, code, strings, first_line });
        }
    }
}

/// Every `crates/*/src/**/*.rs`: the shipped code. Tests, benches and fuzz targets are not
/// held to these rules (tests read the clock and talk SQL to play attacker).
fn sources() -> Vec<Source> {
    let root = workspace();
    let mut out = Vec::new();
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else { panic!("no crates/ under {}", root.display()) };
    let mut crates: Vec<_> = crates.flatten().map(|e| e.path()).collect();
    crates.sort();
    for krate in crates {
        rust_files(&root, &krate.join("src"), &mut out);
    }
    assert!(out.len() > 20, "tidy found only {} source files under {}", out.len(), root.display());
    out
}

/// Where a rule is broken.
struct Violations(Vec<String>);

impl Violations {
    fn add(&mut self, path: &str, line: usize, rule: &str, found: &str) {
        self.0.push(format!("{path}:{line}: {rule}: found `{found}`"));
    }

    fn check(self, what: &str) {
        if !self.0.is_empty() {
            let mut msg = format!("{what}: {} violation(s)\n", self.0.len());
            for v in &self.0 {
                let _ = writeln!(msg, "  {v}");
            }
            panic!("{msg}");
        }
    }
}

fn code_hits<'a>(s: &'a Source, needles: &'a [&str]) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    s.code
        .iter()
        .enumerate()
        .flat_map(move |(i, line)| needles.iter().filter(move |n| contains_token(line, n)).map(move |n| (i + 1, *n)))
}

/// Whether `needle` occurs in `line` not glued to a longer identifier on its left (so
/// `Instant` does not match `MyInstant`, and `rand::` does not match `operand::`).
fn contains_token(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_') || !needle.starts_with(char::is_alphanumeric)
    })
}

#[test]
fn core_does_no_io() {
    let mut v = Violations(Vec::new());
    for s in sources().iter().filter(|s| s.path.starts_with("crates/wavecast-core/")) {
        for (line, found) in code_hits(s, CORE_FORBIDDEN) {
            v.add(&s.path, line, "wavecast-core does no IO (no files, sockets, clock or randomness)", found);
        }
        for (i, line) in s.code.iter().enumerate() {
            for (at, _) in line.match_indices("aws_lc_rs") {
                if !line[at..].starts_with("aws_lc_rs::digest") {
                    v.add(
                        &s.path,
                        i + 1,
                        "wavecast-core uses aws-lc-rs for SHA-256 only (aws_lc_rs::digest)",
                        "aws_lc_rs",
                    );
                }
            }
        }
    }
    let manifest =
        std::fs::read_to_string(workspace().join("crates/wavecast-core/Cargo.toml")).expect("core's manifest");
    let mut section = "";
    for (i, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        // Dev-dependencies may do anything: tests are not the shipped crate.
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if CORE_FORBIDDEN_DEPS.contains(&name) {
            v.add(
                "crates/wavecast-core/Cargo.toml",
                i + 1,
                "wavecast-core depends on no IO, runtime or randomness crate",
                name,
            );
        }
    }
    v.check("core does no IO");
}

#[test]
fn sql_only_in_the_store() {
    let mut v = Violations(Vec::new());
    for s in sources().iter().filter(|s| !SQL_ALLOWED.iter().any(|a| s.path.starts_with(a))) {
        for (line, content) in &s.strings {
            for keyword in SQL {
                if content.trim_start().starts_with(keyword) || content.contains(&format!(" {keyword}")) {
                    v.add(&s.path, *line, "SQL belongs in crates/wavecast-server/src/store/", keyword.trim());
                }
            }
        }
    }
    v.check("SQL only in the store");
}

#[test]
fn routes_only_in_the_api() {
    let mut v = Violations(Vec::new());
    for s in sources().iter().filter(|s| !s.path.starts_with("crates/wavecast-server/src/api/")) {
        for (line, found) in code_hits(s, ROUTES) {
            v.add(&s.path, line, "HTTP routes belong in crates/wavecast-server/src/api/", found);
        }
    }
    v.check("routes only in the API");
}

#[test]
fn the_clock_is_read_in_one_function() {
    let mut v = Violations(Vec::new());
    for s in sources().iter().filter(|s| !CLOCK_ALLOWED.iter().any(|(path, _)| s.path == *path)) {
        for (line, found) in code_hits(s, CLOCK_READS) {
            v.add(&s.path, line, "read the wall clock through wavecast_os::clock", found);
        }
    }
    v.check("one clock");
    // An allowance for a file that no longer reads the clock is stale: remove it.
    let all = sources();
    for (path, why) in CLOCK_ALLOWED {
        let reads = all.iter().find(|s| s.path == *path).is_some_and(|s| code_hits(s, CLOCK_READS).next().is_some());
        assert!(reads, "{path} is allowed to read the clock ({why}) but no longer does: remove it from CLOCK_ALLOWED");
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    let mut v = Violations(Vec::new());
    for s in sources() {
        if !s.first_line.starts_with("//!") {
            v.add(&s.path, 1, "a module starts with a `//!` line saying what it is for", &s.first_line);
        }
    }
    v.check("module docs");
}

#[test]
fn the_lexer_sees_code_strings_and_comments_apart() {
    let text = "let a = \"SELECT x\"; // tokio\n/* std::fs\n */ let b = r#\"a \"q\" b\"#;\nlet c = '\\''; fn f<'a>() {}\nlet d = b\"x\"; for_x();";
    let (code, strings) = lex(text);
    let code: Vec<&str> = code.iter().map(|l| l.trim()).collect();
    assert_eq!(code, ["let a = \"\";", "", "let b = \"\";", "let c = ' '; fn f<'a>() {}", "let d = \"\"; for_x();"]);
    let texts: Vec<_> = strings.iter().map(|(l, s)| (*l, s.as_str())).collect();
    assert_eq!(texts, [(1, "SELECT x"), (3, "a \"q\" b"), (5, "x")]);
    assert!(contains_token("use std::fs;", "std::fs"));
    assert!(!contains_token("let operand::x", "rand::"));
    assert!(contains_token("x.route(\"/\")", ".route("));
}

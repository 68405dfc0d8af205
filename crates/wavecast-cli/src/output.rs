//! Printing: aligned tables for people, JSON for programs.

use std::io::Write as _;

use serde::Serialize;

/// Writes to stdout for the crate's `println!`/`print!`. A closed pipe means the reader has
/// all it wants: the command ends with success, quietly. Any other write error ends it with a
/// message and failure, since output was lost.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints what a list command got: JSON with `--json`, else a table of one `row` per item.
pub fn list<T: Serialize>(
    json: bool,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return self::json(&items);
    }
    table(headers, &items.iter().map(row).collect::<Vec<_>>());
    Ok(())
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A time for a table: RFC 3339 in UTC to the second, so columns align.
pub fn time(t: wavecast_api::Timestamp) -> String {
    t.to_seconds_string()
}

/// The time now, RFC 3339 with milliseconds, for lines in a log.
pub fn now() -> String {
    format!("{:.3}", wavecast_os::clock::now())
}

/// Formats a byte count for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Formats a span of seconds for people, to the two largest units: "29d 23h", "5h 12m",
/// "40s"; "expired 3d 1h ago" when negative.
pub fn span(secs: i64) -> String {
    if secs < 0 {
        return format!("expired {} ago", span(secs.saturating_neg()));
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, n)| secs >= *n) else { return "0s".to_owned() };
    let (big, n) = units[first];
    let mut out = format!("{}{big}", secs / n);
    if let Some((small, m)) = units.get(first + 1) {
        let rest = secs % n / m;
        if rest > 0 {
            out.push_str(&format!(" {rest}{small}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_as_people_say_them() {
        for (secs, want) in [
            (0, "0s"),
            (40, "40s"),
            (3_600, "1h"),
            (5 * 3_600 + 12 * 60 + 7, "5h 12m"),
            (29 * 86_400 + 23 * 3_600 + 59, "29d 23h"),
            (-(3 * 86_400 + 3_600), "expired 3d 1h ago"),
        ] {
            assert_eq!(super::span(secs), want, "{secs}");
        }
    }
}

//! Reading `strace -f -ttt -y` output: the system calls a traced process made, with the path
//! behind each file descriptor, put back together when strace split a call in two (another
//! thread's call landed while it blocked).

use std::collections::HashMap;

/// The calls to trace: the fsync family, writes (to files and sockets), reads (for the
/// server's answers) and renames.
pub const TRACED: &str = "fsync,fdatasync,sync_file_range,syncfs,sync,msync,write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,read,recvfrom,recvmsg,rename,renameat,renameat2";

/// One system call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub pid: u32,
    /// Unix seconds.
    pub at: f64,
    pub name: String,
    /// Everything between the parentheses.
    pub args: String,
    /// The result; `None` when strace did not see one (the process ended first).
    pub ret: Option<i64>,
}

/// The calls in `trace`, in the order they started.
pub fn calls(trace: &str) -> Vec<Call> {
    let mut out: Vec<Call> = Vec::new();
    let mut unfinished: HashMap<u32, usize> = HashMap::new();
    for line in trace.lines() {
        // `PID TIME CALL`, the pid padded with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Some((at, rest)) = rest.trim_start().split_once(' ') else { continue };
        let (Ok(pid), Ok(at)) = (pid.parse::<u32>(), at.parse::<f64>()) else { continue };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            // `<... write resumed>, 5) = 5`: the rest of the call started earlier.
            let Some(i) = unfinished.remove(&pid) else { continue };
            let tail = resumed.split_once("resumed>").map_or("", |(_, t)| t);
            let (args, ret) = split_result(tail);
            out[i].args.push_str(args);
            out[i].ret = ret;
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // `+++ exited with 0 +++`, `--- SIGCHLD … ---`
        }
        if let Some(args) = args.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid, out.len());
            out.push(Call { pid, at, name: name.to_owned(), args: args.to_owned(), ret: None });
        } else {
            let (args, ret) = split_result(args);
            out.push(Call { pid, at, name: name.to_owned(), args: args.to_owned(), ret });
        }
    }
    out
}

/// `ARGS) = RET` into the arguments and the result.
fn split_result(s: &str) -> (&str, Option<i64>) {
    match s.rfind(") = ") {
        Some(i) => (&s[..i], s[i + 4..].split_whitespace().next().and_then(|r| r.parse().ok())),
        None => (s.trim_end_matches(')'), None),
    }
}

impl Call {
    /// The path strace printed for the first argument's file descriptor (`7</a/b>`), if any;
    /// sockets and pipes come out as `socket:[…]`, `pipe:[…]`.
    pub fn fd_path(&self) -> Option<&str> {
        let digits = self.args.bytes().take_while(u8::is_ascii_digit).count();
        let rest = self.args[digits..].strip_prefix('<').filter(|_| digits > 0)?;
        let path = &rest[..rest.find('>')?];
        Some(path.strip_suffix(" (deleted)").unwrap_or(path))
    }

    /// The quoted strings among the arguments, unescaped (strace shows at most `-s` bytes).
    pub fn strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = self.args.chars();
        while let Some(c) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(other) => s.push(other),
                        None => {}
                    },
                    c => s.push(c),
                }
            }
            out.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"100  1700000000.000100 write(7</s/outbox/.1.json.tmp>, "{\n  \"state\": \"downloading\"\n}", 29) = 29
100 1700000000.250000 fsync(7</s/outbox/.1.json.tmp> <unfinished ...>
101 1700000000.000300 writev(9<socket:[42]>, [{iov_base="GET /device/v1/assignments HTTP/1.1\r\n", iov_len=38}], 1) = 38
100 1700000000.000400 <... fsync resumed>) = 0
100 1700000000.000500 rename("/s/outbox/.1.json.tmp", "/s/outbox/1.json") = 0
101 1700000000.000600 --- SIGCHLD {si_signo=SIGCHLD} ---
101 1700000000.000700 write(3</s/x (deleted)>, "a) = b", 6 <unfinished ...>
101 1700000000.000800 <... write resumed>) = 6
102 1700000000.000900 +++ exited with 0 +++
"#;

    #[test]
    fn calls_are_read_whole_in_the_order_they_started() {
        let calls = calls(TRACE);
        let seen: Vec<(u32, &str, Option<i64>)> = calls.iter().map(|c| (c.pid, c.name.as_str(), c.ret)).collect();
        assert_eq!(
            seen,
            [
                (100, "write", Some(29)),
                (100, "fsync", Some(0)),
                (101, "writev", Some(38)),
                (100, "rename", Some(0)),
                (101, "write", Some(6))
            ]
        );
        assert_eq!(calls[1].at, 1_700_000_000.25);
    }

    #[test]
    fn descriptors_name_their_paths_and_strings_are_unescaped() {
        let calls = calls(TRACE);
        let paths: Vec<Option<&str>> = calls.iter().map(Call::fd_path).collect();
        assert_eq!(
            paths,
            [Some("/s/outbox/.1.json.tmp"), Some("/s/outbox/.1.json.tmp"), Some("socket:[42]"), None, Some("/s/x")]
        );
        assert_eq!(calls[0].strings(), ["{\n  \"state\": \"downloading\"\n}"]);
        assert_eq!(calls[3].strings(), ["/s/outbox/.1.json.tmp", "/s/outbox/1.json"]);
        assert_eq!(calls[4].strings(), ["a) = b"]);
        assert!(calls[2].strings()[0].starts_with("GET /device/v1/assignments "));
    }

    #[test]
    fn a_failed_call_keeps_its_error_result() {
        let calls = calls("5 1.5 fsync(3</gone>) = -1 EIO (Input/output error)\n");
        assert_eq!(calls[0].ret, Some(-1));
        assert_eq!(calls[0].fd_path(), Some("/gone"));
    }
}

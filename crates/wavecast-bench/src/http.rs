//! The load generators' HTTP/1.1 clients. [`Conn`]: one keep-alive connection per simulated
//! client over hyper's bare connection API (no pool, no redirects, no decompression), so the
//! generator spends little of the CPU it shares with the server under test, and a request
//! carries exactly the headers we give it. [`RawConn`]: a socket and nothing else, for the
//! hundred thousand long-polls `longpoll` holds open at once on the machine that runs the
//! server: a hyper connection keeps a task and read buffer per connection, which at that count
//! would cost this side more memory than the server it measures.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

pub use wavecast_core::assignment::{LONG_POLL_HEADER as LONG_POLL, POLL_AFTER_HEADER as POLL_AFTER};

/// What came back.
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<HeaderValue>,
    /// The first `Set-Cookie`, if any (the dashboard's sign-in).
    pub set_cookie: Option<HeaderValue>,
    /// The server's suggested wait before the next check-in (`wavecast-poll-after`).
    pub poll_after: Option<std::time::Duration>,
    pub body: Bytes,
}

/// One keep-alive connection to `addr`, opened on first use and again after an error.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self { addr, host, sender: None }
    }

    /// `GET path` with a bearer credential and an entity tag to compare, either optional.
    pub async fn get(
        &mut self,
        path: &str,
        auth: Option<&HeaderValue>,
        if_none_match: Option<&HeaderValue>,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder().method(Method::GET).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if let Some(e) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        self.send(req, Bytes::new()).await
    }

    /// `method path` with any headers and body: a browser's requests to the dashboard.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        self.send(req, body).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        auth: Option<&HeaderValue>,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        self.send(req, Bytes::from(serde_json::to_vec(body)?)).await
    }

    async fn send(&mut self, req: hyper::http::request::Builder, body: Bytes) -> anyhow::Result<Answer> {
        let req = req.header(header::HOST, &self.host).body(Full::new(body))?;
        let answer = self.exchange(req).await;
        if answer.is_err() {
            // The connection may be half-way through an answer: never reuse it.
            self.sender = None;
        }
        answer
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        let sender = match &mut self.sender {
            Some(s) => s,
            None => {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                self.sender.insert(sender)
            }
        };
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let etag = resp.headers().get(header::ETAG).cloned();
        let set_cookie = resp.headers().get(header::SET_COOKIE).cloned();
        let poll_after = resp
            .headers()
            .get(POLL_AFTER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .map(std::time::Duration::from_millis);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, etag, set_cookie, poll_after, body })
    }
}

/// `Bearer SECRET` as a header value.
pub fn bearer(secret: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {secret}"))?)
}

/// The head of an answer read off a [`RawConn`], with the few headers the benchmarks read.
#[derive(Debug, Default, PartialEq)]
pub struct Head {
    pub status: u16,
    /// `Content-Length`; an answer without one (a 304) has no body.
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub etag: Option<HeaderValue>,
    /// `Wavecast-Poll-After`: the server's suggested delay before the next check-in, in ms.
    pub poll_after_ms: Option<u64>,
    /// `Wavecast-Long-Poll`: the longest wait the server accepts, in seconds.
    pub long_poll_s: Option<u64>,
}

/// Parses the answer head at the start of `buf`: `None` until the blank line that ends it has
/// arrived, then the head and how many bytes it took.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(Head, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        anyhow::ensure!(buf.len() < 64 << 10, "an answer head over 64 KiB");
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("an answer head that is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .with_context(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let mut head = Head { status, ..Head::default() };
    for line in lines {
        let (name, value) = line.split_once(':').with_context(|| format!("not a header line: {line:?}"))?;
        let value = value.trim();
        let number = || value.parse::<u64>().with_context(|| format!("{name}: {value:?} is not a number"));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = Some(usize::try_from(number()?)?),
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "etag" => head.etag = Some(HeaderValue::from_str(value)?),
            POLL_AFTER => head.poll_after_ms = Some(number()?),
            LONG_POLL => head.long_poll_s = Some(number()?),
            _ => {}
        }
    }
    Ok(Some((head, end + 4)))
}

/// `GET path` as bytes for a [`RawConn`], with `headers` (name, value) after the host.
pub fn get_request(host: &str, path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (name, value) in headers {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// The loopback address client socket `k` connects from, `per_addr` sockets to an address:
/// 127.0.0.2, 127.0.0.3, …, 127.0.0.254, then 127.0.1.2, … (127.0.0.1 is left to everything
/// else). A source address has only the ephemeral port range for its connections to one server
/// port, about 28,000; all of 127/8 is loopback on Linux.
pub fn source_addr(k: usize, per_addr: usize) -> Ipv4Addr {
    let n = k / per_addr.max(1);
    let (net, host) = (n / 253, n % 253);
    Ipv4Addr::new(127, (net >> 8) as u8, net as u8, 2 + host as u8)
}

/// A raw HTTP/1.1 keep-alive connection that holds nothing but its socket while it waits for
/// an answer: the read buffer exists only once the answer has started to arrive.
pub struct RawConn {
    stream: tokio::net::TcpStream,
}

impl RawConn {
    /// Connects to `to` from loopback address `from` (bound first, so the kernel picks the
    /// source port from `from`'s own range).
    pub async fn connect(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((from, 0).into()).with_context(|| format!("binding a client socket to {from}"))?;
        let stream = socket.connect(to).await.with_context(|| format!("connecting from {from} to {to}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }

    /// Writes a whole request.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        Ok(self.stream.write_all(request).await?)
    }

    /// Reads one answer: its head and its body (by `Content-Length`; no chunked bodies).
    pub async fn receive(&mut self) -> anyhow::Result<(Head, Vec<u8>)> {
        use tokio::io::AsyncReadExt as _;
        // Wait with no buffer: a held long-poll costs this side its socket only.
        self.stream.readable().await?;
        let mut buf = Vec::with_capacity(1024);
        let (head, at) = loop {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buf.capacity());
            }
            anyhow::ensure!(self.stream.read_buf(&mut buf).await? > 0, "the server closed the connection");
            if let Some(parsed) = parse_head(&buf)? {
                break parsed;
            }
        };
        anyhow::ensure!(!head.chunked, "a chunked answer ({}): not supported here", head.status);
        let len = head.content_length.unwrap_or(0);
        buf.reserve((at + len).saturating_sub(buf.len()));
        while buf.len() < at + len {
            anyhow::ensure!(self.stream.read_buf(&mut buf).await? > 0, "the server closed the connection mid-answer");
        }
        anyhow::ensure!(buf.len() == at + len, "{} bytes after the answer, unasked for", buf.len() - at - len);
        buf.drain(..at);
        Ok((head, buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_it_is_complete() {
        let answer = b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\ncontent-length: 5\r\nWavecast-Poll-After: 1500\r\nwavecast-long-poll: 60\r\n\r\nhello";
        let end = answer.len() - 5;
        for cut in [0, 10, end - 1] {
            assert_eq!(parse_head(&answer[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (head, at) = parse_head(answer).unwrap().unwrap();
        assert_eq!(at, end);
        assert_eq!(
            head,
            Head {
                status: 200,
                content_length: Some(5),
                chunked: false,
                etag: Some(HeaderValue::from_static("\"abc\"")),
                poll_after_ms: Some(1500),
                long_poll_s: Some(60),
            }
        );
    }

    #[test]
    fn a_304_has_no_length_and_garbage_is_refused() {
        let (head, _) = parse_head(b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.status, head.content_length), (304, None));
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nWavecast-Poll-After: soon\r\n\r\n").is_err());
    }

    #[test]
    fn a_request_carries_the_headers_given() {
        let req =
            get_request("127.0.0.1:9", "/a?wait=60s", &[("Authorization", b"Bearer x"), ("If-None-Match", b"\"t\"")]);
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /a?wait=60s HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAuthorization: Bearer x\r\nIf-None-Match: \"t\"\r\n\r\n"
        );
    }

    #[test]
    fn sockets_are_dealt_to_source_addresses_in_blocks() {
        let at = |k| source_addr(k, 20_000);
        assert_eq!(at(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(at(19_999), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(at(20_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(at(252 * 20_000), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(at(253 * 20_000), Ipv4Addr::new(127, 0, 1, 2));
        assert_eq!(source_addr(5, 0), Ipv4Addr::new(127, 0, 0, 7), "a zero block size is taken as one");
    }
}

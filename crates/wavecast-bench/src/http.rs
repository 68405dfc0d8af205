//! The load generators' HTTP/1.1 client: one keep-alive connection per simulated client over
//! hyper's bare connection API (no pool, no redirects, no decompression), so the generator
//! spends little of the CPU it shares with the server under test, and a request carries exactly
//! the headers we give it.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

/// What came back.
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<HeaderValue>,
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
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, etag, body })
    }
}

/// `Bearer SECRET` as a header value.
pub fn bearer(secret: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {secret}"))?)
}

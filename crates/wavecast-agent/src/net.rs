//! Bounded HTTP exchanges for the agent's small requests (check-ins, reports, heartbeats,
//! enrollment): a server that never answers, goes silent mid-body or sends more than the agent
//! will hold makes that one request fail with its own reason, in bounded time and memory.
//!
//! Artifacts have their own reader ([`crate::fetch`], capped at the signed length) and TUF
//! metadata its own transport ([`crate::tuf::HttpTransport`], capped by tough's limits); all
//! three use the same timer on silence, never a total-duration timeout on a transfer.

use std::time::Duration;

/// Why a bounded exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request could not be sent or answered.
    #[error("requesting {url}")]
    Request {
        /// The URL.
        url: reqwest::Url,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// No response headers within the window.
    #[error("{url} sent no response headers within {} s", .window.as_secs())]
    NoHeaders {
        /// The URL.
        url: reqwest::Url,
        /// The window.
        window: Duration,
    },
    /// The body went silent for the whole window.
    #[error("{url} sent nothing for {} s in the middle of its answer", .window.as_secs())]
    Stalled {
        /// The URL.
        url: reqwest::Url,
        /// The window.
        window: Duration,
    },
    /// The body broke off.
    #[error("reading the answer from {url}")]
    Body {
        /// The URL.
        url: reqwest::Url,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The body is larger than the agent reads from this URL.
    #[error("{url} sent more than {limit} bytes; its answer was dropped")]
    TooLarge {
        /// The URL.
        url: reqwest::Url,
        /// The cap.
        limit: u64,
    },
}

/// Sends `req` to `url`, giving up when the response headers take longer than `window`.
pub async fn send(
    req: reqwest::RequestBuilder,
    url: &reqwest::Url,
    window: Duration,
) -> Result<reqwest::Response, NetError> {
    match tokio::time::timeout(window, req.send()).await {
        Err(_) => Err(NetError::NoHeaders { url: url.clone(), window }),
        Ok(r) => r.map_err(|source| NetError::Request { url: url.clone(), source }),
    }
}

/// Reads a whole body of at most `limit` bytes, refusing it as soon as it grows past the cap
/// and giving up after `window` of silence.
pub async fn read_capped(
    mut resp: reqwest::Response,
    url: &reqwest::Url,
    limit: u64,
    window: Duration,
) -> Result<Vec<u8>, NetError> {
    let too_large = || NetError::TooLarge { url: url.clone(), limit };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(window, resp.chunk()).await {
            Err(_) => return Err(NetError::Stalled { url: url.clone(), window }),
            Ok(Err(source)) => return Err(NetError::Body { url: url.clone(), source }),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(c))) => c,
        };
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
}

/// Sends `req` and reads its answer within the same bounds; returns the status and the body.
pub async fn exchange(
    req: reqwest::RequestBuilder,
    url: &reqwest::Url,
    limit: u64,
    window: Duration,
) -> Result<(reqwest::StatusCode, Vec<u8>), NetError> {
    let resp = send(req, url, window).await?;
    let status = resp.status();
    Ok((status, read_capped(resp, url, limit, window).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers every connection with `head`, then `body_chunks` of 64 KiB each
    /// (endless when none), then hangs.
    async fn serve(head: &'static str, body_chunks: Option<usize>) -> reqwest::Url {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/x", l.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while body_chunks.is_none_or(|n| sent < n) {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn every_way_of_not_answering_ends_with_its_own_error() {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let window = Duration::from_millis(300);
        let until_close = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        let cases: Vec<(&str, reqwest::Url, &str)> = vec![
            ("no headers at all", serve("", Some(0)).await, "no response headers"),
            ("headers, then silence", serve(until_close, Some(0)).await, "sent nothing for"),
            ("an endless body", serve(until_close, None).await, "more than 1048576 bytes"),
            (
                "a declared length over the cap",
                serve("HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n", Some(1)).await,
                "more than 1048576 bytes",
            ),
        ];
        for (case, url, words) in cases {
            let err = exchange(http.get(url.clone()), &url, 1 << 20, window).await.unwrap_err();
            let text = wavecast_os::error::chain(&err);
            assert!(text.contains(words), "{case}: {text}");
        }
        let small = serve("HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n", Some(1)).await;
        let (status, body) = exchange(http.get(small.clone()), &small, 1 << 20, window).await.unwrap();
        assert_eq!((status.as_u16(), body.len()), (200, 65536));
    }
}

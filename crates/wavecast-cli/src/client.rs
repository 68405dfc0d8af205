//! A small HTTP client for the operator API: base URL, bearer token, and errors that say what
//! to do next.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wavecast_api::{ErrorBody, ErrorCode};

/// Errors talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token was given.
    #[error("no API token: pass --token or set WAVECAST_TOKEN (the admin token is in DATA_DIR/admin.token)")]
    NoToken,
    /// The server URL has no http:// or https:// in front.
    #[error("--server {url:?} needs a scheme: did you mean --server http://{url}?")]
    NoScheme {
        /// The URL as given.
        url: String,
    },
    /// The server URL is bad.
    #[error("--server {url:?} is not a URL: {source}")]
    BadUrl {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: url::ParseError,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach the wavecast server at {url} (is `wavecast server` running? set --server or WAVECAST_SERVER)"
    )]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{method} {path}: {message} (HTTP {status})")]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Path.
        path: String,
        /// Status.
        status: StatusCode,
        /// The server's error code; `None` when the body was not the API's error (a proxy's page,
        /// say).
        code: Option<ErrorCode>,
        /// The server's message.
        message: String,
    },
    /// A local file that goes into a request could not be opened.
    #[error("opening {}", path.display())]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be put together.
    #[error("building the request to {path}")]
    Request {
        /// Path.
        path: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer did not parse.
    #[error("{path}: unexpected answer from the server")]
    Decode {
        /// Path.
        path: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status, for an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The operator API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for `server`, authenticating with `token`.
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        // `127.0.0.1:7700` does not parse, and `localhost:7700` parses as the scheme
        // `localhost`: either way what was meant is plain HTTP.
        if !server.contains("://") {
            return Err(ClientError::NoScheme { url: server.to_owned() });
        }
        let base = url::Url::parse(server).map_err(|source| ClientError::BadUrl { url: server.to_owned(), source })?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("wavecast/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Connect { url: server.to_owned(), source })?;
        Ok(Self { base, token, http })
    }

    /// The server's base URL.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// Builds a request to `path` (absolute, like `/api/v1/groups`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NoToken)?;
        let url = self.base.join(path).map_err(|source| ClientError::BadUrl { url: path.to_owned(), source })?;
        Ok(self.http.request(method, url).bearer_auth(token))
    }

    /// Sends a request and checks the status, turning error bodies into [`ClientError::Api`].
    pub async fn send(
        &self,
        method: &'static str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Connect { url: self.base.to_string(), source })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let (code, message) = match resp.json::<ErrorBody>().await {
            Ok(body) => (Some(body.error.code), body.error.message),
            Err(_) => (None, status.canonical_reason().unwrap_or("error").to_owned()),
        };
        Err(ClientError::Api { method, path: path.to_owned(), status, code, message })
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.request(reqwest::Method::GET, path)?;
        decode(path, self.send("GET", path, req).await?).await
    }

    /// GET raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let req = self.request(reqwest::Method::GET, path)?;
        let resp = self.send("GET", path, req).await?;
        Ok(resp.bytes().await.map_err(|source| ClientError::Decode { path: path.to_owned(), source })?.to_vec())
    }

    /// POST a JSON document, reading a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let req = self.request(reqwest::Method::POST, path)?.json(body);
        decode(path, self.send("POST", path, req).await?).await
    }

    /// POST without a body, reading a JSON answer.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.request(reqwest::Method::POST, path)?;
        decode(path, self.send("POST", path, req).await?).await
    }

    /// PUT a JSON document, reading a JSON answer.
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let req = self.request(reqwest::Method::PUT, path)?.json(body);
        decode(path, self.send("PUT", path, req).await?).await
    }

    /// DELETE, reading a JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.request(reqwest::Method::DELETE, path)?;
        decode(path, self.send("DELETE", path, req).await?).await
    }
}

/// Reads a successful answer to `path` as `T`.
pub async fn decode<T: DeserializeOwned>(path: &str, resp: reqwest::Response) -> Result<T, ClientError> {
    resp.json().await.map_err(|source| ClientError::Decode { path: path.to_owned(), source })
}

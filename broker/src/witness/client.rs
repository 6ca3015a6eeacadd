//! The HTTP client that talks to witnesses: `POST <prefix>/add-checkpoint`
//! over kept-alive HTTP/1.1 connections (C2SP tlog-witness asks clients to
//! keep connections alive).
//!
//! Plain `http://` only: the protocol's integrity rests on the signatures
//! on both sides, not on the channel; a witness behind TLS is reached
//! through a local proxy until a TLS connector is added here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::net::http_client::{self, describe};

/// The most of a witness's answer read (cosignature lines are ~120 bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://` URL hyper can use.
    #[error("bad witness URL {0:?}")]
    Url(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Http(String),
}

/// A witness's answer: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body, as text (lossy).
    pub body: String,
}

/// One pool of connections, shared by every witness of a log.
#[derive(Clone)]
pub struct WitnessClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl WitnessClient {
    /// A client whose requests each give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { client: http_client::client(timeout), timeout }
    }

    /// POSTs an `add-checkpoint` body to the witness at `prefix` (its
    /// submission prefix).
    pub async fn add_checkpoint(&self, prefix: &str, body: String) -> Result<Answer, ClientError> {
        let url = format!("{}/add-checkpoint", prefix.trim_end_matches('/'));
        let uri: hyper::Uri = url.parse().map_err(|_| ClientError::Url(url.clone()))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::Url(url));
        }
        let request = Request::post(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| ClientError::Http(describe(&e)))?;
            let status = response.status().as_u16();
            let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Http(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, content_type, body: String::from_utf8_lossy(&body).into_owned() })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ClientError::Timeout(self.timeout))?
    }
}

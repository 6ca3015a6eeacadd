//! How client bytes arrive: plain TCP, TLS (rustls, with optional client
//! certificates that identify devices), and MQTT over WebSocket (`ws://`,
//! `wss://`, subprotocol `mqtt`). Every transport ends as a byte stream the
//! session reads MQTT from; nothing above this module knows which it was.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::{CertIdentity, TlsConfig};

/// The client's half for reading. Plain TCP is kept apart from the other
/// transports so that an idle connection can wait for data with no read
/// buffer at all ([`ClientRead::ready`]): with thousands of idle clients a
/// standing 4 KiB buffer each would be most of the broker's memory.
pub enum ClientRead {
    /// Plain TCP.
    Tcp(tokio::net::tcp::OwnedReadHalf),
    /// TLS and WebSocket, whose own buffers hold bytes the socket's
    /// readiness says nothing about.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl ClientRead {
    /// Resolves once reading would likely return data (or EOF, or an
    /// error) at once: the caller can allocate its buffer then. Plain TCP
    /// waits for the socket's readiness; the other transports resolve at
    /// once (their reads then wait, with the buffer reserved).
    pub async fn ready(&mut self) -> io::Result<()> {
        match self {
            ClientRead::Tcp(read) => read.readable().await,
            ClientRead::Stream(_) => Ok(()),
        }
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ClientRead::Stream(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

/// The client's half for writing.
pub type ClientWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The kind of a client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Listener {
    /// The URL scheme clients use for it.
    pub fn scheme(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Mqtts => "mqtts",
            Listener::Ws => "ws",
            Listener::Wss => "wss",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, Listener::Mqtts | Listener::Wss)
    }
}

/// A client connection after its transport handshakes, before CONNECT.
pub struct Upgraded {
    /// Bytes from the client.
    pub read: ClientRead,
    /// Bytes to the client.
    pub write: ClientWrite,
    /// The device id its verified client certificate names, if it showed one.
    pub cert_identity: Option<String>,
}

/// Why a transport could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the certificates or settings.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    TlsHandshake(io::Error),
    /// The client certificate names no usable device id.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

/// The TLS side of the broker, loaded once at start.
#[derive(Clone)]
pub struct TlsSetup {
    acceptor: TlsAcceptor,
    identity: CertIdentity,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Loads the certificate chain, key and (optionally) the client CA.
    pub fn load(config: &TlsConfig) -> Result<Self, TransportError> {
        let chain = read_certificates(&config.cert)?;
        let key = read_key(&config.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates(ca)? {
                    roots.add(cert).map_err(|e| TransportError::Tls(format!("{}: {e}", ca.display())))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                // Without a required certificate, devices may still log in
                // with a password; with one, the handshake refuses them.
                let verifier = if config.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TransportError::Tls(e.to_string()))?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(chain, key)
            .map_err(|e| TransportError::Tls(format!("certificate or key: {e}")))?;
        // MQTT over TLS has an IANA ALPN id; WebSocket clients offer http/1.1.
        server.alpn_protocols = vec![b"mqtt".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(server)), identity: config.cert_identity })
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::Read { path: path.to_path_buf(), source })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Pem { path: path.to_path_buf(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TransportError::Pem { path: path.to_path_buf(), why: "no CERTIFICATE in it".into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::Read { path: path.to_path_buf(), source })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TransportError::Pem {
        path: path.to_path_buf(),
        why: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// Runs the transport's handshakes on a fresh connection. The caller bounds
/// the time this takes (the CONNECT timeout covers it).
pub async fn upgrade(
    kind: Listener,
    stream: TcpStream,
    tls: Option<&TlsSetup>,
    max_packet_size: u32,
) -> Result<Upgraded, TransportError> {
    let _ = stream.set_nodelay(true);
    if !kind.uses_tls() {
        return match kind {
            Listener::Ws => websocket(stream, None, max_packet_size).await,
            _ => {
                let (read, write) = stream.into_split();
                Ok(Upgraded { read: ClientRead::Tcp(read), write: Box::new(write), cert_identity: None })
            }
        };
    }
    let tls = tls.ok_or_else(|| TransportError::Tls("a TLS listener without [tls] settings".into()))?;
    let stream = tls.acceptor.accept(stream).await.map_err(TransportError::TlsHandshake)?;
    let cert_identity = match stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()) {
        Some(cert) => Some(certificate_identity(cert, tls.identity)?),
        None => None,
    };
    match kind {
        Listener::Wss => websocket(stream, cert_identity, max_packet_size).await,
        _ => {
            let (read, write) = tokio::io::split(stream);
            Ok(Upgraded { read: ClientRead::Stream(Box::new(read)), write: Box::new(write), cert_identity })
        }
    }
}

/// The device id a verified client certificate names.
fn certificate_identity(cert: &CertificateDer<'_>, identity: CertIdentity) -> Result<String, TransportError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TransportError::Certificate(format!("does not parse: {e}")))?;
    let name = match identity {
        CertIdentity::Cn => parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()),
        CertIdentity::San => parsed.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(name) | GeneralName::URI(name) | GeneralName::RFC822Name(name) => Some(*name),
                _ => None,
            })
        }),
    };
    match name {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(TransportError::Certificate(format!("it names no device ({identity:?} is empty or missing)"))),
    }
}

/// The WebSocket handshake (subprotocol `mqtt`, any path), then a byte stream.
async fn websocket<S>(
    stream: S,
    cert_identity: Option<String>,
    max_packet_size: u32,
) -> Result<Upgraded, TransportError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The signature is tungstenite's handshake callback; its error type is theirs.
    #[allow(clippy::result_large_err)]
    let choose_mqtt = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offers_mqtt = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim().eq_ignore_ascii_case("mqtt"));
        if !offers_mqtt {
            // MQTT 5 §6.0: the client must offer "mqtt", the server must choose it.
            let mut refusal = ErrorResponse::new(Some("MQTT over WebSocket needs the subprotocol \"mqtt\"\n".into()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    };
    // A frame may hold several MQTT packets, or part of one; this bounds the
    // memory one frame can take, as max_packet_size bounds a packet.
    let limit = max_packet_size as usize + 64 * 1024;
    let config = WebSocketConfig::default().max_message_size(Some(limit)).max_frame_size(Some(limit));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, choose_mqtt, Some(config)).await?;
    let (read, write) = tokio::io::split(WsBytes { ws, pending: Bytes::new() });
    Ok(Upgraded { read: ClientRead::Stream(Box::new(read)), write: Box::new(write), cert_identity })
}

/// A WebSocket as a byte stream: binary messages in, one binary message per
/// write out. MQTT packets may span messages, so message boundaries mean
/// nothing here.
struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.ws.poll_next_unpin(cx)) {
                // End of stream or a Close frame: EOF.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket is sent in binary messages, not text",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        self.ws.start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(io::Error::other)
    }
}

/// Writes all of `bytes` and flushes (TLS and WebSocket buffer writes).
pub async fn write_flushed(write: &mut ClientWrite, bytes: &[u8]) -> io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}

/// Writes every slice, in order, in as few writes as the transport takes
/// (plain TCP: one `writev` for all, when the socket has room), then flushes.
pub async fn write_all_vectored(write: &mut ClientWrite, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = write.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    write.flush().await
}

//! A test PKI and rumqttc clients over TLS, WebSocket and WebSocket over
//! TLS: a CA made at test time (rcgen), the broker's certificate for
//! `localhost`, client certificates, and subscribers that collect what
//! they receive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::v5 as mq5;
use tokio_rustls::rustls;

/// A test CA, the broker's certificate (for `localhost`) and client
/// certificates, as PEM files in `dir`.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "sealmq test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        let pki = Self { dir: dir.to_path_buf(), ca };
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.issue("server", server);
        pki
    }

    /// Signs `params` with the CA; writes `<name>.crt` and `<name>.key`.
    pub fn issue(&self, name: &str, params: CertificateParams) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A client certificate whose subject CN is `cn`.
    pub fn client(&self, cn: &str) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(cn, params);
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(file)).unwrap()
    }

    /// A rustls client config trusting the CA, with `client`'s certificate.
    pub fn client_config(&self, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from(self.ca.der().to_vec());
        roots.add(ca).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(name) => {
                use rustls::pki_types::pem::PemObject;
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&self.read(&format!("{name}.crt")))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&self.read(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// The `[tls]` section for the broker.
    pub fn toml(&self, require_client_cert: bool) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nrequire_client_cert = {require_client_cert}\n",
            self.path("server.crt"),
            self.path("server.key"),
            self.path("ca.crt"),
        )
    }
}

/// How a rumqttc test client reaches the broker.
#[derive(Clone)]
pub enum Via {
    Tls(Arc<rustls::ClientConfig>),
    Ws,
    Wss(Arc<rustls::ClientConfig>),
}

impl Via {
    /// What rumqttc takes as the host: a name for TLS, a URL for WebSocket.
    pub fn host(&self, addr: SocketAddr) -> String {
        match self {
            Via::Tls(_) => "localhost".into(),
            Via::Ws => format!("ws://127.0.0.1:{}/mqtt", addr.port()),
            Via::Wss(_) => format!("wss://localhost:{}/mqtt", addr.port()),
        }
    }

    pub fn transport(self) -> rumqttc::Transport {
        match self {
            Via::Tls(config) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)),
            Via::Ws => rumqttc::Transport::Ws,
            Via::Wss(config) => rumqttc::Transport::wss_with_config(rumqttc::TlsConfiguration::Rustls(config)),
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Subscribes to `filter` with rumqttc MQTT 5 over `via`, announcing a
/// Maximum Packet Size of `max_packet`, says so on `subscribed`, then
/// returns the payloads of the next `n` publishes.
pub async fn receive_v5(
    addr: SocketAddr,
    via: Via,
    client_id: &str,
    filter: &str,
    max_packet: u32,
    subscribed: tokio::sync::oneshot::Sender<()>,
    n: usize,
) -> Vec<Vec<u8>> {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new(client_id, via.host(addr), addr.port());
    options.set_transport(via.transport());
    options.set_max_packet_size(Some(max_packet));
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.unwrap();
    let mut subscribed = Some(subscribed);
    let mut payloads = Vec::new();
    while payloads.len() < n {
        match events.poll().await.unwrap_or_else(|e| panic!("{client_id}: {e}")) {
            Event::Incoming(mq5::Packet::SubAck(_)) => drop(subscribed.take().map(|tx| tx.send(()))),
            Event::Incoming(mq5::Packet::Publish(publish)) => payloads.push(publish.payload.to_vec()),
            _ => {}
        }
    }
    payloads
}

/// The same with rumqttc MQTT 3.1.1 (no Maximum Packet Size to announce).
pub async fn receive_v4(
    addr: SocketAddr,
    via: Via,
    client_id: &str,
    filter: &str,
    subscribed: tokio::sync::oneshot::Sender<()>,
    n: usize,
) -> Vec<Vec<u8>> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(client_id, via.host(addr), addr.port());
    options.set_transport(via.transport());
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let mut subscribed = Some(subscribed);
    let mut payloads = Vec::new();
    while payloads.len() < n {
        match events.poll().await.unwrap_or_else(|e| panic!("{client_id}: {e}")) {
            Event::Incoming(Packet::SubAck(_)) => drop(subscribed.take().map(|tx| tx.send(()))),
            Event::Incoming(Packet::Publish(publish)) => payloads.push(publish.payload.to_vec()),
            _ => {}
        }
    }
    payloads
}

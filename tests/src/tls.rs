//! The TLS ends of the TLS tests: a test CA made in the test (rcgen), an https sink (a rustls
//! server on std threads) that records what it received and how each handshake went, and a TLS
//! client that reports the status it got and the serial of the certificate it was served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};

use crate::client::Request;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names or IP literals), valid from a day ago for `days` days
    /// (negative: expired), with this serial.
    pub fn leaf(&self, names: &[&str], days: i64, serial: u64) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert_pem = self.leaf_for_key(names, days, serial, &key);
        Leaf {
            cert_pem,
            key_pem: key.serialize_pem(),
            serial: serial.to_be_bytes().to_vec(),
        }
    }

    /// The certificate (PEM) of a leaf whose key is `key_pem` (PKCS#8: an RSA key made with
    /// openssl, say).
    pub fn leaf_for_pkcs8_key(&self, names: &[&str], serial: u64, key_pem: &str) -> String {
        let key = KeyPair::from_pem(key_pem).expect("a PKCS#8 key rcgen can sign with");
        self.leaf_for_key(names, 30, serial, &key)
    }

    fn leaf_for_key(&self, names: &[&str], days: i64, serial: u64, key: &KeyPair) -> String {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let now = time::OffsetDateTime::now_utc();
        if days < 0 {
            params.not_before = now - time::Duration::days(10);
            params.not_after = now + time::Duration::days(days);
        } else {
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(days);
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        params
            .signed_by(key, &self.cert, &self.key)
            .expect("leaf signed")
            .pem()
    }
}

/// The serial number of a DER certificate (`Certificate ::= SEQUENCE { tbsCertificate SEQUENCE
/// { [0] version, serialNumber INTEGER, ... } }`), leading zero bytes removed.
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    fn header(d: &[u8]) -> (u8, usize, usize) {
        let tag = d[0];
        let (len, hdr) = if d[1] & 0x80 == 0 {
            (d[1] as usize, 2)
        } else {
            let n = (d[1] & 0x7f) as usize;
            let mut len = 0usize;
            for b in &d[2..2 + n] {
                len = (len << 8) | *b as usize;
            }
            (len, 2 + n)
        };
        (tag, hdr, len)
    }
    let (_, h, _) = header(der); // Certificate
    let tbs = &der[h..];
    let (_, h, _) = header(tbs); // tbsCertificate
    let mut at = &tbs[h..];
    let (tag, h, len) = header(at);
    if tag == 0xa0 {
        at = &at[h + len..]; // version
    }
    let (tag, h, len) = header(at);
    assert_eq!(tag, 0x02, "serialNumber is an INTEGER");
    let mut v = at[h..h + len].to_vec();
    while v.len() > 1 && v[0] == 0 {
        v.remove(0);
    }
    v
}

fn trim(mut v: Vec<u8>) -> Vec<u8> {
    while v.len() > 1 && v[0] == 0 {
        v.remove(0);
    }
    v
}

impl Leaf {
    /// The serial as [`serial_of`] reads it.
    pub fn serial(&self) -> Vec<u8> {
        trim(self.serial.clone())
    }
}

/// One request the https sink received.
#[derive(Debug, Clone)]
pub struct TlsRecorded {
    pub head: String,
    pub body: Vec<u8>,
}

impl TlsRecorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

#[derive(Default)]
struct SinkState {
    requests: Mutex<Vec<TlsRecorded>>,
    handshakes: Mutex<Vec<HandshakeKind>>,
    failed_handshakes: Mutex<Vec<String>>,
}

/// An https subscriber: answers 200 to every request, on keep-alive connections (or closing
/// each connection after its answer, [`TlsSink::start_closing`], so that every delivery needs a
/// new handshake: a resumed one when the client kept the session).
pub struct TlsSink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    stop: Arc<AtomicBool>,
}

impl TlsSink {
    pub fn start(leaf: &Leaf) -> TlsSink {
        TlsSink::launch(leaf, false)
    }

    pub fn start_closing(leaf: &Leaf) -> TlsSink {
        TlsSink::launch(leaf, true)
    }

    fn launch(leaf: &Leaf, close: bool) -> TlsSink {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind https sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SinkState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let (config, st) = (config.clone(), st.clone());
                thread::spawn(move || serve_tls(tcp, config, &st, close));
            }
        });
        TlsSink { addr, state, stop }
    }

    /// `https://localhost:PORT/` (the name the test certificates carry).
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    pub fn url_with_host(&self, host: &str) -> String {
        format!("https://{host}:{}/", self.addr.port())
    }

    pub fn requests(&self) -> Vec<TlsRecorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn handshakes(&self) -> Vec<HandshakeKind> {
        self.state.handshakes.lock().unwrap().clone()
    }

    pub fn failed_handshakes(&self) -> Vec<String> {
        self.state.failed_handshakes.lock().unwrap().clone()
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_tls(tcp: TcpStream, config: Arc<ServerConfig>, state: &SinkState, close: bool) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut conn = rustls::ServerConnection::new(config).expect("server connection");
    let mut tcp = tcp;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            state.failed_handshakes.lock().unwrap().push(e.to_string());
            return;
        }
    }
    if let Some(kind) = conn.handshake_kind() {
        state.handshakes.lock().unwrap().push(kind);
    }
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        let rec = TlsRecorded {
            head,
            body: Vec::new(),
        };
        let len: usize = rec
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        state
            .requests
            .lock()
            .unwrap()
            .push(TlsRecorded { body, ..rec });
        let w = stream.get_mut();
        let answer: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        };
        if w.write_all(answer).and_then(|_| w.flush()).is_err() || close {
            if close {
                w.conn.send_close_notify();
                let _ = w.flush();
            }
            return;
        }
    }
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The serial of the certificate the server presented.
    pub serial: Vec<u8>,
}

/// A client config trusting `ca_pem`: TLS 1.2 only, or 1.2 and 1.3.
pub fn client_config(ca_pem: &str, tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA added");
    }
    let builder = ClientConfig::builder_with_provider(provider());
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection does a full handshake, so that it sees the certificate served now (a
    // resumed session would report the certificate of the session's first handshake).
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS client connection to `addr`, verifying the certificate for `name` (the handshake runs
/// with the first write).
fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends `req` over TLS to `addr` (verifying the certificate for `name`) on a new connection and
/// reads one response (Content-Length framed). `Err`: the handshake or the exchange failed.
pub fn tls_send(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
    req: &Request,
) -> Result<TlsAnswer, String> {
    let mut stream = connect(addr, config, name)?;
    stream
        .write_all(&req.to_bytes())
        .map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let serial = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| serial_of(c))
        .unwrap_or_default();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed before a whole response head: {head:?}"));
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(TlsAnswer {
        status,
        body,
        serial,
    })
}

/// Writes `bytes` over TLS to `addr` on a new connection and reads until the server closes.
/// `Err`: the handshake failed, or the server closed without `close_notify` (a truncation, to
/// TLS).
pub fn tls_read_to_close(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let mut stream = connect(addr, config, name)?;
    stream.write_all(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

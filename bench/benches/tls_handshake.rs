//! TLS handshakes with the dispatcher's https ingress configuration (`tls::server_config` with
//! upstream's default TLS 1.3, an ECDSA P-256 certificate from a test CA) against a rustls
//! client, in memory: a full handshake and a resumed one, both ends' CPU together, no sockets.
//! Run: `cargo bench -p imc-bench --bench tls_handshake`. Throughput in handshakes.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imc_dispatcher::tls::{certified_key, server_config, ServerCert, Settings};
use imc_e2e::tls::TestCa;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
};

/// Moves every flight between the two ends until neither has anything to send.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
    let name = "localhost".try_into().expect("server name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut wire = Vec::with_capacity(8 << 10);
    loop {
        let mut moved = false;
        wire.clear();
        c.write_tls(&mut wire).expect("client flight");
        let mut at = &wire[..];
        while !at.is_empty() {
            moved = true;
            s.read_tls(&mut at).expect("server reads");
            s.process_new_packets().expect("server accepts");
        }
        wire.clear();
        s.write_tls(&mut wire).expect("server flight");
        let mut at = &wire[..];
        while !at.is_empty() {
            moved = true;
            c.read_tls(&mut at).expect("client reads");
            c.process_new_packets().expect("client accepts");
        }
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            return c.handshake_kind().expect("handshake done");
        }
    }
}

fn handshakes(c: &mut Criterion) {
    let ca = TestCa::new("bench CA");
    let leaf = ca.leaf(&["localhost"], 30, 1);
    let settings = Settings::default();
    let cert = Arc::new(ServerCert::default());
    let key = certified_key(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        &settings.provider(),
    )
    .expect("certificate and key");
    cert.set(Some(Arc::new(key)));
    let server = Arc::new(server_config(&settings, cert).expect("server config"));
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(der.expect("CA PEM")).expect("CA");
    }
    let client = |resumption: Resumption| {
        let mut config = ClientConfig::builder_with_provider(settings.provider())
            .with_protocol_versions(&settings.versions())
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = resumption;
        Arc::new(config)
    };
    let full = client(Resumption::disabled());
    let resuming = client(Resumption::in_memory_sessions(64));
    assert_eq!(handshake(&full, &server), HandshakeKind::Full);
    handshake(&resuming, &server);
    assert_eq!(handshake(&resuming, &server), HandshakeKind::Resumed);

    let mut g = c.benchmark_group("tls_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full", |b| b.iter(|| handshake(&full, &server)));
    // Every resumed handshake leaves new tickets for the next (TLS 1.3 tickets are single-use).
    g.bench_function("resumed", |b| b.iter(|| handshake(&resuming, &server)));
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);

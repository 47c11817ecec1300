use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, rustls::ClientConfig};

use super::*;
use crate::testing::{Ca, Pair};

fn client_config(trust: &Ca, identity: Option<&Pair>) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&trust.cert).unwrap());
    match identity {
        None => b.with_no_client_auth(),
        Some(p) => b
            .with_client_auth_cert(certificates(&p.cert).unwrap(), PrivateKeyDer::from_pem_file(&p.key).unwrap())
            .unwrap(),
    }
}

/// One exchange over TLS: the server's first certificate as the client saw
/// it, if both sides got through (with TLS 1.3 a refused client certificate
/// shows only when the server answers).
async fn exchange(server: Arc<ServerConfig>, client: ClientConfig) -> Result<Vec<u8>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(())
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client)).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(presented)
    }
    .await;
    let served = accept.await.unwrap();
    served.and(client)
}

fn der(pair: &Pair) -> Vec<u8> {
    certificates(&pair.cert).unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_client_trusting_the_ca_talks_to_the_server_on_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ferry").unwrap();
    let server = ca.server("server").unwrap();
    let tls = ServerTls::load(&server.server_args(None)).unwrap().unwrap();
    for port in [Port::Grpc, Port::Http] {
        assert_eq!(exchange(tls.config(port), client_config(&ca, None)).await.unwrap(), der(&server));
    }
    assert_eq!(tls.config(Port::Http).alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[tokio::test]
async fn a_client_ca_makes_the_grpc_port_require_a_certificate_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ferry").unwrap();
    let rogue = Ca::new(dir.path(), "rogue").unwrap();
    let server = ca.server("server").unwrap();
    let tls = ServerTls::load(&server.server_args(Some(&ca))).unwrap().unwrap();
    assert!(tls.requires_client_certificate());
    let inference = ca.client("inference").unwrap();
    let impostor = rogue.client("impostor").unwrap();

    exchange(tls.config(Port::Grpc), client_config(&ca, Some(&inference))).await.unwrap();
    let none = exchange(tls.config(Port::Grpc), client_config(&ca, None)).await.unwrap_err();
    assert!(none.to_lowercase().contains("certificate"), "{none}");
    let other = exchange(tls.config(Port::Grpc), client_config(&ca, Some(&impostor))).await.unwrap_err();
    assert!(other.to_lowercase().contains("certificate") || other.contains("issuer"), "{other}");
    // HTTP ports serve browsers and webhooks: no client certificate asked for.
    exchange(tls.config(Port::Http), client_config(&ca, None)).await.unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ferry").unwrap();
    let first = ca.server("server").unwrap();
    let tls = ServerTls::load(&first.server_args(None)).unwrap().unwrap();
    let before = der(&first);
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // cert-manager writes the renewed pair over the old files.
    std::thread::sleep(Duration::from_millis(20));
    let renewed = ca.server("server").unwrap();
    assert_ne!(der(&renewed), before);
    assert!(tls.reload_if_changed().unwrap());
    assert_eq!(exchange(tls.config(Port::Http), client_config(&ca, None)).await.unwrap(), der(&renewed));

    // A half-written or wrong file: the renewed certificate keeps serving.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&renewed.key, "not a key").unwrap();
    let err = tls.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("server.key"), "{err}");
    assert_eq!(exchange(tls.config(Port::Http), client_config(&ca, None)).await.unwrap(), der(&renewed));
}

#[test]
fn errors_name_the_file_and_never_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let args = ServerTlsArgs { tls_cert: Some(missing.clone()), tls_key: Some(missing), tls_client_ca: None };
    let err = ServerTls::load(&args).unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");

    let ca = Ca::new(dir.path(), "ferry").unwrap();
    let client = ca.client("client").unwrap();
    let key = std::fs::read_to_string(&client.key).unwrap();
    let err = ClientTls::from_files(Some(&client.key), None).unwrap_err().to_string();
    assert!(err.contains("client.key") && !err.contains(key.lines().nth(1).unwrap()), "{err}");
    let loaded = ClientTls::from_files(Some(&ca.cert), Some((&client.cert, &client.key))).unwrap();
    let shown = format!("{loaded:?}");
    assert!(!shown.contains(key.lines().nth(1).unwrap()), "{shown}");
}

#[tokio::test]
async fn http_clients_trust_the_configured_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ferry").unwrap();
    let server = ca.server("server").unwrap();
    let tls = ServerTls::load(&server.server_args(None)).unwrap().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/", listener.local_addr().unwrap().port());
    let config = tls.config(Port::Http);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = vec![0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let trusting = ClientTls::from_files(Some(&ca.cert), None).unwrap();
    let http = trusting.http(reqwest::Client::builder().http1_only()).unwrap().build().unwrap();
    assert_eq!(http.get(&url).send().await.unwrap().text().await.unwrap(), "ok");
    // The system's roots do not know this CA.
    let plain = ClientTls::default().http(reqwest::Client::builder().http1_only()).unwrap().build().unwrap();
    assert!(plain.get(&url).send().await.is_err());
}

//! Real TLS on loopback: the mesh configs against each other.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ca, id, issue, issue_expired};
use rustls_pki_types::CertificateDer;
use tether_certs::{
    client_config, find_identity_mismatch, peer_spiffe_id, server_config, ClientAuth,
    ClientConfigs, IdentityStore, SpiffeId, TrustBundle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the server saw for one connection.
type Accepted = Result<Option<SpiffeId>, String>;

/// An echo server on loopback using the mesh server config. Reports each
/// handshake result (the peer's SPIFFE ID, if any) on the returned channel.
async fn echo_server(
    store: &Arc<IdentityStore>,
    auth: ClientAuth,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(store, auth).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let (_, conn) = tls.get_ref();
                assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
                let peer = conn.peer_certificates().map(|c| peer_spiffe_id(c).unwrap());
                let _ = tx.send(Ok(peer));
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    store: &Arc<IdentityStore>,
    expected: &SpiffeId,
    addr: std::net::SocketAddr,
) -> std::io::Result<ClientStream> {
    let cfg = client_config(store, expected.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg)
        .connect(expected.server_name().unwrap(), tcp)
        .await?;
    // In TLS 1.3 the server judges the client certificate after the client
    // finished; a round trip surfaces its verdict.
    ping(&mut tls).await?;
    Ok(tls)
}

async fn ping(tls: &mut ClientStream) -> std::io::Result<()> {
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("server reported nothing")
        .expect("server gone")
}

/// webpki's verdict for a chain that does not end in a trusted root.
fn untrusted(msg: &str) -> bool {
    msg.contains("UnknownIssuer") || msg.contains("BadSignature")
}

fn presented_leaf(tls: &ClientStream) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn mutual_tls_carries_both_identities() {
    let ca = ca();
    let server = IdentityStore::with_identity(issue(&ca, "api"), ca.bundle()).unwrap();
    let client = IdentityStore::with_identity(issue(&ca, "web"), ca.bundle()).unwrap();
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;
    let tls = connect(&client, &id("api"), addr).await.unwrap();
    assert_eq!(next(&mut rx).await.unwrap(), Some(id("web")));
    assert_eq!(
        peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap()).unwrap(),
        id("api")
    );
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn server_with_wrong_service_cert_is_refused_naming_both() {
    let ca = ca();
    // A valid mesh certificate, but for "web", answering where "api" was expected.
    let server = IdentityStore::with_identity(issue(&ca, "web"), ca.bundle()).unwrap();
    let client = IdentityStore::with_identity(issue(&ca, "frontend"), ca.bundle()).unwrap();
    let (addr, _rx) = echo_server(&server, ClientAuth::Required).await;
    let err = connect(&client, &id("api"), addr).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("spiffe://tether.local/service/api"), "{msg}");
    assert!(msg.contains("spiffe://tether.local/service/web"), "{msg}");
    let (expected, presented) = find_identity_mismatch(&err).expect("typed mismatch");
    assert_eq!((expected, presented), (&id("api"), &id("web")));
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let mesh = ca();
    let rogue = ca(); // same trust domain, different key
    let server = IdentityStore::with_identity(issue(&mesh, "api"), mesh.bundle()).unwrap();
    // The client trusts the mesh root (so it accepts the server) but its own
    // certificate comes from the rogue CA.
    let client = IdentityStore::with_identity(issue(&rogue, "web"), mesh.bundle()).unwrap();
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;
    assert!(connect(&client, &id("api"), addr).await.is_err());
    let server_err = next(&mut rx).await.unwrap_err();
    assert!(untrusted(&server_err), "{server_err}");

    // And the other way round: a server cert from another CA.
    let rogue_server = IdentityStore::with_identity(issue(&rogue, "api"), rogue.bundle()).unwrap();
    let good_client = IdentityStore::with_identity(issue(&mesh, "web"), mesh.bundle()).unwrap();
    let (addr, _rx) = echo_server(&rogue_server, ClientAuth::Required).await;
    let err = connect(&good_client, &id("api"), addr).await.unwrap_err();
    assert!(untrusted(&err.to_string()), "{err}");
}

#[tokio::test]
async fn expired_certs_are_refused_both_ways() {
    let ca = ca();
    let server = IdentityStore::with_identity(issue(&ca, "api"), ca.bundle()).unwrap();
    let expired_client =
        IdentityStore::with_identity(issue_expired(&ca, "web"), ca.bundle()).unwrap();
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;
    assert!(connect(&expired_client, &id("api"), addr).await.is_err());
    let server_err = next(&mut rx).await.unwrap_err();
    assert!(server_err.contains("expired"), "{server_err}");

    let expired_server =
        IdentityStore::with_identity(issue_expired(&ca, "api"), ca.bundle()).unwrap();
    let client = IdentityStore::with_identity(issue(&ca, "web"), ca.bundle()).unwrap();
    let (addr, _rx) = echo_server(&expired_server, ClientAuth::Required).await;
    let err = connect(&client, &id("api"), addr).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn plaintext_and_certless_clients() {
    let ca = ca();
    let server = IdentityStore::with_identity(issue(&ca, "api"), ca.bundle()).unwrap();
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;

    // Plaintext HTTP to the mTLS port.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    assert!(next(&mut rx).await.is_err());

    // TLS without a client certificate: refused when required...
    let no_cert = IdentityStore::new(ca.bundle()).unwrap();
    assert!(connect(&no_cert, &id("api"), addr).await.is_err());
    let err = next(&mut rx).await.unwrap_err();
    assert!(err.contains("no certificates"), "{err}");

    // ...accepted without an identity when optional.
    let (addr, mut rx) = echo_server(&server, ClientAuth::Optional).await;
    connect(&no_cert, &id("api"), addr).await.unwrap();
    assert_eq!(next(&mut rx).await.unwrap(), None);
    assert!(peer_spiffe_id(&[]).is_err());
}

#[tokio::test]
async fn root_rotation_with_overlap() {
    let old = ca();
    let new = ca();
    let mut both = old.bundle();
    both.merge(&new.bundle());

    // Phase 1: everyone trusts old + new; leaves from both roots work.
    let server = IdentityStore::with_identity(issue(&old, "api"), both.clone()).unwrap();
    let old_client = IdentityStore::with_identity(issue(&old, "web"), both.clone()).unwrap();
    let new_client = IdentityStore::with_identity(issue(&new, "web"), both.clone()).unwrap();
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;
    let mut kept = connect(&old_client, &id("api"), addr).await.unwrap();
    assert_eq!(next(&mut rx).await.unwrap(), Some(id("web")));
    connect(&new_client, &id("api"), addr).await.unwrap();
    assert_eq!(next(&mut rx).await.unwrap(), Some(id("web")));

    // Phase 2: the server gets a new-root leaf and drops the old root.
    server.set_identity(issue(&new, "api"));
    server.set_bundle(new.bundle()).unwrap();
    assert!(connect(&old_client, &id("api"), addr).await.is_err());
    let err = next(&mut rx).await.unwrap_err();
    assert!(untrusted(&err), "{err}");
    connect(&new_client, &id("api"), addr).await.unwrap();
    assert_eq!(next(&mut rx).await.unwrap(), Some(id("web")));
    // The connection made under the old root still works.
    ping(&mut kept).await.unwrap();

    // A client that removed the old root refuses an old-root server.
    let old_server = IdentityStore::with_identity(issue(&old, "api"), both.clone()).unwrap();
    let (addr2, _rx2) = echo_server(&old_server, ClientAuth::Required).await;
    let mut client_bundle = both.clone();
    assert!(client_bundle.remove(old.cert_der()));
    new_client.set_bundle(client_bundle).unwrap();
    assert!(connect(&new_client, &id("api"), addr2).await.is_err());
    assert!(
        new_client.set_bundle(TrustBundle::default()).is_err(),
        "empty bundle refused"
    );
}

#[tokio::test]
async fn identity_rotation_applies_to_new_handshakes_only() {
    let ca = ca();
    let first = issue(&ca, "api");
    let first_leaf = first.certified_key().cert[0].clone();
    let server = IdentityStore::with_identity(first, ca.bundle()).unwrap();
    let client = IdentityStore::with_identity(issue(&ca, "web"), ca.bundle()).unwrap();
    let configs = ClientConfigs::new(client.clone());
    let (addr, mut rx) = echo_server(&server, ClientAuth::Required).await;

    let connect_cached = |addr| {
        let cfg = configs.get(&id("api")).unwrap();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = TlsConnector::from(cfg)
                .connect(id("api").server_name().unwrap(), tcp)
                .await
                .unwrap();
            ping(&mut tls).await.unwrap();
            tls
        }
    };
    let mut before = connect_cached(addr).await;
    next(&mut rx).await.unwrap();
    assert_eq!(presented_leaf(&before), first_leaf);

    let second = issue(&ca, "api");
    let second_leaf = second.certified_key().cert[0].clone();
    server.set_identity(second);
    // The client rotates too; the cached config picks it up.
    client.set_identity(issue(&ca, "web"));

    let after = connect_cached(addr).await;
    next(&mut rx).await.unwrap();
    assert_eq!(presented_leaf(&after), second_leaf);
    assert_ne!(first_leaf, second_leaf);
    // The connection established before the rotation keeps working.
    for _ in 0..3 {
        ping(&mut before).await.unwrap();
    }
    assert!(Arc::ptr_eq(
        &configs.get(&id("api")).unwrap(),
        &configs.get(&id("api")).unwrap()
    ));
}

//! Mutual TLS between sidecars: each presents its service's certificate (see `pki`) and
//! checks the other's against the stack's CA; the caller also checks that the certificate
//! names the address it called. ALPN says what is inside: HTTP (served again by hyper) or
//! bytes (copied).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN of a mesh connection carrying HTTP.
pub const ALPN_HTTP: &[u8] = b"plumb-mesh-http";
/// ALPN of a mesh connection carrying other TCP.
pub const ALPN_TCP: &[u8] = b"plumb-mesh-tcp";
/// What a ClientHello of the mesh carries (both ALPNs begin with it).
pub const ALPN_MARK: &[u8] = b"plumb-mesh-";

/// A sidecar's TLS settings, from its service's files.
pub struct MeshTls {
    pub server: Arc<ServerConfig>,
    client_http: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
}

impl MeshTls {
    /// Reads `DIR/ca.crt`, `DIR/SERVICE.crt`, `DIR/SERVICE.key`.
    pub fn load(dir: &Path, service: &str) -> Result<MeshTls, String> {
        // ring: what the tree already builds rustls with (etcd-client's TLS); aws-lc-rs, which
        // rustls now prefers, would add a C build for nothing the mesh needs.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let ca = CertificateDer::pem_file_iter(dir.join("ca.crt"))
            .map_err(|e| format!("the mesh CA: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the mesh CA: {e}"))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| format!("the mesh CA: {e}"))?;
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_file_iter(dir.join(format!("{service}.crt")))
            .map_err(|e| format!("{service}'s certificate: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{service}'s certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{service}.key")))
            .map_err(|e| format!("{service}'s key: {e}"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| e.to_string())?;
        server.alpn_protocols = vec![ALPN_HTTP.to_vec(), ALPN_TCP.to_vec()];
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| e.to_string())?;
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(MeshTls {
            server: Arc::new(server),
            client_http: client(ALPN_HTTP)?,
            client_tcp: client(ALPN_TCP)?,
        })
    }

    /// TLS over `stream` to the sidecar at `ip`, whose certificate must name that address.
    pub async fn connect(
        &self,
        stream: TcpStream,
        ip: Ipv4Addr,
        http: bool,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = if http { &self.client_http } else { &self.client_tcp };
        TlsConnector::from(config.clone())
            .connect(ServerName::IpAddress(IpAddr::V4(ip).into()), stream)
            .await
    }

    pub async fn accept(&self, stream: TcpStream) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        TlsAcceptor::from(self.server.clone()).accept(stream).await
    }
}

/// True if a connection's first bytes are a TLS ClientHello of the mesh.
pub fn is_mesh_hello(first: &[u8]) -> bool {
    first.first() == Some(&0x16) && first.windows(ALPN_MARK.len()).any(|w| w == ALPN_MARK)
}

/// A pooled client's connection: plain, or mutual TLS to another sidecar.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

//! Every Ferry listener: plain TCP, or TLS when the service has a
//! certificate, behind one type that both tonic and axum serve from. TLS
//! handshakes run in tasks of their own, so a slow or silent client holds up
//! nobody else, and end after [`HANDSHAKE_TIMEOUT`].

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use ferry_tls::{Port, ServerTls};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A service's three ports, bound with the same TLS settings: gRPC (which
/// asks for client certificates when configured to), HTTP and metrics.
#[derive(Debug)]
pub struct Ports {
    pub grpc: Listener,
    pub http: Listener,
    pub metrics: Listener,
    pub tls: Option<Arc<ServerTls>>,
}

impl Ports {
    pub async fn bind(
        tls: &ferry_tls::ServerTlsArgs,
        grpc: SocketAddr,
        http: SocketAddr,
        metrics: SocketAddr,
    ) -> io::Result<Self> {
        let tls = ServerTls::load(tls).map_err(io::Error::other)?;
        let bind = |addr: SocketAddr, port| {
            let tls = tls.clone();
            async move {
                let bound = Listener::bind(addr, tls.as_ref(), port).await;
                bound.map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))
            }
        };
        let grpc = bind(grpc, Port::Grpc).await?;
        let http = bind(http, Port::Http).await?;
        let metrics = bind(metrics, Port::Http).await?;
        Ok(Self { grpc, http, metrics, tls })
    }

    /// What the listeners speak, for the start-up line.
    pub fn describe_tls(&self) -> &'static str {
        match &self.tls {
            None => "off",
            Some(t) if t.requires_client_certificate() => "on, client certificates required on gRPC",
            Some(_) => "on",
        }
    }
}

/// A bound listener, serving TLS when built with a certificate.
#[derive(Debug)]
pub struct Listener {
    local: SocketAddr,
    accepted: Accepted,
}

#[derive(Debug)]
enum Accepted {
    Plain(TcpListener),
    /// Connections whose handshake succeeded, from the accept task.
    Tls(mpsc::Receiver<(Conn, SocketAddr)>),
}

impl Listener {
    /// Binds `addr`; with `tls`, every connection must complete a TLS handshake
    /// (with a client certificate on a gRPC port when the configuration asks for one).
    pub async fn bind(addr: SocketAddr, tls: Option<&Arc<ServerTls>>, port: Port) -> io::Result<Self> {
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        let accepted = match tls {
            None => Accepted::Plain(tcp),
            Some(tls) => {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_tls(tcp, Arc::clone(tls), port, tx));
                Accepted::Tls(rx)
            }
        };
        Ok(Self { local, accepted })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection, ready for HTTP.
    pub async fn next(&mut self) -> (Conn, SocketAddr) {
        match &mut self.accepted {
            Accepted::Plain(tcp) => loop {
                match tcp.accept().await {
                    Ok((mut stream, peer)) => {
                        ferry_telemetry::net::set_nodelay(&mut stream);
                        return (Conn::Plain(stream), peer);
                    }
                    Err(e) => accept_failed(e).await,
                }
            },
            Accepted::Tls(rx) => match rx.recv().await {
                Some(conn) => conn,
                // The accept task only ends when this listener is dropped.
                None => std::future::pending().await,
            },
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn incoming(self) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (conn, _) = listener.next().await;
            Some((Ok(conn), listener))
        })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Errors from `accept` are about this process (out of file descriptors),
/// not a client: wait a moment instead of spinning.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_tls(tcp: TcpListener, tls: Arc<ServerTls>, port: Port, tx: mpsc::Sender<(Conn, SocketAddr)>) {
    loop {
        let (mut stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        ferry_telemetry::net::set_nodelay(&mut stream);
        // The configuration current now: a renewed certificate applies to new connections.
        let acceptor = TlsAcceptor::from(tls.config(port));
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send((Conn::Tls(Box::new(conn)), peer)).await;
                }
                // Plain HTTP on a TLS port, an untrusted or missing client
                // certificate: the client sees the handshake fail; say why here.
                Ok(Err(e)) => tracing::info!(%peer, ?port, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, ?port, "TLS handshake timed out"),
            }
        });
    }
}

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.tcp();
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
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

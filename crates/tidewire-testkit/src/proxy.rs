//! A TCP proxy on 127.0.0.1 that a test puts in front of a node to partition a link on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection it accepts to `target`, until the test [`cut`](Proxy::cut)s it.
///
/// While cut, current connections are dropped and new ones are accepted and closed at once (the
/// dialer sees its handshake fail, as with a refused connection). [`restore`](Proxy::restore)
/// forwards again. While [`stall`](Proxy::stall)ed, connections stay open but no byte gets
/// through in either direction (a link that went silent: a dead route, a middlebox dropping
/// packets) until [`unstall`](Proxy::unstall). Dropping the proxy closes everything.
#[derive(Debug)]
pub struct Proxy {
    /// Where to connect instead of the target (always on 127.0.0.1).
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stalled: watch::Sender<bool>,
    forwarded: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Forwarders watch `cut`; its sender going away ends them.
        self.cut.send_replace(true);
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let (stalled, _) = watch::channel(false);
        let forwarded = Arc::new(AtomicU64::new(0));
        let state = cut.clone();
        let silence = stalled.clone();
        let count = forwarded.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = state.subscribe();
                if *rx.borrow_and_update() {
                    drop(inbound);
                    continue;
                }
                let count = count.clone();
                let silence = silence.subscribe();
                tokio::spawn(async move {
                    forward(inbound, target, &mut rx, silence, &count).await;
                });
            }
        });
        Ok(Proxy {
            addr,
            cut,
            stalled,
            forwarded,
            accept,
        })
    }

    /// Drops every current connection and refuses new ones until [`restore`](Proxy::restore).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Stops every byte in both directions, keeping connections open, until
    /// [`unstall`](Proxy::unstall).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets bytes through again (held ones first).
    pub fn unstall(&self) {
        self.stalled.send_replace(false);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// How many connections were forwarded to the target so far (to check that traffic really
    /// goes through the proxy).
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    cut: &mut watch::Receiver<bool>,
    stalled: watch::Receiver<bool>,
    count: &AtomicU64,
) {
    let mut outbound = tokio::select! {
        c = TcpStream::connect(target) => match c {
            Ok(c) => c,
            Err(_) => return,
        },
        _ = until_cut(cut) => return,
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    count.fetch_add(1, Ordering::Relaxed);
    let (mut from_in, mut to_in) = inbound.split();
    let (mut from_out, mut to_out) = outbound.split();
    let there = pump(&mut from_in, &mut to_out, stalled.clone());
    let back = pump(&mut from_out, &mut to_in, stalled);
    tokio::select! {
        _ = async { tokio::join!(there, back) } => {}
        _ = until_cut(cut) => {}
    }
    // Both sockets drop here: the two ends see the connection close.
}

/// Copies one direction until end of stream, holding each chunk while the proxy is stalled.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Resolves when the proxy is cut (or dropped).
async fn until_cut(cut: &mut watch::Receiver<bool>) {
    loop {
        if *cut.borrow_and_update() {
            return;
        }
        if cut.changed().await.is_err() {
            return;
        }
    }
}

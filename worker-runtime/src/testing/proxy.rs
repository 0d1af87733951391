//! A TCP proxy between a worker and a real server that a test can cut and restore: the stand-in
//! for the server going away (tests never restart the shared servers, which others use).
//! While cut, every connection is accepted and closed at once (counted, so a test can wait
//! until the sink has tried during the outage), and cutting aborts the live connections, so
//! a request in flight fails part-way. Stalling is the other way a server goes away: it
//! accepts connections and reads requests but never answers (a wedged broker).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    stalled: AtomicBool,
    refused: AtomicUsize,
    held: AtomicUsize,
    passed: AtomicUsize,
    live: Mutex<Vec<AbortHandle>>,
}

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State::default());
        let upstream = upstream.to_owned();
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                // Decided and registered under the lock `cut` and `stall` take: a connection
                // accepted as they run is either refused (held) or in `live` when they abort
                // it. Checked outside the lock, one could slip through an outage and carry the
                // client's requests to the server all along (a test then saw its sink store
                // during the "outage" and stop being refused).
                let mut live = s.live.lock().expect("lock");
                if s.cut.load(Ordering::SeqCst) {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let task = if s.stalled.load(Ordering::SeqCst) {
                    // Read and drop whatever comes, answer nothing, keep the connection open.
                    s.held.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
                    })
                } else {
                    s.passed.fetch_add(1, Ordering::SeqCst);
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    })
                };
                live.retain(|h| !h.is_finished());
                live.push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server "goes away": live connections are cut, new ones closed at once.
    pub fn cut(&self) {
        let mut live = self.state.live.lock().expect("lock");
        self.state.cut.store(true, Ordering::SeqCst);
        for h in live.drain(..) {
            h.abort();
        }
    }

    /// The server "hangs": live connections are cut, new ones are accepted and their requests
    /// read, but nothing is ever answered.
    pub fn stall(&self) {
        let mut live = self.state.live.lock().expect("lock");
        self.state.stalled.store(true, Ordering::SeqCst);
        for h in live.drain(..) {
            h.abort();
        }
    }

    /// The server is back.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        if self.state.stalled.swap(false, Ordering::SeqCst) {
            // Connections held unanswered end, so that their clients connect again.
            for h in self.state.live.lock().expect("lock").drain(..) {
                h.abort();
            }
        }
    }

    /// Connections refused while cut.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Connections accepted and left unanswered while stalled.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Waits (up to 60 s) until `n` more connections than `since` were refused: the client
    /// kept trying during the outage.
    pub async fn wait_refused(&self, since: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.refused() < since + n {
            assert!(
                Instant::now() < deadline,
                "the client stopped trying during the outage ({} refused)",
                self.refused() - since
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

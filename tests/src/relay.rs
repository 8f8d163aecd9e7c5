//! A TCP relay to the test broker that can go silent: [`Relay::black_hole`] makes every
//! connection it carries stop passing bytes both ways without closing either socket — a
//! link that dies the way a pulled cable or a stuck middlebox does, with no FIN and no RST.
//! Connections made after that pass normally (the network came back, the old flows did not).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The relay; stops (dropping every connection) when dropped.
pub struct Relay {
    /// `amqp://` URL of the relay, with the broker URL's user, password and vhost.
    pub url: String,
    /// Connections accepted so far; those numbered up to this are black-holed.
    accepted: Arc<AtomicU64>,
    holed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to the test broker.
    pub async fn start() -> Relay {
        let uri: lapin::uri::AMQPUri = crate::broker_url().parse().expect("the broker URL parses");
        let upstream = format!("{}:{}", uri.authority.host, uri.authority.port);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the relay");
        let port = listener.local_addr().unwrap().port();
        let user = &uri.authority.userinfo;
        let url = format!("amqp://{}:{}@127.0.0.1:{port}/%2f", user.username, user.password);
        let accepted = Arc::new(AtomicU64::new(0));
        let (holed, watching) = watch::channel(0u64);
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut flows = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                flows.spawn(pipe(client_read, server_write, number, watching.clone()));
                flows.spawn(pipe(server_read, client_write, number, watching.clone()));
            }
        });
        Relay { url, accepted, holed, task }
    }

    /// Every connection carried so far goes silent, for good; later ones pass.
    pub fn black_hole(&self) {
        let _ = self.holed.send(self.accepted.load(Ordering::SeqCst));
    }

    /// How many connections the relay has accepted.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until the flow `number` is black-holed; then holds both halves open,
/// reading and writing nothing, until the relay stops.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    mut holed: watch::Receiver<u64>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        if *holed.borrow() >= number {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Checked again: bytes read just as the hole opened are swallowed.
                    if *holed.borrow() >= number {
                        std::future::pending::<()>().await;
                    }
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = holed.changed() => {}
        }
    }
}

//! Test harness: the real server on 127.0.0.1:0, real TCP, and helpers that
//! wait on real conditions under a timeout.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use followermaze::Stats;
use followermaze::{Config, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in these tests gives up after this long.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test with `what` if it takes longer than
/// [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    Stats::get(counter)
}

/// A server running in this process.
pub(crate) struct TestServer {
    pub events: SocketAddr,
    pub clients: SocketAddr,
    /// The web listener, when started with one.
    pub web: Option<SocketAddr>,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), followermaze::ServerError>>,
}

impl TestServer {
    /// Starts the server with test-friendly defaults.
    pub(crate) async fn start() -> TestServer {
        TestServer::start_with(Config::default()).await
    }

    /// Starts the server with `config` on loopback ephemeral ports (the
    /// ports and address in `config` are not used), without metrics.
    pub(crate) async fn start_with(config: Config) -> TestServer {
        let listeners = Listeners {
            events: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            clients: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            web: None,
            metrics: None,
        };
        TestServer::start_on(listeners, config)
    }

    /// Starts the server with `config` and a metrics listener on
    /// 127.0.0.1:0; returns it with the metrics address.
    pub(crate) async fn start_with_metrics(config: Config) -> (TestServer, SocketAddr) {
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = metrics.local_addr().unwrap();
        let listeners = Listeners {
            events: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            clients: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            web: None,
            metrics: Some(metrics),
        };
        (TestServer::start_on(listeners, config), address)
    }

    /// Starts the server with `config` and a web listener on
    /// 127.0.0.1:0, without metrics.
    pub(crate) async fn start_with_web(config: Config) -> TestServer {
        let listeners = Listeners {
            events: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            clients: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            web: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            metrics: None,
        };
        TestServer::start_on(listeners, config)
    }

    /// Starts the server on `listeners` with `config`.
    pub(crate) fn start_on(listeners: Listeners, config: Config) -> TestServer {
        let events = listeners.events.local_addr().unwrap();
        let clients = listeners.clients.local_addr().unwrap();
        let web = listeners.web.as_ref().map(|web| web.local_addr().unwrap());
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(followermaze::run_with_stats(
            listeners,
            config,
            stats.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            events,
            clients,
            web,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Opens an event source connection.
    pub(crate) async fn source(&self) -> TcpStream {
        within("source connect", TcpStream::connect(self.events))
            .await
            .unwrap()
    }

    /// Connects a client for `user` and waits until the registry has it.
    pub(crate) async fn client(&self, user: u64) -> Client {
        let before = get(&self.stats.client_connects);
        let client = self.client_unregistered(user).await;
        wait_until("client registration", || {
            get(&self.stats.client_connects) > before
        })
        .await;
        client
    }

    /// Connects a client for `user` without waiting for its registration.
    pub(crate) async fn client_unregistered(&self, user: u64) -> Client {
        let mut stream = within("client connect", TcpStream::connect(self.clients))
            .await
            .unwrap();
        stream
            .write_all(format!("{user}\r\n").as_bytes())
            .await
            .unwrap();
        Client { stream }
    }

    /// Waits until every source connection has been closed and noticed.
    pub(crate) async fn sources_gone(&self) {
        wait_until("sources gone", || get(&self.stats.sources_connected) == 0).await;
    }

    /// Waits until `n` events have been applied in order.
    pub(crate) async fn delivered(&self, n: u64) {
        wait_until("events delivered", || {
            get(&self.stats.events_delivered) >= n
        })
        .await;
    }

    /// Asks the server to stop, without waiting: it drains meanwhile.
    pub(crate) fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks the server to stop (if not asked yet) and waits for `run` to
    /// return.
    pub(crate) async fn stop(mut self) -> Result<(), followermaze::ServerError> {
        self.request_stop();
        within("server shutdown", &mut self.task).await.unwrap()
    }
}

/// A connected user client.
pub(crate) struct Client {
    pub stream: TcpStream,
}

impl Client {
    /// Reads exactly `expected.len()` bytes and asserts they are `expected`.
    pub(crate) async fn expect(&mut self, expected: &str) {
        let mut got = vec![0u8; expected.len()];
        within(
            &format!("notifications {expected:?}"),
            self.stream.read_exact(&mut got),
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    /// Reads until the server closes the connection; returns what came.
    pub(crate) async fn read_to_end(&mut self) -> String {
        let mut got = Vec::new();
        within("end of stream", self.stream.read_to_end(&mut got))
            .await
            .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// Writes `bytes` to a source connection.
pub(crate) async fn send(source: &mut TcpStream, bytes: &str) {
    within("source write", source.write_all(bytes.as_bytes()))
        .await
        .unwrap();
}

/// Raises this process's open-files limit to at least `needed` (up to the
/// hard limit), for tests that hold many sockets; fails clearly if the
/// hard limit is lower.
pub(crate) fn allow_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "this test holds {needed} sockets; the hard open-files limit is {}",
            limit.rlim_max
        );
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

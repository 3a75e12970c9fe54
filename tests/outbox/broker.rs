//! The broker side of the outbox tests: a JetStream stream per test on the NATS server CI
//! starts (`TEST_NATS_URL`, default `nats://127.0.0.1:4222`), what it holds, and a NATS server
//! of a test's own for the tests that stop the broker.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use transactional::outbox::JetStream;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// One event as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub subject: String,
    pub message_id: String,
    pub key: String,
    pub payload: String,
}

/// A stream of a test's own, capturing `{prefix}.>`.
pub struct Broker {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl Broker {
    /// A stream on the shared server.
    pub async fn new(test: &str) -> Broker {
        Broker::at(&nats_url(), test).await
    }

    /// A stream on the server at `url` (its own, for a test that stops it).
    pub async fn at(url: &str, test: &str) -> Broker {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .unwrap_or_else(|e| {
                panic!("NATS is not reachable at {url}: {e}. Start `nats-server -js` (CI does)")
            });
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect();
        let name = format!("OB_{short}_{}_{n}", std::process::id());
        let prefix = name.to_lowercase();
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create the test's stream");
        Broker { js, name, prefix }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub fn sink(&self) -> JetStream {
        JetStream::new(self.js.clone())
    }

    /// How many messages the stream holds.
    pub async fn count(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.name).await.expect("the stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Waits (up to `within`) until the stream holds at least `n` messages, then returns all
    /// of them, in the stream's order.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        while self.count().await < n as u64 {
            assert!(
                Instant::now() < deadline,
                "the stream holds {} messages, not {n}, after {within:?}",
                self.count().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.events().await
    }

    /// Every message the stream holds, in its order.
    pub async fn events(&self) -> Vec<Event> {
        let total = self.count().await as usize;
        let mut events = Vec::with_capacity(total);
        if total == 0 {
            return events;
        }
        let stream = self.js.get_stream(&self.name).await.expect("the stream");
        let consumer = stream
            .create_consumer(pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        while events.len() < total {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("the stream's messages arrive")
                .expect("a message")
                .expect("a message");
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            events.push(Event {
                subject: message.subject.to_string(),
                message_id: header("Nats-Msg-Id"),
                key: header(transactional::outbox::KEY_HEADER),
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
            });
        }
        events
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let js = self.js.clone();
        let name = self.name.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = js.delete_stream(&name).await;
            });
        }
    }
}

/// Asserts that `events` are exactly `expected` payloads, each once (by payload and by message
/// id), in any order.
pub fn assert_exactly(events: &[Event], expected: &[&str]) {
    let mut got: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the stream holds exactly the committed events");
    let ids: HashSet<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no message id twice: {events:?}");
}

/// A `nats-server -js` of a test's own, on a free port, with its store in a temp dir.
pub struct Server {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl Server {
    pub fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .unwrap()
            .port();
        let mut server = Server {
            port,
            store: tempfile::tempdir().expect("a store dir"),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again), on the same port and store, and waits until it listens.
    pub fn restart(&mut self) {
        let child =
            Command::new(std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()))
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "nats-server is installed (CI installs it: the Debian package nats-server)",
                );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): the broker is down until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

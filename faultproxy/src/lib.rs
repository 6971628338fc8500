//! A fault-injecting HTTP reverse proxy for tests against the local AWS
//! emulators. Put it between a client and an emulator (point the client's
//! endpoint at [`FaultProxy::endpoint`]) and switch, while it runs, how the
//! "network" behaves:
//!
//! - [`Mode`]: pass requests on, answer each with the service's own 500 or
//!   throttling error, refuse connections (the listening socket is closed),
//!   or black-hole them (accepted, read, never answered, as a hung connection
//!   or a dropped route looks to a client);
//! - [`FaultProxy::set_latency`]: a delay before each request goes upstream;
//! - [`FaultProxy::set_bandwidth`]: one link of so many bytes per second that
//!   every request and response body shares, like a congested NAT;
//! - [`FaultProxy::set_random_faults`]: a seeded fraction of requests failing
//!   the way the service fails under load;
//! - [`FaultProxy::set_random_delays`]: a seeded fraction of requests held
//!   for a random time before going upstream, as scattered slow requests
//!   (a slow path, a pause on one server) look to a client;
//! - [`FaultProxy::set_lost_answers`]: a seeded fraction of requests passed
//!   upstream (so the service applies them) whose answer is replaced by a TCP
//!   reset, as a connection reset after the request was sent looks to a client.
//!
//! It also records the IAM action of each request it passes upstream
//! ([`FaultProxy::actions`], by [`iam_action`]), so a test can compare what
//! a client really calls with the policy written for it.
//!
//! Responses stream through frame by frame, so long-lived responses
//! (`SubscribeToShard`) pass, and a black hole also swallows the rest of a
//! response already on its way.
//!
//! The parts: the proxy's state and the API that switches it (here); serving
//! connections and passing requests upstream through the faults (`forward`);
//! each service's own error answers (`answers`); and the IAM action of a
//! request (`iam`).

mod answers;
mod forward;
mod iam;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::{accept_loop, bind};
pub use crate::iam::iam_action;

/// Which service the proxy fronts, so its errors are the ones that service
/// sends (status, content type and error code the SDK parses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Kinesis (JSON 1.1 protocol).
    Kinesis,
    /// S3 (XML errors).
    S3,
    /// DynamoDB (JSON 1.0 protocol).
    DynamoDb,
    /// The Glue Data Catalog (JSON 1.1 protocol).
    Glue,
}

/// How the proxy treats requests, switchable at any time with
/// [`FaultProxy::set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass requests on (after any latency, bandwidth and random faults).
    Pass,
    /// Answer every request with the service's 500 internal error.
    ServerError,
    /// Answer every request with the service's throttling error.
    Throttle,
    /// Close the listening socket, so connects are refused, and drop every
    /// request that arrives on a connection already open.
    Refuse,
    /// Accept connections and requests and never answer them; answers on
    /// their way back are swallowed too. What was black-holed stays hung
    /// after the mode changes: only the client's timeout ends it.
    BlackHole,
}

/// Counts of what the proxy did.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests passed upstream.
    pub passed: AtomicU64,
    /// Requests answered with an injected error.
    pub errors: AtomicU64,
    /// Requests whose connection was closed without an answer.
    pub dropped: AtomicU64,
    /// Requests (or answers) held for ever by a black hole.
    pub hung: AtomicU64,
    /// Requests applied upstream whose answer was replaced by a reset
    /// ([`FaultProxy::set_lost_answers`]).
    pub answers_lost: AtomicU64,
    /// Requests held by [`FaultProxy::set_random_delays`].
    pub delayed: AtomicU64,
}

impl Counts {
    /// `(passed, errors, dropped, hung)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (get(&self.passed), get(&self.errors), get(&self.dropped), get(&self.hung))
    }
}

/// A shared link: every body's bytes take their turn at `bytes_per_sec`.
struct Link {
    bytes_per_sec: u64,
    next_free: Instant,
}

/// A seeded fraction of requests held for a time in `[min, max]`.
struct RandomDelays {
    rate: f64,
    min: Duration,
    max: Duration,
    rng: ChaCha8Rng,
}

/// What the accept loop and every request read.
struct Shared {
    flavor: Flavor,
    upstream: hyper::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    mode: watch::Sender<Mode>,
    latency: Mutex<Duration>,
    link: Mutex<Option<Link>>,
    random: Mutex<(f64, ChaCha8Rng)>,
    lost: Mutex<(f64, ChaCha8Rng)>,
    delays: Mutex<RandomDelays>,
    counts: Arc<Counts>,
    /// IAM action -> requests passed upstream that needed it.
    actions: Mutex<BTreeMap<String, u64>>,
    stop: CancellationToken,
}

/// A running proxy; it stops (and every held connection closes) when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: point the client's endpoint here.
    pub endpoint: String,
    /// The address it listens on (kept across [`Mode::Refuse`]).
    pub addr: SocketAddr,
    /// What it did so far.
    pub counts: Arc<Counts>,
    shared: Arc<Shared>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) in front of `upstream`
    /// (`http://host:port`), passing everything until told otherwise.
    pub async fn start(upstream: &str, flavor: Flavor) -> std::io::Result<FaultProxy> {
        let upstream: hyper::Uri =
            upstream.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            flavor,
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            mode: watch::Sender::new(Mode::Pass),
            latency: Mutex::new(Duration::ZERO),
            link: Mutex::new(None),
            random: Mutex::new((0.0, ChaCha8Rng::seed_from_u64(0))),
            lost: Mutex::new((0.0, ChaCha8Rng::seed_from_u64(0))),
            delays: Mutex::new(RandomDelays {
                rate: 0.0,
                min: Duration::ZERO,
                max: Duration::ZERO,
                rng: ChaCha8Rng::seed_from_u64(0),
            }),
            counts: counts.clone(),
            actions: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, addr, shared.clone()));
        Ok(FaultProxy { endpoint: format!("http://{addr}"), addr, counts, shared })
    }

    /// Switches the mode; it applies to the next request (and, for a black
    /// hole or refusal, to answers still on their way).
    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The mode now.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// A delay added before each request goes upstream.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().expect("latency lock") = latency;
    }

    /// Caps the bytes per second of all bodies through the proxy, both ways
    /// together; `None` lifts the cap.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        *self.shared.link.lock().expect("link lock") =
            bytes_per_sec.map(|b| Link { bytes_per_sec: b.max(1), next_free: Instant::now() });
    }

    /// Fails a `rate` fraction of passed requests (seeded, reproducible) the
    /// way the service does under load: S3 answers half with `503 SlowDown`
    /// and drops half the connections; Kinesis and DynamoDB throttle; Glue
    /// throttles three in four and answers the fourth with a 500.
    pub fn set_random_faults(&self, rate: f64, seed: u64) {
        *self.shared.random.lock().expect("rng lock") = (rate, ChaCha8Rng::seed_from_u64(seed));
    }

    /// Loses the answer of a `rate` fraction (seeded, reproducible) of the
    /// requests passed upstream: the request reaches the service, which
    /// applies it, then the proxy reads the answer and resets the connection
    /// (a TCP RST, `Connection reset by peer`) instead of relaying it. Applies
    /// to connections opened after the call (their sockets close with a
    /// reset); other modes are unchanged.
    pub fn set_lost_answers(&self, rate: f64, seed: u64) {
        *self.shared.lost.lock().expect("rng lock") = (rate, ChaCha8Rng::seed_from_u64(seed));
    }

    /// Holds a `rate` fraction (seeded, reproducible) of requests for a
    /// uniformly drawn time in `[min, max]` before they go upstream, on top of
    /// any latency: scattered slow requests, unrelated to load or size. A
    /// request whose client hangs up while it is held is dropped unapplied
    /// when hyper notices the closed connection.
    pub fn set_random_delays(&self, rate: f64, min: Duration, max: Duration, seed: u64) {
        *self.shared.delays.lock().expect("rng lock") =
            RandomDelays { rate, min, max: max.max(min), rng: ChaCha8Rng::seed_from_u64(seed) };
    }
}

impl FaultProxy {
    /// The IAM action of every request passed upstream so far, with how
    /// many needed it (see [`iam_action`]).
    pub fn actions(&self) -> BTreeMap<String, u64> {
        self.shared.actions.lock().expect("actions lock").clone()
    }
}

#[cfg(test)]
mod tests;

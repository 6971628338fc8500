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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// Why a connection is closed without an answer (hyper closes the connection
/// when the service returns an error).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

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

/// The IAM action a request to `flavor` needs (`kinesis:GetRecords`,
/// `s3:PutObject`, ...). JSON protocols name their operation in the
/// `X-Amz-Target` header (`Kinesis_20131202.GetRecords`); S3's REST
/// requests (path-style, as against an emulator) by method, path and query,
/// mapped as IAM authorises them: every step of a multipart upload is
/// `s3:PutObject` except its abort, and a bucket's listing or HEAD is
/// `s3:ListBucket`. A request it cannot map is `SERVICE:Unknown(...)`, so a
/// test comparing actions fails on it rather than missing it.
pub fn iam_action(flavor: Flavor, method: &str, path: &str, query: &str, target: Option<&str>) -> String {
    let service = match flavor {
        Flavor::Kinesis => "kinesis",
        Flavor::DynamoDb => "dynamodb",
        Flavor::Glue => "glue",
        Flavor::S3 => return s3_action(method, path, query),
    };
    match target.and_then(|t| t.rsplit_once('.')) {
        Some((_, operation)) if !operation.is_empty() => format!("{service}:{operation}"),
        _ => format!("{service}:Unknown({method} {path} without X-Amz-Target)"),
    }
}

fn s3_action(method: &str, path: &str, query: &str) -> String {
    let has = |key: &str| query.split('&').any(|kv| kv.split('=').next() == Some(key));
    // `/bucket` or `/bucket/` is the bucket; `/bucket/key...` an object.
    let object = path.trim_start_matches('/').split_once('/').is_some_and(|(_, key)| !key.is_empty());
    let action = match (method, object) {
        ("PUT", true) if has("tagging") => "PutObjectTagging",
        // PutObject, and UploadPart (`?partNumber&uploadId`).
        ("PUT", true) => "PutObject",
        // CreateMultipartUpload (`?uploads`), CompleteMultipartUpload (`?uploadId`).
        ("POST", true) if has("uploads") || has("uploadId") => "PutObject",
        ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true) => "DeleteObject",
        ("GET", true) if has("uploadId") => "ListMultipartUploadParts",
        ("GET" | "HEAD", true) => "GetObject",
        ("GET", false) if has("uploads") => "ListBucketMultipartUploads",
        ("GET", false) if has("location") => "GetBucketLocation",
        ("GET" | "HEAD", false) => "ListBucket",
        ("PUT", false) if query.is_empty() => "CreateBucket",
        ("DELETE", false) if query.is_empty() => "DeleteBucket",
        ("POST", false) if has("delete") => "DeleteObject",
        _ => return format!("s3:Unknown({method} {path}?{query})"),
    };
    format!("s3:{action}")
}

/// A listener with `SO_REUSEADDR`, so the port can be bound again after a
/// refusal while old connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections, closing the listener while the mode is
/// [`Mode::Refuse`] and binding the same address again after.
async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut mode = shared.mode.subscribe();
    loop {
        if *mode.borrow_and_update() == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    // The port is briefly unavailable; try again shortly.
                    tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    }
                }
            }
        }
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            changed = mode.changed() => if changed.is_err() { return },
            accepted = accept => if let Ok((stream, _)) = accepted {
                // A connection that may lose answers closes with a reset, not a
                // FIN, as when a middlebox or a restarting server drops it.
                if shared.lost.lock().expect("rng lock").0 > 0.0 {
                    let _ = stream.set_zero_linger();
                }
                tokio::spawn(serve(stream, shared.clone()));
            },
        }
    }
}

/// Serves one client connection until it closes or the proxy stops.
async fn serve(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let stop = shared.stop.clone();
    let service = hyper::service::service_fn(move |req| handle(req, shared.clone()));
    let connection =
        hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = connection => {}
    }
}

fn respond(status: StatusCode, content_type: &str, body: &'static str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never: Infallible| match never {}).boxed_unsync())
        .expect("static response")
}

/// The service's 500 answer.
fn server_error(flavor: Flavor) -> Response<ProxyBody> {
    match flavor {
        Flavor::Kinesis => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.1",
            r#"{"__type":"InternalFailure","message":"Internal service failure (injected by faultproxy)."}"#,
        ),
        Flavor::Glue => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.1",
            r#"{"__type":"InternalServiceException","message":"Internal service exception (injected by faultproxy)."}"#,
        ),
        Flavor::DynamoDb => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error (injected by faultproxy)."}"#,
        ),
        Flavor::S3 => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
             <Message>We encountered an internal error. Please try again.</Message></Error>",
        ),
    }
}

/// The service's throttling answer.
fn throttled(flavor: Flavor) -> Response<ProxyBody> {
    match flavor {
        Flavor::Kinesis => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected by faultproxy)."}"#,
        ),
        Flavor::Glue => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded (injected by faultproxy)."}"#,
        ),
        Flavor::DynamoDb => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput (injected by faultproxy)."}"#,
        ),
        Flavor::S3 => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
             <Message>Please reduce your request rate.</Message></Error>",
        ),
    }
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Holds a request for ever (until the proxy stops), as a black hole.
    async fn hang<T>(&self) -> Result<T, Dropped> {
        self.counts.hung.fetch_add(1, Ordering::Relaxed);
        self.stop.cancelled().await;
        Err(Dropped)
    }

    fn dropped<T>(&self) -> Result<T, Dropped> {
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        Err(Dropped)
    }

    /// Whether this request's answer is to be lost.
    fn lose_answer(&self) -> bool {
        let mut lost = self.lost.lock().expect("rng lock");
        if lost.0 <= 0.0 {
            return false;
        }
        let roll: f64 = lost.1.random();
        roll < lost.0
    }

    fn error(&self, response: Response<ProxyBody>) -> Result<Response<ProxyBody>, Dropped> {
        self.counts.errors.fetch_add(1, Ordering::Relaxed);
        Ok(response)
    }

    /// Waits for `bytes` to cross the capped link, if there is one.
    async fn cross_link(&self, bytes: usize) {
        let ready = {
            let mut link = self.link.lock().expect("link lock");
            let Some(link) = link.as_mut() else { return };
            let start = link.next_free.max(Instant::now());
            link.next_free = start + Duration::from_secs_f64(bytes as f64 / link.bytes_per_sec as f64);
            link.next_free
        };
        tokio::time::sleep_until(ready).await;
    }

    /// This request's random delay, if it draws one.
    fn random_delay(&self) -> Option<Duration> {
        let mut d = self.delays.lock().expect("rng lock");
        if d.rate <= 0.0 {
            return None;
        }
        let roll: f64 = d.rng.random();
        if roll >= d.rate {
            return None;
        }
        let spread = (d.max - d.min).as_secs_f64();
        let extra: f64 = d.rng.random();
        Some(d.min + Duration::from_secs_f64(spread * extra))
    }

    /// Whether this request draws a random fault, and which.
    fn random_fault(&self) -> Option<Result<Response<ProxyBody>, Dropped>> {
        let (rate, roll) = {
            let mut random = self.random.lock().expect("rng lock");
            if random.0 <= 0.0 {
                return None;
            }
            let roll: f64 = random.1.random();
            (random.0, roll)
        };
        if roll >= rate {
            return None;
        }
        Some(match self.flavor {
            Flavor::S3 if roll < rate / 2.0 => self.dropped(),
            Flavor::Glue if roll < rate / 4.0 => self.error(server_error(Flavor::Glue)),
            flavor => self.error(throttled(flavor)),
        })
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<ProxyBody>, Dropped> {
    match shared.mode() {
        Mode::Pass => {}
        Mode::ServerError => return shared.error(server_error(shared.flavor)),
        Mode::Throttle => return shared.error(throttled(shared.flavor)),
        Mode::Refuse => return shared.dropped(),
        Mode::BlackHole => return shared.hang().await,
    }
    if let Some(fault) = shared.random_fault() {
        return fault;
    }
    let latency = *shared.latency.lock().expect("latency lock");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(delay) = shared.random_delay() {
        shared.counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
    let (mut parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return shared.dropped();
    };
    shared.cross_link(body.len()).await;
    // The mode may have changed while the request waited.
    match shared.mode() {
        Mode::Pass | Mode::ServerError | Mode::Throttle => {}
        Mode::Refuse => return shared.dropped(),
        Mode::BlackHole => return shared.hang().await,
    }
    let action = iam_action(
        shared.flavor,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or_default(),
        parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()),
    );
    let mut uri = shared.upstream.clone().into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = hyper::Uri::from_parts(uri).expect("upstream uri");
    shared.counts.passed.fetch_add(1, Ordering::Relaxed);
    *shared.actions.lock().expect("actions lock").entry(action).or_default() += 1;
    let response = match shared.client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(response) => response,
        Err(_) => return Ok(respond(StatusCode::BAD_GATEWAY, "text/plain", "upstream unreachable")),
    };
    if shared.lose_answer() {
        // The service applied the request; read its whole answer, then drop
        // the connection (reset, as its socket has a zero linger).
        let _ = response.into_body().collect().await;
        shared.counts.answers_lost.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped);
    }
    let (parts, upstream_body) = response.into_parts();
    Ok(Response::from_parts(parts, relay(upstream_body, shared)))
}

/// The answer's body, relayed frame by frame through the link; a black hole
/// holds the rest for ever and a refusal cuts it off.
fn relay(mut body: Incoming, shared: Arc<Shared>) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        let stop = shared.stop.clone();
        let pump = async {
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        let _ = tx.send(Err(Box::new(e))).await;
                        return;
                    }
                };
                if let Some(data) = frame.data_ref() {
                    shared.cross_link(data.len()).await;
                }
                match shared.mode() {
                    Mode::Pass | Mode::ServerError | Mode::Throttle => {}
                    Mode::Refuse => {
                        let _ = tx.send(Err(Box::new(Dropped))).await;
                        return;
                    }
                    Mode::BlackHole => {
                        let _ = shared.hang::<()>().await;
                        return;
                    }
                }
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = pump => {}
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) });
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream answering every request with its path and the request
    /// body's length, or with `size` bytes for `/big/{size}`.
    async fn upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let len = req.into_body().collect().await.unwrap().to_bytes().len();
                    let body = match path.strip_prefix("/big/") {
                        Some(size) => Bytes::from(vec![b'x'; size.parse().unwrap()]),
                        None => Bytes::from(format!("{path} {len}")),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        format!("http://{addr}")
    }

    /// POSTs `body` to `url`; `Err` when the connection fails or 2 s pass.
    async fn post(url: &str, body: &'static [u8]) -> Result<(StatusCode, String), String> {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(url).body(Full::new(Bytes::from_static(body))).unwrap();
        let call = async {
            let response = client.request(req).await.map_err(|e| format!("request: {e:?}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
            Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(2), call).await.map_err(|_| "timed out".to_string())?
    }

    #[test]
    fn requests_map_to_the_iam_actions_that_authorise_them() {
        let json = |flavor, target| iam_action(flavor, "POST", "/", "", Some(target));
        assert_eq!(json(Flavor::Kinesis, "Kinesis_20131202.GetRecords"), "kinesis:GetRecords");
        assert_eq!(json(Flavor::DynamoDb, "DynamoDB_20120810.UpdateItem"), "dynamodb:UpdateItem");
        assert_eq!(json(Flavor::Glue, "AWSGlue.GetTable"), "glue:GetTable");
        assert!(iam_action(Flavor::Glue, "POST", "/", "", None).starts_with("glue:Unknown("));
        let s3 = |method, path, query| iam_action(Flavor::S3, method, path, query, None);
        // As the Rust SDK sends them (path-style, with its `x-id`).
        assert_eq!(s3("PUT", "/b/lake/f.parquet", "x-id=PutObject"), "s3:PutObject");
        assert_eq!(s3("POST", "/b/lake/f.parquet", "uploads"), "s3:PutObject");
        assert_eq!(s3("PUT", "/b/lake/f.parquet", "x-id=UploadPart&partNumber=1&uploadId=u"), "s3:PutObject");
        assert_eq!(s3("POST", "/b/lake/f.parquet", "uploadId=u"), "s3:PutObject");
        assert_eq!(
            s3("DELETE", "/b/lake/f.parquet", "x-id=AbortMultipartUpload&uploadId=u"),
            "s3:AbortMultipartUpload"
        );
        assert_eq!(s3("DELETE", "/b/lake/_probe", "x-id=DeleteObject"), "s3:DeleteObject");
        assert_eq!(s3("GET", "/b/lake/f.parquet", "x-id=GetObject"), "s3:GetObject");
        assert_eq!(s3("HEAD", "/b/lake/f.parquet", ""), "s3:GetObject");
        assert_eq!(s3("GET", "/b", "list-type=2&prefix=lake%2F&max-keys=1"), "s3:ListBucket");
        assert_eq!(s3("GET", "/b/", "list-type=2"), "s3:ListBucket");
        assert_eq!(s3("HEAD", "/b", ""), "s3:ListBucket");
        assert_eq!(s3("PUT", "/b", ""), "s3:CreateBucket");
        assert!(s3("POST", "/b/k", "select").starts_with("s3:Unknown("));
    }

    #[tokio::test]
    async fn passed_requests_are_recorded_by_action_and_failed_ones_are_not() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::S3).await.unwrap();
        post(&format!("{}/b/k?uploads", proxy.endpoint), b"").await.unwrap();
        post(&format!("{}/b/k?uploadId=u", proxy.endpoint), b"").await.unwrap();
        proxy.set(Mode::ServerError);
        post(&format!("{}/b/k?uploads", proxy.endpoint), b"").await.unwrap();
        assert_eq!(proxy.actions(), BTreeMap::from([("s3:PutObject".to_string(), 2)]));
    }

    #[tokio::test]
    async fn modes_pass_fail_refuse_and_black_hole_and_switch_back() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::Kinesis).await.unwrap();
        let url = format!("{}/a/b", proxy.endpoint);
        assert_eq!(post(&url, b"12345").await.unwrap(), (StatusCode::OK, "/a/b 5".into()));

        proxy.set(Mode::ServerError);
        let (status, body) = post(&url, b"").await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("InternalFailure"), "{body}");

        proxy.set(Mode::Throttle);
        let (status, body) = post(&url, b"").await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("ProvisionedThroughputExceededException"), "{body}");

        proxy.set(Mode::Refuse);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = post(&url, b"").await.unwrap_err();
        assert!(refused.contains("ConnectionRefused") || refused.contains("refused"), "{refused}");

        proxy.set(Mode::BlackHole);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(post(&url, b"").await.unwrap_err(), "timed out");

        // The same address serves again once healthy.
        proxy.set(Mode::Pass);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(post(&url, b"xy").await.unwrap(), (StatusCode::OK, "/a/b 2".into()));
        let (passed, errors, _, hung) = proxy.counts.snapshot();
        assert_eq!((passed, errors, hung), (2, 2, 1));
    }

    #[tokio::test]
    async fn errors_are_each_services_own() {
        let up = upstream().await;
        let s3 = FaultProxy::start(&up, Flavor::S3).await.unwrap();
        s3.set(Mode::ServerError);
        let (status, body) = post(&s3.endpoint, b"").await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("<Code>InternalError</Code>"), "{body}");
        s3.set(Mode::Throttle);
        let (status, body) = post(&s3.endpoint, b"").await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("SlowDown"), "{body}");

        let dynamodb = FaultProxy::start(&up, Flavor::DynamoDb).await.unwrap();
        dynamodb.set(Mode::ServerError);
        let (status, body) = post(&dynamodb.endpoint, b"").await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("#InternalServerError"), "{body}");
    }

    #[tokio::test]
    async fn a_black_hole_swallows_answers_already_on_their_way() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::S3).await.unwrap();
        proxy.set_bandwidth(Some(100_000));
        let url = format!("{}/big/300000", proxy.endpoint);
        let call = tokio::spawn(async move { post(&url, b"").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.set(Mode::BlackHole);
        assert_eq!(call.await.unwrap().unwrap_err(), "timed out");
    }

    #[tokio::test]
    async fn latency_and_bandwidth_slow_every_request() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::Kinesis).await.unwrap();
        proxy.set_latency(Duration::from_millis(300));
        let started = std::time::Instant::now();
        post(&proxy.endpoint, b"").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Four 100 kB answers share one 1 MB/s link: at least 0.4 s together.
        proxy.set_latency(Duration::ZERO);
        proxy.set_bandwidth(Some(1_000_000));
        let url = format!("{}/big/100000", proxy.endpoint);
        let started = std::time::Instant::now();
        let answers = futures::future::join_all((0..4).map(|_| post(&url, b""))).await;
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|(_, body)| body.len() == 100_000)));
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_lost_answer_is_applied_upstream_and_then_reset() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&up, Flavor::Kinesis).await.unwrap();
        proxy.set_lost_answers(1.0, 1);
        let lost = post(&format!("{}/a", proxy.endpoint), b"123").await.unwrap_err();
        assert!(lost.contains("ConnectionReset") || lost.contains("reset"), "{lost}");
        let (passed, errors, dropped, hung) = proxy.counts.snapshot();
        assert_eq!((passed, errors, dropped, hung), (1, 0, 0, 0), "it reached the upstream");
        assert_eq!(proxy.counts.answers_lost.load(Ordering::Relaxed), 1);

        proxy.set_lost_answers(0.3, 5);
        let mut answered = 0;
        for _ in 0..100 {
            answered += usize::from(post(&proxy.endpoint, b"").await.is_ok());
        }
        let lost = proxy.counts.answers_lost.load(Ordering::Relaxed) as usize - 1;
        assert_eq!(answered + lost, 100);
        assert!((15..45).contains(&lost), "{lost} of 100 lost");
        assert_eq!(proxy.counts.passed.load(Ordering::Relaxed), 101);
    }

    #[tokio::test]
    async fn random_delays_hold_the_asked_fraction_for_a_time_in_range() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::Kinesis).await.unwrap();
        proxy.set_random_delays(0.3, Duration::from_millis(200), Duration::from_millis(400), 3);
        let mut slow = 0;
        for _ in 0..40 {
            let started = std::time::Instant::now();
            post(&proxy.endpoint, b"").await.unwrap();
            let took = started.elapsed();
            if took >= Duration::from_millis(200) {
                assert!(took < Duration::from_millis(1_000), "{took:?}");
                slow += 1;
            }
        }
        assert_eq!(proxy.counts.delayed.load(Ordering::Relaxed), slow);
        assert!((4..=22).contains(&slow), "{slow} of 40 delayed");

        // A client that gives up while its request is held: the request is
        // dropped without going upstream.
        proxy.set_random_delays(1.0, Duration::from_millis(500), Duration::from_millis(500), 3);
        let passed = proxy.counts.passed.load(Ordering::Relaxed);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(&proxy.endpoint).body(Full::new(Bytes::from_static(b""))).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(100), client.request(req)).await.is_err());
        drop(client);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(proxy.counts.passed.load(Ordering::Relaxed), passed, "not applied after the client left");
    }

    #[tokio::test]
    async fn random_faults_fail_the_asked_fraction() {
        let proxy = FaultProxy::start(&upstream().await, Flavor::S3).await.unwrap();
        proxy.set_random_faults(0.5, 7);
        let (mut ok, mut slow_down, mut dropped) = (0, 0, 0);
        for _ in 0..200 {
            match post(&proxy.endpoint, b"").await {
                Ok((StatusCode::OK, _)) => ok += 1,
                Ok((_, body)) if body.contains("SlowDown") => slow_down += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => dropped += 1,
            }
        }
        assert!((60..140).contains(&ok), "{ok} {slow_down} {dropped}");
        assert!(slow_down > 20 && dropped > 20, "{ok} {slow_down} {dropped}");
        assert_eq!(proxy.counts.dropped.load(Ordering::Relaxed), dropped);
    }
}

//! The proxy's serving side: it accepts connections (closing the listener
//! while refusing), and each request meets the mode, random faults, latency,
//! random delays and the shared link before it goes upstream; the answer is
//! relayed back frame by frame, or lost, swallowed or cut off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::answers::{respond, server_error, throttled};
use crate::iam::iam_action;
use crate::{BoxError, Flavor, Mode, ProxyBody, Shared};

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
/// A listener with `SO_REUSEADDR`, so the port can be bound again after a
/// refusal while old connections linger in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections, closing the listener while the mode is
/// [`Mode::Refuse`] and binding the same address again after.
pub(crate) async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
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

//! Unit tests of the fault proxy against a small local upstream: IAM
//! actions, every mode, each service's errors, latency, bandwidth, lost
//! answers, random delays and random faults.

use std::convert::Infallible;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
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
    assert_eq!(s3("DELETE", "/b/lake/f.parquet", "x-id=AbortMultipartUpload&uploadId=u"), "s3:AbortMultipartUpload");
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

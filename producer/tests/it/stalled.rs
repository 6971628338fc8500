//! Backpressure against a stalled endpoint: a local TCP server that accepts
//! connections and never answers. Memory stays within the budget, `send`
//! waits, `try_send` refuses (backpressure, not a failure), and every record
//! comes back with an unknown outcome (at its TTL, or once its resends after
//! an unanswered request are used): its requests timed out, so the endpoint
//! may have stored it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use shardlake_producer::{Error, Producer, ProducerConfig, Record};

/// Accepts connections on 127.0.0.1 and holds them without a byte of answer.
async fn stalled_endpoint() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = vec![];
        // Bounded: the test makes a few dozen connections at most.
        for _ in 0..1000 {
            let Ok((socket, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("http://{addr}"), accepted, server)
}

#[tokio::test]
async fn a_stalled_endpoint_holds_memory_to_the_budget_and_send_waits() {
    let (endpoint, accepted, server) = stalled_endpoint().await;
    let client = aws_sdk_firehose::Client::from_conf(
        aws_sdk_firehose::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(endpoint)
            .retry_config(aws_sdk_firehose::config::retry::RetryConfig::disabled())
            .build(),
    );
    let mut config = ProducerConfig::firehose("stalled");
    config.max_buffered_records = 40;
    config.max_buffered_bytes = 1 << 20;
    config.request_timeout_ms = 300;
    config.record_ttl_ms = 2_000;
    config.linger_ms = 10;
    let producer = Producer::builder(config).firehose_client(client).build().await.unwrap();

    let mut held = vec![];
    for i in 0..40 {
        held.push(producer.try_send(Record::new("", format!("{{\"n\":{i}}}\n"))).unwrap());
    }
    let refused = producer.try_send(Record::new("", "one more")).unwrap_err();
    assert!(matches!(refused.reason, Error::BufferFull { .. }), "{}", refused.reason);

    let waiting = tokio::time::timeout(Duration::from_millis(800), producer.send(Record::new("", "waits"))).await;
    assert!(waiting.is_err(), "send waits for room while the endpoint is stalled");
    let (bytes, records) = producer.buffered();
    assert!(records <= 40 && bytes <= 1 << 20, "{records} records, {bytes} bytes buffered");
    assert!(accepted.load(Ordering::SeqCst) > 0, "the producer did try the endpoint");

    for h in held {
        let err = tokio::time::timeout(Duration::from_secs(10), h).await.expect("resolved at the TTL").unwrap_err();
        match &err.reason {
            Error::UnknownOutcome { last_error, attempts, given_up, .. } => {
                assert!(last_error.starts_with("Timeout"), "{last_error}");
                let bound = "retry.max_resends_after_unknown = 2 resends after an unanswered request were used";
                assert!(given_up == "record_ttl_ms = 2000 ran out" || given_up == bound, "{given_up}");
                assert!((1..=3).contains(attempts), "{attempts}");
            }
            other => panic!("expected an unknown outcome, got {other}"),
        }
        assert!(err.record.data.starts_with(b"{\"n\":"));
    }
    assert_eq!(producer.buffered(), (0, 0));
    let m = producer.metrics();
    assert!(m.records_expired.get() <= 40);
    assert_eq!(m.records_failed.with_label_values(&["unknown_outcome"]).get(), 40);
    assert_eq!(m.records_failed.with_label_values(&["buffer_full"]).get(), 0, "a refusal is no failure");
    assert_eq!(m.buffer_full.get(), 1);
    assert!(m.requests.with_label_values(&["timeout"]).get() >= 1);
    server.abort();
}

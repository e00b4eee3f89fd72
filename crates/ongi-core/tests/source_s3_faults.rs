//! S3 faults: timeouts, bounded retries and refused connections, against
//! tiny misbehaving HTTP servers on loopback (no moto needed).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ongi_core::source::{ImageSource, SourceError, SourceLimits};

fn options(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
    ]
}

/// Reads one request head (up to the blank line); GETs carry no body.
fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A server that answers every request with `response`, counting requests.
fn serve_forever(response: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                while read_head(&mut stream) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections and reads requests but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            read_head(&mut stream);
            held.push(stream);
        }
    });
    let limits = SourceLimits {
        timeout: Duration::from_millis(500),
        ..SourceLimits::default()
    };
    let src = ImageSource::from_spec_with_options("s3://bucket", limits, &options(port)).unwrap();
    let started = Instant::now();
    assert_eq!(src.fetch("a.jpg").await, Err(SourceError::Timeout));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let (port, count) = serve_forever(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    );
    for retries in [0u32, 2] {
        count.store(0, Ordering::SeqCst);
        let limits = SourceLimits {
            retries,
            ..SourceLimits::default()
        };
        let src =
            ImageSource::from_spec_with_options("s3://bucket", limits, &options(port)).unwrap();
        let result = src.fetch("a.jpg").await;
        assert!(matches!(result, Err(SourceError::Backend(_))), "{result:?}");
        assert_eq!(count.load(Ordering::SeqCst), 1 + retries as usize);
    }
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let (port, count) = serve_forever(
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    );
    let src =
        ImageSource::from_spec_with_options("s3://bucket", SourceLimits::default(), &options(port))
            .unwrap();
    assert_eq!(
        src.fetch("a.jpg").await,
        Err(SourceError::NotFound("a.jpg".into()))
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_backend_error() {
    // Bind then drop: nothing listens on the port afterwards.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src =
        ImageSource::from_spec_with_options("s3://bucket", SourceLimits::default(), &options(port))
            .unwrap();
    let started = Instant::now();
    let result = src.fetch("a.jpg").await;
    assert!(matches!(result, Err(SourceError::Backend(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_announced_size_over_the_limit_is_refused_unread() {
    // The server announces 4096 bytes and then sends none: the refusal must
    // come from the announced size alone, without waiting for the body.
    let (port, _) =
        serve_forever("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n");
    let limits = SourceLimits {
        max_bytes: 100,
        ..SourceLimits::default()
    };
    let src = ImageSource::from_spec_with_options("s3://bucket", limits, &options(port)).unwrap();
    assert_eq!(
        src.fetch("a.jpg").await,
        Err(SourceError::TooLarge {
            size: 4096,
            limit: 100
        })
    );
}

//! S3 image source against a real S3-protocol server (moto, see `support/s3.rs`).
//!
//! Requires `moto_server` (`python3 -m pip install 'moto[server]'`); without it
//! these tests fail, saying so.

use ongi_test_support::s3;

use ongi_core::source::{ImageSource, SourceError, SourceLimits};
use s3::MotoServer;

fn limits() -> SourceLimits {
    SourceLimits {
        max_bytes: 1024,
        ..SourceLimits::default()
    }
}

#[tokio::test]
async fn reads_objects_under_a_prefix() {
    let server = MotoServer::start();
    server.create_bucket("photos");
    server.put_object("photos", "albums/a.jpg", b"photo a");
    server.put_object("photos", "albums/trip/day 1/ü.png", b"photo b");
    server.put_object("photos", "albums/big.bin", &[9u8; 2048]);
    server.put_object("photos", "albums/exact.bin", &[1u8; 1024]);
    server.put_object("photos", "outside.jpg", b"not under the prefix");

    let src =
        ImageSource::from_spec_with_options("s3://photos/albums", limits(), &server.options())
            .unwrap();
    assert_eq!(
        src.describe(),
        format!("s3://photos/albums at {}/", server.endpoint())
    );

    assert_eq!(&src.fetch("a.jpg").await.unwrap()[..], b"photo a");
    assert_eq!(
        &src.fetch("trip/day 1/ü.png").await.unwrap()[..],
        b"photo b"
    );
    assert_eq!(src.fetch("exact.bin").await.unwrap().len(), 1024);
    assert_eq!(
        src.fetch("missing.jpg").await,
        Err(SourceError::NotFound("missing.jpg".into()))
    );
    // The prefix confines keys: the object next to it is not reachable.
    assert_eq!(
        src.fetch("outside.jpg").await,
        Err(SourceError::NotFound("outside.jpg".into()))
    );
    assert!(matches!(
        src.fetch("../outside.jpg").await,
        Err(SourceError::InvalidKey(_))
    ));
    assert_eq!(
        src.fetch("big.bin").await,
        Err(SourceError::TooLarge {
            size: 2048,
            limit: 1024
        })
    );
}

#[tokio::test]
async fn reads_a_whole_bucket_and_reports_a_missing_one() {
    let server = MotoServer::start();
    server.create_bucket("flat");
    server.put_object("flat", "x/y.jpg", b"xy");

    let src =
        ImageSource::from_spec_with_options("s3://flat", limits(), &server.options()).unwrap();
    assert_eq!(&src.fetch("x/y.jpg").await.unwrap()[..], b"xy");

    let absent =
        ImageSource::from_spec_with_options("s3://no-such-bucket", limits(), &server.options())
            .unwrap();
    // S3 answers 404 NoSuchBucket, so each image is simply not found.
    assert_eq!(
        absent.fetch("x/y.jpg").await,
        Err(SourceError::NotFound("x/y.jpg".into()))
    );
}

#[test]
fn unknown_options_are_rejected() {
    let result = ImageSource::from_spec_with_options(
        "s3://photos",
        limits(),
        &[("aws_no_such_setting", "1")],
    );
    assert!(
        matches!(result, Err(SourceError::InvalidSpec(_))),
        "{result:?}"
    );
}

#[test]
fn debug_output_hides_credentials() {
    let src = ImageSource::from_spec_with_options(
        "s3://photos",
        limits(),
        &[
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("aws_secret_access_key", "very-secret-value"),
            ("aws_endpoint", "http://user:endpoint-password@127.0.0.1:9"),
        ],
    )
    .unwrap();
    let shown = format!("{src:?} {}", src.describe());
    assert!(!shown.contains("very-secret-value"), "{shown}");
    assert!(!shown.contains("endpoint-password"), "{shown}");
}

//! `ImageSource::from_spec` reads the standard AWS environment.
//!
//! The only test in this binary, because it sets process environment
//! variables, which every test thread of a binary shares.

use ongi_test_support::s3;

use ongi_core::source::{ImageSource, SourceLimits};

#[tokio::test]
async fn from_spec_uses_the_aws_environment() {
    let server = s3::MotoServer::start();
    server.create_bucket("env-bucket");
    server.put_object("env-bucket", "p/q.jpg", b"from env");

    for (key, value) in server.env() {
        std::env::set_var(key, value);
    }
    let src = ImageSource::from_spec("s3://env-bucket/p", SourceLimits::default()).unwrap();
    assert_eq!(&src.fetch("q.jpg").await.unwrap()[..], b"from env");
}

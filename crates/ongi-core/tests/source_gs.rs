//! GCS image source: spec handling only. There is no GCS-protocol server on
//! this machine, so fetching from `gs://` is not exercised here; the fetch
//! path is the same object_store code the S3 tests cover.

use ongi_core::source::{ImageSource, SourceError, SourceLimits};

#[test]
fn gs_specs_build_and_describe_themselves() {
    for (spec, description) in [
        ("gs://photos", "gs://photos"),
        ("gs://photos/", "gs://photos"),
        ("gs://photos/albums/2024/", "gs://photos/albums/2024"),
    ] {
        let src = ImageSource::from_spec(spec, SourceLimits::default()).unwrap();
        assert_eq!(src.describe(), description);
    }
}

#[test]
fn bad_gs_specs_are_rejected() {
    for spec in ["gs://", "gs://bad bucket", "gs://b/../x", "gs://b/a//c"] {
        let result = ImageSource::from_spec(spec, SourceLimits::default());
        assert!(
            matches!(result, Err(SourceError::InvalidSpec(_))),
            "{spec}: {result:?}"
        );
    }
    let unknown = ImageSource::from_spec_with_options(
        "gs://photos",
        SourceLimits::default(),
        &[("google_nonsense", "1")],
    );
    assert!(matches!(unknown, Err(SourceError::InvalidSpec(_))));
}

#[tokio::test]
async fn hostile_keys_fail_before_any_request() {
    let src = ImageSource::from_spec("gs://photos/albums", SourceLimits::default()).unwrap();
    for key in ["../x", "/abs", "a\0b", ""] {
        assert!(matches!(
            src.fetch(key).await,
            Err(SourceError::InvalidKey(_))
        ));
    }
}

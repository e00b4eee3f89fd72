//! Image sources.

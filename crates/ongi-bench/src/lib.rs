//! ongi's measuring tools, outside the server binary: `ongi-bench` times the
//! image tower or decode + preprocess, `ongi-loadtest` drives a local
//! `ongi serve` with virtual users. Both binaries are one call each into here.

pub mod loadtest;
mod pipeline;
mod proc_stats;
pub mod tower;

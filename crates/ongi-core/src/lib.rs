//! ongi core: everything between HTTP and the tensors.

pub mod features;
pub mod preprocess;
pub mod source;
pub mod store;
pub mod tokenize;

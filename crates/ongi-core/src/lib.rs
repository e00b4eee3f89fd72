//! ongi core: everything between HTTP and the tensors.

pub mod preprocess;
pub mod tokenize;

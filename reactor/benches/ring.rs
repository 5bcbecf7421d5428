//! Ring benchmark (placeholder).
fn main() {}

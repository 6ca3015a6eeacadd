//! Examples of sealmq clients; each lives in `examples/` and runs with
//! `cargo run -p client-examples --example NAME`.

//! The public gRPC API (`ringway.v1`): the `Push` service backends call,
//! and the applications that call backends (the `Upstream` hooks, JWT).
pub mod jwt;
mod page;
pub mod upstream;

pub mod push;

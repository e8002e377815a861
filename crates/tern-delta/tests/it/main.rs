//! Integration tests of tern-delta: the encoder and decoder driven together as `tern delta` and the edge
//! will drive them, and `dcz` against the reference `zstd` program.

mod flow;
mod interop;

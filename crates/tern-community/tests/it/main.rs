//! tern-community's integration tests, one binary: the deterministic simulation of a community of seven
//! peers and a registry.

mod simulation;

//! Planning end to end: staging and shadow trees on disk, the signed assignment, and nodes applying it
//! through the real content interpreter.

mod discovery;
mod distribution;
mod faithful;
mod jobs;
mod planning;
mod rotation;
mod scheduling;
mod tls;

//! Planning end to end: staging and shadow trees on disk, the signed assignment, and nodes applying it
//! through the real content interpreter.

mod accounting;
mod bounds;
mod discovery;
mod distribution;
mod faithful;
mod jobs;
mod planning;
mod recovery;
mod registration;
mod removal;
mod rollbacks;
mod rotation;
mod scheduling;
mod tls;

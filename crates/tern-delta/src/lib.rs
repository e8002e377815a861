//! Differential caching for tern: dynamic and personalised pages served from the edge as a base plus a
//! delta. Implements seed 000 (`shared/seeds/000_d8b28882ff59355a.txt`, "content delivery network using
//! differential caching": mirrors cannot hold non-static or personalised content, so the edge keeps a
//! template and only the difference crosses the long path) as DESIGN.md "Differential caching" and issue 12
//! describe it. No sockets and no async here: the `tern delta` role and the edge drive these types.
//!
//! The pieces, in the seed's words where it has them:
//!
//! - [`class`]: page classes (URL path patterns) and their policy; pages of a class share a base.
//! - [`base`]: the base (the seed's template) of a class, named by its SHA-256 ([`BaseId`]), and the
//!   [`BaseStore`] that keeps current and still-named old bases under an explicit retention rule.
//! - [`candidate`]: which responses may feed a base: never one to a request with `Cookie` or
//!   `Authorization`, never a `private` (unless the class says so), `no-store` or cookie-setting one.
//! - [`mod@derive`]: making a base from recent clean responses (the choice is measured there), and
//!   [`drift`]: re-deriving it when the recent deltas grow past a ratio of the page.
//! - [`dcz`]: the `dcz` content coding of RFC 9842 (zstd with the base as raw-content dictionary), bounded.
//! - [`encoder`]: per class, the origin side: a delta against the base the edge names, or the reason to
//!   send the page whole; [`decoder`]: the edge side: the page, only when it matches its digest.
//! - [`fields`]: `Available-Dictionary`, `Dictionary-ID`, `Use-As-Dictionary` (RFC 9842) and `Repr-Digest`
//!   (RFC 9530).
//! - [`holder`]: the edge side's bookkeeping: classes learned from the bases it fetched, the base it names
//!   upstream for a path, decoding against the bases it holds.
//! - [`metrics`]: the counters `/metrics` exports on both sides.
//! - [`safety`]: which responses go to browsers as deltas, and why that is safe against BREACH.
//! - `role` (feature `role`): the `tern delta` server, the driver around all of the above.
//!
//! # Browsers and BREACH
//!
//! A browser gets a `dcz` delta only for a credential-free request (no `Cookie`, no `Authorization`) whose
//! response is shareable (no `Set-Cookie`, not `private` or `no-store`, no `Vary` on credentials), not
//! cross-site unless readable by the requester (RFC 9842 section 9.3.3), and whose class allows it
//! ([`safety::browser_delta`]). Such a response holds nothing any anonymous client could not fetch, and the
//! base holds only such responses ([`candidate::check`]) and is itself public; so a compressed size an
//! attacker observes, even with input of theirs reflected in the page, is a function of public content and
//! their own input, never of a victim's secret. Personalised pages travel as deltas only between `tern
//! delta` and the edge, which rebuilds them and serves them whole. The full argument is in [`safety`].
//!
//! # Flow
//!
//! Origin side, per request of a class: [`Encoder::offer`] the exchange (kept only if clean),
//! [`Encoder::encode`] the page against the base named in `Available-Dictionary`, send
//! [`Encoded::Delta`] as `Content-Encoding: dcz` with the page digest, or the page; then
//! [`Encoder::rederive`], and announce the class's current base to the edges (`Link`,
//! [`fields::compression_dictionary_link`]). Edge side ([`Holder`]): learn the announced bases and their
//! classes, name the class's current base upstream ([`Holder::name_for`]), [`Holder::decode`] the delta,
//! serve the page only if it decoded and matched, else fetch it whole.

#![forbid(unsafe_code)]

pub mod base;
pub mod candidate;
pub mod class;
pub mod dcz;
pub mod decoder;
pub mod derive;
pub mod drift;
pub mod encoder;
pub mod fields;
#[cfg(any(test, feature = "testsuite"))]
pub mod floor;
pub mod holder;
pub mod metrics;
#[cfg(feature = "role")]
pub mod role;
pub mod safety;
#[cfg(any(test, feature = "testsuite"))]
pub mod synthetic;

pub use base::{Base, BaseError, BaseId, BaseStore, StoreConfig, StoreError};
pub use candidate::{Exchange, NotCandidate};
pub use class::{Class, ClassError, ClassPolicy, Classes, Pattern, RederiveRule};
pub use dcz::{DczDecoder, DczEncoder, DczError, Limits, PreparedBase};
pub use decoder::{DecodeError, Decoder};
pub use derive::{Derivation, Samples};
pub use drift::{Decision, RatioWindow, Why};
pub use encoder::{BaseChange, Encoded, Encoder, EncoderConfig, RederiveError};
pub use fields::{FieldError, ReprDigest, UseAsDictionary};
pub use holder::{HeldClass, Holder, HolderConfig, LearnError};
pub use metrics::{DecodeFailure, DecoderCounters, EncoderCounters, Fallback};
pub use safety::{NoBrowserDelta, browser_delta, shareable_page};

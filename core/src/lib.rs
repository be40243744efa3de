//! # changefeed-core
//!
//! The sans-IO protocol core of changefeed. Nothing here performs IO, spawns tasks or reads a
//! clock: time, database rows and live events enter as inputs (`handle_*`), frames to send and
//! rows to fetch leave as outputs (`poll_*`). It implements the wire contract of `PROTOCOL.md`
//! at the repository root. Every protocol invariant is stated and tested here:
//!
//! - **Exactly once, in order.** A subscription emits every event its filter matches after its
//!   starting cursor, once each, with strictly increasing seqs ([`subscription`]).
//! - **Never silent.** A cursor that cannot be honoured exactly (pruned, ahead of head, of another
//!   epoch, malformed) yields one `changefeed.reset` frame carrying the new cursor.
//! - **Bounded.** Live events held during replay, replay windows, parser lines and event sizes
//!   are all bounded; overflow and lag fall back to replaying the gap from the store.
//! - **Total encoding.** Every row becomes one well-formed frame; columns that cannot appear as
//!   the contract says get documented degraded forms ([`event`], [`timestamp`]).
//! - **Browser-exact SSE.** The [`sse`] parser follows WHATWG HTML §9.2 and the encoder produces
//!   frames it (and browsers) parse back exactly.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod event;
pub mod filter;
pub mod ids;
mod json;
#[cfg(feature = "model")]
#[doc(hidden)]
pub mod model;
pub mod position;
pub mod reconnect;
pub mod request;
pub mod sse;
pub mod subscription;
pub mod timestamp;
pub mod wire;

pub use event::{Degraded, Event, EventEncoder, EventRow, PayloadCheck};
pub use filter::{Filter, Grant, TypePattern};
pub use ids::{IdKey, Ids};
pub use position::{Cursor, CursorError, Epoch, Seq};
pub use request::{EventsQuery, RequestError, Start, MAX_LAST};
pub use subscription::{
    Access, FetchRequest, LocateRequest, Located, LogPosition, Output, Phase, ReplayPage,
    Subscription, SubscriptionConfig, SubscriptionStats, TimeoutReason,
};
pub use wire::{
    ApiError, ErrorCode, Ready, Reset, ResetNotice, ResetReason, WireError, READY_EVENT,
    RESET_EVENT,
};

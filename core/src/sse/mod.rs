//! Server-Sent Events on the wire: the frame [`FrameBuilder`] and the incremental [`Parser`].

mod encoder;
mod parser;

pub use encoder::FrameBuilder;
pub use parser::*;

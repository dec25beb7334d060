//! The CLI's renderings: text for people, JSON for scripts, live progress bars.

pub mod json;
pub mod text;
pub mod watch;

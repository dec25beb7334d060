//! The CLI's JSON renderings (`--json`); text renderings and progress bars live in the library.

pub mod json;

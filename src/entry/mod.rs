//! The entry: what the `affinity` command adds to the library. `main.rs`
//! parses the command line and calls into [`crate::listener`] and
//! [`crate::config`]; this folder holds what it needs beside them.
//!
//! * [`demo`]: the built-in backends of `affinity --demo`;
//! * [`logging`]: log lines on stderr, as text or JSON.

pub mod demo;
pub mod logging;

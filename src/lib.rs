//! The roles of the `cairn` binary as a library: the binary (`src/main.rs`) is its command
//! line, and the fuzz targets reach the config parser and the whole in-process node through it.

pub mod chunkserver;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gateway;
pub mod lock;
pub mod master;
pub mod output;
pub mod serve;
pub mod signal;
pub mod watchdog;

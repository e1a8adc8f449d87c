//! End-to-end tests, compiled as one binary.

mod probes;

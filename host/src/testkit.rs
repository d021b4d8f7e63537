//! Helpers for tests and the demo.

//! Lab tests. The namespace test needs root (CI runs as root); elsewhere it says so and skips.

mod lab;

//! Placeholder so the root package builds.

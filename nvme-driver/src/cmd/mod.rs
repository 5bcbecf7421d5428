//! Command builders: each returns the [`crate::spec::Sqe`] of one command with
//! its dwords encoded; data pointers and command ids are filled in at
//! submission.

pub mod admin;
pub mod io;

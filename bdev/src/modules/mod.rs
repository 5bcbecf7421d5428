//! Bdev modules, one folder each (`modules/<name>/{mod.rs,rpc.rs}`).

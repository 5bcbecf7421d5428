//! Bdev modules, one folder each (`modules/<name>/mod.rs`).

pub mod crypto;
pub mod delay;
pub mod error;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod passthru;

/// Parses a UUID given by a user (36 characters, hex and dashes).
pub(crate) fn check_uuid(u: &str) -> Result<String, crate::BdevError> {
    let ok = u.len() == 36
        && u.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(u.to_ascii_lowercase())
    } else {
        Err(crate::BdevError::invalid(
            "uuid",
            format!("{u:?} is not a UUID"),
        ))
    }
}

//! NVMe Qualified Names as SPDK checks them (`nvmf_nqn_is_valid`): the
//! discovery NQN, `nqn.2014-08.org.nvmexpress:uuid:<UUID>`, or
//! `nqn.YYYY-MM.<reverse domain>:<anything>` of 11 to 223 bytes.

/// The well-known discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// The longest NQN (bytes).
pub const MAX_NQN: usize = 223;

/// Why `nqn` is not a valid NQN, or None when it is.
pub fn invalid_reason(nqn: &str) -> Option<String> {
    let len = nqn.len();
    if !(11..=MAX_NQN).contains(&len) {
        return Some(format!("length {len} (must be 11 to {MAX_NQN})"));
    }
    if nqn == DISCOVERY_NQN {
        return None;
    }
    if let Some(u) = nqn.strip_prefix("nqn.2014-08.org.nvmexpress:uuid:") {
        return if is_uuid(u) {
            None
        } else {
            Some(format!("'{u}' is not a UUID"))
        };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Some("does not start with 'nqn.'".into());
    };
    let b = rest.as_bytes();
    if b.len() < 8
        || !b[..4].iter().all(u8::is_ascii_digit)
        || b[4] != b'-'
        || !b[5..7].iter().all(u8::is_ascii_digit)
        || b[7] != b'.'
    {
        return Some("no 'yyyy-mm.' date after 'nqn.'".into());
    }
    let after = &rest[8..];
    let Some((domain, user)) = after.split_once(':') else {
        return Some("no ':' after the reverse domain name".into());
    };
    if user.is_empty() {
        return Some("nothing after the reverse domain name's ':'".into());
    }
    for label in domain.split('.') {
        let lb = label.as_bytes();
        if lb.is_empty()
            || lb.len() > 63
            || !lb[0].is_ascii_alphabetic()
            || lb[lb.len() - 1] == b'-'
            || !lb.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return Some(format!("domain label '{label}' is not valid"));
        }
    }
    None
}

/// Whether `s` is a UUID in 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    parse_uuid(s).is_some()
}

/// The 16 bytes of UUID `s` (8-4-4-4-12 hex, any case).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    let v = parse_hex(&hex, 16)?;
    let mut out = [0u8; 16];
    out.copy_from_slice(&v);
    Some(out)
}

/// Exactly `n` bytes written as 2n hex digits (any case).
pub fn parse_hex(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != 2 * n || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..n)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// UUID bytes as lower-case 8-4-4-4-12 (the bdev layer's).
pub use bdev::format_uuid;

/// Bytes as upper-case hex (SPDK's nguid and eui64 output).
pub fn upper_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqns() {
        for ok in [
            DISCOVERY_NQN,
            "nqn.2016-06.io.spdk:cnode1",
            "nqn.2023-01.io.longhorn.spdk:vol-e-0",
            "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
        ] {
            assert_eq!(invalid_reason(ok), None, "{ok}");
        }
        for bad in [
            "nqn.2016-06.io.spdk",
            "nqn.16-06.io.spdk:x",
            "nqn.2016-06.1io.spdk:x",
            "nqn.2016-06.io-.spdk:x",
            "nqn.2016-06.io.spdk:",
            "iqn.2016-06.io.spdk:x",
            "nqn.2014-08.org.nvmexpress:uuid:nope",
        ] {
            assert!(invalid_reason(bad).is_some(), "{bad}");
        }
        let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(204));
        assert_eq!(long.len(), 224);
        assert!(invalid_reason(&long).is_some());
    }

    #[test]
    fn uuids_and_hex() {
        let u = parse_uuid("8E1B2C3D-4e5f-4071-8293-a4b5c6d7e8f9").unwrap();
        assert_eq!(format_uuid(&u), "8e1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9");
        assert_eq!(upper_hex(&u), "8E1B2C3D4E5F40718293A4B5C6D7E8F9");
        assert!(parse_hex("0g", 1).is_none());
    }
}

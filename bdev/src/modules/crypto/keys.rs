//! Named crypto keys, as SPDK's accel layer keeps them
//! (`accel_crypto_key_create`, `accel_crypto_keys_get`,
//! `accel_crypto_key_destroy`): cipher AES_XTS, `key` and `key2` in hex,
//! a tweak mode, a name.
//!
//! Key bytes live in zeroizing buffers and the expanded AES round keys are
//! zeroized when dropped (the `aes` crate's `zeroize` feature). No `Debug`,
//! log line or error message shows key material; only `keys_get` (the RPC's
//! answer, as in SPDK) returns the hex keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use zeroize::Zeroizing;

use super::xts::XtsCipher;
use crate::BdevError;

/// The one cipher crypto bdevs run: AES in XTS mode.
pub const CIPHER_AES_XTS: &str = "AES_XTS";

/// How the 128-bit tweak of a data unit is made from the block address
/// (SPDK's `spdk_accel_crypto_tweak_mode`). The tweak value `T[127:0]` is
/// given to AES as its 16 little-endian bytes (`T[7:0]` first), the
/// IEEE 1619 convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TweakMode {
    /// `T = {64'b0, LBA}`; the data unit is one logical block. The same as
    /// dm-crypt's `plain64` IV (with `--sector-size` = block size and
    /// `--iv-large-sectors`).
    #[default]
    SimpleLba,
    /// `T = {1'b0, ~LBA[62:0], LBA[63:0]}`; the data unit is one block.
    JoinNegLbaWithLba,
    /// Data units of 512 bytes numbered from `LBA * block_size / 512`;
    /// `T = {n[127:0]}`.
    Incr512FullLba,
    /// Data units of 512 bytes numbered from `LBA * block_size / 512`;
    /// `T = {n[63:0], 64'b0}`.
    Incr512UpperLba,
}

impl TweakMode {
    /// SPDK's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            TweakMode::SimpleLba => "SIMPLE_LBA",
            TweakMode::JoinNegLbaWithLba => "JOIN_NEG_LBA_WITH_LBA",
            TweakMode::Incr512FullLba => "INCR_512_FULL_LBA",
            TweakMode::Incr512UpperLba => "INCR_512_UPPER_LBA",
        }
    }

    /// Bytes per data unit for a bdev of `block_size`-byte blocks.
    pub fn unit_len(self, block_size: usize) -> usize {
        match self {
            TweakMode::SimpleLba | TweakMode::JoinNegLbaWithLba => block_size,
            TweakMode::Incr512FullLba | TweakMode::Incr512UpperLba => 512,
        }
    }

    /// The tweak value of data unit `u` of an I/O whose first block is
    /// `lba`, with `per_block` data units in each block.
    #[inline]
    pub fn tweak(self, lba: u64, per_block: u64, u: u64) -> u128 {
        match self {
            TweakMode::SimpleLba => lba.wrapping_add(u) as u128,
            TweakMode::JoinNegLbaWithLba => {
                let l = lba.wrapping_add(u);
                (((!l) & (u64::MAX >> 1)) as u128) << 64 | l as u128
            }
            TweakMode::Incr512FullLba => lba as u128 * per_block as u128 + u as u128,
            TweakMode::Incr512UpperLba => {
                ((lba.wrapping_mul(per_block).wrapping_add(u)) as u128) << 64
            }
        }
    }
}

impl std::str::FromStr for TweakMode {
    type Err = BdevError;
    fn from_str(s: &str) -> Result<Self, BdevError> {
        Ok(match s {
            "SIMPLE_LBA" => TweakMode::SimpleLba,
            "JOIN_NEG_LBA_WITH_LBA" => TweakMode::JoinNegLbaWithLba,
            "INCR_512_FULL_LBA" => TweakMode::Incr512FullLba,
            "INCR_512_UPPER_LBA" => TweakMode::Incr512UpperLba,
            other => {
                return Err(BdevError::invalid(
                    "tweak_mode",
                    format!(
                        "{other:?}: SIMPLE_LBA, JOIN_NEG_LBA_WITH_LBA, INCR_512_FULL_LBA or \
                         INCR_512_UPPER_LBA"
                    ),
                ));
            }
        })
    }
}

/// A named key: its bytes (zeroized on drop), its expanded ciphers, its
/// tweak mode and the crypto bdevs that use it.
pub struct Key {
    name: String,
    key: Zeroizing<Vec<u8>>,
    key2: Zeroizing<Vec<u8>>,
    tweak_mode: TweakMode,
    xts: XtsCipher,
    users: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("cipher", &CIPHER_AES_XTS)
            .field("bits", &self.xts.key_bits())
            .field("tweak_mode", &self.tweak_mode.name())
            .field("key", &"<redacted>")
            .field("key2", &"<redacted>")
            .finish()
    }
}

impl Key {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tweak mode.
    pub fn tweak_mode(&self) -> TweakMode {
        self.tweak_mode
    }

    /// The expanded cipher pair.
    pub fn xts(&self) -> &XtsCipher {
        &self.xts
    }

    fn users(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "cipher": CIPHER_AES_XTS,
            "key": hex(&self.key),
            "key2": hex(&self.key2),
            "tweak_mode": self.tweak_mode.name(),
        })
    }
}

static KEYS: Mutex<BTreeMap<String, Arc<Key>>> = Mutex::new(BTreeMap::new());

fn keys() -> MutexGuard<'static, BTreeMap<String, Arc<Key>>> {
    KEYS.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    b.iter()
        .flat_map(|x| [D[(x >> 4) as usize] as char, D[(x & 15) as usize] as char])
        .collect()
}

/// Decodes a hex key without ever echoing it: errors name the parameter and
/// say what is wrong (length, or the position of a bad digit).
fn unhex(what: &str, s: &str) -> Result<Zeroizing<Vec<u8>>, BdevError> {
    let s = s.as_bytes();
    if !matches!(s.len(), 32 | 64) {
        return Err(BdevError::invalid(
            what,
            format!(
                "{} hex digits; AES_XTS takes 32 or 64 (16 or 32 bytes)",
                s.len()
            ),
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |at: usize| {
            let c = s[at];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(BdevError::invalid(
                    what,
                    format!("not hexadecimal (digit {} of {})", at + 1, s.len()),
                )),
            }
        };
        debug_assert_eq!(pair.len(), 2);
        out.push(digit(2 * i)? << 4 | digit(2 * i + 1)?);
    }
    Ok(out)
}

/// Creates key `name` (SPDK's `accel_crypto_key_create`): `cipher` must be
/// `AES_XTS`; `key` and `key2` are 32 or 64 hex digits each (XTS-AES-128 or
/// XTS-AES-256), the same length, and different from each other;
/// `tweak_mode` defaults to `SIMPLE_LBA`.
///
/// # Errors
/// [`BdevError::Invalid`] naming the faulty parameter (`name`, `cipher`,
/// `key`, `key2`, `tweak_mode`); the message never contains key material.
pub fn key_create(
    name: &str,
    cipher: &str,
    key_hex: &str,
    key2_hex: &str,
    tweak_mode: Option<&str>,
) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::invalid("name", "empty"));
    }
    if cipher != CIPHER_AES_XTS {
        return Err(BdevError::invalid(
            "cipher",
            format!("{cipher:?} is not supported; the crypto bdev runs {CIPHER_AES_XTS}"),
        ));
    }
    let tweak_mode = match tweak_mode {
        Some(m) => m.parse()?,
        None => TweakMode::default(),
    };
    let key = unhex("key", key_hex)?;
    if key2_hex.is_empty() {
        return Err(BdevError::invalid("key2", "required for AES_XTS"));
    }
    let key2 = unhex("key2", key2_hex)?;
    if key2.len() != key.len() {
        return Err(BdevError::invalid(
            "key2",
            format!(
                "{} bytes while key has {}; both must be the same length",
                key2.len(),
                key.len()
            ),
        ));
    }
    if *key == *key2 {
        return Err(BdevError::invalid(
            "key2",
            "equal to key; XTS needs two different keys (IEEE 1619, SP 800-38E)",
        ));
    }
    let xts = XtsCipher::new(&key, &key2)?;
    let engine = xts.engine();
    let mut all = keys();
    if all.contains_key(name) {
        return Err(BdevError::invalid(
            "name",
            format!("a crypto key named {name} already exists"),
        ));
    }
    all.insert(
        name.to_owned(),
        Arc::new(Key {
            name: name.to_owned(),
            key,
            key2,
            tweak_mode,
            xts,
            users: Mutex::default(),
        }),
    );
    log::info!(
        "crypto key {name} created ({CIPHER_AES_XTS}, {} bits, {}, engine {})",
        8 * key_hex.len() / 2,
        tweak_mode.name(),
        engine
    );
    Ok(())
}

/// Destroys key `name` (SPDK's `accel_crypto_key_destroy`); its bytes are
/// zeroized once nothing holds it.
///
/// # Errors
/// [`BdevError::Invalid`] (`key_name`) when there is no such key;
/// [`BdevError::Busy`] naming a crypto bdev that still uses it.
pub fn key_destroy(name: &str) -> Result<(), BdevError> {
    let mut all = keys();
    let key = all
        .get(name)
        .ok_or_else(|| BdevError::invalid("key_name", format!("no crypto key named {name}")))?;
    if let Some(user) = key.users().iter().next() {
        return Err(BdevError::Busy {
            bdev: user.clone(),
            reason: format!("it uses crypto key {name}; delete the bdev first"),
        });
    }
    all.remove(name);
    log::info!("crypto key {name} destroyed");
    Ok(())
}

/// The keys (or the one named), as SPDK's `accel_crypto_keys_get` shows
/// them: `name`, `cipher`, `key`, `key2` (hex), `tweak_mode`. Empty when
/// the named key does not exist.
pub fn keys_get(name: Option<&str>) -> Vec<serde_json::Value> {
    keys()
        .values()
        .filter(|k| name.is_none_or(|n| n == k.name))
        .map(|k| k.info())
        .collect()
}

/// The `accel_crypto_key_create` calls that re-create every key, for
/// `save_config` (they must come before the crypto bdevs).
pub fn keys_config_json() -> Vec<serde_json::Value> {
    keys()
        .values()
        .map(|k| json!({ "method": "accel_crypto_key_create", "params": k.info() }))
        .collect()
}

/// Takes key `name` for crypto bdev `user`.
pub(super) fn acquire(name: &str, user: &str) -> Result<Arc<Key>, BdevError> {
    let all = keys();
    let key = all
        .get(name)
        .ok_or_else(|| BdevError::invalid("key_name", format!("no crypto key named {name}")))?;
    key.users().insert(user.to_owned());
    Ok(key.clone())
}

/// Gives key `key` back from crypto bdev `user`.
pub(super) fn release(key: &Key, user: &str) {
    let _all = keys();
    key.users().remove(user);
}

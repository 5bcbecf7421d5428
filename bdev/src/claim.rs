//! Claims (SPDK's v2 claim types): what a module that stacks on a bdev
//! promises and demands about who else may write it.
//!
//! | type | claimant's descriptor | other writers | more claims |
//! |---|---|---|---|
//! | exclusive write (v1) | made writable | open ones stay, new ones refused | none |
//! | read-many-write-one | made writable, the only writer | none may be open | none |
//! | read-many-write-none | read-only | none may be open | more of this type |
//! | read-many-write-shared | made writable | none but claimants | same type, same key |
//!
//! While a bdev has any claim, opening it for writing is refused (claimants
//! of a shared claim open read-only and claim: the claim makes their
//! descriptor a writer, as in SPDK); claims go with the descriptor that
//! took them (closing it releases them).

use crate::error::BdevError;

/// The kinds of claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimType {
    /// One module writes; descriptors already open for writing keep
    /// writing (SPDK's v1 claim, `spdk_bdev_module_claim_bdev`).
    ExclusiveWrite,
    /// The claimant's descriptor is the only writer; any may read.
    ReadManyWriteOne,
    /// Nobody writes; any number of such claims.
    ReadManyWriteNone,
    /// Claimants sharing one key write; nobody else does.
    ReadManyWriteShared,
}

impl ClaimType {
    /// The name SPDK shows (`claim_type` in `bdev_get_bdevs`).
    pub fn name(self) -> &'static str {
        match self {
            ClaimType::ExclusiveWrite => "exclusive_write",
            ClaimType::ReadManyWriteOne => "read_many_write_one",
            ClaimType::ReadManyWriteNone => "read_many_write_none",
            ClaimType::ReadManyWriteShared => "read_many_write_shared",
        }
    }
}

/// The claims on one bdev.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    ty: Option<ClaimType>,
    key: u64,
    /// Each claimant: its descriptor, module, and the bdev it stands for
    /// (the vbdev built on this one), if it said.
    holders: Vec<Holder>,
}

#[derive(Debug)]
struct Holder {
    desc: u64,
    module: String,
    owner: Option<String>,
}

/// What `take` needs to know about the descriptors open on the bdev.
pub(crate) struct Opener {
    pub id: u64,
    pub write: bool,
}

impl Claims {
    pub fn ty(&self) -> Option<ClaimType> {
        self.ty
    }

    pub fn holders(&self) -> impl Iterator<Item = &str> {
        self.holders.iter().map(|h| h.module.as_str())
    }

    /// The bdevs built on this one (the claimants' owners).
    pub fn owners(&self) -> impl Iterator<Item = &str> {
        self.holders.iter().filter_map(|h| h.owner.as_deref())
    }

    fn refused(&self, bdev: &str, why: &str) -> BdevError {
        let holder = match (self.ty, self.holders.first()) {
            (Some(t), Some(h)) => format!("{} ({} claim){why}", h.module, t.name()),
            _ => why.trim_start_matches(": ").to_owned(),
        };
        BdevError::Claimed {
            bdev: bdev.to_owned(),
            holder,
        }
    }

    /// Takes a claim of type `ty` for `module` through descriptor `desc`
    /// (`write`: opened for writing), with the other descriptors open on the
    /// bdev in `open`.
    #[allow(clippy::too_many_arguments)]
    pub fn take(
        &mut self,
        bdev: &str,
        module: &str,
        owner: Option<&str>,
        ty: ClaimType,
        key: u64,
        desc: &Opener,
        open: &[Opener],
    ) -> Result<(), BdevError> {
        let other_writer = open.iter().any(|o| o.id != desc.id && o.write);
        if self.holders.iter().any(|h| h.desc == desc.id) {
            return Err(self.refused(bdev, ": this descriptor holds a claim already"));
        }
        match ty {
            ClaimType::ExclusiveWrite | ClaimType::ReadManyWriteOne => {
                if key != 0 {
                    return Err(BdevError::invalid(
                        "shared_claim_key",
                        format!("not taken by {} claims", ty.name()),
                    ));
                }
                if self.ty.is_some() {
                    return Err(self.refused(bdev, ""));
                }
                if ty == ClaimType::ReadManyWriteOne && other_writer {
                    return Err(self.refused(
                        bdev,
                        ": another descriptor is open for writing (read-many-write-one)",
                    ));
                }
            }
            ClaimType::ReadManyWriteNone => {
                if desc.write {
                    return Err(BdevError::invalid(
                        "descriptor",
                        format!("a read-many-write-none claim on {bdev} needs a read-only one"),
                    ));
                }
                if key != 0 {
                    return Err(BdevError::invalid(
                        "shared_claim_key",
                        "not taken by read_many_write_none claims",
                    ));
                }
                match self.ty {
                    None if other_writer => {
                        return Err(self.refused(
                            bdev,
                            ": a descriptor is open for writing (read-many-write-none)",
                        ));
                    }
                    None | Some(ClaimType::ReadManyWriteNone) => {}
                    Some(_) => return Err(self.refused(bdev, "")),
                }
            }
            ClaimType::ReadManyWriteShared => {
                if key == 0 {
                    return Err(BdevError::invalid(
                        "shared_claim_key",
                        "a read_many_write_shared claim needs a non-zero key",
                    ));
                }
                match self.ty {
                    None if other_writer => {
                        return Err(self.refused(
                            bdev,
                            ": another descriptor is open for writing (read-many-write-shared)",
                        ));
                    }
                    None => {}
                    Some(ClaimType::ReadManyWriteShared) if self.key == key => {}
                    Some(ClaimType::ReadManyWriteShared) => {
                        return Err(self.refused(bdev, ": with another shared key"));
                    }
                    Some(_) => return Err(self.refused(bdev, "")),
                }
            }
        }
        self.ty = Some(ty);
        self.key = key;
        self.holders.push(Holder {
            desc: desc.id,
            module: module.to_owned(),
            owner: owner.map(str::to_owned),
        });
        Ok(())
    }

    /// Whether a new descriptor may open the bdev for writing.
    pub fn check_open_write(&self, bdev: &str) -> Result<(), BdevError> {
        if self.ty.is_some() {
            return Err(self.refused(bdev, ""));
        }
        Ok(())
    }

    /// Releases the claims descriptor `id` holds.
    pub fn release(&mut self, id: u64) {
        self.holders.retain(|h| h.desc != id);
        if self.holders.is_empty() {
            self.ty = None;
            self.key = 0;
        }
    }
}

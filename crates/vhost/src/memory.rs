//! Guest memory as the front-end shares it: each region an fd (memfd, hugetlbfs) mapped
//! shared into netdevd with `vm-memory` (whose accessors check every access against the
//! regions: guest memory is never trusted, and a descriptor pointing outside it is an error,
//! not a fault). Vring addresses arrive as the front-end's own user addresses and are turned
//! into guest-physical ones through the region table.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::msg::Region;

/// Regions mapped at once (`GET_MAX_MEM_SLOTS`; QEMU asks for at most 509 with
/// `CONFIGURE_MEM_SLOTS`, and uses 8 without it).
pub const MAX_MEM_SLOTS: usize = 32;
/// The largest region accepted (1 TiB).
pub const MAX_REGION: u64 = 1 << 40;

/// Why memory could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("region of {0} bytes")]
    Size(u64),
    #[error("more than {MAX_MEM_SLOTS} regions")]
    TooMany,
    #[error("cannot map a region: {0}")]
    Map(String),
    #[error("regions overlap or cannot be combined: {0}")]
    Layout(String),
}

/// The guest's memory and where the front-end has each region.
#[derive(Debug)]
pub struct GuestMem {
    mem: GuestMemoryMmap,
    /// Each region with how many times it was added (`ADD_MEM_REG`): with several queue
    /// pairs QEMU runs one vhost device per pair over one connection, and each adds the same
    /// regions; a region goes when the last of them removes it.
    regions: Vec<(Region, Arc<GuestRegionMmap>, usize)>,
}

fn map(r: &Region, fd: OwnedFd) -> Result<Arc<GuestRegionMmap>, MemError> {
    if r.size == 0 || r.size > MAX_REGION {
        return Err(MemError::Size(r.size));
    }
    r.guest_phys_addr
        .checked_add(r.size)
        .ok_or(MemError::Size(r.size))?;
    r.user_addr
        .checked_add(r.size)
        .ok_or(MemError::Size(r.size))?;
    let file = File::from(fd);
    let m = MmapRegion::build(
        Some(FileOffset::new(file, r.mmap_offset)),
        r.size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|e| MemError::Map(e.to_string()))?;
    let g = GuestRegionMmap::new(m, GuestAddress(r.guest_phys_addr))
        .map_err(|e| MemError::Map(e.to_string()))?;
    Ok(Arc::new(g))
}

impl GuestMem {
    /// Map a whole table (`SET_MEM_TABLE`).
    pub fn new(table: Vec<(Region, OwnedFd)>) -> Result<GuestMem, MemError> {
        if table.len() > MAX_MEM_SLOTS {
            return Err(MemError::TooMany);
        }
        let mut regions = Vec::with_capacity(table.len());
        for (r, fd) in table {
            regions.push((r, map(&r, fd)?, 1));
        }
        Self::build(regions)
    }

    fn build(regions: Vec<(Region, Arc<GuestRegionMmap>, usize)>) -> Result<GuestMem, MemError> {
        let mem =
            GuestMemoryMmap::from_arc_regions(regions.iter().map(|(_, m, _)| m.clone()).collect())
                .map_err(|e| MemError::Layout(e.to_string()))?;
        Ok(GuestMem { mem, regions })
    }

    fn same(a: &Region, b: &Region) -> bool {
        a.guest_phys_addr == b.guest_phys_addr && a.size == b.size && a.user_addr == b.user_addr
    }

    /// No memory at all (before the first table, and after `REM_MEM_REG` of the last).
    pub fn empty() -> GuestMem {
        GuestMem {
            mem: GuestMemoryMmap::new(),
            regions: Vec::new(),
        }
    }

    /// One more region (`ADD_MEM_REG`).
    pub fn add(&self, r: Region, fd: OwnedFd) -> Result<GuestMem, MemError> {
        let mut regions = self.regions.clone();
        if let Some(e) = regions.iter_mut().find(|(x, _, _)| Self::same(x, &r)) {
            // The same region again (another queue pair's device): counted, not mapped twice.
            e.2 += 1;
            return Self::build(regions);
        }
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemError::TooMany);
        }
        regions.push((r, map(&r, fd)?, 1));
        Self::build(regions)
    }

    /// Without the region at `r`'s guest address and size (`REM_MEM_REG`).
    pub fn remove(&self, r: &Region) -> GuestMem {
        let regions: Vec<_> = self
            .regions
            .iter()
            .cloned()
            .filter_map(|(x, m, n)| {
                if x.guest_phys_addr == r.guest_phys_addr && x.size == r.size {
                    (n > 1).then_some((x, m, n - 1))
                } else {
                    Some((x, m, n))
                }
            })
            .collect();
        Self::build(regions).unwrap_or_else(|_| Self::empty())
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The guest-physical address of the front-end's user address `uva`.
    pub fn uva_to_gpa(&self, uva: u64) -> Option<u64> {
        self.regions.iter().find_map(|(r, _, _)| {
            let off = uva.checked_sub(r.user_addr)?;
            (off < r.size).then(|| r.guest_phys_addr + off)
        })
    }
}

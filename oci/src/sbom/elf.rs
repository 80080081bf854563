//! Just enough ELF to find a section's bytes by name and the file bytes behind a virtual
//! address (32/64-bit, either byte order), with every offset checked: a malformed file gives
//! `None`, never a panic.

fn u16_at(d: &[u8], off: usize, le: bool) -> Option<u64> {
    let b: [u8; 2] = d.get(off..off.checked_add(2)?)?.try_into().ok()?;
    Some(if le {
        u16::from_le_bytes(b)
    } else {
        u16::from_be_bytes(b)
    } as u64)
}

fn u32_at(d: &[u8], off: usize, le: bool) -> Option<u64> {
    let b: [u8; 4] = d.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    } as u64)
}

fn u64_at(d: &[u8], off: usize, le: bool) -> Option<u64> {
    let b: [u8; 8] = d.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(if le {
        u64::from_le_bytes(b)
    } else {
        u64::from_be_bytes(b)
    })
}

/// Whether an ELF file is 64-bit and little-endian; `None` if not ELF.
fn ident(d: &[u8]) -> Option<(bool, bool)> {
    if d.get(..4)? != b"\x7fELF" {
        return None;
    }
    Some((*d.get(4)? == 2, *d.get(5)? == 1))
}

/// The contents of section `name` of the ELF file `d`.
pub(super) fn section<'a>(d: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let (is64, le) = ident(d)?;
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (
            u64_at(d, 0x28, le)?,
            u16_at(d, 0x3A, le)?,
            u16_at(d, 0x3C, le)?,
            u16_at(d, 0x3E, le)?,
        )
    } else {
        (
            u32_at(d, 0x20, le)?,
            u16_at(d, 0x2E, le)?,
            u16_at(d, 0x30, le)?,
            u16_at(d, 0x32, le)?,
        )
    };
    let shoff = usize::try_from(shoff).ok()?;
    let shentsize = usize::try_from(shentsize).ok()?;
    // (offset, size) of section i
    let header = |i: u64| -> Option<(usize, usize, usize)> {
        let base = shoff.checked_add(usize::try_from(i).ok()?.checked_mul(shentsize)?)?;
        let name = u32_at(d, base, le)? as usize;
        let (off, size) = if is64 {
            (u64_at(d, base + 24, le)?, u64_at(d, base + 32, le)?)
        } else {
            (u32_at(d, base + 16, le)?, u32_at(d, base + 20, le)?)
        };
        Some((
            name,
            usize::try_from(off).ok()?,
            usize::try_from(size).ok()?,
        ))
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let strtab = d.get(str_off..str_off.checked_add(str_size)?)?;
    for i in 0..shnum {
        let Some((n, off, size)) = header(i) else {
            continue;
        };
        let Some(rest) = strtab.get(n..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return d.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// `len` bytes at virtual address `addr` of the ELF file `d`: the `PT_LOAD` segment holding
/// them (all of them in its file image), as Go's `debug/buildinfo` reads pointers.
pub(super) fn at_vaddr(d: &[u8], addr: u64, len: u64) -> Option<&[u8]> {
    let (is64, le) = ident(d)?;
    let (phoff, phentsize, phnum) = if is64 {
        (
            u64_at(d, 0x20, le)?,
            u16_at(d, 0x36, le)?,
            u16_at(d, 0x38, le)?,
        )
    } else {
        (
            u32_at(d, 0x1C, le)?,
            u16_at(d, 0x2A, le)?,
            u16_at(d, 0x2C, le)?,
        )
    };
    for i in 0..phnum {
        let Some(base) = phoff.checked_add(i.checked_mul(phentsize)?) else {
            continue;
        };
        let Ok(base) = usize::try_from(base) else {
            continue;
        };
        let seg = if is64 {
            (
                u32_at(d, base, le),
                u64_at(d, base + 8, le),
                u64_at(d, base + 16, le),
                u64_at(d, base + 32, le),
            )
        } else {
            (
                u32_at(d, base, le),
                u32_at(d, base + 4, le),
                u32_at(d, base + 8, le),
                u32_at(d, base + 16, le),
            )
        };
        let (Some(1), Some(off), Some(vaddr), Some(filesz)) = seg else {
            continue;
        };
        let Some(rel) = addr.checked_sub(vaddr) else {
            continue;
        };
        if rel.checked_add(len)? > filesz {
            continue;
        }
        let start = usize::try_from(off.checked_add(rel)?).ok()?;
        return d.get(start..start.checked_add(usize::try_from(len).ok()?)?);
    }
    None
}

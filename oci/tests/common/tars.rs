//! A small tar writer for hand-made (including malicious) archives, shared by the layer tests.
#![allow(dead_code)]

/// PAX extended header records (`<len> <key>=<value>\n`).
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + base.to_string().len();
        if len.to_string().len() != base.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// A small tar writer for hand-made (including malicious) archives.
pub struct T(pub tar::Builder<Vec<u8>>);

impl T {
    pub fn new() -> T {
        T(tar::Builder::new(Vec::new()))
    }
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        link: Option<&str>,
        data: &[u8],
        pax_recs: &[(&str, &[u8])],
    ) {
        if !pax_recs.is_empty() {
            let body = pax(pax_recs);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.0.append(&h, &body[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }
    pub fn dir(&mut self, p: &str) -> &mut Self {
        self.raw(p, tar::EntryType::Directory, 0o755, (0, 0), None, b"", &[]);
        self
    }
    pub fn file(&mut self, p: &str, data: &[u8]) -> &mut Self {
        self.raw(p, tar::EntryType::Regular, 0o644, (0, 0), None, data, &[]);
        self
    }
    pub fn symlink(&mut self, p: &str, target: &str) -> &mut Self {
        self.raw(
            p,
            tar::EntryType::Symlink,
            0o777,
            (0, 0),
            Some(target),
            b"",
            &[],
        );
        self
    }
    pub fn hardlink(&mut self, p: &str, target: &str) -> &mut Self {
        self.raw(
            p,
            tar::EntryType::Link,
            0o644,
            (0, 0),
            Some(target),
            b"",
            &[],
        );
        self
    }
    /// A device node (`Char`/`Block`) with its numbers.
    pub fn dev(
        &mut self,
        p: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    /// A header of any type byte, with a size field and data (which may disagree).
    pub fn typed(&mut self, p: &str, kind: u8, size: u64, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::new(kind));
        h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        self.0.get_mut().extend_from_slice(h.as_bytes());
        self.0.get_mut().extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.get_mut().extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn done(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

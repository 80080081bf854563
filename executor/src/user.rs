//! Resolution of a Docker `USER` string (`user[:group]`, names or ids)
//! against a rootfs's `/etc/passwd` and `/etc/group` contents.

/// The credentials a step runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (always includes `gid`).
    pub groups: Vec<u32>,
    /// Home directory from the passwd entry (`/` without one), for `HOME` when the step's
    /// env has none (as runc and Docker do).
    pub home: String,
}

/// One `/etc/passwd` line.
pub struct PasswdEntry<'a> {
    /// User name (field 1).
    pub name: &'a str,
    /// Numeric user id (field 3).
    pub uid: u32,
    /// Primary group id (field 4).
    pub gid: u32,
    /// Home directory (field 6, empty when absent).
    pub home: &'a str,
}

/// One `/etc/group` line.
pub struct GroupEntry<'a> {
    /// Group name (field 1).
    pub name: &'a str,
    /// Numeric group id (field 3).
    pub gid: u32,
    /// Supplementary members (field 4, comma-separated).
    pub members: Vec<&'a str>,
}

/// The well-formed entries of a passwd file (comments, blank and malformed lines skipped):
/// rbuild's one passwd parser.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?,
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).copied().unwrap_or(""),
            })
        })
        .collect()
}

/// The well-formed entries of a group file: rbuild's one group parser.
pub fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolve `spec` (`""` means root). Numeric ids need no passwd entry (gid
/// then defaults to 0, like Docker); names must exist.
pub(crate) fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Credentials, String> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    let (uid, name, primary, home) = match user_part.parse::<u32>() {
        Ok(uid) => match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, Some(e.name), e.gid, e.home),
            None => (uid, None, 0, ""),
        },
        Err(_) => match users.iter().find(|e| e.name == user_part) {
            Some(e) => (e.uid, Some(e.name), e.gid, e.home),
            None => {
                return Err(format!(
                    "unable to find user {user_part}: no matching entries in passwd file"
                ))
            }
        },
    };
    let gid = match group_part {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match groups.iter().find(|e| e.name == g) {
                Some(e) => e.gid,
                None => {
                    return Err(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                }
            },
        },
    };
    let mut supplementary = vec![gid];
    if let Some(name) = name {
        for g in &groups {
            if g.members.contains(&name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/" } else { home }.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nother:x:3000:\n";

    #[test]
    fn resolves_names_and_ids() {
        let c = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (0, 0));
        let c = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            (c.uid, c.gid, c.groups.clone()),
            (1000, 1000, vec![1000, 2000])
        );
        let c = resolve("1000:1000", "", "").unwrap();
        assert_eq!((c.uid, c.gid), (1000, 1000));
        let c = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (4242, 0));
        let c = resolve("app:other", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 3000));
        assert!(resolve("nobody", PASSWD, GROUP).is_err());
        assert!(resolve("app:nogroup", PASSWD, GROUP).is_err());
    }
}

#!/usr/bin/env python3
"""Writes the SBOM fixture filesystem under ./rootfs (committed; rerun to regenerate).

Go is not installed here, so the Go executable is crafted: an ELF header followed, 16-byte
aligned, by the build-info blob Go >= 1.18 writes (magic, pointer size, flags=2 for inline
strings, varint-prefixed version and module text framed by 16-byte sentinels). The Rust
executable is a minimal ELF64 whose `.dep-v0` section holds zlib-compressed cargo-auditable
JSON. The jar is a zip with a deflated pom.properties and a stored MANIFEST.MF.
"""
import io, json, os, struct, zipfile, zlib

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rootfs")


def write(rel, data, mode=0o644):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(p, mode)


def uvarint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


write("etc/os-release", 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
write("var/lib/dpkg/status", """Package: libc6
Status: install ok installed
Source: glibc
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Source: tzdata-src (2024a-0)
Architecture: all
Version: 2024a-0+deb12u1
""")
write("lib/apk/db/installed", """C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
L:MIT

P:busybox
V:1.36.1-r5
A:x86_64
L:GPL-2.0-only
""")
write("usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA",
      "Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nName: not-this\n")
write("usr/lib/python3/site-packages/Typing_Extensions-4.9.0.egg-info/PKG-INFO",
      "Metadata-Version: 1.1\nName: Typing_Extensions\nVersion: 4.9.0\n")
write("app/node_modules/lodash/package.json", json.dumps({"name": "lodash", "version": "4.17.21", "license": "MIT"}))
write("app/node_modules/@babel/core/package.json", json.dumps({"name": "@babel/core", "version": "7.23.0"}))
write("app/node_modules/lodash/fp/package.json", json.dumps({"name": "not-a-package", "version": "0"}))
write("app/package-lock.json", json.dumps({"lockfileVersion": 3, "packages": {
    "": {"name": "app", "version": "1.0.0"},
    "node_modules/lodash": {"version": "4.17.21"},
    "node_modules/left-pad": {"version": "1.3.0"}}}))

# Go build info (inline strings)
modinfo = ("path\texample.com/hello\nmod\texample.com/hello\t(devel)\t\n"
           "dep\tgithub.com/google/uuid\tv1.6.0\th1:abc=\n"
           "dep\tgolang.org/x/text\tv0.3.0\th1:def=\n=>\tgolang.org/x/text\tv0.14.0\th1:ghi=\n")
sentinel1 = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
sentinel2 = bytes.fromhex("f932433186182072008242104116d8f2")
mod = sentinel1 + modinfo.encode() + sentinel2
blob = b"\xff Go buildinf:" + bytes([8, 2]) + b"\0" * 16
blob += uvarint(len(b"go1.21.5")) + b"go1.21.5" + uvarint(len(mod)) + mod
elf = b"\x7fELF\x02\x01\x01" + b"\0" * 9  # 16 bytes: an ELF ident with no sections
write("usr/local/bin/hello-go", elf + b"\0" * 48 + blob + b"\0" * 32, 0o755)

# cargo-auditable: ELF64 LE with sections [null, .shstrtab, .dep-v0]
dep = zlib.compress(json.dumps({"packages": [
    {"name": "hello-rs", "version": "0.1.0", "source": "local", "root": True, "dependencies": [1]},
    {"name": "serde", "version": "1.0.197", "source": "crates.io"}]}).encode())
shstr = b"\0.shstrtab\0.dep-v0\0"
off_str = 64
off_dep = off_str + len(shstr)
shoff = (off_dep + len(dep) + 7) // 8 * 8
hdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9
hdr += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
def sh(name, off, size, typ):
    return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)
body = hdr + shstr + dep
body += b"\0" * (shoff - len(body))
body += sh(0, 0, 0, 0) + sh(1, off_str, len(shstr), 3) + sh(11, off_dep, len(dep), 1)
write("usr/local/bin/hello-rs", body, 0o755)

# a jar
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF"), "Manifest-Version: 1.0\nImplementation-Title: guava\n")
    z.writestr("META-INF/maven/com.google.guava/guava/pom.properties",
               "groupId=com.google.guava\nartifactId=guava\nversion=33.0.0-jre\n",
               compress_type=zipfile.ZIP_DEFLATED)
write("opt/app/lib/guava-33.0.0-jre.jar", buf.getvalue())

# rpm: rpmdb.sqlite with one header blob (index entries + data store, big-endian) and a
# gpg-pubkey pseudo-package that is not reported
import sqlite3


def header(fields):
    entries, data = b"", b""
    for tag, typ, value in fields:
        if typ == 4:
            while len(data) % 4:
                data += b"\0"
            off = len(data)
            data += struct.pack(">I", value)
        else:
            off = len(data)
            data += value.encode() + b"\0"
        entries += struct.pack(">IIII", tag, typ, off, 1)
    return struct.pack(">II", len(fields), len(data)) + entries + data


db = os.path.join(root, "var/lib/rpm/rpmdb.sqlite")
os.makedirs(os.path.dirname(db), exist_ok=True)
if os.path.exists(db):
    os.remove(db)
c = sqlite3.connect(db)
c.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
c.execute("INSERT INTO Packages (blob) VALUES (?)", (header([
    (1000, 6, "bash"), (1001, 6, "5.2.15"), (1002, 6, "3.fc39"), (1003, 4, 1),
    (1014, 6, "GPL-3.0-or-later"), (1022, 6, "x86_64")]),))
c.execute("INSERT INTO Packages (blob) VALUES (?)", (header([
    (1000, 6, "gpg-pubkey"), (1001, 6, "1"), (1002, 6, "1")]),))
c.execute("INSERT INTO Packages (blob) VALUES (?)", (b"\xff\xff\xff\xff garbage",))
c.commit()
c.close()

//! Fuzz-ish robustness: random and mutated Dockerfiles must never panic.

mod common;

use common::FakeResolver;
use rbuild_frontend::{build, parser, shell, BuildOpts};

/// xorshift64* — deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "ARG BASE=busybox\nFROM ${BASE} AS build\nWORKDIR /src\nCOPY . .\nRUN echo \"built $(cat version.txt)\" > /out.txt\nFROM busybox\nENV GREETING=hello\nCOPY --from=build /out.txt /app/out.txt\nUSER 1000:1000\nEXPOSE 8080\nLABEL org.opencontainers.image.title=demo\nENTRYPOINT [\"cat\"]\nCMD [\"/app/out.txt\"]\n",
    "# escape=`\nFROM scratch\nRUN <<EOF\necho hi\nEOF\nCOPY <<-'A' <<B /x/\n\ta\n\tA\nb\nB\n",
    "FROM busybox\nRUN --mount=type=cache,target=/c,id=x --mount=type=secret,id=s,env=E true\nHEALTHCHECK --interval=1s CMD [\"true\"]\nONBUILD RUN x\nADD https://e.com/a.tgz git@github.com:a/b.git /d/\n",
    "FROM a AS b\nFROM b\nENV A=${B:-${C#x}} D=${E//a/b}\nSHELL [\"/bin/bash\",\"-c\"]\nVOLUME [\"/v\"]\nSTOPSIGNAL 9\n",
    "# check=experimental=all;error=false\n# X the x\nARG X=\nFROM --platform=$TARGETPLATFORM busybox:${X} AS s\nCOPY --parents ./a/./b* --link --exclude=*.md /d/\nADD --checksum=sha256:00 --keep-git-dir=true https://h/r.git#v1:sub /g/\nLABEL l=$UNDEF\nCMD a\nCMD b\n",
];

const ALPHABET: &[u8] =
    b"FROMRUNCOPYADDENVARG${}:-+?#%/\\\"'`<<EOF\n\t =[],.*AS--from=0123 scratch";

fn check(text: &str) {
    let ast = parser::parse(text);
    let _ = ast.dump();
    let opts = BuildOpts {
        target: None,
        ..BuildOpts::default()
    };
    let _ = build(text, &opts, &FakeResolver);
    let lookup = |k: &str| (k.len() % 2 == 0).then(|| k.repeat(2));
    let _ = shell::expand(text, &lookup);
    let _ = shell::expand_words(text, &lookup);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    (rng.next() & 0xff) as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_dockerfiles_never_panic() {
    let mut rng = Rng(42);
    for i in 0..4000 {
        let seed = SEEDS[i % SEEDS.len()];
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..=rng.below(8) {
            let pos = rng.below(chars.len() + 1);
            match rng.below(4) {
                0 if pos < chars.len() => {
                    chars.remove(pos);
                }
                1 => chars.insert(pos, ALPHABET[rng.below(ALPHABET.len())] as char),
                2 if pos < chars.len() => {
                    chars[pos] = ALPHABET[rng.below(ALPHABET.len())] as char;
                }
                _ => {
                    // duplicate a slice
                    let a = rng.below(chars.len());
                    let b = (a + rng.below(40)).min(chars.len());
                    let slice: Vec<char> = chars[a..b].to_vec();
                    let at = rng.below(chars.len() + 1);
                    for (k, c) in slice.into_iter().enumerate() {
                        chars.insert(at + k, c);
                    }
                }
            }
        }
        check(&chars.into_iter().collect::<String>());
    }
}

#[test]
fn pathological_inputs_do_not_blow_up() {
    check(&"${A:-".repeat(5000));
    check(&format!("FROM busybox\nENV X={}\n", "${A:-".repeat(5000)));
    check(&format!(
        "FROM busybox\nENV X=${{V//{}/y}}\n",
        "*".repeat(2000)
    ));
    check(&"\\\n".repeat(10000));
    check(&"<<EOF ".repeat(1000));
    check(&format!("FROM busybox\nRUN {}\n", "<<A ".repeat(500)));
}

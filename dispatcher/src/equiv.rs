//! Test support: a new implementation of a byte-string predicate against the reference it
//! replaced, over the inputs where they could part: the tricky cases a test names, every string of
//! one and of two bytes over the full byte range, and longer strings drawn by a deterministic PRNG
//! mostly from an alphabet of the bytes the predicate cares about (uniform random bytes would
//! almost never pass a validator, and so would test only its first refusal).

/// Asserts `new(s) == old(s)` for every input described above.
pub(crate) fn assert_same(
    new: impl Fn(&[u8]) -> bool,
    old: impl Fn(&[u8]) -> bool,
    tricky: &[&[u8]],
    alphabet: &[u8],
) {
    let check = |s: &[u8]| {
        assert_eq!(
            new(s),
            old(s),
            "{:?} ({:x?})",
            String::from_utf8_lossy(s),
            s
        );
    };
    assert!(!tricky.is_empty() && !alphabet.is_empty());
    check(b"");
    for s in tricky {
        check(s);
    }
    for a in 0..=255u8 {
        check(&[a]);
        for b in 0..=255u8 {
            check(&[a, b]);
        }
    }
    // xorshift64*: deterministic, so that a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut s = Vec::new();
    for _ in 0..200_000 {
        s.clear();
        let len = 3 + (next() % 40) as usize;
        for _ in 0..len {
            let r = next();
            // One byte in 16 from the whole range, the rest from the alphabet.
            s.push(if r % 16 == 0 {
                (r >> 8) as u8
            } else {
                alphabet[((r >> 8) % alphabet.len() as u64) as usize]
            });
        }
        check(&s);
        // The tricky inputs with a random prefix or suffix: where a scan starts or stops matters.
        let t = tricky[(next() % tricky.len() as u64) as usize];
        let mut joined = s[..(next() % 4) as usize].to_vec();
        joined.extend_from_slice(t);
        check(&joined);
        joined.extend_from_slice(&s[..(next() % 4) as usize]);
        check(&joined);
    }
}

//! An independent chunked-body decoder written straight from the RFC 9112 §7.1 grammar, for the
//! differential target. Deliberately simple: it reads a complete byte slice by recursive descent,
//! one grammar rule per function, and shares no code with the dispatcher.
//!
//! ```text
//! chunked-body    = *chunk last-chunk trailer-section CRLF
//! chunk           = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size      = 1*HEXDIG
//! last-chunk      = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext       = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name  = token
//! chunk-ext-val   = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! field-line      = field-name ":" OWS field-value OWS     (no obs-fold)
//! quoted-string   = DQUOTE *( qdtext / quoted-pair ) DQUOTE
//! qdtext          = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
//! quoted-pair     = "\" ( HTAB / SP / VCHAR / obs-text )
//! BWS = OWS       = *( SP / HTAB )
//! ```
//!
//! Besides the grammar it applies the decoder's limits (see `api`): the body size (a chunk whose
//! size would take the body past it is refused as soon as its digits say so), the length of a
//! chunk line and of the trailer section.
//!
//! The verdict on an input is one of: a complete body (with the bytes it consumed), a viable
//! prefix (every byte so far fits the grammar and the limits: read more), or a refusal at the
//! position of the first byte that cannot be part of a valid body.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The body ends after `consumed` bytes; bytes after it belong to the next message.
    Complete { consumed: usize, body: Vec<u8> },
    /// Valid so far; `body` is the data decoded up to the end of the input.
    Incomplete { body: Vec<u8> },
    /// Byte `at` cannot be part of a valid body; `body` is the data decoded before it.
    Refused { at: usize, body: Vec<u8> },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    /// Bytes of a chunk line (size and extensions) before its CRLF.
    pub max_line: usize,
    /// Bytes of the trailer section (its field lines with their CRLFs), final CRLF excluded.
    pub max_trailers: usize,
}

pub fn decode(input: &[u8], limits: Limits) -> Verdict {
    let mut p = Parser {
        s: input,
        i: 0,
        body: Vec::new(),
        limits,
    };
    match p.chunked_body() {
        Ok(()) => Verdict::Complete {
            consumed: p.i,
            body: p.body,
        },
        Err(Stop::End) => Verdict::Incomplete { body: p.body },
        Err(Stop::Bad(at)) => Verdict::Refused { at, body: p.body },
    }
}

enum Stop {
    /// The input ended; nothing wrong so far.
    End,
    /// The byte at this position is wrong.
    Bad(usize),
}

type R<T> = Result<T, Stop>;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    body: Vec<u8>,
    limits: Limits,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl Parser<'_> {
    fn peek(&self) -> R<u8> {
        self.s.get(self.i).copied().ok_or(Stop::End)
    }

    fn bad<T>(&self) -> R<T> {
        Err(Stop::Bad(self.i))
    }

    /// The next byte of a region that may hold at most `max` bytes from `start` on; the CR that
    /// ends the region may sit just past it.
    fn bounded(&self, start: usize, max: usize) -> R<u8> {
        let b = self.peek()?;
        if self.i - start >= max && b != b'\r' {
            return self.bad();
        }
        Ok(b)
    }

    fn expect(&mut self, want: u8) -> R<()> {
        if self.peek()? != want {
            return self.bad();
        }
        self.i += 1;
        Ok(())
    }

    fn crlf(&mut self) -> R<()> {
        self.expect(b'\r')?;
        self.expect(b'\n')
    }

    fn chunked_body(&mut self) -> R<()> {
        loop {
            let size = self.chunk_line()?;
            if size == 0 {
                break; // that was last-chunk: 1*"0" [ chunk-ext ] CRLF
            }
            self.chunk_data(size)?;
            self.crlf()?;
        }
        self.trailer_section()?;
        self.crlf()
    }

    /// `chunk-size [ chunk-ext ] CRLF`; returns the size.
    fn chunk_line(&mut self) -> R<u64> {
        let start = self.i;
        let max = self.limits.max_line;
        let mut size: u64 = 0;
        let mut digits = 0;
        while let Some(v) = hex_value(self.bounded(start, max)?) {
            size = size.saturating_mul(16).saturating_add(v);
            // More digits only make the size larger: refuse as soon as it is past the limit.
            if (self.body.len() as u64).saturating_add(size) > self.limits.max_body as u64 {
                return self.bad();
            }
            self.i += 1;
            digits += 1;
        }
        if digits == 0 {
            return self.bad();
        }
        loop {
            // *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ): whitespace is only
            // allowed where a ";" or "=" follows it.
            let before_ws = self.i;
            self.bws(start, max)?;
            if self.bounded(start, max)? != b';' {
                self.i = before_ws;
                break;
            }
            self.i += 1;
            self.bws(start, max)?;
            self.token(start, max)?;
            let before_ws = self.i;
            self.bws(start, max)?;
            if self.bounded(start, max)? == b'=' {
                self.i += 1;
                self.bws(start, max)?;
                if self.bounded(start, max)? == b'"' {
                    self.quoted_string(start, max)?;
                } else {
                    self.token(start, max)?;
                }
            } else {
                self.i = before_ws;
            }
        }
        self.crlf()?;
        Ok(size)
    }

    fn bws(&mut self, start: usize, max: usize) -> R<()> {
        while matches!(self.bounded(start, max)?, b' ' | b'\t') {
            self.i += 1;
        }
        Ok(())
    }

    /// `1*tchar`.
    fn token(&mut self, start: usize, max: usize) -> R<()> {
        if !is_tchar(self.bounded(start, max)?) {
            return self.bad();
        }
        while is_tchar(self.bounded(start, max)?) {
            self.i += 1;
        }
        Ok(())
    }

    fn quoted_string(&mut self, start: usize, max: usize) -> R<()> {
        self.expect(b'"')?;
        loop {
            match self.bounded(start, max)? {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.i += 1;
                    match self.bounded(start, max)? {
                        b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => self.i += 1,
                        _ => return self.bad(),
                    }
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => self.i += 1,
                _ => return self.bad(),
            }
        }
    }

    /// `chunk-data`: exactly `size` octets, any values.
    fn chunk_data(&mut self, size: u64) -> R<()> {
        let left = self.s.len() - self.i;
        let take = usize::try_from(size).map_or(left, |n| n.min(left));
        self.body.extend_from_slice(&self.s[self.i..self.i + take]);
        self.i += take;
        if (take as u64) < size {
            return Err(Stop::End);
        }
        Ok(())
    }

    /// `*( field-line CRLF )`, up to (not including) the CRLF that ends the body.
    fn trailer_section(&mut self) -> R<()> {
        let start = self.i;
        let max = self.limits.max_trailers;
        loop {
            if self.bounded(start, max)? == b'\r' {
                return Ok(());
            }
            // field-name: a token, directly followed by ":" (no whitespace before the colon; a
            // line starting with whitespace, obs-fold, is no token either).
            self.token(start, max)?;
            if self.bounded(start, max)? != b':' {
                return self.bad();
            }
            self.i += 1;
            // OWS field-value OWS: SP, HTAB, VCHAR and obs-text, nothing else (no CR, LF, NUL
            // or other control byte).
            while matches!(
                self.bounded(start, max)?,
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff
            ) {
                self.i += 1;
            }
            self.crlf()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_body: 100,
        max_line: 16,
        max_trailers: 32,
    };

    fn complete(input: &[u8]) -> (usize, Vec<u8>) {
        match decode(input, L) {
            Verdict::Complete { consumed, body } => (consumed, body),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn refused_at(input: &[u8]) -> usize {
        match decode(input, L) {
            Verdict::Refused { at, .. } => at,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn valid_bodies() {
        assert_eq!(
            complete(b"4\r\nWiki\r\n5;a=1;b=\"q\\\"x\"\r\npedia\r\n0\r\n\r\nNEXT"),
            (37, b"Wikipedia".to_vec())
        );
        assert_eq!(complete(b"000\r\n\r\n"), (7, vec![]));
        assert_eq!(
            complete(b"a ; x = y\r\n0123456789\r\n0\r\n\r\n").1.len(),
            10
        );
        assert_eq!(complete(b"0\r\nX-T: a \t b\r\nY:\r\n\r\n"), (21, vec![]));
    }

    #[test]
    fn refusals_point_at_the_first_wrong_byte() {
        assert_eq!(refused_at(b"\r\n"), 0, "no digits");
        assert_eq!(refused_at(b"5 \r\n"), 1, "whitespace not before ;");
        assert_eq!(refused_at(b"5;\r\n"), 2, "empty extension name");
        assert_eq!(refused_at(b"5;a\x00\r\n"), 3, "control byte in extension");
        assert_eq!(refused_at(b"5\nabcde\r\n"), 1, "bare LF");
        assert_eq!(refused_at(b"1\r\nab\r\n"), 4, "data longer than its size");
        assert_eq!(refused_at(b"0\r\nX : y\r\n\r\n"), 4, "space before colon");
        assert_eq!(refused_at(b"0\r\n y\r\n\r\n"), 3, "obs-fold");
        assert_eq!(
            refused_at(b"0\r\nX: a\x01\r\n\r\n"),
            7,
            "control byte in field"
        );
        assert_eq!(refused_at(b"0\r\nnocolon\r\n\r\n"), 10);
        assert_eq!(refused_at(b"65\r\n"), 1, "101 bytes is past the body limit");
        assert_eq!(refused_at(b"0;aaaaaaaaaaaaaaaaaaa\r\n"), 16, "line limit");
    }

    #[test]
    fn prefixes_of_valid_bodies_are_incomplete() {
        let full = b"4;e=\"v\"\r\nWiki\r\n0\r\nT: x\r\n\r\n";
        for n in 0..full.len() {
            assert!(
                matches!(decode(&full[..n], L), Verdict::Incomplete { .. }),
                "prefix {n}"
            );
        }
        assert_eq!(
            decode(b"4\r\nWi", L),
            Verdict::Incomplete {
                body: b"Wi".to_vec()
            }
        );
    }
}

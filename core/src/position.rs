//! Positions in the log: [`Seq`], [`Epoch`] and the client-visible [`Cursor`].

use std::fmt;

/// A position in one change log: the `seq` of a `change_log` row, or `0` for "before every row".
///
/// Valid values are `0..=i64::MAX` (SQLite and Postgres store seq as a signed 64-bit integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// Before every row of the log.
    pub const ZERO: Seq = Seq(0);
    /// The largest seq a cursor may carry (2^63 − 1).
    pub const MAX: Seq = Seq(i64::MAX as u64);

    /// The seq just before this one (saturating at zero).
    pub fn prev(self) -> Seq {
        Seq(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The identity of one change log, created with its database: 16 lowercase hex digits on the wire.
///
/// A cursor is only meaningful against the log of its epoch; a recreated or rolled-back database
/// gets a new epoch so that old cursors are detected instead of silently misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Parses exactly 16 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Epoch, CursorError> {
        let bytes = text.as_bytes();
        if bytes.len() != 16 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(CursorError::InvalidEpoch);
        }
        u64::from_str_radix(text, 16)
            .map(Epoch)
            .map_err(|_| CursorError::InvalidEpoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A resume position as a client sends it: `<epoch>:<seq>`, or a bare `<seq>` meaning "this log".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The log the position belongs to; `None` for a bare seq.
    pub epoch: Option<Epoch>,
    /// The last position the client has accounted for.
    pub seq: Seq,
}

/// Why a cursor string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    /// The string was empty.
    Empty,
    /// The part before `:` is not 16 lowercase hex digits.
    InvalidEpoch,
    /// The seq is not a decimal number without sign or leading zeros.
    InvalidSeq,
    /// The seq is larger than 2^63 − 1.
    SeqTooLarge,
    /// With sealed ids: the text is not an id this server issued (forged, altered, sealed
    /// under another key, or a plain cursor other than `0`).
    NotIssued,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CursorError::Empty => "cursor is empty",
            CursorError::InvalidEpoch => "cursor epoch must be 16 lowercase hex digits",
            CursorError::InvalidSeq => {
                "cursor seq must be a decimal number without sign or leading zeros"
            }
            CursorError::SeqTooLarge => "cursor seq exceeds 9223372036854775807",
            CursorError::NotIssued => "cursor is not an id this server issued",
        })
    }
}

impl std::error::Error for CursorError {}

impl Cursor {
    /// A cursor of a known log.
    pub fn new(epoch: Epoch, seq: Seq) -> Cursor {
        Cursor {
            epoch: Some(epoch),
            seq,
        }
    }

    /// Strictly parses `<epoch>:<seq>` or `<seq>` (the cursor grammar of `PROTOCOL.md`).
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        if text.is_empty() {
            return Err(CursorError::Empty);
        }
        let (epoch, seq_text) = match text.split_once(':') {
            Some((epoch, seq)) => (Some(Epoch::parse(epoch)?), seq),
            None => (None, text),
        };
        Ok(Cursor {
            epoch,
            seq: parse_seq(seq_text)?,
        })
    }
}

fn parse_seq(text: &str) -> Result<Seq, CursorError> {
    let bytes = text.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes.len() > 1 && bytes[0] == b'0')
    {
        return Err(CursorError::InvalidSeq);
    }
    if bytes.len() > 19 {
        return Err(CursorError::SeqTooLarge);
    }
    let value: u64 = text.parse().map_err(|_| CursorError::SeqTooLarge)?;
    if value > Seq::MAX.0 {
        return Err(CursorError::SeqTooLarge);
    }
    Ok(Seq(value))
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch {
            Some(epoch) => write!(f, "{epoch}:{}", self.seq),
            None => write!(f, "{}", self.seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar_and_nothing_else() {
        let epoch = Epoch(0x0123_4567_89ab_cdef);
        assert_eq!(
            Cursor::parse("0123456789abcdef:42"),
            Ok(Cursor::new(epoch, Seq(42)))
        );
        assert_eq!(
            Cursor::parse("0"),
            Ok(Cursor {
                epoch: None,
                seq: Seq(0)
            })
        );
        assert_eq!(
            Cursor::parse("9223372036854775807").map(|c| c.seq),
            Ok(Seq::MAX)
        );
        for (bad, why) in [
            ("", CursorError::Empty),
            ("9223372036854775808", CursorError::SeqTooLarge),
            ("99999999999999999999", CursorError::SeqTooLarge),
            ("007", CursorError::InvalidSeq),
            ("+7", CursorError::InvalidSeq),
            ("-7", CursorError::InvalidSeq),
            (" 7", CursorError::InvalidSeq),
            ("0123456789ABCDEF:1", CursorError::InvalidEpoch),
            ("0123456789abcde:1", CursorError::InvalidEpoch),
            ("0123456789abcdef:", CursorError::InvalidSeq),
            ("0123456789abcdef:1:2", CursorError::InvalidSeq),
            (":1", CursorError::InvalidEpoch),
        ] {
            assert_eq!(Cursor::parse(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        let cursor = Cursor::new(Epoch(0xff), Seq(7));
        assert_eq!(cursor.to_string(), "00000000000000ff:7");
        assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
    }
}

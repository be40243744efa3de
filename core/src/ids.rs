//! How positions are spelled on the wire: plain `<epoch>:<seq>` cursors, or — with auth on —
//! sealed ids that leak nothing about the log (`PROTOCOL.md`, "Sealed ids").
//!
//! A sealed id is the AES-SIV (RFC 5297, `AES-SIV-CMAC-256`, deterministic authenticated
//! encryption) of `epoch ‖ seq ‖ tweak` (three big-endian `u64`s) under the server's
//! [`IdKey`], with the associated data [`SEALED_ID_AD`], written as unpadded base64url: the
//! 16-byte synthetic IV then the 24-byte ciphertext, 54 characters. Without the key a client
//! learns nothing from it — not the seq, so not how many rows other tenants wrote — and cannot
//! make one: a forged or altered id fails authentication and is treated as a malformed cursor.
//!
//! The `tweak` makes ids of the same position differ where equality would tell something: an
//! event's own frame (shared by every subscriber) uses tweak 0; every id a subscription writes
//! itself (first frame, checkpoints, ready, resets) uses a tweak unique to that subscription and
//! announcement, so a checkpoint never shows whether the position moved since the last one.

use std::fmt;
use std::sync::Arc;

use aes_siv::siv::Aes128Siv;
use aes_siv::KeyInit;
use base64ct::{Base64UrlUnpadded, Encoding};

use crate::position::{Cursor, CursorError, Epoch, Seq};

/// The associated data every sealed id is authenticated with (its format and version).
pub const SEALED_ID_AD: &[u8] = b"changefeed sealed id v1";
/// The length of a sealed id on the wire.
pub const SEALED_ID_LEN: usize = 54;
const PLAIN_LEN: usize = 24;
const SEALED_LEN: usize = 16 + PLAIN_LEN;

/// The server's secret for sealed ids: 32 bytes (the AES-SIV-CMAC-256 key). Every replica
/// serving one log must hold the same key for ids to resume across them; a new key makes every
/// outstanding id an `invalid_cursor` reset.
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey(Arc<[u8; 32]>);

impl IdKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> IdKey {
        IdKey(Arc::new(bytes))
    }

    fn cipher(&self) -> Aes128Siv {
        Aes128Siv::new((&*self.0).into())
    }

    /// Seals a position with a tweak (see the [module docs](self)).
    pub fn seal(&self, epoch: Epoch, seq: Seq, tweak: u64) -> String {
        let mut buffer = [0u8; SEALED_LEN];
        let (tag, plain) = buffer.split_at_mut(16);
        plain[..8].copy_from_slice(&epoch.0.to_be_bytes());
        plain[8..16].copy_from_slice(&seq.0.to_be_bytes());
        plain[16..].copy_from_slice(&tweak.to_be_bytes());
        let siv = self
            .cipher()
            .encrypt_in_place_detached([SEALED_ID_AD], plain)
            .expect("one header and a 24-byte plaintext are within AES-SIV's limits");
        tag.copy_from_slice(&siv);
        Base64UrlUnpadded::encode_string(&buffer)
    }

    /// Opens a sealed id: its epoch, seq and tweak, or `None` when it is not an id this key
    /// sealed (wrong length or alphabet, non-canonical base64url, failed authentication).
    pub fn open(&self, text: &str) -> Option<(Epoch, Seq, u64)> {
        if text.len() != SEALED_ID_LEN {
            return None;
        }
        let mut buffer = [0u8; SEALED_LEN];
        let decoded = Base64UrlUnpadded::decode(text, &mut buffer).ok()?;
        if decoded.len() != SEALED_LEN {
            return None;
        }
        let (tag, sealed) = buffer.split_at_mut(16);
        let tag = aes_siv::Tag::clone_from_slice(tag);
        self.cipher()
            .decrypt_in_place_detached([SEALED_ID_AD], sealed, &tag)
            .ok()?;
        let word = |i: usize| u64::from_be_bytes(sealed[i..i + 8].try_into().expect("8 bytes"));
        let seq = word(8);
        (seq <= Seq::MAX.0).then(|| (Epoch(word(0)), Seq(seq), word(16)))
    }

    /// A short, non-secret fingerprint of the key (the sealed id of position zero), so two
    /// components can check they seal with the same key.
    pub fn fingerprint(&self) -> u64 {
        let mut plain = [0u8; PLAIN_LEN];
        let tag = self
            .cipher()
            .encrypt_in_place_detached([SEALED_ID_AD], &mut plain)
            .expect("within AES-SIV's limits");
        u64::from_be_bytes(tag[..8].try_into().expect("8 bytes"))
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "IdKey({:016x})", self.fingerprint())
    }
}

/// How a server spells positions: plain cursors (no auth) or sealed ids (auth on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ids {
    /// `<epoch>:<seq>`, and bare `<seq>` accepted (the default, with auth off).
    #[default]
    Plain,
    /// Sealed ids under this key; the only plain cursor accepted is `0` ("from the start of the
    /// log", which says nothing about it).
    Sealed(IdKey),
}

impl Ids {
    /// Whether positions are sealed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Ids::Sealed(_))
    }

    /// The id of a position with a tweak (ignored for plain cursors).
    pub fn spell(&self, cursor: Cursor, tweak: u64) -> String {
        match (self, cursor.epoch) {
            (Ids::Sealed(key), Some(epoch)) => key.seal(epoch, cursor.seq, tweak),
            _ => cursor.to_string(),
        }
    }

    /// Appends [`Ids::spell`]'s id to `out` (no allocation for plain ids).
    pub fn spell_into(&self, out: &mut Vec<u8>, cursor: Cursor, tweak: u64) {
        match (self, cursor.epoch) {
            (Ids::Sealed(key), Some(epoch)) => {
                out.extend_from_slice(key.seal(epoch, cursor.seq, tweak).as_bytes())
            }
            _ => {
                use std::io::Write as _;
                write!(out, "{cursor}").expect("writing into a Vec cannot fail");
            }
        }
    }

    /// Reads a cursor a client sent: the plain grammar, or, when sealed, a sealed id of this
    /// key or `0`.
    pub fn read(&self, text: &str) -> Result<Cursor, CursorError> {
        match self {
            Ids::Plain => Cursor::parse(text),
            Ids::Sealed(_) if text == "0" => Cursor::parse(text),
            Ids::Sealed(_) if text.is_empty() => Err(CursorError::Empty),
            Ids::Sealed(key) => key
                .open(text)
                .map(|(epoch, seq, _)| Cursor::new(epoch, seq))
                .ok_or(CursorError::NotIssued),
        }
    }

    /// A tag telling which spelling (and key) produced an event's frame, so a subscription
    /// never forwards a frame spelled for another mode: 0 for plain, the key's fingerprint
    /// (with the low bit set) when sealed.
    pub fn tag(&self) -> u64 {
        match self {
            Ids::Plain => 0,
            Ids::Sealed(key) => key.fingerprint() | 1,
        }
    }
}

/// Whether `text` has the shape of an id a server may write: a plain cursor, or 54 base64url
/// characters (what a client without the key can check).
pub fn is_wire_id(text: &str) -> bool {
    Cursor::parse(text).is_ok()
        || (text.len() == SEALED_ID_LEN && Base64UrlUnpadded::decode_vec(text).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> IdKey {
        IdKey::from_bytes([byte; 32])
    }

    #[test]
    fn ids_spelled_into_a_buffer_are_the_spelled_ids() {
        let cursors = [
            Cursor::new(Epoch(0xe1), Seq(42)),
            Cursor::parse("7").unwrap(),
            Cursor::new(Epoch(u64::MAX), Seq::MAX),
        ];
        for ids in [Ids::Plain, Ids::Sealed(key(3))] {
            for cursor in cursors {
                let mut out = b"id: ".to_vec();
                ids.spell_into(&mut out, cursor, 5);
                let spelled = ids.spell(cursor, 5);
                assert_eq!(out, format!("id: {spelled}").into_bytes());
            }
        }
        let mut plain = Vec::new();
        Ids::Plain.spell_into(&mut plain, cursors[0], 0);
        assert_eq!(plain, b"00000000000000e1:42");
    }

    #[test]
    fn sealed_ids_open_to_what_was_sealed() {
        let key = key(7);
        for (epoch, seq, tweak) in [(0, 0, 0), (0xe1, 42, 9), (u64::MAX, Seq::MAX.0, u64::MAX)] {
            let id = key.seal(Epoch(epoch), Seq(seq), tweak);
            assert_eq!(id.len(), SEALED_ID_LEN, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(key.open(&id), Some((Epoch(epoch), Seq(seq), tweak)));
            assert!(is_wire_id(&id));
        }
    }

    #[test]
    fn sealing_is_deterministic_and_tweaks_differ() {
        let key = key(1);
        let a = key.seal(Epoch(1), Seq(5), 0);
        assert_eq!(a, key.seal(Epoch(1), Seq(5), 0));
        assert_ne!(a, key.seal(Epoch(1), Seq(5), 1));
        assert_ne!(a, key.seal(Epoch(1), Seq(6), 0));
        assert_ne!(a, key.seal(Epoch(2), Seq(5), 0));
        assert_ne!(a, self::key(2).seal(Epoch(1), Seq(5), 0));
    }

    #[test]
    fn forged_altered_or_foreign_ids_do_not_open() {
        let key = key(3);
        let id = key.seal(Epoch(1), Seq(5), 0);
        assert_eq!(self::key(4).open(&id), None, "another key");
        for at in 0..id.len() {
            let mut bytes = id.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            assert_eq!(key.open(&altered), None, "altered at {at}");
        }
        for bad in [
            "",
            "0",
            "00000000000000e1:5",
            &id[1..],
            &format!("{id}A"),
            &"A".repeat(54),
        ] {
            assert_eq!(key.open(bad), None, "{bad:?}");
        }
        // A seq beyond 2^63 - 1 never comes from a server: not an id.
        let too_large = key.seal(Epoch(1), Seq(u64::MAX), 0);
        assert_eq!(key.open(&too_large), None);
    }

    #[test]
    fn ids_read_and_spell_per_mode() {
        let cursor = Cursor::new(Epoch(0xe1), Seq(9));
        assert_eq!(Ids::Plain.spell(cursor, 3), "00000000000000e1:9");
        assert_eq!(Ids::Plain.read("00000000000000e1:9"), Ok(cursor));
        assert_eq!(Ids::Plain.read("9").map(|c| c.seq), Ok(Seq(9)));
        assert!(!Ids::Plain.is_sealed());
        assert_eq!(Ids::Plain.tag(), 0);
        let sealed = Ids::Sealed(key(5));
        assert!(sealed.is_sealed());
        let id = sealed.spell(cursor, 3);
        assert_eq!(id, key(5).seal(Epoch(0xe1), Seq(9), 3));
        assert_eq!(sealed.read(&id), Ok(cursor));
        assert_eq!(
            sealed.read("0"),
            Ok(Cursor {
                epoch: None,
                seq: Seq::ZERO
            })
        );
        assert_eq!(sealed.read(""), Err(CursorError::Empty));
        assert_eq!(
            sealed.read("00000000000000e1:9"),
            Err(CursorError::NotIssued)
        );
        assert_eq!(sealed.read("9"), Err(CursorError::NotIssued));
        let bare = Cursor {
            epoch: None,
            seq: Seq(0),
        };
        assert_eq!(sealed.spell(bare, 1), "0", "no epoch: nothing to seal");
        // Every sealed tag is odd, so none is plain's 0, whatever the key's fingerprint.
        for byte in 0..32 {
            assert_eq!(Ids::Sealed(key(byte)).tag() & 1, 1, "key {byte}");
        }
        assert_ne!(sealed.tag(), Ids::Sealed(key(6)).tag());
        assert_eq!(sealed.tag(), Ids::Sealed(key(5)).tag());
    }

    #[test]
    fn wire_id_shapes() {
        assert!(is_wire_id("00000000000000e1:9"));
        assert!(is_wire_id("9"));
        assert!(!is_wire_id(""));
        assert!(!is_wire_id("x"));
        assert!(!is_wire_id(&"A".repeat(53)));
        assert!(!is_wire_id(&"+".repeat(54)));
        assert!(is_wire_id(&key(1).seal(Epoch(1), Seq(1), 1)));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let text = format!("{:?}", key(0xab));
        assert!(!text.contains("ab, "), "{text}");
        assert!(text.starts_with("IdKey("), "{text}");
    }
}

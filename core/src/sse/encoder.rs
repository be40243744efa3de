//! SSE frame encoder: builds one frame (fields then a blank line) into a byte buffer.

use bytes::Bytes;

/// Builds one SSE frame. Every field value is made safe for the wire: CR and LF cannot end a
/// field early, so `event`, `id` and `retry` values drop them and [`FrameBuilder::data`] splits
/// text over several `data:` lines exactly as a parser joins them back.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// An empty frame.
    pub fn new() -> FrameBuilder {
        FrameBuilder {
            buf: Vec::with_capacity(128),
        }
    }

    /// Continues `buf`: the frame is appended after what `buf` already holds (other whole
    /// frames), and [`FrameBuilder::end`] gives the buffer back. This is how consecutive frames
    /// are written straight into one output buffer.
    pub fn appending(buf: Vec<u8>) -> FrameBuilder {
        FrameBuilder { buf }
    }

    /// `retry: <ms>`.
    pub fn retry(mut self, millis: u64) -> Self {
        self.buf.extend_from_slice(b"retry: ");
        self.buf.extend_from_slice(millis.to_string().as_bytes());
        self.buf.push(b'\n');
        self
    }

    /// `id: <value>`; CR, LF and NUL are removed (a NUL would make parsers ignore the id).
    pub fn id(self, value: &str) -> Self {
        self.single_line_field(b"id: ", value, |b| matches!(b, b'\r' | b'\n' | 0))
    }

    /// `id: <value>` where `write` appends the value straight into the frame and guarantees
    /// it holds no CR, LF or NUL (checked in debug builds): ids the server spells itself.
    pub fn id_with(mut self, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        self.buf.extend_from_slice(b"id: ");
        let start = self.buf.len();
        write(&mut self.buf);
        debug_assert!(!self.buf[start..]
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0)));
        self.buf.push(b'\n');
        self
    }

    /// `event: <name>`; CR and LF are removed so a name cannot end its line.
    pub fn event(self, name: &str) -> Self {
        self.single_line_field(b"event: ", name, |b| matches!(b, b'\r' | b'\n'))
    }

    /// One `data:` line per line of `text` (CR, LF and CRLF all end a line), so a parser
    /// reassembles `text` with its line breaks normalised to LF.
    pub fn data(mut self, text: &str) -> Self {
        let mut rest = text.as_bytes();
        loop {
            self.buf.extend_from_slice(b"data: ");
            match memchr::memchr2(b'\r', b'\n', rest) {
                Some(at) => {
                    self.buf.extend_from_slice(&rest[..at]);
                    self.buf.push(b'\n');
                    let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    rest = &rest[at + skip..];
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    self.buf.push(b'\n');
                    return self;
                }
            }
        }
    }

    /// `data: <line>` where the caller guarantees `line` holds no CR or LF (checked in debug
    /// builds). Used for the event JSON, which the encoder keeps on one line by construction.
    pub fn data_line(mut self, line: &[u8]) -> Self {
        debug_assert!(memchr::memchr2(b'\r', b'\n', line).is_none());
        self.buf.extend_from_slice(b"data: ");
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self
    }

    /// `data: <line>` where `write` appends the line straight into the frame (no separate
    /// buffer) and guarantees it holds no CR or LF (checked in debug builds), like
    /// [`FrameBuilder::data_line`].
    pub fn data_line_with<T>(mut self, write: impl FnOnce(&mut Vec<u8>) -> T) -> (Self, T) {
        self.buf.extend_from_slice(b"data: ");
        let start = self.buf.len();
        let result = write(&mut self.buf);
        debug_assert!(memchr::memchr2(b'\r', b'\n', &self.buf[start..]).is_none());
        self.buf.push(b'\n');
        (self, result)
    }

    /// A comment line `:<text>` (CR and LF removed); an empty comment is a bare `:`.
    pub fn comment(mut self, text: &str) -> Self {
        self.buf.push(b':');
        self.buf
            .extend(text.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
        self.buf.push(b'\n');
        self
    }

    /// Ends the frame with its blank line.
    pub fn finish(self) -> Bytes {
        Bytes::from(self.end())
    }

    /// Ends the frame with its blank line and gives back the buffer: the frames it held
    /// before ([`FrameBuilder::appending`]) and this one.
    pub fn end(mut self) -> Vec<u8> {
        self.buf.push(b'\n');
        self.buf
    }

    fn single_line_field(mut self, prefix: &[u8], value: &str, drop: fn(u8) -> bool) -> Self {
        self.buf.extend_from_slice(prefix);
        self.buf.extend(value.bytes().filter(|&b| !drop(b)));
        self.buf.push(b'\n');
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_split_on_every_line_ending() {
        let frame = FrameBuilder::new()
            .event("x\r\ny")
            .id("1\n2")
            .data("a\r\nb\rc\nd")
            .finish();
        assert_eq!(
            &frame[..],
            b"event: xy\nid: 12\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn comments_and_retry_stay_on_their_line() {
        assert_eq!(
            &FrameBuilder::new().comment(" a\r\nb\n").finish()[..],
            b": ab\n\n"
        );
        assert_eq!(
            &FrameBuilder::new().retry(1500).finish()[..],
            b"retry: 1500\n\n"
        );
        assert_eq!(
            &FrameBuilder::appending(Vec::with_capacity(4))
                .id("7\0")
                .data_line(b"{}")
                .finish()[..],
            b"id: 7\ndata: {}\n\n"
        );
        let (frame, written) = FrameBuilder::new().id("8").data_line_with(|buf| {
            buf.extend_from_slice(b"{\"a\":1}");
            7
        });
        assert_eq!(written, 7);
        assert_eq!(&frame.finish()[..], b"id: 8\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn a_frame_can_continue_a_buffer_of_frames() {
        let buffer = FrameBuilder::new().comment("").end();
        let buffer = FrameBuilder::appending(buffer)
            .id_with(|id| id.extend_from_slice(b"e:7"))
            .data_line(b"{}")
            .end();
        assert_eq!(&buffer[..], b":\n\nid: e:7\ndata: {}\n\n");
    }

    #[test]
    fn empty_data_is_one_empty_line() {
        assert_eq!(&FrameBuilder::new().data("").finish()[..], b"data: \n\n");
        assert_eq!(&FrameBuilder::new().comment("").finish()[..], b":\n\n");
    }
}

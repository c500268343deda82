//! Message data on the wire (RFC 5321 4.5.2), both ways: [`DataReceiver`] finds the end of the
//! data and undoes dot-stuffing, [`dot_stuff`] does it. They are exact inverses, so a message
//! crosses any number of our hops byte for byte.
//!
//! A *line* starts at the beginning of the data and after every CRLF; a bare CR or a bare LF
//! does not start one. Only `CRLF . CRLF` ends the data: `CRLF . CR CR LF`, `LF . LF` and the
//! other near misses are message content, so no client can make one DATA carry two messages
//! (SMTP smuggling). A line that starts with a dot and is not the end loses that dot, and the
//! sender adds one to every line that starts with a dot.

/// Where the receiver stands in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line (a LF now ends the line).
    Cr,
    /// A line started with a dot, held back.
    Dot,
    /// A line started with a dot and a CR, both held back (a LF now ends the data).
    DotCr,
}

/// Receives message data after `354`: feed it what the client sends, get the message back.
#[derive(Clone, Debug)]
pub struct DataReceiver {
    state: State,
}

impl Default for DataReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReceiver {
    /// A receiver at the start of the data (the CRLF that ended the DATA command comes first).
    pub fn new() -> Self {
        Self {
            state: State::LineStart,
        }
    }

    /// Appends the unstuffed content of `input` to `out`. Returns `Some(n)` when the end of the
    /// data was found, `n` being the bytes of `input` it took (what follows is the next command),
    /// and `None` when all of `input` was taken and more is needed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // The common case: copy up to the next CR at once.
                match memchr::memchr(b'\r', &input[i..]) {
                    Some(at) => {
                        out.extend_from_slice(&input[i..i + at + 1]);
                        i += at + 1;
                        self.state = State::Cr;
                    }
                    None => {
                        out.extend_from_slice(&input[i..]);
                        return None;
                    }
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\n') => return Some(i),
                // A dot that starts a longer line was stuffing: it is dropped. What the line
                // holds after it is content.
                (State::DotCr, _) => {
                    out.push(b'\r');
                    self.content(b, out)
                }
                (State::Dot, _) => self.content(b, out),
                (State::Cr, b'\n') => {
                    out.push(b);
                    State::LineStart
                }
                (_, _) => self.content(b, out),
            };
        }
        None
    }

    /// Takes one content byte; the state that follows it.
    fn content(&self, b: u8, out: &mut Vec<u8>) -> State {
        out.push(b);
        if b == b'\r' {
            State::Cr
        } else {
            State::Text
        }
    }
}

/// Appends `message` to `out` dot-stuffed, then the end of data (`.` CRLF). A message that does
/// not end in CRLF gets one first: the data of an SMTP message always ends a line.
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    let mut stuffer = DotStuffer::new();
    stuffer.push(message, out);
    stuffer.finish(out);
}

/// [`dot_stuff`] a piece at a time, for a message read as it is sent.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last byte was a CR (a LF now ends the line).
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// At the start of the message.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            after_cr: false,
        }
    }

    /// Appends the next piece of the message to `out`, dot-stuffed.
    pub fn push(&mut self, mut piece: &[u8], out: &mut Vec<u8>) {
        while let Some(&first) = piece.first() {
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
            match memchr::memchr(b'\n', piece) {
                Some(at) => {
                    let crlf = if at > 0 {
                        piece[at - 1] == b'\r'
                    } else {
                        self.after_cr
                    };
                    out.extend_from_slice(&piece[..=at]);
                    piece = &piece[at + 1..];
                    self.after_cr = false;
                    self.at_line_start = crlf;
                }
                None => {
                    out.extend_from_slice(piece);
                    self.after_cr = piece.last() == Some(&b'\r');
                    piece = &[];
                }
            }
        }
    }

    /// Ends the data: CRLF if the message did not end a line, then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `wire` in pieces of `chunk` bytes; the message and the bytes left after it.
    fn receive(wire: &[u8], chunk: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut r = DataReceiver::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + chunk).min(wire.len());
            if let Some(n) = r.feed(&wire[pos..end], &mut out) {
                return Some((out, wire[pos + n..].to_vec()));
            }
            pos = end;
        }
        None
    }

    /// What is sent, and the message and the rest it reads as (`None`: no end yet).
    type Case<'a> = (&'a [u8], Option<(&'a [u8], &'a [u8])>);

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        let table: &[Case] = &[
            (b".\r\n", Some((b"", b""))),
            (b"a\r\n.\r\nMAIL", Some((b"a\r\n", b"MAIL"))),
            (b"a\r\n.\r\r\nb\r\n.\r\n", Some((b"a\r\n\r\r\nb\r\n", b""))),
            (
                b"a\r\n.\r\r\r\nb\r\n.\r\n",
                Some((b"a\r\n\r\r\r\nb\r\n", b"")),
            ),
            (b"a\n.\nb\r\n.\r\n", Some((b"a\n.\nb\r\n", b""))),
            (b"a\n.\r\nb\r\n.\r\n", Some((b"a\n.\r\nb\r\n", b""))),
            (b"a\r.\r\nb\r\n.\r\n", Some((b"a\r.\r\nb\r\n", b""))),
            (b"..\r\n.x\r\n.\r\n", Some((b".\r\nx\r\n", b""))),
            (b"a\r\n..\r\n.\r\n", Some((b"a\r\n.\r\n", b""))),
            (b"a\r\n.", None),
            (b"a\r\n.\r", None),
        ];
        for (wire, expected) in table {
            for chunk in [1, 2, 3, 1000] {
                let got = receive(wire, chunk);
                let expected = expected.map(|(m, r)| (m.to_vec(), r.to_vec()));
                assert_eq!(
                    got,
                    expected,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    #[test]
    fn stuffing_adds_a_dot_to_lines_that_start_with_one() {
        let stuffed = |m: &[u8]| {
            let mut out = Vec::new();
            dot_stuff(m, &mut out);
            out
        };
        assert_eq!(stuffed(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuffed(b".x"), b"..x\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"a\n.\nb\r\n"), b"a\n.\nb\r\n.\r\n");
        assert_eq!(stuffed(b"x\r\n.\ny\r\n"), b"x\r\n..\ny\r\n.\r\n");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the body, one DATA carries exactly it: stuffing then receiving is the
        /// identity (for data that ends a line, as all SMTP data does), however the bytes are
        /// cut into reads, and nothing after the end is taken.
        #[test]
        fn stuffing_and_receiving_are_inverse(
            parts in proptest::collection::vec(prop_oneof![
                Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b"\r".to_vec()),
                Just(b".".to_vec()), Just(b"\0".to_vec()), Just(b"\r\n.\r".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ], 0..40),
            chunk in 1usize..64,
        ) {
            let mut body: Vec<u8> = parts.concat();
            body.extend_from_slice(b"\r\n");
            let mut wire = Vec::new();
            dot_stuff(&body, &mut wire);
            wire.extend_from_slice(b"QUIT\r\n");
            let (message, rest) = receive(&wire, chunk).expect("the end of data is found");
            prop_assert_eq!(message, body);
            prop_assert_eq!(rest, b"QUIT\r\n".to_vec());
        }

        /// Stuffing piece by piece gives the same bytes as stuffing the whole.
        #[test]
        fn stuffing_in_pieces_is_stuffing_the_whole(
            parts in proptest::collection::vec(prop_oneof![
                Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b"\r".to_vec()),
                Just(b".".to_vec()), proptest::collection::vec(any::<u8>(), 0..8),
            ], 0..40),
            cut in 1usize..32,
        ) {
            let message: Vec<u8> = parts.concat();
            let mut whole = Vec::new();
            dot_stuff(&message, &mut whole);
            let mut stuffer = DotStuffer::new();
            let mut pieces = Vec::new();
            for piece in message.chunks(cut) {
                stuffer.push(piece, &mut pieces);
            }
            stuffer.finish(&mut pieces);
            prop_assert_eq!(pieces, whole);
        }
    }
}

//! The raw scan of an HTTP/1 request head for the framing headers hyper hides: both
//! `Content-Length` and `Transfer-Encoding` in one head (see "Request smuggling" in
//! `docs/decisions.md`). Pure: bytes in, a [`HeadFraming`] out; no I/O. The
//! connection's [`super::watchdog`] feeds it the bytes it reads.

/// What the raw scan of one HTTP/1 request head found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFraming {
    /// Seen whole, from its request line to its blank line: at most one of
    /// `Content-Length` and `Transfer-Encoding`.
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding` (hyper hides the former): refuse.
    Ambiguous,
    /// Not seen whole: the head was read, at least in part, while an earlier request on
    /// the connection was in flight (pipelining), so the scan cannot vouch for it. A
    /// request with `Transfer-Encoding` must then be refused too (docs/protocol.md §10.4).
    Unseen,
}

/// Watches the raw bytes of one request head for the framing headers hyper normalises
/// away: with both `Content-Length` and `Transfer-Encoding`, hyper removes the length
/// before the service runs, and docs/protocol.md §10.4 wants such a request refused (400),
/// not forwarded. Only names at line starts are matched, case-insensitively; scanning stops
/// at the blank line that ends the head. No allocation: a fixed window of the current
/// line's first bytes.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    /// The first bytes of the current line (enough for the longest name we look for).
    line: [u8; 18],
    line_len: usize,
    /// Bytes seen in the current line (may exceed the window).
    line_bytes: usize,
    content_length: bool,
    transfer_encoding: bool,
    done: bool,
    /// The last bytes of the first line, to tell a request line (`... HTTP/1.1`) from
    /// the middle of a head whose start was read unscanned.
    first_tail: [u8; 10],
    /// Decided when the first line ends: whether it is a request line.
    first_line_is_request: Option<bool>,
}

impl HeadScan {
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        // Line by line rather than byte by byte: this sees every request head.
        while !self.done && !bytes.is_empty() {
            let (part, rest, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            let room = self.line.len() - self.line_len;
            for (slot, &b) in self.line[self.line_len..]
                .iter_mut()
                .zip(part.iter().take(room))
            {
                *slot = b.to_ascii_lowercase();
            }
            self.line_len += part.len().min(room);
            if self.first_line_is_request.is_none() {
                // Keep the last `first_tail.len()` bytes of the first line.
                let keep = self.first_tail.len();
                if part.len() >= keep {
                    self.first_tail.copy_from_slice(&part[part.len() - keep..]);
                } else {
                    self.first_tail.copy_within(part.len().., 0);
                    self.first_tail[keep - part.len()..].copy_from_slice(part);
                }
            }
            self.line_bytes += part.len();
            if ends {
                self.end_line();
            }
            bytes = rest;
        }
    }

    fn end_line(&mut self) {
        if self.first_line_is_request.is_none() {
            let tail = self
                .first_tail
                .strip_suffix(b"\r")
                .unwrap_or(&self.first_tail);
            self.first_line_is_request =
                Some(tail.ends_with(b" HTTP/1.1") || tail.ends_with(b" HTTP/1.0"));
        }
        let line = &self.line[..self.line_len];
        let blank = self.line_bytes == 0 || (self.line_bytes == 1 && line == b"\r");
        if blank {
            self.done = true;
        } else if line.starts_with(b"content-length:") || line.starts_with(b"content-length ") {
            self.content_length = true;
        } else if line.starts_with(b"transfer-encoding:") {
            self.transfer_encoding = true;
        }
        self.line_len = 0;
        self.line_bytes = 0;
    }

    fn is_ambiguous(&self) -> bool {
        self.content_length && self.transfer_encoding
    }

    pub(crate) fn result(&self) -> HeadFraming {
        if self.is_ambiguous() {
            HeadFraming::Ambiguous
        } else if self.done && self.first_line_is_request == Some(true) {
            HeadFraming::Clean
        } else {
            HeadFraming::Unseen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s.is_ambiguous()
    }

    #[test]
    fn head_scan_finds_both_framing_headers_across_reads() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nTRANSFER-enc",
            b"oding: chunked\r\ncontent-LENGTH: 5\r\n\r\n"
        ]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]));
        assert!(
            !scan(&[
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nContent-Length: 1\r\n"
            ]),
            "the body is not the head"
        );
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\nX: transfer-encoding:\r\n\r\n"
        ]));
    }

    #[test]
    fn head_scan_is_independent_of_how_reads_split_the_head() {
        let heads: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /a/very/long/path?q=1 HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\n",
            b"GET / HTTP/1.0\r\nX: y\r\n\r\nTransfer-Encoding: chunked\r\n",
            b"ngth: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"G\nTransfer-Encoding: x\nContent-Length: 1\n\n",
        ];
        for head in heads {
            let whole = {
                let mut s = HeadScan::default();
                s.feed(head);
                (s.is_ambiguous(), s.done, s.first_line_is_request)
            };
            let bytewise = {
                let mut s = HeadScan::default();
                for b in head.chunks(1) {
                    s.feed(b);
                }
                (s.is_ambiguous(), s.done, s.first_line_is_request)
            };
            assert_eq!(whole, bytewise, "{}", String::from_utf8_lossy(head));
            for at in 0..=head.len() {
                let mut s = HeadScan::default();
                s.feed(&head[..at]);
                s.feed(&head[at..]);
                let split = (s.is_ambiguous(), s.done, s.first_line_is_request);
                assert_eq!(whole, split, "split at {at}");
            }
        }
    }
}

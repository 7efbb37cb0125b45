//! The fuzz harnesses: what the `cargo fuzz` targets in `fuzz/` run, and
//! what `tests/fuzz_corpus.rs` replays their corpus through, so that a
//! corpus file or a crash reproducer checks exactly the same thing under
//! `cargo test` (stable, no libFuzzer) as under the fuzzer.
//!
//! - [`frame_codec`]: arbitrary bytes as a datagram body and as a stream
//!   cut at arbitrary points (`codec.rs`); pure, no I/O.
//! - [`server_session`]: arbitrary bytes as operations of one raw QUIC
//!   connection to a real in-process server, with a bystander client that
//!   must keep being served (`session.rs`).
//!
//! A harness reports a failure by panicking, as libFuzzer expects. Not part
//! of the library's API.

mod codec;
mod session;

pub use codec::frame_codec;
pub use session::server_session;

/// Reads a harness's choices from the fuzz input, front to back. Once the
/// input is used up every choice is zero (or empty), so any input, however
/// short, means something and a shorter input means less.
struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    fn new(data: &'a [u8]) -> Self {
        Choices { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of `0..n` (`n` at most 256).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// A length up to `max`: mostly small, now and then near `max`, so
    /// that limits get crossed without every input having to be long.
    fn len(&mut self, max: usize) -> usize {
        let b = usize::from(self.byte());
        let len = if b < 0xf0 {
            b
        } else {
            (b - 0xef) * max / 16 + self.below(16)
        };
        len.min(max)
    }

    /// Up to `max` bytes taken from the input as they are.
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = self.len(max).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    /// A number, mostly one of those that sit on a boundary.
    fn number(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX - u64::from(self.byte()),
            4 => u64::from(u32::from_le_bytes([
                self.byte(),
                self.byte(),
                self.byte(),
                self.byte(),
            ])),
            5 => u64::from_le_bytes(std::array::from_fn(|_| self.byte())),
            _ => u64::from(self.byte()),
        }
    }

    /// Text from the input (made valid UTF-8: invalid UTF-8 is what the raw
    /// byte operations are for), up to `max` bytes before that.
    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_run_out_into_zeros() {
        let mut c = Choices::new(&[7, 0xff, 1, 2]);
        assert_eq!(c.byte(), 7);
        assert!(c.flag());
        assert_eq!(c.bytes(10), &[2]);
        assert!(c.is_empty());
        assert_eq!((c.byte(), c.number(), c.text(9)), (0, 0, String::new()));
    }

    #[test]
    fn a_long_length_stays_under_its_maximum() {
        for b in 0..=255u8 {
            for extra in [0u8, 255] {
                assert!(Choices::new(&[b, extra]).len(300) <= 300);
            }
        }
    }
}

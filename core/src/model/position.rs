//! Line, column and character-offset lookups in a source text, each in
//! logarithmic time plus a short scan, so that positioning every node of a file
//! and every reference inside a long scalar stays linear in the file's size.

use crate::model::work;

/// Bytes per block of the character index.
const BLOCK: usize = 64;

/// An index of a source text's lines and characters.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceIndex {
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    /// Characters before each `BLOCK`-byte block, then the text's whole count
    /// (so the end of a text whose length is a multiple of `BLOCK` has its
    /// entry); empty when the text is ASCII (then characters are bytes).
    block_chars: Vec<usize>,
    /// Length of the text, in bytes.
    len: usize,
}

fn is_char_start(b: u8) -> bool {
    b & 0xC0 != 0x80
}

impl SourceIndex {
    pub(crate) fn new(source: &str) -> Self {
        let bytes = source.as_bytes();
        let line_starts = std::iter::once(0)
            .chain(newlines(bytes).map(|i| i + 1))
            .collect();
        let block_chars = if source.is_ascii() {
            Vec::new()
        } else {
            let mut chars = 0;
            let mut before: Vec<usize> = bytes
                .chunks(BLOCK)
                .map(|block| {
                    let before = chars;
                    chars += block.iter().filter(|b| is_char_start(**b)).count();
                    before
                })
                .collect();
            before.push(chars);
            before
        };
        Self {
            line_starts,
            block_chars,
            len: source.len(),
        }
    }

    /// Characters in `source[..byte]` (`byte` clamped to the text).
    pub(crate) fn chars_before(&self, source: &str, byte: usize) -> usize {
        let byte = byte.min(self.len).min(source.len());
        if self.block_chars.is_empty() {
            return byte;
        }
        let block = byte / BLOCK;
        let base = self.block_chars.get(block).copied().unwrap_or_default();
        let from = block * BLOCK;
        work::add(byte - from);
        base + source.as_bytes()[from..byte]
            .iter()
            .filter(|b| is_char_start(**b))
            .count()
    }

    /// Byte offset of the character with index `char_index` (the text's length
    /// when past its end).
    pub(crate) fn byte_of_char(&self, source: &str, char_index: usize) -> usize {
        if self.block_chars.is_empty() {
            return char_index.min(self.len);
        }
        let block = self
            .block_chars
            .partition_point(|&c| c <= char_index)
            .saturating_sub(1);
        let mut left = char_index - self.block_chars.get(block).copied().unwrap_or_default();
        let bytes = source.as_bytes();
        let mut at = block * BLOCK;
        while at < bytes.len() {
            work::add(1);
            if is_char_start(bytes[at]) {
                if left == 0 {
                    return at;
                }
                left -= 1;
            }
            at += 1;
        }
        bytes.len()
    }

    /// 1-based line of byte offset `byte`.
    pub(crate) fn line_of(&self, byte: usize) -> usize {
        self.line_starts.partition_point(|&ls| ls <= byte).max(1)
    }

    /// Byte offset where 1-based `line` starts.
    pub(crate) fn line_start(&self, line: usize) -> usize {
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.len)
    }

    /// 1-based line and column (in characters) of byte offset `byte`.
    pub(crate) fn line_column(&self, source: &str, byte: usize) -> (usize, usize) {
        let line = self.line_of(byte);
        let start = self.line_start(line);
        let column = self.chars_before(source, byte) - self.chars_before(source, start) + 1;
        (line, column)
    }
}

/// Offsets of every `\n`.
fn newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_agree_with_counting_characters() {
        let long = "é".repeat(100);
        // Found by fuzzing (`fuzz/`, pipeline_yaml): a non-ASCII text whose
        // length is a multiple of the block size, positioned at its very end.
        let mut block_sized = "name: p\ndescription: café ".to_owned();
        while block_sized.len() < 2 * BLOCK {
            block_sized.push('x');
        }
        for source in [
            "name: p\nstages: x\n".to_owned(),
            format!("a: {long}\nb: ü{long}x\n\nc: d"),
            block_sized,
        ] {
            let index = SourceIndex::new(&source);
            let ends = source.char_indices().map(|(b, _)| b);
            for byte in ends.chain([source.len()]) {
                let line = source[..byte].matches('\n').count() + 1;
                let line_start = source[..byte].rfind('\n').map_or(0, |i| i + 1);
                let column = source[line_start..byte].chars().count() + 1;
                assert_eq!(index.line_column(&source, byte), (line, column), "{byte}");
                let chars = source[..byte].chars().count();
                assert_eq!(index.chars_before(&source, byte), chars);
                assert_eq!(index.byte_of_char(&source, chars), byte);
            }
            let total = source.chars().count();
            assert_eq!(index.byte_of_char(&source, total), source.len());
            assert_eq!(index.byte_of_char(&source, total + 5), source.len());
        }
    }
}

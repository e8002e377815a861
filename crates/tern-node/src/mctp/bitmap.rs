//! A bitmap of frames (one bit per frame sequence number): the member's record of frames received, the
//! group leader's aggregate of frames NACKed. 4 GB in 1,400-byte frames is about 3.07 million frames, so
//! 384 KB at most.

use tern_wire::mctp::FrameRange;

/// One bit per frame, `len` frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
    set: u32,
}

impl Bitmap {
    /// `len` frames, none set.
    pub fn new(len: u32) -> Self {
        Bitmap {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            set: 0,
        }
    }

    /// Frames it covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Frames set.
    pub fn count(&self) -> u32 {
        self.set
    }

    /// Whether no frame is set.
    pub fn is_empty(&self) -> bool {
        self.set == 0
    }

    /// Whether every frame is set.
    pub fn is_full(&self) -> bool {
        self.set == self.len
    }

    /// Whether frame `index` is set (false past the end).
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Sets frame `index`; `true` if it was not set before (ignored past the end).
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.words[(index / 64) as usize] |= 1 << (index % 64);
        self.set += 1;
        true
    }

    /// Sets every frame of `range` that lies inside the bitmap.
    pub fn insert_range(&mut self, range: FrameRange) {
        if range.first >= self.len {
            return;
        }
        let last = range.last.min(self.len - 1);
        for index in range.first..=last {
            self.insert(index);
        }
    }

    /// The first set frame at or after `from`.
    pub fn next_set(&self, from: u32) -> Option<u32> {
        self.next_with(from, false)
    }

    /// The first frame not set at or after `from`.
    pub fn next_clear(&self, from: u32) -> Option<u32> {
        self.next_with(from, true)
    }

    fn next_with(&self, from: u32, clear: bool) -> Option<u32> {
        let mut index = from;
        while index < self.len {
            let word_index = (index / 64) as usize;
            let word = if clear {
                !self.words[word_index]
            } else {
                self.words[word_index]
            };
            let masked = word & (u64::MAX << (index % 64));
            if masked != 0 {
                let found = (word_index as u32) * 64 + masked.trailing_zeros();
                return (found < self.len).then_some(found);
            }
            index = (word_index as u32 + 1).saturating_mul(64);
        }
        None
    }

    /// The frames not set, as ascending disjoint ranges, at most `max_ranges` of them.
    pub fn clear_ranges(&self, max_ranges: usize) -> Vec<FrameRange> {
        let mut ranges = Vec::new();
        let mut from = 0;
        while ranges.len() < max_ranges {
            let Some(first) = self.next_clear(from) else {
                break;
            };
            let end = self.next_set(first).unwrap_or(self.len);
            ranges.push(FrameRange { first, last: end - 1 });
            from = end;
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_frames_come_out_as_ranges() {
        let mut bitmap = Bitmap::new(130);
        for index in 0..130 {
            if ![7, 19, 20, 64, 127, 128, 129].contains(&index) {
                bitmap.insert(index);
            }
        }
        assert_eq!(bitmap.count(), 123);
        let range = |first, last| FrameRange { first, last };
        assert_eq!(
            bitmap.clear_ranges(10),
            vec![range(7, 7), range(19, 20), range(64, 64), range(127, 129)]
        );
        assert_eq!(bitmap.clear_ranges(2), vec![range(7, 7), range(19, 20)]);
        assert_eq!(bitmap.next_set(127), None);
        assert!(!bitmap.insert(3), "already set");
        assert!(!bitmap.insert(130), "past the end");
        bitmap.insert_range(range(100, u32::MAX));
        assert!(!bitmap.is_full() && bitmap.count() == 126);
    }
}

//! A bitmap of frames (one bit per frame sequence number): the member's record of frames received. 4 GB
//! in 1,400-byte frames is about 3.07 million frames, so 384 KB at most.

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_clear_frames_are_found() {
        let mut bitmap = Bitmap::new(130);
        for index in 0..130 {
            if ![7, 19, 20, 64, 127, 128, 129].contains(&index) {
                bitmap.insert(index);
            }
        }
        assert_eq!(bitmap.count(), 123);
        let mut clear = Vec::new();
        let mut from = 0;
        while let Some(index) = bitmap.next_clear(from) {
            clear.push(index);
            from = index + 1;
        }
        assert_eq!(clear, vec![7, 19, 20, 64, 127, 128, 129]);
        assert_eq!(bitmap.next_set(127), None);
        assert_eq!(bitmap.next_set(64), Some(65));
        assert!(!bitmap.insert(3), "already set");
        assert!(!bitmap.insert(130), "past the end");
        assert!(!bitmap.is_full() && !bitmap.is_empty());
    }
}

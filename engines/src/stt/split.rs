//! A window's tokens cut into segments at its timestamp tokens, as faster-whisper's
//! `_split_segments_by_timestamps` does, and how far the next window starts.

/// One piece: its tokens (timestamps included) and its span in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub start: f64,
    pub end: f64,
    pub tokens: Vec<u32>,
}

/// Seconds a timestamp token steps.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames a timestamp token steps.
const INPUT_STRIDE: usize = 2;

/// Cuts `tokens` of the window at mel frame `seek` holding `size` frames (10 ms each); the
/// pieces and the frame the next window starts at.
pub fn split(tokens: &[u32], timestamp_begin: u32, seek: usize, size: usize) -> (Vec<Piece>, usize) {
    let offset = seek as f64 * 0.01;
    let ts = |t: u32| t >= timestamp_begin;
    let pos = |t: u32| (t - timestamp_begin) as usize;
    let n = tokens.len();
    let single_ending = n >= 2 && !ts(tokens[n - 2]) && ts(tokens[n - 1]);
    let mut slices: Vec<usize> = (1..n).filter(|&i| ts(tokens[i]) && ts(tokens[i - 1])).collect();
    if slices.is_empty() {
        // No pair: one piece over the window, ending at its last timestamp if it has one.
        let duration = match tokens.iter().rev().find(|&&t| ts(t)) {
            Some(&t) if t != timestamp_begin => pos(t) as f64 * TIME_PRECISION,
            _ => size as f64 * 0.01,
        };
        let piece = Piece {
            start: offset,
            end: offset + duration,
            tokens: tokens.to_vec(),
        };
        return (vec![piece], seek + size);
    }
    if single_ending {
        slices.push(n);
    }
    let mut pieces = Vec::new();
    let mut last = 0;
    for &cut in &slices {
        let t = &tokens[last..cut];
        pieces.push(Piece {
            start: offset + pos(t[0]) as f64 * TIME_PRECISION,
            end: offset + pos(t[t.len() - 1]) as f64 * TIME_PRECISION,
            tokens: t.to_vec(),
        });
        last = cut;
    }
    let next = if single_ending {
        seek + size
    } else {
        // The unfinished piece is decoded again from its start in the next window.
        seek + pos(tokens[last - 1]) * INPUT_STRIDE
    };
    (pieces, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u32 = 100;

    #[test]
    fn a_window_without_pairs_is_one_piece_to_its_last_timestamp() {
        let (p, next) = split(&[B, 1, 2, B + 184], B, 0, 368);
        assert_eq!(p.len(), 1);
        assert!((p[0].end - 3.68).abs() < 1e-9);
        assert_eq!(next, 368);
        let (p, _) = split(&[1, 2], B, 100, 300);
        assert_eq!((p[0].start, p[0].end), (1.0, 4.0));
    }

    #[test]
    fn pairs_cut_pieces_and_an_open_end_is_redone() {
        // <0.00> a <2.00><2.00> b <4.00> — ends on a single timestamp: the window is done.
        let t = [B, 1, B + 100, B + 100, 2, B + 200];
        let (p, next) = split(&t, B, 0, 400);
        assert_eq!(p.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(), vec![(0.0, 2.0), (2.0, 4.0)]);
        assert_eq!(p[1].tokens, vec![B + 100, 2, B + 200]);
        assert_eq!(next, 400);
        // <0.00> a <3.50><3.50> b (cut off): the next window starts at 3.50 s.
        let t = [B, 1, B + 175, B + 175, 2];
        let (p, next) = split(&t, B, 1000, 3000);
        assert_eq!(p.len(), 1);
        assert!((p[0].end - 13.5).abs() < 1e-9);
        assert_eq!(next, 1350);
    }
}

//! Samples encoded for clients: WAV (16-bit PCM), raw 16-bit little-endian PCM, and FLAC.

/// Clamped and scaled to 16 bits.
pub fn to_i16(pcm: &[f32]) -> Vec<i16> {
    pcm.iter().map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16).collect()
}

/// Raw 16-bit little-endian mono PCM (OpenAI's `pcm`).
pub fn pcm_s16le(pcm: &[f32]) -> Vec<u8> {
    to_i16(pcm).iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// The 44-byte RIFF header of 16-bit mono PCM; `data_len` of `u32::MAX` marks a stream of
/// unknown length, as streaming servers send it.
pub fn wav_header(rate: u32, data_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

/// A whole WAV file.
pub fn wav_i16(pcm: &[f32], rate: u32) -> Vec<u8> {
    let data = pcm_s16le(pcm);
    let mut out = wav_header(rate, data.len() as u32);
    out.extend_from_slice(&data);
    out
}

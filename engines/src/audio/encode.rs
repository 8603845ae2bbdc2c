//! Samples encoded for clients: WAV (16-bit PCM), raw 16-bit little-endian PCM, and FLAC.

use flacenc::component::BitRepr;
use flacenc::error::Verify;

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

/// A whole FLAC file of 16-bit mono samples (flacenc's default, fixed block size).
pub fn flac_i16(pcm: &[f32], rate: u32) -> Result<Vec<u8>, String> {
    let samples: Vec<i32> = to_i16(pcm).into_iter().map(i32::from).collect();
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| format!("FLAC encoder settings: {e:?}"))?;
    let source = flacenc::source::MemSource::from_samples(&samples, 1, 16, rate as usize);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size).map_err(|e| format!("FLAC encoding: {e:?}"))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| format!("FLAC writing: {e:?}"))?;
    let mut out = sink.as_slice().to_vec();
    // STREAMINFO's minimum block size excludes the last block (FLAC spec); flacenc counts the
    // short last block, and decoders such as symphonia then refuse the file. With a fixed block
    // size the minimum is the maximum.
    if out.len() >= 12 && &out[..4] == b"fLaC" {
        out.copy_within(10..12, 8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flac_and_wav_decode_back_to_the_samples() {
        let x: Vec<f32> = (0..30_000).map(|i| ((i as f32) * 0.01).sin() * 0.6).collect();
        let want: Vec<f32> = to_i16(&x).iter().map(|&s| s as f32 / 32768.0).collect();
        for (name, bytes) in [("a.flac", flac_i16(&x, 22_050).unwrap()), ("a.wav", wav_i16(&x, 22_050))] {
            let back = super::super::decode::decode(&bytes, Some(name), 22_050, 10.0).unwrap();
            assert_eq!(back, want, "{name}");
        }
        // A streamed wav (lengths unknown) reads too.
        let mut streamed = wav_header(22_050, u32::MAX);
        streamed.extend(pcm_s16le(&x));
        let back = super::super::decode::decode(&streamed, Some("s.wav"), 22_050, 10.0).unwrap();
        assert_eq!(back, want);
    }
}

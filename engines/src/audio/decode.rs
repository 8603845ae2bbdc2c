//! Audio files (wav, flac, mp3, ogg/vorbis, raw PCM in wav) decoded with symphonia to mono
//! f32, then resampled to the rate asked for.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::resample::resample;
use super::AudioError;

/// The containers and codecs `decode` reads, for error messages and catalogs.
pub const SUPPORTED: &str = "wav, flac, mp3, ogg (vorbis)";

/// Decodes `bytes` (`name_hint`, a file name or extension, helps the probe) to mono samples at
/// `rate` Hz, refusing more than `max_seconds` of audio.
pub fn decode(bytes: &[u8], name_hint: Option<&str>, rate: u32, max_seconds: f64) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let mut hint = Hint::new();
    if let Some(ext) = name_hint
        .and_then(|n| n.rsplit('.').next())
        .filter(|e| !e.is_empty() && e.len() <= 5)
    {
        hint.with_extension(&ext.to_ascii_lowercase());
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        // Gapless: the encoder's delay and padding (LAME's, Vorbis') trimmed, so times line up.
        .format(
            &hint,
            mss,
            &FormatOptions {
                enable_gapless: true,
                ..Default::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unsupported(format!("not a container this server reads ({SUPPORTED}): {e}")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Unsupported("the file has no audio track".into()))?;
    if track.codec_params.codec == CODEC_TYPE_OPUS {
        return Err(AudioError::Unsupported(format!(
            "Opus audio is not decoded by this server (no well-kept pure-Rust Opus decoder); send {SUPPORTED}"
        )));
    }
    let track_id = track.id;
    let source_rate = track.codec_params.sample_rate;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(format!("{e}; send {SUPPORTED}")))?;
    let mut mono: Vec<f32> = Vec::new();
    let mut spec_rate = source_rate;
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet is skipped, as players do; a file of nothing else is refused below.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        let spec = *decoded.spec();
        spec_rate = Some(spec.rate);
        let channels = spec.channels.count().max(1);
        let b = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            _ => buf.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        b.copy_interleaved_ref(decoded);
        // Channels averaged into one.
        mono.extend(b.samples().chunks(channels).map(|f| f.iter().sum::<f32>() / channels as f32));
        let rate_now = spec.rate.max(1) as f64;
        if mono.len() as f64 / rate_now > max_seconds {
            return Err(AudioError::TooLong {
                seconds: mono.len() as f64 / rate_now,
                limit: max_seconds,
            });
        }
    }
    if mono.is_empty() {
        return Err(AudioError::Empty);
    }
    let from = spec_rate.ok_or_else(|| AudioError::Corrupt("no sample rate".into()))?;
    resample(&mono, from, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_empty_and_too_long_are_refused_by_name() {
        assert!(matches!(decode(&[], None, 16_000, 60.0), Err(AudioError::Empty)));
        let junk = vec![0x5a; 4096];
        assert!(matches!(
            decode(&junk, Some("x.wav"), 16_000, 60.0),
            Err(AudioError::Unsupported(_))
        ));
        let wav = super::super::encode::wav_i16(&vec![0.1; 32_000], 16_000);
        assert!(matches!(decode(&wav, Some("a.wav"), 16_000, 1.0), Err(AudioError::TooLong { .. })));
        assert_eq!(decode(&wav, Some("a.wav"), 16_000, 3.0).unwrap().len(), 32_000);
    }

    #[test]
    fn a_truncated_wav_yields_what_it_holds() {
        let wav = super::super::encode::wav_i16(&vec![0.25; 16_000], 16_000);
        let got = decode(&wav[..wav.len() / 2], None, 16_000, 60.0).unwrap();
        assert!(!got.is_empty() && got.len() < 16_000);
        assert!(got.iter().all(|s| (s - 0.25).abs() < 1e-3));
    }
}

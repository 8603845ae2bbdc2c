#!/usr/bin/env bash
# Makes the speech test clips (16 kHz mono 16-bit wav) with espeak-ng and sox (Debian packages),
# plus the same first clip as flac, mp3 and ogg/vorbis for the decoders. Run once; the clips are
# committed (another espeak-ng version would speak them differently).
#   models/tests/data/speech/make_clips.sh
set -euo pipefail
cd "$(dirname "$0")"
say() { # say NAME VOICE TEXT
  espeak-ng -v "$2" -w "/tmp/clip-$1.wav" "$3"
  sox "/tmp/clip-$1.wav" -r 16000 -c 1 -b 16 "$1.wav"
  rm "/tmp/clip-$1.wav"
}
say hello en-us "Hello world. The quick brown fox jumps over the lazy dog."
say system en-us "Hello world. This is a test of the speech recognition system."
say meeting en-us "The meeting starts at nine thirty on Tuesday, and ends at noon."
say french fr "Bonjour tout le monde. Ceci est un essai de reconnaissance vocale."
say german de "Guten Morgen. Wie geht es dir heute? Das Wetter ist schön."
# About 50 seconds: more than one 30 second window.
say long en-us "$(printf '%s ' \
  "Once upon a time there was a small village at the foot of a mountain." \
  "Every morning the baker opened his shop and the smell of fresh bread filled the street." \
  "The children walked to school along the river, counting the boats that passed by." \
  "In the afternoon the farmers brought their vegetables to the market square." \
  "One day a stranger arrived with a map of a forgotten road over the mountain." \
  "He asked the baker for directions, and the baker drew a path on the back of a receipt." \
  "The next morning the stranger was gone, but the map stayed on the counter." \
  "Years later the children followed that road and found a lake of clear blue water." \
  "They built a small hut on its shore and spent every summer there." \
  "That is how the village got its name, the village by the hidden lake.")"
sox hello.wav hello.flac
sox hello.wav hello.mp3
sox hello.wav hello.ogg
ls -la ./*.wav ./*.flac ./*.mp3 ./*.ogg

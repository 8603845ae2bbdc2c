//! Whisper's language codes and the English names OpenAI's `verbose_json` reports.

const LANGUAGES: &str = "en english|zh chinese|de german|es spanish|ru russian|ko korean|fr french|ja japanese|\
pt portuguese|tr turkish|pl polish|ca catalan|nl dutch|ar arabic|sv swedish|it italian|id indonesian|hi hindi|\
fi finnish|vi vietnamese|he hebrew|uk ukrainian|el greek|ms malay|cs czech|ro romanian|da danish|hu hungarian|\
ta tamil|no norwegian|th thai|ur urdu|hr croatian|bg bulgarian|lt lithuanian|la latin|mi maori|ml malayalam|\
cy welsh|sk slovak|te telugu|fa persian|lv latvian|bn bengali|sr serbian|az azerbaijani|sl slovenian|kn kannada|\
et estonian|mk macedonian|br breton|eu basque|is icelandic|hy armenian|ne nepali|mn mongolian|bs bosnian|\
kk kazakh|sq albanian|sw swahili|gl galician|mr marathi|pa punjabi|si sinhala|km khmer|sn shona|yo yoruba|\
so somali|af afrikaans|oc occitan|ka georgian|be belarusian|tg tajik|sd sindhi|gu gujarati|am amharic|\
yi yiddish|lo lao|uz uzbek|fo faroese|ht haitian creole|ps pashto|tk turkmen|nn nynorsk|mt maltese|\
sa sanskrit|lb luxembourgish|my myanmar|bo tibetan|tl tagalog|mg malagasy|as assamese|tt tatar|haw hawaiian|\
ln lingala|ha hausa|ba bashkir|jw javanese|su sundanese|yue cantonese";

/// `fr` → `french`.
pub fn language_name(code: &str) -> Option<&'static str> {
    LANGUAGES
        .split('|')
        .filter_map(|e| e.split_once(' '))
        .find(|(c, _)| *c == code)
        .map(|(_, n)| n)
}

/// `french` → `fr`; a code is returned as it is.
pub fn language_code(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    LANGUAGES
        .split('|')
        .filter_map(|e| e.split_once(' '))
        .find(|(c, n)| *n == name || *c == name)
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_map_to_names() {
        assert_eq!(super::language_name("fr"), Some("french"));
        assert_eq!(super::language_name("yue"), Some("cantonese"));
        assert_eq!(super::language_name("ht"), Some("haitian creole"));
        assert_eq!(super::language_name("xx"), None);
        assert_eq!(super::language_code("French"), Some("fr"));
        assert_eq!(super::language_code("de"), Some("de"));
    }
}

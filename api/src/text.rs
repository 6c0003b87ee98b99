//! Text hygiene for what one user writes and others read: display names, room topics and
//! chat messages. Control characters could break other clients' rendering or logs, and
//! bidirectional overrides can make a name or message display as something it is not
//! (`"evil\u{202E}gnp.exe"` shows as `evilexe.png`). Names and topics refuse them;
//! messages have them stripped (a pasted message should still go through) and keep
//! line breaks and tabs. A name made only of invisible characters is refused, as it
//! would impersonate "nobody".
//!
//! Every path that accepts such text calls these functions: the profile and room
//! handlers, and the chat rules in [`crate::chat`] (HTTP and socket).

/// Why a text was refused; the handler maps it to a 400 with its own code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty or only invisible characters")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must not contain control or text-direction characters")]
    Forbidden,
}

/// Bidirectional formatting characters: embeddings, overrides, isolates and marks.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Characters that render as nothing (besides whitespace): zero-width spaces and joiners,
/// fillers, blank glyphs, variation selectors, tags and the like. Allowed next to visible
/// characters (emoji sequences need the joiner), never on their own.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || is_bidi_control(c)
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{206A}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{1D159}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// A one-line label (display name, room topic): trimmed, 1 to `max` characters, no
/// control or bidirectional characters, at least one visible character.
pub fn clean_label(raw: &str, max: usize) -> Result<String, TextError> {
    let t = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    if t.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(TextError::Forbidden);
    }
    if t.chars().all(is_invisible) {
        return Err(TextError::Empty);
    }
    if t.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    Ok(t.to_owned())
}

/// A display name (see [`clean_label`]).
pub fn clean_name(raw: &str, max: usize) -> Result<String, TextError> {
    clean_label(raw, max)
}

/// A room topic (see [`clean_label`]).
pub fn clean_topic(raw: &str, max: usize) -> Result<String, TextError> {
    clean_label(raw, max)
}

/// A chat message: control characters other than line feed and tab, and bidirectional
/// formatting characters, are removed (`\r\n` becomes `\n`); the rest is trimmed and must
/// hold a visible character and be at most `max` characters.
pub fn clean_message(raw: &str, max: usize) -> Result<String, TextError> {
    let kept: String = raw
        .chars()
        .filter(|&c| !is_bidi_control(c) && (!c.is_control() || c == '\n' || c == '\t'))
        .collect();
    let t = kept.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    if t.chars().all(is_invisible) {
        return Err(TextError::Empty);
    }
    if t.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_refuse_controls_and_direction_overrides() {
        assert_eq!(clean_label("  Alice ", 64).as_deref(), Ok("Alice"));
        for bad in [
            "a\u{202E}gnp.exe",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\nb",
            "a\u{7}b",
            "a\u{1b}[31mred",
            "a\u{85}b",
        ] {
            assert_eq!(clean_label(bad, 64), Err(TextError::Forbidden), "{bad:?}");
        }
    }

    #[test]
    fn labels_of_only_invisible_characters_are_refused() {
        for bad in [
            "",
            "   ",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}",
            "\u{3164}",
            "\u{2800}\u{2800}",
            "\u{FEFF}",
            "\u{00A0}\u{3000}",
            "\u{E0041}\u{E0042}",
        ] {
            assert_eq!(clean_label(bad, 64), Err(TextError::Empty), "{bad:?}");
        }
        // Joiners inside an emoji sequence are fine next to visible characters.
        assert!(clean_label("👨\u{200D}👩\u{200D}👧", 64).is_ok());
        assert!(clean_label("Zoë ✨", 64).is_ok());
    }

    #[test]
    fn labels_are_bounded_in_characters_not_bytes() {
        assert!(clean_label(&"é".repeat(64), 64).is_ok());
        assert_eq!(
            clean_label(&"é".repeat(65), 64),
            Err(TextError::TooLong { max: 64 })
        );
    }

    #[test]
    fn messages_lose_controls_and_overrides_but_keep_lines_and_tabs() {
        assert_eq!(
            clean_message("hi\r\nthere\u{202E}\u{1b}[2J\tok\u{0}", 100).as_deref(),
            Ok("hi\nthere[2J\tok")
        );
        assert_eq!(
            clean_message(" \u{202E}\u{200B} \n", 100),
            Err(TextError::Empty)
        );
        assert_eq!(
            clean_message(&"x".repeat(11), 10),
            Err(TextError::TooLong { max: 10 })
        );
    }
}

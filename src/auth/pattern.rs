//! Room patterns, with NATS subjects' rules.
//!
//! A room name is a list of `.`-separated tokens (`game.lobby.1`). In a
//! pattern, `*` matches exactly one token and `>` (only as the last token)
//! matches one or more trailing tokens; every other token matches itself.
//! A wildcard is a whole token: `game.lob*` is refused rather than read as
//! a literal, since it is almost certainly a mistake.

use std::fmt;

/// One token of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `*`: any one token.
    One,
    /// `>`: one or more tokens, up to the end.
    Rest,
}

/// A compiled room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Box<[Token]>,
    text: Box<str>,
}

/// Why a pattern could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("empty pattern")]
    Empty,
    /// `>` appears before the last token.
    #[error("pattern '{0}': '>' may only be the last token")]
    RestNotLast(String),
    /// `*` or `>` is part of a longer token.
    #[error("pattern '{0}': '*' and '>' must be whole tokens")]
    PartialWildcard(String),
    /// Longer than any room name can be.
    #[error("pattern of {0} bytes is over the limit of {max} bytes", max = crate::wire::MAX_NAME_LEN)]
    TooLong(usize),
}

impl Pattern {
    /// Compiles a pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > crate::wire::MAX_NAME_LEN {
            return Err(PatternError::TooLong(text.len()));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let last = parts.len() - 1;
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            tokens.push(match part {
                "*" => Token::One,
                ">" if i == last => Token::Rest,
                ">" => return Err(PatternError::RestNotLast(text.to_string())),
                _ if part.contains(['*', '>']) => {
                    return Err(PatternError::PartialWildcard(text.to_string()))
                }
                literal => Token::Literal(literal.into()),
            });
        }
        Ok(Pattern {
            tokens: tokens.into(),
            text: text.into(),
        })
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &str) -> bool {
        let mut parts = room.split('.');
        for token in self.tokens.iter() {
            match (token, parts.next()) {
                (_, None) => return false,
                (Token::Rest, Some(_)) => return true,
                (Token::One, Some(_)) => {}
                (Token::Literal(literal), Some(part)) => {
                    if **literal != *part {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pattern::parse(text)
    }
}

/// The first token of a room name: its namespace (`game` for `game.lobby.1`).
pub fn namespace_of(room: &str) -> &str {
    room.split('.').next().unwrap_or(room)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(pattern: &str, room: &str) -> bool {
        Pattern::parse(pattern)
            .expect("valid pattern")
            .matches(room)
    }

    #[test]
    fn literals_match_only_themselves() {
        assert!(matches("game.lobby", "game.lobby"));
        assert!(!matches("game.lobby", "game.lobby.1"));
        assert!(!matches("game.lobby", "game"));
        assert!(!matches("game.lobby", "game.lobbyx"));
        assert!(matches("chat", "chat"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("game.*", "game.lobby"));
        assert!(!matches("game.*", "game"));
        assert!(!matches("game.*", "game.lobby.1"));
        assert!(matches("*.lobby.*", "game.lobby.1"));
        assert!(!matches("*.lobby.*", "game.hall.1"));
        assert!(matches("*", "anything"));
        assert!(!matches("*", "two.tokens"));
    }

    #[test]
    fn rest_matches_one_or_more_trailing_tokens() {
        assert!(matches("game.>", "game.lobby"));
        assert!(matches("game.>", "game.lobby.1.2"));
        assert!(!matches("game.>", "game"));
        assert!(!matches("game.>", "chat.lobby"));
        assert!(matches(">", "a"));
        assert!(matches(">", "a.b.c"));
        assert!(matches("*.>", "a.b"));
        assert!(!matches("*.>", "a"));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_reason() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse("a.>.b"),
            Err(PatternError::RestNotLast(_))
        ));
        assert!(matches!(
            Pattern::parse("game.lob*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a>"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse(&"a".repeat(256)),
            Err(PatternError::TooLong(256))
        ));
    }

    #[test]
    fn the_namespace_is_the_first_token() {
        assert_eq!(namespace_of("game.lobby.1"), "game");
        assert_eq!(namespace_of("chat"), "chat");
        assert_eq!(namespace_of(".x"), "");
    }

    /// The rules written the obvious way: recursion over token lists.
    fn reference(pattern: &[&str], room: &[&str]) -> bool {
        match (pattern.split_first(), room.split_first()) {
            (None, None) => true,
            (Some((&">", [])), Some(_)) => true,
            (Some((&"*", rest)), Some((_, room_rest))) => reference(rest, room_rest),
            (Some((literal, rest)), Some((token, room_rest))) => {
                literal == token && reference(rest, room_rest)
            }
            _ => false,
        }
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("ab".to_string()),
            Just(String::new()),
        ]
    }

    fn pattern_token() -> impl Strategy<Value = String> {
        prop_oneof![token(), Just("*".to_string())]
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(
            mut pattern in prop::collection::vec(pattern_token(), 1..5),
            rest in any::<bool>(),
            room in prop::collection::vec(token(), 1..6),
        ) {
            if rest {
                pattern.push(">".to_string());
            }
            let text = pattern.join(".");
            let Ok(compiled) = Pattern::parse(&text) else {
                // Only the empty pattern can fail here: one empty token.
                prop_assert_eq!(text, "");
                return Ok(());
            };
            let room_text = room.join(".");
            let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
            let room: Vec<&str> = room.iter().map(String::as_str).collect();
            prop_assert_eq!(compiled.matches(&room_text), reference(&pattern, &room));
        }
    }
}

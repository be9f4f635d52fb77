//! The lexer of the IR text format: turns source text into [`Token`]s with 1-based line and
//! column (counted in characters). Newlines are tokens, because the format is line-oriented.
//! A comment `# at FILE:LINE:COL` becomes a [`Tok::Loc`] token; every other comment is dropped.

use super::ParseError;
use crate::graph::SourceLoc;

/// A token kind with its text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// `graph`, `f32`, `matmul`, `true`, `NaN`: a letter or `_`, then letters, digits, `_`, `.`.
    Ident(String),
    /// A number as written (`64`, `-0.05`, `1e-7`, `-inf`), converted by the parser.
    Number(String),
    /// A value reference `%NAME` or `%N`, without the `%`.
    Value(String),
    /// One of `: = , [ ] ( ) { }`.
    Punct(char),
    /// `<-`
    Arrow,
    /// A `# at FILE:LINE:COL` comment.
    Loc(SourceLoc),
    /// End of a line.
    Newline,
    /// End of the input.
    Eof,
}

impl Tok {
    /// How the token is named in "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Number(s) => format!("`{s}`"),
            Tok::Value(s) => format!("`%{s}`"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Arrow => "`<-`".to_string(),
            Tok::Loc(_) => "a `# at` location comment".to_string(),
            Tok::Newline => "end of line".to_string(),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    /// What it is.
    pub tok: Tok,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// Splits `src` into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn lex(src: &str, file: &str) -> Result<Vec<Token>, ParseError> {
    // A UTF-8 byte order mark (some editors write one) is not part of the text.
    let chars: Vec<char> = src
        .strip_prefix('\u{feff}')
        .unwrap_or(src)
        .chars()
        .collect();
    let mut toks = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    while let Some(&c) = chars.get(i) {
        let (start_line, start_col) = (line, col);
        let start = i;
        let mut push = |tok: Tok| {
            toks.push(Token {
                tok,
                line: start_line,
                col: start_col,
            })
        };
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' | '\r' => i += 1,
            '\n' => {
                push(Tok::Newline);
                i += 1;
                line += 1;
                col = 1;
                continue;
            }
            '#' => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
                let text: String = chars[start + 1..i].iter().collect();
                if let Some(loc) = parse_loc_comment(&text) {
                    push(Tok::Loc(loc));
                }
            }
            '%' => {
                i += 1;
                while chars.get(i).copied().is_some_and(is_word_char) {
                    i += 1;
                }
                if i == start + 1 {
                    return Err(ParseError::new(
                        file,
                        line,
                        col,
                        format!(
                            "expected a value name after `%`, found {}",
                            describe_char(next)
                        ),
                    ));
                }
                push(Tok::Value(chars[start + 1..i].iter().collect()));
            }
            '<' if next == Some('-') => {
                i += 2;
                push(Tok::Arrow);
            }
            ':' | '=' | ',' | '[' | ']' | '(' | ')' | '{' | '}' => {
                i += 1;
                push(Tok::Punct(c));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while chars.get(i).copied().is_some_and(is_word_char) {
                    i += 1;
                }
                push(Tok::Ident(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit()
                || c == '.'
                || ((c == '-' || c == '+') && next.is_some_and(is_word_char)) =>
            {
                i += 1;
                loop {
                    match chars.get(i).copied() {
                        Some(d) if is_word_char(d) => i += 1,
                        // an exponent sign: `1e-7`, `2.5E+3`
                        Some('-' | '+') if matches!(chars.get(i - 1), Some('e' | 'E')) => i += 1,
                        _ => break,
                    }
                }
                push(Tok::Number(chars[start..i].iter().collect()));
            }
            other => {
                return Err(ParseError::new(
                    file,
                    line,
                    col,
                    format!("unexpected character {}", describe_char(Some(other))),
                ))
            }
        }
        col += (i - start) as u32;
    }
    toks.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(toks)
}

fn describe_char(c: Option<char>) -> String {
    match c {
        None => "end of file".to_string(),
        Some('\n') => "end of line".to_string(),
        Some(c) => format!("{c:?}"),
    }
}

/// `" at FILE:LINE:COL"` (the text after `#`) as a location, or `None` for an ordinary comment.
/// The file may itself contain `:`; line and column are the last two fields.
fn parse_loc_comment(text: &str) -> Option<SourceLoc> {
    let rest = text.trim().strip_prefix("at ")?;
    let mut parts = rest.rsplitn(3, ':');
    let column = parts.next()?.trim().parse().ok()?;
    let line = parts.next()?.trim().parse().ok()?;
    let file = parts.next()?.trim();
    if file.is_empty() {
        return None;
    }
    Some(SourceLoc {
        file: file.to_string(),
        line,
        column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        lex(src, "t.ir")
            .map(|v| v.into_iter().map(|t| t.tok).collect())
            .unwrap_or_default()
    }

    #[test]
    fn lexes_numbers_values_and_locations() {
        assert_eq!(
            kinds("%x: f32[2] = const -1e-7 # at a.rs:3:4\n"),
            vec![
                Tok::Value("x".into()),
                Tok::Punct(':'),
                Tok::Ident("f32".into()),
                Tok::Punct('['),
                Tok::Number("2".into()),
                Tok::Punct(']'),
                Tok::Punct('='),
                Tok::Ident("const".into()),
                Tok::Number("-1e-7".into()),
                Tok::Loc(SourceLoc {
                    file: "a.rs".into(),
                    line: 3,
                    column: 4
                }),
                Tok::Newline,
                Tok::Eof,
            ]
        );
        assert_eq!(
            kinds("%w <- %3 # just a comment"),
            vec![
                Tok::Value("w".into()),
                Tok::Arrow,
                Tok::Value("3".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn skips_a_byte_order_mark_and_carriage_returns() {
        assert_eq!(
            kinds("\u{feff}graph\r\n"),
            vec![Tok::Ident("graph".into()), Tok::Newline, Tok::Eof]
        );
    }

    #[test]
    fn reports_bad_characters_with_position() {
        let e = lex("graph g {\n  @", "t.ir").err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("t.ir:2:3: unexpected character '@'".to_string())
        );
    }
}

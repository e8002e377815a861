//! The part of RFC 8941 (Structured Field Values) that targeted cache-control fields need (RFC 9213
//! section 2.1): a Dictionary of Items and Inner Lists, with parameters parsed and discarded. A parse
//! failure anywhere makes the whole field invalid, as RFC 8941 section 4.2 requires.

/// A member value, reduced to what cache directives use.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `sf-integer` (at most 15 digits).
    Integer(i64),
    /// `sf-decimal`.
    Decimal(f64),
    /// `sf-string`, unescaped.
    String(String),
    /// `sf-token`.
    Token(String),
    /// `sf-binary` (content not decoded: no directive uses one).
    Binary,
    /// `sf-boolean`, or a member given without a value.
    Boolean(bool),
    /// An Inner List; its String and Token items as text (others dropped).
    InnerList(Vec<String>),
}

/// Parses an `sf-dictionary`; `None` if the text is not one. Members keep their order; a key given twice
/// appears twice (the caller lets the last one win).
pub fn dictionary(text: &str) -> Option<Vec<(&str, Item)>> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    parser.skip_sp();
    let mut members = Vec::new();
    if parser.at == parser.bytes.len() {
        return Some(members);
    }
    loop {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            if parser.peek() == Some(b'(') {
                parser.inner_list()?
            } else {
                parser.bare_item()?
            }
        } else {
            Item::Boolean(true)
        };
        parser.parameters()?;
        members.push((key, value));
        parser.skip_ows();
        if parser.at == parser.bytes.len() {
            return Some(members);
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip_ows();
        if parser.at == parser.bytes.len() {
            return None; // trailing comma
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn key(&mut self) -> Option<&'a str> {
        let start = self.at;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.at += 1,
            _ => return None,
        }
        while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')) {
            self.at += 1;
        }
        Some(&self.text[start..self.at])
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn inner_list(&mut self) -> Option<Item> {
        self.eat(b'(');
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                self.parameters()?;
                return Some(Item::InnerList(items));
            }
            match self.bare_item()? {
                Item::String(text) | Item::Token(text) => items.push(text),
                _ => {}
            }
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.at += 1;
                match self.peek()? {
                    b'0' => {
                        self.at += 1;
                        Some(Item::Boolean(false))
                    }
                    b'1' => {
                        self.at += 1;
                        Some(Item::Boolean(true))
                    }
                    _ => None,
                }
            }
            b':' => {
                self.at += 1;
                while matches!(
                    self.peek(),
                    Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=')
                ) {
                    self.at += 1;
                }
                self.eat(b':').then_some(Item::Binary)
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                let start = self.at;
                self.at += 1;
                while self.peek().is_some_and(|b| is_tchar(b) || b == b':' || b == b'/') {
                    self.at += 1;
                }
                Some(Item::Token(self.text[start..self.at].to_string()))
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Item> {
        let start = self.at;
        self.eat(b'-');
        let digits_start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let integer_digits = self.at - digits_start;
        if integer_digits == 0 {
            return None;
        }
        if !self.eat(b'.') {
            if integer_digits > 15 {
                return None;
            }
            return self.text[start..self.at].parse().ok().map(Item::Integer);
        }
        let fraction_start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let fraction_digits = self.at - fraction_start;
        if integer_digits > 12 || fraction_digits == 0 || fraction_digits > 3 {
            return None;
        }
        self.text[start..self.at].parse().ok().map(Item::Decimal)
    }

    fn string(&mut self) -> Option<Item> {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            match self.peek()? {
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        byte @ (b'"' | b'\\') => out.push(byte as char),
                        _ => return None,
                    }
                    self.at += 1;
                }
                b'"' => {
                    self.at += 1;
                    return Some(Item::String(out));
                }
                byte @ 0x20..=0x7e => {
                    out.push(byte as char);
                    self.at += 1;
                }
                _ => return None,
            }
        }
    }
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn members_of_each_type() {
        let parsed = dictionary(r#"a=1, b=-2.5, c="x\"y", d=tok/en, e=:AAE=:, f=?0, g, h=("p" q);z"#).expect("valid");
        assert_eq!(
            parsed,
            vec![
                ("a", Item::Integer(1)),
                ("b", Item::Decimal(-2.5)),
                ("c", Item::String("x\"y".into())),
                ("d", Item::Token("tok/en".into())),
                ("e", Item::Binary),
                ("f", Item::Boolean(false)),
                ("g", Item::Boolean(true)),
                ("h", Item::InnerList(vec!["p".into(), "q".into()])),
            ]
        );
        assert_eq!(dictionary("  ").map(|d| d.len()), Some(0));
    }

    #[test]
    fn invalid_dictionaries() {
        for text in [
            "A=1",
            "a=",
            "a=1,",
            "a=1 b=2",
            "a=\"unterminated",
            "a=?2",
            "a=(1",
            "1a=1",
            "a=1.2345",
        ] {
            assert!(dictionary(text).is_none(), "{text}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "[ -~]{0,40}") {
            let _ = dictionary(&text);
        }
    }
}

//! Form bodies as browsers send them (`application/x-www-form-urlencoded`, WHATWG URL standard §5): `name=value`
//! pairs joined by `&`, `+` for a space and `%XX` for any other byte. A name may repeat (a checkbox list).

/// Most fields a form may carry (the admin listener already bounds the body's size).
pub const MAX_FIELDS: usize = 4096;

/// Why a body is not a form the UI takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// More than [`MAX_FIELDS`] fields.
    #[error("the form has more than {MAX_FIELDS} fields")]
    TooManyFields,
    /// A name or value is not UTF-8 once decoded.
    #[error("the form is not UTF-8")]
    NotUtf8,
}

/// A decoded form: its fields in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Decodes a form body.
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let text = std::str::from_utf8(body).map_err(|_| FormError::NotUtf8)?;
        let mut fields = Vec::new();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            if fields.len() == MAX_FIELDS {
                return Err(FormError::TooManyFields);
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            fields.push((decode(name)?, decode(value)?));
        }
        Ok(Form { fields })
    }

    /// The first value of `name`, as sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name`, trimmed; `None` when it is missing or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|value| !value.is_empty())
    }

    /// Every value of `name` (the checked boxes of a list), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Undoes `+` and `%XX`; a `%` not followed by two hex digits stays as it is (as browsers parse it).
fn decode(text: &str) -> Result<String, FormError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = match (byte, bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(high), Some(low)) => hex_value(*high).zip(hex_value(*low)),
            _ => None,
        };
        match (byte, escaped) {
            (_, Some((high, low))) => {
                out.push(high << 4 | low);
                index += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                index += 1;
            }
            (other, None) => {
                out.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_a_browser_sends() {
        let form =
            Form::parse(b"kind=rollback&site=www&staging=%2Fsrv%2Fmy+site&node=a&node=b&empty=&flag").expect("form");
        assert_eq!(form.get("kind"), Some("rollback"));
        assert_eq!(form.get("staging"), Some("/srv/my site"));
        assert_eq!(form.all("node").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(form.get("empty"), Some(""));
        assert_eq!(form.text("empty"), None, "blank is missing");
        assert_eq!(form.get("flag"), Some(""));
        assert_eq!(form.get("absent"), None);
        assert_eq!(Form::parse(b"a=%C3%A9t%C3%A9").expect("utf-8").get("a"), Some("été"));
        assert_eq!(
            Form::parse(b"a=100%25&b=%zz%4").expect("stray %").get("b"),
            Some("%zz%4")
        );
    }

    #[test]
    fn refuses_what_is_not_a_form() {
        assert_eq!(Form::parse(b"a=%FF"), Err(FormError::NotUtf8));
        assert_eq!(Form::parse(&[0xC3]), Err(FormError::NotUtf8));
        let many = "a=1&".repeat(MAX_FIELDS + 1);
        assert_eq!(Form::parse(many.as_bytes()), Err(FormError::TooManyFields));
        assert!(Form::parse("a=1&".repeat(MAX_FIELDS).as_bytes()).is_ok());
    }
}

//! Comma-separated field values (RFC 9110 section 5.6.1), where a comma inside a quoted string is not a
//! separator.

/// Splits `text` on commas outside double quotes, trimming each member and dropping empty ones.
pub fn split(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (index, ch) in text.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_commas_stay() {
        assert_eq!(super::split(" a, \"b,c\" ,,d"), vec!["a", "\"b,c\"", "d"]);
    }
}

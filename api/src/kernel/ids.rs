//! Ids as the JSON API writes them: 32 hex digits.

pub(crate) fn hex_id(id: u128) -> String {
    format!("{id:032x}")
}

pub(crate) fn parse_id(s: &str) -> Option<u128> {
    (s.len() == 32)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

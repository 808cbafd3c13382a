//! Passwords out of what is logged: a URL's `user:password@` may come
//! from a configuration (`storage`, `fetchers`, `dbname`), and the start-up
//! dump of the settings and the messages that name a URL must not carry it.

/// `text` with the password of every `scheme://user:password@host` in it
/// replaced by `***`. A URL ends at white space or a comma (the lists of
/// `storage` and `fetchers`); its user part ends at the last `@` before the
/// host's `/`.
pub fn passwords_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let url_end = after
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(after.len());
        let authority_end = after[..url_end].find('/').unwrap_or(url_end);
        let authority = &after[..authority_end];
        match authority
            .rsplit_once('@')
            .and_then(|(user, host)| Some((user.split_once(':')?.0, host)))
        {
            Some((name, host)) => {
                out.push_str(name);
                out.push_str(":***@");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::passwords_in;

    #[test]
    fn every_url_password_is_replaced_and_nothing_else() {
        for (text, shown) in [
            (
                "postgresql://f:secret@db/tlsrpt --day_end_grace 60",
                "postgresql://f:***@db/tlsrpt --day_end_grace 60",
            ),
            (
                "sqlite:///var/lib/x.sqlite,postgresql://c:p%20w@db:5432/t?sslmode=require",
                "sqlite:///var/lib/x.sqlite,postgresql://c:***@db:5432/t?sslmode=require",
            ),
            (
                "ssh mx2 tlsrpt-fetcher --storage postgres://f:a@b@db/t, tlsrpt-fetcher",
                "ssh mx2 tlsrpt-fetcher --storage postgres://f:***@db/t, tlsrpt-fetcher",
            ),
            ("postgresql://user@db/t", "postgresql://user@db/t"),
            ("https://example.org/a:b@c", "https://example.org/a:b@c"),
            ("no url here: a:b@c", "no url here: a:b@c"),
            ("", ""),
        ] {
            assert_eq!(passwords_in(text), shown, "{text}");
        }
    }
}

//! The SQL a MariaDB replica sends before its dump, parsed just enough to
//! answer it.
//!
//! Not a SQL parser: it recognizes the statement shapes of MariaDB 10.11's
//! `get_master_version_and_clock` (sql/slave.cc) and of the semi-sync
//! replica start-up, plus a few harmless extras for people poking at the
//! port with the `mariadb` client:
//!
//! | statement | parsed as |
//! | --- | --- |
//! | `SET @name = <'text' \| number \| @@[global.]var>` | [`Query::SetUserVar`] |
//! | any other `SET ...` (`SET NAMES`, session variables) | [`Query::SetOther`] |
//! | `SELECT <item> [LIMIT 1]`, item `UNIX_TIMESTAMP()`, `VERSION()`, `@name`, `@@[global.\|session.]name`, an integer | [`Query::Select`] |
//! | `SHOW [GLOBAL\|SESSION] VARIABLES LIKE 'pattern'` | [`Query::ShowVariables`] |
//! | anything else | [`Query::Unknown`] |

/// One value a SELECT asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectItem {
    /// `UNIX_TIMESTAMP()`.
    UnixTimestamp,
    /// `VERSION()`.
    Version,
    /// `@name` (lower-cased).
    UserVar(String),
    /// `@@name`, `@@global.name`, `@@session.name` (name lower-cased).
    SysVar(String),
    /// An integer literal.
    Number(String),
}

/// The right side of `SET @name = ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetValue {
    /// A quoted string, unescaped.
    Text(String),
    /// A number (as written).
    Number(String),
    /// `@@[global.|session.]name` (name lower-cased).
    SysVar(String),
}

/// A recognized statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `SET @name = value`.
    SetUserVar {
        /// Variable name, lower-cased, without `@`.
        name: String,
        /// The value.
        value: SetValue,
    },
    /// Another SET statement.
    SetOther,
    /// `SELECT item [LIMIT 1]`; `column` is the item as written (MariaDB
    /// names the result column after it).
    Select {
        /// What is selected.
        item: SelectItem,
        /// The result column's name.
        column: String,
    },
    /// `SHOW [GLOBAL|SESSION] VARIABLES LIKE 'pattern'`.
    ShowVariables {
        /// The LIKE pattern (unquoted).
        pattern: String,
    },
    /// Anything else.
    Unknown,
}

/// Strips leading ASCII whitespace.
fn ws(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_ascii_whitespace())
}

/// If `s` starts with keyword `kw` (case-insensitive) followed by a
/// non-identifier character or the end, the rest.
fn keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let head = s.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = &s[kw.len()..];
    match rest.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => None,
        _ => Some(rest),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// An identifier at the start of `s`: (name, rest).
fn ident(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// `@@name`, `@@global.name`, `@@session.name` at the start of `s`.
fn sys_var(s: &str) -> Option<(String, &str)> {
    let s = s.strip_prefix("@@")?;
    let (first, rest) = ident(s)?;
    if let Some(after_dot) = rest.strip_prefix('.')
        && (first.eq_ignore_ascii_case("global")
            || first.eq_ignore_ascii_case("session")
            || first.eq_ignore_ascii_case("local"))
    {
        let (name, rest) = ident(after_dot)?;
        return Some((name.to_ascii_lowercase(), rest));
    }
    Some((first.to_ascii_lowercase(), rest))
}

/// A quoted string ('...' or "...") at the start of `s`: (unescaped, rest).
fn quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            let (_, e) = chars.next()?;
            out.push(match e {
                'n' => '\n',
                't' => '\t',
                '0' => '\0',
                other => other,
            });
        } else if c == q {
            // A doubled quote is one quote character.
            let rest = &s[i + 1..];
            if rest.starts_with(q) {
                out.push(q);
                chars.next();
            } else {
                return Some((out, rest));
            }
        } else {
            out.push(c);
        }
    }
    None
}

fn number(s: &str) -> Option<(&str, &str)> {
    let digits_from = usize::from(s.starts_with('-') || s.starts_with('+'));
    let end = s[digits_from..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(s.len(), |e| e + digits_from);
    (end > digits_from).then(|| (&s[..end], &s[end..]))
}

/// True when only whitespace and semicolons remain.
fn at_end(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_whitespace() || c == ';')
}

/// Parses one statement (see the module docs).
pub fn parse(sql: &str) -> Query {
    let s = ws(sql);
    if let Some(rest) = keyword(s, "SET") {
        return parse_set(ws(rest)).unwrap_or(Query::SetOther);
    }
    if let Some(rest) = keyword(s, "SELECT") {
        return parse_select(ws(rest)).unwrap_or(Query::Unknown);
    }
    if let Some(rest) = keyword(s, "SHOW") {
        return parse_show(ws(rest)).unwrap_or(Query::Unknown);
    }
    Query::Unknown
}

fn parse_set(s: &str) -> Option<Query> {
    let s = s.strip_prefix('@')?;
    if s.starts_with('@') {
        return None; // SET @@session.x = ...: another SET
    }
    let (name, rest) = ident(s)?;
    let rest = ws(rest);
    let rest = rest.strip_prefix(":=").or_else(|| rest.strip_prefix('='))?;
    let rest = ws(rest);
    let (value, rest) = if let Some((text, rest)) = quoted(rest) {
        (SetValue::Text(text), rest)
    } else if let Some((var, rest)) = sys_var(rest) {
        (SetValue::SysVar(var), rest)
    } else if let Some((n, rest)) = number(rest) {
        (SetValue::Number(n.to_string()), rest)
    } else {
        return None;
    };
    at_end(rest).then(|| Query::SetUserVar {
        name: name.to_ascii_lowercase(),
        value,
    })
}

fn parse_select(s: &str) -> Option<Query> {
    let (item, rest) = if let Some(rest) = keyword(s, "UNIX_TIMESTAMP") {
        let rest = ws(rest).strip_prefix('(')?;
        (SelectItem::UnixTimestamp, ws(rest).strip_prefix(')')?)
    } else if let Some(rest) = keyword(s, "VERSION") {
        let rest = ws(rest).strip_prefix('(')?;
        (SelectItem::Version, ws(rest).strip_prefix(')')?)
    } else if s.starts_with("@@") {
        let (v, rest) = sys_var(s)?;
        (SelectItem::SysVar(v), rest)
    } else if let Some(u) = s.strip_prefix('@') {
        let (name, rest) = ident(u)?;
        (SelectItem::UserVar(name.to_ascii_lowercase()), rest)
    } else {
        let (n, rest) = number(s)?;
        (SelectItem::Number(n.to_string()), rest)
    };
    let column = s[..s.len() - rest.len()].to_string();
    let mut rest = ws(rest);
    if let Some(r) = keyword(rest, "LIMIT") {
        let (_, r) = number(ws(r))?;
        rest = r;
    }
    at_end(rest).then_some(Query::Select { item, column })
}

fn parse_show(s: &str) -> Option<Query> {
    let s = keyword(s, "GLOBAL")
        .or_else(|| keyword(s, "SESSION"))
        .map_or(s, ws);
    let s = ws(keyword(s, "VARIABLES")?);
    let s = ws(keyword(s, "LIKE")?);
    let (pattern, rest) = quoted(s)?;
    at_end(rest).then_some(Query::ShowVariables { pattern })
}

/// SQL `LIKE` matching, case-insensitive (`%` any run, `_` one character,
/// `\` escapes).
pub fn like(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some(('\\', rest)) if !rest.is_empty() => {
                !t.is_empty() && t[0].eq_ignore_ascii_case(&rest[0]) && go(&rest[1..], &t[1..])
            }
            Some((c, rest)) => !t.is_empty() && t[0].eq_ignore_ascii_case(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Bound the work on hostile patterns (MariaDB's names are short).
    if p.len() > 64 || t.len() > 64 {
        return false;
    }
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: SetValue) -> Query {
        Query::SetUserVar {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn replica_statements() {
        assert_eq!(
            parse("SELECT UNIX_TIMESTAMP()"),
            Query::Select {
                item: SelectItem::UnixTimestamp,
                column: "UNIX_TIMESTAMP()".into()
            }
        );
        assert_eq!(
            parse("SHOW VARIABLES LIKE 'SERVER_ID'"),
            Query::ShowVariables {
                pattern: "SERVER_ID".into()
            }
        );
        assert_eq!(
            parse("SET @master_heartbeat_period= 30000000000"),
            set(
                "master_heartbeat_period",
                SetValue::Number("30000000000".into())
            )
        );
        assert_eq!(
            parse("SET @master_binlog_checksum= @@global.binlog_checksum"),
            set(
                "master_binlog_checksum",
                SetValue::SysVar("binlog_checksum".into())
            )
        );
        assert_eq!(
            parse("SELECT @master_binlog_checksum"),
            Query::Select {
                item: SelectItem::UserVar("master_binlog_checksum".into()),
                column: "@master_binlog_checksum".into()
            }
        );
        assert_eq!(
            parse("SET @mariadb_slave_capability=4"),
            set("mariadb_slave_capability", SetValue::Number("4".into()))
        );
        assert_eq!(
            parse("SELECT @@GLOBAL.gtid_domain_id"),
            Query::Select {
                item: SelectItem::SysVar("gtid_domain_id".into()),
                column: "@@GLOBAL.gtid_domain_id".into()
            }
        );
        assert_eq!(
            parse("SET @slave_connect_state='0-1-5,1-2-3'"),
            set("slave_connect_state", SetValue::Text("0-1-5,1-2-3".into()))
        );
        assert_eq!(
            parse("SET @slave_connect_state=''"),
            set("slave_connect_state", SetValue::Text(String::new()))
        );
        assert_eq!(
            parse("SET @slave_gtid_strict_mode=1"),
            set("slave_gtid_strict_mode", SetValue::Number("1".into()))
        );
        assert_eq!(
            parse("SHOW VARIABLES LIKE 'rpl_semi_sync_master_enabled'"),
            Query::ShowVariables {
                pattern: "rpl_semi_sync_master_enabled".into()
            }
        );
        assert_eq!(
            parse("  select @@version_comment limit 1;"),
            Query::Select {
                item: SelectItem::SysVar("version_comment".into()),
                column: "@@version_comment".into()
            }
        );
    }

    #[test]
    fn other_statements() {
        assert_eq!(parse("SET NAMES utf8mb4"), Query::SetOther);
        assert_eq!(parse("SET @@session.x = 1"), Query::SetOther);
        assert_eq!(parse("SET @a = NOW()"), Query::SetOther);
        assert_eq!(parse("SELECT * FROM t"), Query::Unknown);
        assert_eq!(parse("SELECT 1, 2"), Query::Unknown);
        assert_eq!(parse("SHOW MASTER STATUS"), Query::Unknown);
        assert_eq!(parse("SETX @a=1"), Query::Unknown);
        assert_eq!(parse(""), Query::Unknown);
        assert_eq!(parse("SET @a='unterminated"), Query::SetOther);
        assert_eq!(
            parse(r"SET @a='it''s \'x\''"),
            set("a", SetValue::Text("it's 'x'".into()))
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("SERVER_ID", "server_id"));
        assert!(like("server\\_id", "server_id"));
        assert!(like("server%", "server_id"));
        assert!(like("%_id", "gtid_domain_id"));
        assert!(!like("rpl_semi%", "server_id"));
        assert!(!like("server", "server_id"));
        assert!(like("%", ""));
    }
}

//! A useful subset of SOQL: `SELECT a, b, Rel__r.c | COUNT() FROM X [WHERE p op v [AND ...]]
//! [ORDER BY p [ASC|DESC] [NULLS FIRST|LAST]] [LIMIT n] [OFFSET n]`, with `=`, `!=`, `<`, `<=`, `>`,
//! `>=`, `IN (...)`, `NOT IN (...)` and `LIKE`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::org::{Org, RequestError};
use super::schema::{FieldType, Val, parse_datetime};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Sym(String),
}

fn malformed(message: impl Into<String>) -> RequestError {
    RequestError::new(400, "MALFORMED_QUERY", message)
}

fn tokenize(text: &str) -> Result<Vec<Token>, RequestError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(malformed("unterminated string literal")),
                    Some('\\') => {
                        if let Some(next) = chars.get(i + 1) {
                            value.push(*next);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        value.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Str(value));
        } else if matches!(c, '(' | ')' | ',') {
            tokens.push(Token::Sym(c.to_string()));
            i += 1;
        } else if matches!(c, '=' | '!' | '<' | '>') {
            let mut symbol = c.to_string();
            if chars.get(i + 1) == Some(&'=') || (c == '<' && chars.get(i + 1) == Some(&'>')) {
                symbol.push(chars[i + 1]);
                i += 1;
            }
            i += 1;
            if symbol == "!" {
                return Err(malformed("unexpected token: !"));
            }
            tokens.push(Token::Sym(symbol));
        } else if c.is_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '+') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | ':' | '-' | '+'))
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            return Err(malformed(format!("unexpected character: {c}")));
        }
    }
    Ok(tokens)
}

/// A resolved field path.
#[derive(Debug, Clone)]
enum Path {
    Id,
    /// The system field `IsDeleted`: true for records read from the recycle bin (`queryAll`).
    IsDeleted,
    Field(usize),
    /// Through a lookup: lookup field, parent object, parent field (`None` = Id).
    Parent(usize, usize, Option<usize>),
}

#[derive(Debug, Clone)]
enum Literal {
    Null,
    Bool(bool),
    Num(f64),
    Text(String),
}

#[derive(Debug, Clone)]
enum Condition {
    Compare(Path, String, Literal),
    In(Path, bool, Vec<Literal>),
    Like(Path, String),
}

/// A parsed query.
#[derive(Debug)]
pub struct Query {
    object: usize,
    count: bool,
    select: Vec<(String, Path)>,
    conditions: Vec<Condition>,
    order: Option<(Path, bool, bool)>,
    limit: Option<usize>,
    offset: usize,
}

impl Query {
    /// The index of the queried object in the org.
    pub fn object(&self) -> usize {
        self.object
    }
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    org: &'a Org,
}

impl Parser<'_> {
    fn peek_word(&self) -> Option<String> {
        match self.tokens.get(self.at) {
            Some(Token::Word(word)) => Some(word.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if self.peek_word().as_deref() == Some(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), RequestError> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(malformed(format!("expecting keyword {word}")))
        }
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        if self.tokens.get(self.at) == Some(&Token::Sym(symbol.into())) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Result<String, RequestError> {
        match self.tokens.get(self.at) {
            Some(Token::Word(word)) => {
                self.at += 1;
                Ok(word.clone())
            }
            other => Err(malformed(format!("unexpected token: {other:?}"))),
        }
    }

    fn resolve(&self, object: usize, name: &str) -> Result<Path, RequestError> {
        let store = &self.org.objects[object];
        let no_column = || {
            RequestError::new(
                400,
                "INVALID_FIELD",
                format!(
                    "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.",
                    store.def.name
                ),
            )
        };
        if name.eq_ignore_ascii_case("Id") {
            return Ok(Path::Id);
        }
        if name.eq_ignore_ascii_case("IsDeleted") && store.field(name).is_none() {
            return Ok(Path::IsDeleted);
        }
        if let Some((relationship, inner)) = name.split_once('.') {
            let field = store.relationship(relationship).ok_or_else(no_column)?;
            let parent = store
                .field_def(field)
                .reference_to
                .as_deref()
                .and_then(|n| self.org.object(n))
                .ok_or_else(no_column)?;
            if inner.eq_ignore_ascii_case("Id") {
                return Ok(Path::Parent(field, parent, None));
            }
            let parent_field = self.org.objects[parent]
                .field(inner)
                .ok_or_else(no_column)?;
            return Ok(Path::Parent(field, parent, Some(parent_field)));
        }
        store.field(name).map(Path::Field).ok_or_else(no_column)
    }

    fn literal(&mut self) -> Result<Literal, RequestError> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::Str(text)) => {
                self.at += 1;
                Ok(Literal::Text(text))
            }
            Some(Token::Word(word)) => {
                self.at += 1;
                let upper = word.to_ascii_uppercase();
                if upper == "NULL" {
                    Ok(Literal::Null)
                } else if upper == "TRUE" || upper == "FALSE" {
                    Ok(Literal::Bool(upper == "TRUE"))
                } else if let Ok(number) = word.parse::<f64>() {
                    Ok(Literal::Num(number))
                } else if let Some(datetime) = parse_datetime(&word) {
                    Ok(Literal::Text(datetime))
                } else if chrono::NaiveDate::parse_from_str(&word, "%Y-%m-%d").is_ok() {
                    Ok(Literal::Text(word))
                } else {
                    Err(malformed(format!("unexpected token: {word}")))
                }
            }
            other => Err(malformed(format!("unexpected token: {other:?}"))),
        }
    }
}

/// Parses a SOQL query against the org's schema.
pub fn parse(org: &Org, text: &str) -> Result<Query, RequestError> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        at: 0,
        org,
    };
    parser.expect_keyword("SELECT")?;
    let mut names = Vec::new();
    let mut count = false;
    loop {
        let word = parser.word()?;
        if word.eq_ignore_ascii_case("COUNT") && parser.symbol("(") {
            if !parser.symbol(")") {
                return Err(malformed("only COUNT() is supported"));
            }
            count = true;
        } else {
            names.push(word);
        }
        if !parser.symbol(",") {
            break;
        }
    }
    if count && !names.is_empty() {
        return Err(malformed("COUNT() cannot be combined with other fields"));
    }
    parser.expect_keyword("FROM")?;
    let object_name = parser.word()?;
    let object = org.object(&object_name).ok_or_else(|| {
        RequestError::new(
            400,
            "INVALID_TYPE",
            format!("sObject type '{object_name}' is not supported."),
        )
    })?;
    let mut select = Vec::with_capacity(names.len());
    for name in names {
        let path = parser.resolve(object, &name)?;
        select.push((name, path));
    }
    let mut conditions = Vec::new();
    if parser.keyword("WHERE") {
        loop {
            let name = parser.word()?;
            let path = parser.resolve(object, &name)?;
            let condition = if parser.keyword("NOT") {
                parser.expect_keyword("IN")?;
                Condition::In(path, true, list(&mut parser)?)
            } else if parser.keyword("IN") {
                Condition::In(path, false, list(&mut parser)?)
            } else if parser.keyword("LIKE") {
                match parser.literal()? {
                    Literal::Text(pattern) => Condition::Like(path, pattern),
                    _ => return Err(malformed("LIKE needs a string")),
                }
            } else {
                let operator = match parser.tokens.get(parser.at) {
                    Some(Token::Sym(symbol))
                        if ["=", "!=", "<>", "<", "<=", ">", ">="].contains(&symbol.as_str()) =>
                    {
                        symbol.clone()
                    }
                    other => return Err(malformed(format!("unexpected token: {other:?}"))),
                };
                parser.at += 1;
                Condition::Compare(path, operator, parser.literal()?)
            };
            conditions.push(condition);
            if parser.keyword("OR") {
                return Err(malformed("OR is not supported by the simulator"));
            }
            if !parser.keyword("AND") {
                break;
            }
        }
    }
    let mut order = None;
    if parser.keyword("ORDER") {
        parser.expect_keyword("BY")?;
        let name = parser.word()?;
        let path = parser.resolve(object, &name)?;
        let descending = if parser.keyword("DESC") {
            true
        } else {
            parser.keyword("ASC");
            false
        };
        let mut nulls_last = descending;
        if parser.keyword("NULLS") {
            nulls_last = parser.keyword("LAST");
            if !nulls_last {
                parser.expect_keyword("FIRST")?;
            }
        }
        order = Some((path, descending, nulls_last));
    }
    let mut limit = None;
    let mut offset = 0;
    loop {
        if parser.keyword("LIMIT") {
            limit = Some(
                parser
                    .word()?
                    .parse()
                    .map_err(|_| malformed("LIMIT needs a number"))?,
            );
        } else if parser.keyword("OFFSET") {
            offset = parser
                .word()?
                .parse()
                .map_err(|_| malformed("OFFSET needs a number"))?;
        } else {
            break;
        }
    }
    if parser.at != parser.tokens.len() {
        return Err(malformed(format!(
            "unexpected token: {:?}",
            parser.tokens[parser.at]
        )));
    }
    Ok(Query {
        object,
        count,
        select,
        conditions,
        order,
        limit,
        offset,
    })
}

fn list(parser: &mut Parser<'_>) -> Result<Vec<Literal>, RequestError> {
    if !parser.symbol("(") {
        return Err(malformed("IN needs a parenthesized list"));
    }
    let mut values = Vec::new();
    loop {
        values.push(parser.literal()?);
        if parser.symbol(")") {
            return Ok(values);
        }
        if !parser.symbol(",") {
            return Err(malformed("expecting , or )"));
        }
    }
}

fn value_of(org: &Org, object: usize, record: &super::org::Rec, path: &Path) -> Val {
    match path {
        Path::Id => Val::Str(record.id.clone()),
        // Live records are indexed by id; recycled ones are not.
        Path::IsDeleted => Val::Bool(org.objects[object].get(&record.id).is_none()),
        Path::Field(field) => record.vals[*field].clone(),
        Path::Parent(field, parent, parent_field) => {
            let _ = object;
            let Val::Str(parent_id) = &record.vals[*field] else {
                return Val::Null;
            };
            match org.objects[*parent].get(parent_id) {
                Some(parent_record) => match parent_field {
                    Some(f) => parent_record.vals[*f].clone(),
                    None => Val::Str(parent_record.id.clone()),
                },
                None => Val::Null,
            }
        }
    }
}

fn compare(value: &Val, literal: &Literal) -> Option<Ordering> {
    match (value, literal) {
        (Val::Null, Literal::Null) => Some(Ordering::Equal),
        (Val::Null, _) | (_, Literal::Null) => None,
        (Val::Num(a), Literal::Num(b)) => a.partial_cmp(b),
        (Val::Num(a), Literal::Text(b)) => b.parse::<f64>().ok().and_then(|b| a.partial_cmp(&b)),
        (Val::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (Val::Str(a), Literal::Text(b)) => Some(a.as_ref().cmp(b.as_str())),
        (Val::Str(a), Literal::Num(b)) => Some(
            a.as_ref().cmp(
                super::schema::Val::Num(*b)
                    .as_text()
                    .unwrap_or_default()
                    .as_str(),
            ),
        ),
        _ => None,
    }
}

fn like(value: &str, pattern: &str) -> bool {
    // SOQL LIKE is case-insensitive; `%` any run, `_` one character.
    fn matches(value: &[char], pattern: &[char]) -> bool {
        match pattern.split_first() {
            None => value.is_empty(),
            Some(('%', rest)) => (0..=value.len()).any(|i| matches(&value[i..], rest)),
            Some(('_', rest)) => !value.is_empty() && matches(&value[1..], rest),
            Some((c, rest)) => value.split_first().is_some_and(|(v, tail)| {
                v.to_lowercase().eq(c.to_lowercase()) && matches(tail, rest)
            }),
        }
    }
    let value: Vec<char> = value.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    matches(&value, &pattern)
}

fn holds(org: &Org, query: &Query, record: &super::org::Rec) -> bool {
    query.conditions.iter().all(|condition| match condition {
        Condition::Compare(path, operator, literal) => {
            let value = value_of(org, query.object, record, path);
            let ordering = compare(&value, literal);
            match operator.as_str() {
                "=" => ordering == Some(Ordering::Equal),
                "!=" | "<>" => ordering != Some(Ordering::Equal),
                "<" => ordering == Some(Ordering::Less),
                "<=" => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
                ">" => ordering == Some(Ordering::Greater),
                ">=" => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
                _ => false,
            }
        }
        Condition::In(path, negated, literals) => {
            let value = value_of(org, query.object, record, path);
            let found = literals
                .iter()
                .any(|literal| compare(&value, literal) == Some(Ordering::Equal));
            found != *negated
        }
        Condition::Like(path, pattern) => match value_of(org, query.object, record, path) {
            Val::Null => false,
            value => like(&value.as_text().unwrap_or_default(), pattern),
        },
    })
}

fn order_values(a: &Val, b: &Val, nulls_last: bool) -> Ordering {
    match (a, b) {
        (Val::Null, Val::Null) => Ordering::Equal,
        (Val::Null, _) => {
            if nulls_last {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (_, Val::Null) => {
            if nulls_last {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (x, y) => x.as_text().cmp(&y.as_text()),
    }
}

/// The result of a query: its total size and the records (all of them; the caller pages).
pub struct QueryResult {
    pub total_size: usize,
    pub records: Vec<Value>,
}

/// The records a query selects, filtered, ordered and cut by `LIMIT`/`OFFSET`; `with_deleted` adds
/// the object's recycled records (as `queryAll` does) after the live ones.
fn select_records<'a>(org: &'a Org, query: &Query, with_deleted: bool) -> Vec<&'a super::org::Rec> {
    let store = &org.objects[query.object];
    let recycled = store.recycled().filter(move |_| with_deleted);
    let mut matched: Vec<&super::org::Rec> = store
        .iter()
        .chain(recycled)
        .filter(|record| holds(org, query, record))
        .collect();
    if let Some((path, descending, nulls_last)) = &query.order {
        let mut keyed: Vec<(Val, &super::org::Rec)> = matched
            .into_iter()
            .map(|record| (value_of(org, query.object, record, path), record))
            .collect();
        keyed.sort_by(|(a, _), (b, _)| {
            let ordering = order_values(a, b, *nulls_last != *descending);
            if *descending {
                ordering.reverse()
            } else {
                ordering
            }
        });
        matched = keyed.into_iter().map(|(_, record)| record).collect();
    }
    matched
        .into_iter()
        .skip(query.offset)
        .take(query.limit.unwrap_or(usize::MAX))
        .collect()
}

/// Runs a parsed query.
pub fn execute(org: &Org, query: &Query, api_version: &str) -> QueryResult {
    execute_all(org, query, api_version, false)
}

/// Runs a parsed query; `with_deleted` adds the recycle bin's records (`queryAll`).
pub fn execute_all(org: &Org, query: &Query, api_version: &str, with_deleted: bool) -> QueryResult {
    let store = &org.objects[query.object];
    let matched = select_records(org, query, with_deleted);
    if query.count {
        return QueryResult {
            total_size: matched.len(),
            records: Vec::new(),
        };
    }
    let object_name = &store.def.name;
    let records = matched
        .iter()
        .map(|record| {
            let mut object = Map::new();
            object.insert(
                "attributes".into(),
                serde_json::json!({
                    "type": object_name,
                    "url": format!("/services/data/{api_version}/sobjects/{object_name}/{}", record.id),
                }),
            );
            for (name, path) in &query.select {
                match path {
                    Path::Id => {
                        object.insert("Id".into(), Value::String(record.id.to_string()));
                    }
                    Path::IsDeleted => {
                        object.insert(
                            "IsDeleted".into(),
                            value_of(org, query.object, record, path).to_json(),
                        );
                    }
                    Path::Field(field) => {
                        object.insert(
                            store.field_def(*field).name.clone(),
                            record.vals[*field].to_json(),
                        );
                    }
                    Path::Parent(field, parent, parent_field) => {
                        let def = store.field_def(*field);
                        let relationship = def.relationship_name.clone().unwrap_or_default();
                        let parent_store = &org.objects[*parent];
                        let parent_record = match &record.vals[*field] {
                            Val::Str(id) => parent_store.get(id),
                            _ => None,
                        };
                        let Some(parent_record) = parent_record else {
                            object.insert(relationship, Value::Null);
                            continue;
                        };
                        let entry = object.entry(relationship).or_insert_with(|| {
                            serde_json::json!({"attributes": {
                                "type": parent_store.def.name,
                                "url": format!("/services/data/{api_version}/sobjects/{}/{}", parent_store.def.name, parent_record.id),
                            }})
                        });
                        if let Some(nested) = entry.as_object_mut() {
                            match parent_field {
                                Some(f) => {
                                    nested.insert(
                                        parent_store.field_def(*f).name.clone(),
                                        parent_record.vals[*f].to_json(),
                                    );
                                }
                                None => {
                                    nested.insert("Id".into(), Value::String(parent_record.id.to_string()));
                                }
                            }
                        }
                        let _ = name;
                    }
                }
            }
            Value::Object(object)
        })
        .collect();
    QueryResult {
        total_size: matched.len(),
        records,
    }
}

/// A query's result as CSV, the way Bulk API 2.0 query jobs serve it: one header line, then one line
/// per record; `row_ends[i]` is where record `i`'s line ends in `body`.
#[derive(Debug, Default)]
pub struct CsvResult {
    /// The header line (with its line feed), names as written in the SELECT.
    pub header: Vec<u8>,
    /// Every record line, back to back.
    pub body: Vec<u8>,
    /// End offset in `body` of each record's line.
    pub row_ends: Vec<usize>,
}

/// A value as a Bulk API 2.0 query result cell: empty for null, datetimes in `...000Z` form.
fn csv_cell(value: &Val, kind: Option<FieldType>) -> String {
    match (value, kind) {
        (Val::Str(text), Some(FieldType::Datetime)) => match text.strip_suffix("+0000") {
            Some(stem) => format!("{stem}Z"),
            None => text.to_string(),
        },
        (value, _) => value.as_text().unwrap_or_default(),
    }
}

/// Runs a parsed query for a Bulk API 2.0 query job: the whole result as CSV (every cell quoted, as
/// Salesforce writes it). `COUNT()` is refused, as Bulk API 2.0 refuses aggregates.
pub fn execute_csv(org: &Org, query: &Query, with_deleted: bool) -> Result<CsvResult, String> {
    if query.count {
        return Err("Aggregate queries are not supported by Bulk API 2.0 query jobs".into());
    }
    let store = &org.objects[query.object];
    let kinds: Vec<Option<FieldType>> = query
        .select
        .iter()
        .map(|(_, path)| match path {
            Path::Id | Path::IsDeleted | Path::Parent(_, _, None) => None,
            Path::Field(field) => Some(store.field_def(*field).kind),
            Path::Parent(_, parent, Some(field)) => {
                Some(org.objects[*parent].field_def(*field).kind)
            }
        })
        .collect();
    let writer = |into: Vec<u8>| {
        csv::WriterBuilder::new()
            .quote_style(csv::QuoteStyle::Always)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(into)
    };
    let mut head = writer(Vec::new());
    head.write_record(query.select.iter().map(|(name, _)| name.as_str()))
        .map_err(|e| e.to_string())?;
    let header = head.into_inner().map_err(|e| e.to_string())?;
    let matched = select_records(org, query, with_deleted);
    let mut row_ends = Vec::with_capacity(matched.len());
    let mut out = writer(Vec::new());
    let mut cells: Vec<String> = Vec::with_capacity(query.select.len());
    for record in matched {
        cells.clear();
        for ((_, path), kind) in query.select.iter().zip(&kinds) {
            cells.push(csv_cell(&value_of(org, query.object, record, path), *kind));
        }
        out.write_record(&cells).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        row_ends.push(out.get_ref().len());
    }
    let body = out.into_inner().map_err(|e| e.to_string())?;
    Ok(CsvResult {
        header,
        body,
        row_ends,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::salesforce::schema::Schema;

    #[test]
    fn parses_the_supported_subset() {
        let org = Org::new(Schema::default_org());
        parse(&org, "SELECT Id, Enrollment_Key__c, Docebo_User__r.Docebo_User_Id__c FROM Docebo_Course_Enrollment__c WHERE Status__c IN ('Completed','Waiting') AND Score__c > 10 ORDER BY Enrollment_Key__c DESC LIMIT 5").expect("parses");
        parse(
            &org,
            "SELECT COUNT() FROM Docebo_User__c WHERE Docebo_User_Id__c = '1'",
        )
        .expect("count");
        assert_eq!(
            parse(&org, "SELEC Id FROM Docebo_User__c")
                .map(|_| ())
                .unwrap_err()
                .code,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            parse(&org, "SELECT Nope__c FROM Docebo_User__c")
                .map(|_| ())
                .unwrap_err()
                .code,
            "INVALID_FIELD"
        );
        assert_eq!(
            parse(&org, "SELECT Id FROM Nope__c")
                .map(|_| ())
                .unwrap_err()
                .code,
            "INVALID_TYPE"
        );
    }

    #[test]
    fn like_is_case_insensitive() {
        assert!(like("Hello World", "hello%"));
        assert!(!like("Hello", "h_x%"));
    }
}

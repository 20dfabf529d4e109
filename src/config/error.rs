//! Why a config file was rejected, and where: byte spans from the TOML
//! parser become lines, columns and field paths such as
//! `backends[1].weight`. Also what a valid file may have got wrong
//! ([`ConfigWarning`]).

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Why a config file was rejected.
///
/// Its `Display` is one line an operator can act on:
/// `FILE:LINE:COLUMN: FIELD: what is wrong`, leaving out what is unknown, e.g.
/// `config.toml:14:10: backends[1].weight: weight 0 is out of range; weights must be between 1 and 1000`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub(super) file: PathBuf,
    pub(super) location: Option<Location>,
    pub(super) field: Option<String>,
    pub(super) kind: ConfigErrorKind,
    pub(super) message: String,
}

/// A position in the config file, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: usize,
    /// Column number in characters, from 1.
    pub column: usize,
}

/// Which stage rejected the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// Valid TOML, but a key is unknown, a value has the wrong type, or a
    /// value breaks a rule.
    Invalid,
}

impl ConfigError {
    /// The config file, as given to [`Config::load`](crate::config::Config::load) or
    /// [`Config::from_toml`](crate::config::Config::from_toml).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where in the file the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// The field path, such as `backends[1].weight`, when known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Which stage rejected the file.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// What is wrong, without file, location or field.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn render(&self) -> String {
        render(
            &self.file,
            self.location,
            self.field.as_deref(),
            &self.message,
        )
    }

    /// Where it sorts in file order: located errors by line and column,
    /// then those without a location.
    fn position(&self) -> (bool, Option<(usize, usize)>) {
        (
            self.location.is_none(),
            self.location.map(|at| (at.line, at.column)),
        )
    }
}

/// Every reason a config file was rejected; never empty.
///
/// A syntax error, a wrong type or an unknown key stops the reading (what
/// follows cannot be trusted), so those come alone; the validation rules
/// are all checked, and every broken one is here, in file order (errors
/// without a location last). Its `Display` is one line per error, each
/// exactly as [`ConfigError`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigErrors {
    // Boxed: a `Result` carrying this stays small on the success path.
    first: Box<ConfigError>,
    rest: Vec<ConfigError>,
}

impl ConfigErrors {
    /// `errors` in file order (a stable sort: errors at one position, and
    /// those without one, keep the order they were found in); `None` when
    /// there are none.
    pub(super) fn in_file_order(mut errors: Vec<ConfigError>) -> Option<ConfigErrors> {
        errors.sort_by_key(ConfigError::position);
        let mut errors = errors.into_iter();
        Some(ConfigErrors {
            first: Box::new(errors.next()?),
            rest: errors.collect(),
        })
    }

    /// The first error in file order: what a caller that reports only one shows.
    pub fn first(&self) -> &ConfigError {
        &self.first
    }

    /// How many errors there are; at least 1.
    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    /// Every error, in file order.
    pub fn iter(&self) -> ConfigErrorsIter<'_> {
        std::iter::once(&*self.first).chain(&self.rest)
    }

    fn render(&self) -> String {
        let lines: Vec<String> = self.iter().map(ConfigError::to_string).collect();
        lines.join("\n")
    }
}

/// The iterator of [`ConfigErrors::iter`].
pub type ConfigErrorsIter<'a> =
    std::iter::Chain<std::iter::Once<&'a ConfigError>, std::slice::Iter<'a, ConfigError>>;

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = ConfigErrorsIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors {
            first: Box::new(error),
            rest: Vec::new(),
        }
    }
}

/// Something in a valid config file that is likely a mistake but can be
/// deliberate, such as two backends on one URL: `--check` prints it and the
/// proxy logs it, but the file is accepted.
///
/// Its `Display` has the same form as [`ConfigError`]'s:
/// `FILE:LINE:COLUMN: FIELD: what looks wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    file: PathBuf,
    location: Option<Location>,
    field: String,
    message: String,
}

impl ConfigWarning {
    /// The config file it is about.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where in the file, when known.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// The field path, such as `backends[1].url`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What looks wrong, without file, location or field.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render(
            &self.file,
            self.location,
            Some(&self.field),
            &self.message,
        ))
    }
}

/// `FILE:LINE:COLUMN: FIELD: message`, leaving out what is unknown.
fn render(file: &Path, location: Option<Location>, field: Option<&str>, message: &str) -> String {
    let mut out = file.display().to_string();
    if let Some(at) = location {
        out.push_str(&format!(":{}:{}", at.line, at.column));
    }
    if let Some(field) = field {
        out.push_str(": ");
        out.push_str(field);
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

/// The text being validated and the file it came from, for error messages.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
    /// While a `[[pools]]` entry is checked, its place: the fields the
    /// single-pool form names (`balancer.key`, `backends[0].url`) are then
    /// named where they are (`pools[2].key`, `pools[2].backends[0].url`).
    pub(super) pool: Option<usize>,
}

impl Source<'_> {
    /// `field` as named in the file being checked.
    fn field(&self, field: String) -> String {
        match self.pool {
            None => field,
            Some(i) => match field.strip_prefix("balancer.") {
                Some(rest) => format!("pools[{i}].{rest}"),
                None => format!(
                    "pools[{i}].{}",
                    field.strip_prefix("limits.").unwrap_or(&field)
                ),
            },
        }
    }

    pub(super) fn error(
        &self,
        field: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            location: span.map(|s| location(self.text, s.start)),
            field: Some(self.field(field.into())),
            kind: ConfigErrorKind::Invalid,
            message: message.into(),
        }
    }

    pub(super) fn warning<T>(
        &self,
        field: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> ConfigWarning {
        ConfigWarning {
            file: self.file.to_path_buf(),
            location: Some(location(self.text, value.span().start)),
            field: self.field(field.into()),
            message: message.into(),
        }
    }

    pub(super) fn error_at<T>(
        &self,
        field: impl Into<String>,
        value: &Spanned<T>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(field, Some(value.span()), message)
    }

    pub(super) fn line_of(&self, span: Range<usize>) -> usize {
        location(self.text, span.start).line
    }

    /// Turns a serde or syntax error from the toml crate into a
    /// `ConfigError`, recovering the field path from the error's span.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let (kind, field, message) = match DeTable::parse(self.text) {
            // The document parsed, so serde rejected a key or a value.
            Ok(root) => {
                let mut field = span
                    .clone()
                    .and_then(|s| field_containing(root.get_ref(), s.start));
                let mut message = e.message().to_owned();
                if let Some(missing) = backquoted(&message, "missing field ") {
                    field = Some(join_path(field.as_deref().unwrap_or(""), missing));
                    message = format!("required key `{missing}` is missing");
                } else if let Some(rest) = message.strip_prefix("unknown field ") {
                    message = format!("unknown key {rest}");
                }
                let message = message
                    .replace("expected i64", "expected an integer")
                    .replace("expected f64", "expected a number")
                    .replace("expected a sequence", "expected an array");
                (ConfigErrorKind::Invalid, field, message)
            }
            Err(_) => {
                let (partial, _) = DeTable::parse_recoverable(self.text);
                let field = span
                    .clone()
                    .and_then(|s| key_on_line_before(partial.get_ref(), self.text, s.start));
                (
                    ConfigErrorKind::Syntax,
                    field,
                    format!("invalid TOML: {}", e.message()),
                )
            }
        };
        ConfigError {
            file: self.file.to_path_buf(),
            location: span.map(|s| location(self.text, s.start)),
            field,
            kind,
            message,
        }
    }
}

/// The 1-based line and character column of byte `offset` in `text`.
pub(super) fn location(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// A key or array element of the document, with its path.
struct Entry {
    path: String,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

fn entries(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table {
        let path = join_path(prefix, key.get_ref());
        out.push(Entry {
            path: path.clone(),
            key: Some(key.span()),
            value: value.span(),
        });
        value_entries(value, &path, out);
    }
}

fn value_entries(value: &Spanned<DeValue<'_>>, path: &str, out: &mut Vec<Entry>) {
    match value.get_ref() {
        DeValue::Table(table) => entries(table, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                out.push(Entry {
                    path: path.clone(),
                    key: None,
                    value: item.span(),
                });
                value_entries(item, &path, out);
            }
        }
        _ => {}
    }
}

/// The path of the innermost key or value whose span contains `offset`.
fn field_containing(root: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut all = Vec::new();
    entries(root, "", &mut all);
    let mut best: Option<(usize, String)> = None;
    for entry in all {
        for span in entry.key.into_iter().chain([entry.value]) {
            // `<=`: a child comes after its parent, so ties go to the deeper path.
            if span.contains(&offset) && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
                best = Some((span.len(), entry.path.clone()));
            }
        }
    }
    best.map(|(_, path)| path)
}

/// For a syntax error at `offset`: the last key that starts on the same line
/// before it, from the partly parsed document, since the error is in its value.
fn key_on_line_before(root: &DeTable<'_>, text: &str, offset: usize) -> Option<String> {
    let line = location(text, offset).line;
    let mut all = Vec::new();
    entries(root, "", &mut all);
    all.into_iter()
        .filter_map(|e| Some((e.key?.start, e.path)))
        .filter(|(start, _)| *start <= offset && location(text, *start).line == line)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path)
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `name` from "missing field `name`" style serde messages.
fn backquoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

//! The crate's architecture, checked on its source text.
//!
//! The library is cut into parts, one folder under `src/` each (`src/main.rs`
//! belongs to `entry`, `src/lib.rs` is the root and belongs to none). This
//! module reads every `.rs` file under `src/` and checks four rules:
//!
//! 1. a part refers only to the parts that `ARROWS` allows it to use;
//! 2. the core (`balance`) uses no I/O crate: every path in it starts with a
//!    name of `CORE_CRATES` or a name the file binds itself, and it never
//!    says `TcpStream`, `TcpListener` or `UdpSocket`;
//! 3. no files import each other in a circle, of two files or more;
//! 4. no function of the request path (`proxy`) is longer than 80 lines.
//!
//! Only code counts: comments are dropped and string and character literals
//! emptied first. A reference is a name brought in by a `use` declaration or
//! a path written in code (`crate::pool::Pool`, `super::Load`,
//! `self::snapshot::Snapshot`, `affinity::config::Config` in `src/main.rs`).
//! It is resolved to the file that defines the item, through the `pub use`
//! re-exports of `mod.rs` files; `mod x;` alone is not a reference.
//!
//! The rules are plain functions over `(path under src/, text)` pairs, tested
//! on small made-up trees in `the_checker` at the bottom of this file; the
//! tests above it run them on the real `src/`. `cargo test architecture`
//! runs both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

/// Who may use whom: each part, and the other parts it may refer to. A part
/// may always refer to itself. Edit here when the architecture changes.
const ARROWS: &[(&str, &[&str])] = &[
    ("entry", &["listener", "config", "balance"]),
    ("listener", &["proxy", "pool", "admin", "config"]),
    ("proxy", &["pool", "balance", "config"]),
    ("admin", &["pool", "balance", "config"]),
    ("pool", &["balance", "config"]),
    ("config", &["balance"]),
    ("balance", &[]),
];

/// The part `src/main.rs` belongs to. Its folder is optional: the part may
/// be `src/main.rs` alone.
const BINARY_PART: &str = "entry";

/// The pure core, which must stay free of I/O.
const CORE: &str = "balance";

/// The names a path in the core may start with: the standard library, the
/// crate itself, and the few crates without I/O the core builds on. The point
/// is what is missing: `tokio`, `hyper`, `hyper_util`, `arc_swap`, `socket2`,
/// `libc`, `toml`.
const CORE_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "crate",
    "self",
    "super",
    "siphasher",
    "http",
    "ipnet",
    "thiserror",
    "serde",
    "serde_json",
    "proptest",
    "fastrand",
    "percent_encoding",
    "fnv",
];

/// Names the preludes of those crates bring in by a glob import, which a
/// path in the core may start with too: `use proptest::prelude::*;` brings
/// `prop`, which is proptest itself (`prop::collection::vec`).
const CORE_PRELUDE_NAMES: &[&str] = &["prop"];

/// Words the core must not say at all: holding a socket is I/O, whatever
/// crate the type comes from.
const SOCKET_WORDS: &[&str] = &["TcpStream", "TcpListener", "UdpSocket"];

/// The part every request goes through, and the longest function it may
/// have, counted from the `fn` line to the closing brace.
const REQUEST_PATH: &str = "proxy";
const MAX_FUNCTION_LINES: usize = 80;

/// How many `pub use` hops are followed to find where an item is defined
/// (a guard against re-exports that go round in a circle).
const MAX_REEXPORT_HOPS: usize = 8;

/// Lower-case names that start a path without being a crate.
const PRIMITIVES: &[&str] = &[
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64",
];

/// Keywords after which the next word is the name of an item.
const ITEM_KEYWORDS: &[&str] = &[
    "mod", "struct", "enum", "union", "trait", "type", "fn", "const", "static",
];

// ---------------------------------------------------------------------------
// The rules on the real source.
// ---------------------------------------------------------------------------

#[test]
fn the_source_is_laid_out_in_one_folder_per_part() {
    assert_laid_out(&read_sources(&source_dir()));
}

#[test]
fn each_part_imports_only_the_parts_the_architecture_allows() {
    assert_none(
        "references across parts the architecture does not allow",
        &forbidden_arrows(&the_crate()),
    );
}

#[test]
fn the_core_uses_no_io_crates() {
    assert_none(
        "I/O in the core (src/balance/)",
        &io_in_the_core(&the_crate()),
    );
}

#[test]
fn no_two_files_import_each_other_in_a_circle() {
    let circles = import_circles(&the_crate());
    assert!(
        circles.is_empty(),
        "{} import circle(s) between files:\n\n{}",
        circles.len(),
        circles
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_function_on_the_request_path_is_longer_than_80_lines() {
    assert_none(
        "functions on the request path (src/proxy/) longer than 80 lines",
        &long_functions(&the_crate()),
    );
}

/// `src/` of this crate.
fn source_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The crate as read from `src/`, after checking that there is enough of it
/// in the expected layout that no rule can pass for want of anything to
/// check (an empty tree, or the old flat one).
fn the_crate() -> Crate {
    let sources = read_sources(&source_dir());
    assert_laid_out(&sources);
    assert!(
        sources.len() > 20,
        "only {} .rs files under src/: is this the right tree?",
        sources.len()
    );
    let krate = Crate::new(&sources);
    let references = krate.references_between_files();
    assert!(
        references > 50,
        "only {references} references between files found in src/: is the reader broken?"
    );
    krate
}

/// Every `.rs` file under `dir`, as (path under `dir` with `/` between
/// folders, text), sorted by path.
fn read_sources(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let entries = fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("reading the folder {}: {error}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|error| panic!("listing {}: {error}", dir.display()))
                .path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = fs::read_to_string(&path)
                    .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
                let relative = path
                    .strip_prefix(root)
                    .expect("a file under src/ is under src/")
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((relative, text));
            }
        }
    }
    let mut sources = Vec::new();
    walk(dir, dir, &mut sources);
    sources.sort();
    sources
}

/// The files the layout needs and `sources` lacks: `lib.rs`, `main.rs`, and
/// a `mod.rs` for each part but `entry` (which may be `main.rs` alone).
fn missing_folders(sources: &[(String, String)]) -> Vec<String> {
    let present: BTreeSet<&str> = sources.iter().map(|(path, _)| path.as_str()).collect();
    let needed = ["lib.rs".to_owned(), "main.rs".to_owned()]
        .into_iter()
        .chain(
            ARROWS
                .iter()
                .map(|(part, _)| *part)
                .filter(|part| *part != BINARY_PART)
                .map(|part| format!("{part}/mod.rs")),
        );
    needed
        .filter(|path| !present.contains(path.as_str()))
        .map(|path| format!("src/{path}"))
        .collect()
}

/// Fails, naming what is missing, unless `sources` are laid out in parts.
fn assert_laid_out(sources: &[(String, String)]) {
    let missing = missing_folders(sources);
    assert!(
        missing.is_empty(),
        "src/ is not laid out in parts; missing:\n  {}",
        missing.join("\n  ")
    );
}

/// Fails with every violation, one a line, unless there are none.
fn assert_none(what: &str, violations: &[Violation]) {
    assert!(
        violations.is_empty(),
        "{what}: {} found\n  {}",
        violations.len(),
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The rules, as functions of a read crate.
// ---------------------------------------------------------------------------

/// A rule broken at one place of a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    /// The file's path under `src/`.
    file: String,
    line: usize,
    what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "src/{}:{}: {}", self.file, self.line, self.what)
    }
}

/// Whether `name` is one of the parts of `ARROWS`.
fn is_part(name: &str) -> bool {
    ARROWS.iter().any(|(part, _)| *part == name)
}

/// Whether `from` may refer to `to`.
fn may_use(from: &str, to: &str) -> bool {
    from == to
        || ARROWS
            .iter()
            .any(|(part, allowed)| *part == from && allowed.contains(&to))
}

/// Rule 1: every file belongs to a part, and every reference goes to the
/// part itself or one it may use. The part a reference names (the first
/// segment after `crate`) decides; when a re-export leads into yet another
/// part, the referring file must be allowed that one too, so that a
/// re-export cannot launder a forbidden arrow.
fn forbidden_arrows(krate: &Crate) -> Vec<Violation> {
    let mut found = BTreeSet::new();
    for file in &krate.files {
        if let Some(part) = &file.part
            && !is_part(part)
        {
            found.insert(Violation {
                file: file.path.clone(),
                line: 1,
                what: format!(
                    "`{part}` is not a part of the architecture ({})",
                    ARROWS
                        .iter()
                        .map(|(part, _)| *part)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    for reference in &krate.references {
        let file = &krate.files[reference.from];
        let Some(from) = file.part.as_deref().filter(|part| is_part(part)) else {
            continue;
        };
        let named = reference.target.first().map(String::as_str);
        if let Some(to) = named.filter(|to| is_part(to) && !may_use(from, to)) {
            found.insert(Violation {
                file: file.path.clone(),
                line: reference.line,
                what: format!("{from} may not use {to}: {}", reference.written),
            });
        }
        let Some(defining) = reference.defined_in.map(|index| &krate.files[index]) else {
            continue;
        };
        if let Some(to) = defining.part.as_deref()
            && Some(to) != named
            && is_part(to)
            && !may_use(from, to)
        {
            found.insert(Violation {
                file: file.path.clone(),
                line: reference.line,
                what: format!(
                    "{from} may not use {to}: {} is defined in src/{} (through a re-export)",
                    reference.written, defining.path
                ),
            });
        }
    }
    found.into_iter().collect()
}

/// Rule 2: in the core, every `use` path and every path written in code
/// starts with a name of `CORE_CRATES` or `CORE_PRELUDE_NAMES`, a primitive
/// type, a capitalised name (a type, a variant, `Self`) or a name the file
/// binds itself (its items, its modules, what it imports: an import is
/// checked where it is made), and no socket type is named.
fn io_in_the_core(krate: &Crate) -> Vec<Violation> {
    let mut found = BTreeSet::new();
    for file in krate
        .files
        .iter()
        .filter(|file| file.part.as_deref() == Some(CORE) && !file.binary)
    {
        for path in &file.paths {
            let Some(first) = path.segments.first() else {
                continue;
            };
            let allowed = CORE_CRATES.contains(&first.as_str())
                || CORE_PRELUDE_NAMES.contains(&first.as_str())
                || PRIMITIVES.contains(&first.as_str())
                || first.starts_with(|c: char| c.is_uppercase())
                || file.local_names.contains(first);
            if !allowed {
                found.insert(Violation {
                    file: file.path.clone(),
                    line: path.line,
                    what: format!("the core may not use `{first}`: {}", path.written()),
                });
            }
        }
        for token in &file.tokens {
            if SOCKET_WORDS.contains(&token.text.as_str()) {
                found.insert(Violation {
                    file: file.path.clone(),
                    line: token.line,
                    what: format!("the core may not hold a socket: `{}`", token.text),
                });
            }
        }
    }
    found.into_iter().collect()
}

/// Files that import each other in a circle: a strongly connected component
/// of two files or more of the graph file → file.
#[derive(Debug)]
struct Circle {
    /// The files, sorted.
    files: Vec<String>,
    /// One reference for each import between two files of the circle.
    imports: Vec<Violation>,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} files import each other in a circle: {}",
            self.files.len(),
            self.files
                .iter()
                .map(|file| format!("src/{file}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for import in &self.imports {
            writeln!(f, "    {import}")?;
        }
        Ok(())
    }
}

/// Rule 3: every circle of imports between files (Tarjan's strongly
/// connected components), each with the imports that close it.
fn import_circles(krate: &Crate) -> Vec<Circle> {
    // The first reference from one file to another (references are in the
    // order of their lines) stands for all.
    let mut first_import: BTreeMap<(usize, usize), &Reference> = BTreeMap::new();
    for reference in &krate.references {
        if let Some(to) = reference.defined_in
            && to != reference.from
        {
            first_import
                .entry((reference.from, to))
                .or_insert(reference);
        }
    }
    let mut edges = vec![BTreeSet::new(); krate.files.len()];
    for &(from, to) in first_import.keys() {
        edges[from].insert(to);
    }
    let mut circles: Vec<Circle> = strongly_connected(&edges)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let inside: BTreeSet<usize> = component.iter().copied().collect();
            let mut files: Vec<String> = component
                .iter()
                .map(|&index| krate.files[index].path.clone())
                .collect();
            files.sort();
            let mut imports: Vec<Violation> = first_import
                .iter()
                .filter(|((from, to), _)| inside.contains(from) && inside.contains(to))
                .map(|(&(from, to), reference)| Violation {
                    file: krate.files[from].path.clone(),
                    line: reference.line,
                    what: format!("{} (→ src/{})", reference.written, krate.files[to].path),
                })
                .collect();
            imports.sort();
            Circle { files, imports }
        })
        .collect();
    circles.sort_by(|a, b| a.files.cmp(&b.files));
    circles
}

/// The strongly connected components of a graph given as the successors of
/// each node (Tarjan's algorithm; recursive, as the graph has one node a
/// file).
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }

    impl Tarjan<'_> {
        fn visit(&mut self, node: usize) {
            self.index[node] = Some(self.next);
            self.low[node] = self.next;
            self.next += 1;
            self.stack.push(node);
            self.on_stack[node] = true;
            for &successor in &self.edges[node] {
                match self.index[successor] {
                    None => {
                        self.visit(successor);
                        self.low[node] = self.low[node].min(self.low[successor]);
                    }
                    Some(index) if self.on_stack[successor] => {
                        self.low[node] = self.low[node].min(index);
                    }
                    Some(_) => {}
                }
            }
            if Some(self.low[node]) == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }

    let count = edges.len();
    let mut tarjan = Tarjan {
        edges,
        index: vec![None; count],
        low: vec![0; count],
        on_stack: vec![false; count],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for node in 0..count {
        if tarjan.index[node].is_none() {
            tarjan.visit(node);
        }
    }
    tarjan.components
}

/// Rule 4: every function of the request path with a body longer than
/// `MAX_FUNCTION_LINES`, from its `fn` line to its closing brace. Test code
/// is not on the request path: functions in a `#[cfg(test)]` module (inline
/// or a file of its own) are left out, so a long table of test cases is not
/// reported.
///
/// The end is found by matching braces in the code (comments and literals
/// emptied), which on rustfmt-formatted code is the first later line that is
/// the `fn` line's indent and `}`, and also copes with one-line functions.
fn long_functions(krate: &Crate) -> Vec<Violation> {
    let mut found = Vec::new();
    for file in &krate.files {
        if file.part.as_deref() != Some(REQUEST_PATH) || file.test_only {
            continue;
        }
        let tokens = &file.tokens;
        // One entry per open brace: whether it is inside test code.
        let mut braces: Vec<bool> = Vec::new();
        for (at, token) in tokens.iter().enumerate() {
            match token.text.as_str() {
                "{" => {
                    let test = braces.last() == Some(&true)
                        || (at >= 2
                            && tokens[at - 2].text == "mod"
                            && is_test_only(tokens, at - 2));
                    braces.push(test);
                    continue;
                }
                "}" => {
                    braces.pop();
                    continue;
                }
                _ => {}
            }
            if braces.last() == Some(&true) {
                continue;
            }
            let Some(name) = tokens
                .get(at + 1)
                .filter(|name| token.text == "fn" && is_identifier(&name.text))
            else {
                continue;
            };
            let Some(end_line) = body_end_line(tokens, at + 2) else {
                continue;
            };
            let length = end_line - token.line + 1;
            if length > MAX_FUNCTION_LINES {
                found.push(Violation {
                    file: file.path.clone(),
                    line: token.line,
                    what: format!(
                        "fn {} is {length} lines long (at most {MAX_FUNCTION_LINES})",
                        name.text
                    ),
                });
            }
        }
    }
    found
}

/// Whether the item whose keyword is at `tokens[at]` (`mod` of `#[cfg(test)]
/// pub(crate) mod tests`) carries `#[cfg(test)]` among its attributes.
fn is_test_only(tokens: &[Token], mut at: usize) -> bool {
    let text = |at: usize| tokens[at].text.as_str();
    // Back over the visibility: `pub`, `pub(crate)`.
    if at > 0 && text(at - 1) == ")" {
        while at > 0 && text(at - 1) != "(" {
            at -= 1;
        }
        at = at.saturating_sub(1);
    }
    if at > 0 && text(at - 1) == "pub" {
        at -= 1;
    }
    // Back over the attributes, the last first: `#[...]`.
    while at > 0 && text(at - 1) == "]" {
        let end = at - 1;
        let mut start = end;
        let mut depth = 0;
        loop {
            match text(start) {
                "]" => depth += 1,
                "[" => depth -= 1,
                _ => {}
            }
            if depth == 0 || start == 0 {
                break;
            }
            start -= 1;
        }
        if start == 0 || text(start - 1) != "#" {
            return false;
        }
        let attribute: Vec<&str> = tokens[start + 1..end]
            .iter()
            .map(|token| token.text.as_str())
            .collect();
        if attribute == ["cfg", "(", "test", ")"] {
            return true;
        }
        at = start - 1;
    }
    false
}

/// The line of the brace that closes the body of the function whose
/// signature goes on at `tokens[from]`, or `None` for a declaration without
/// a body (`fn x(&self);`).
fn body_end_line(tokens: &[Token], from: usize) -> Option<usize> {
    // The body is the first `{` outside parentheses and brackets; a `;`
    // there first means there is none.
    let mut nesting = 0usize;
    let mut at = from;
    loop {
        match tokens.get(at)?.text.as_str() {
            "(" | "[" => nesting += 1,
            ")" | "]" => nesting = nesting.saturating_sub(1),
            "{" if nesting == 0 => break,
            ";" | "}" if nesting == 0 => return None,
            _ => {}
        }
        at += 1;
    }
    let mut depth = 0usize;
    for token in &tokens[at..] {
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return Some(token.line);
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Reading the crate: files, the paths they write, and where those lead.
// ---------------------------------------------------------------------------

/// The crate, read: its files, the modules they are, and every reference of
/// one to an item of the crate.
struct Crate {
    files: Vec<File>,
    /// Module path → index in `files`; `src/main.rs` is no module of the
    /// library and is not here.
    modules: BTreeMap<Vec<String>, usize>,
    references: Vec<Reference>,
}

/// A reference from a file to an item of the crate.
#[derive(Debug)]
struct Reference {
    /// Index of the referring file.
    from: usize,
    line: usize,
    /// The path as written (a `use` tree expanded to this one name).
    written: String,
    /// The path from the crate root (`crate`, `self`, `super` resolved).
    target: Vec<String>,
    /// The file that defines the item, re-exports followed.
    defined_in: Option<usize>,
}

/// One `.rs` file, read.
struct File {
    /// Path under `src/`, with `/` between folders.
    path: String,
    /// Its module path: `pool/snapshot.rs` → `pool::snapshot`, `pool/mod.rs`
    /// → `pool`; empty for `lib.rs` and `main.rs`.
    module: Vec<String>,
    /// Whether this is `src/main.rs`, the binary, which names the library
    /// `affinity::`.
    binary: bool,
    /// The first folder (`entry` for `main.rs`); `None` for `lib.rs`.
    part: Option<String>,
    /// The file's code, comments and literals emptied.
    tokens: Vec<Token>,
    /// Every path the file writes: in `use` declarations (one per name
    /// brought in), `extern crate`, and in code (`a::b`, at least two
    /// segments).
    paths: Vec<WrittenPath>,
    /// Names the file binds itself: its items, its modules, its imports.
    local_names: BTreeSet<String>,
    /// Names of the items it declares `pub` at its top level.
    pub_items: BTreeSet<String>,
    /// Child modules it declares `#[cfg(test)] mod name;`, in files of
    /// their own.
    test_children: Vec<String>,
    /// Whether the file is test code only: its module, or one above it, is
    /// declared `#[cfg(test)]`.
    test_only: bool,
}

/// A path as a file writes it.
#[derive(Debug)]
struct WrittenPath {
    segments: Vec<String>,
    /// `use a::b::*;`: `segments` is `a::b`.
    glob: bool,
    line: usize,
    /// Names of the inline modules around it (`mod tests { .. }`).
    scope: Vec<String>,
    kind: PathKind,
}

#[derive(Debug)]
enum PathKind {
    /// Brought in by `use` (or `extern crate`) as `binding`.
    Use {
        binding: Option<String>,
        public: bool,
        /// At the file's top level, outside any braces: a `pub use` there
        /// is a re-export of the file's module.
        top_level: bool,
    },
    /// Written in code.
    Inline,
}

impl WrittenPath {
    fn written(&self) -> String {
        let path = self.segments.join("::");
        if self.glob { path + "::*" } else { path }
    }
}

/// A word or a punctuation mark of code (`::` is one), with its line.
#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

impl Crate {
    /// Reads `sources`: (path under `src/`, text) pairs; files that are not
    /// `.rs` are left out.
    fn new(sources: &[(String, String)]) -> Crate {
        let mut files: Vec<File> = sources
            .iter()
            .filter(|(path, _)| path.ends_with(".rs"))
            .map(|(path, text)| File::read(path, text))
            .collect();
        let test_modules: BTreeSet<Vec<String>> = files
            .iter()
            .filter(|file| !file.binary)
            .flat_map(|file| {
                file.test_children.iter().map(|child| {
                    let mut module = file.module.clone();
                    module.push(child.clone());
                    module
                })
            })
            .collect();
        for file in &mut files {
            file.test_only =
                (1..=file.module.len()).any(|depth| test_modules.contains(&file.module[..depth]));
        }
        let modules: BTreeMap<Vec<String>, usize> = files
            .iter()
            .enumerate()
            .filter(|(_, file)| !file.binary)
            .map(|(index, file)| (file.module.clone(), index))
            .collect();

        // Every path from the crate root, for each file.
        let absolute: Vec<Vec<Option<Vec<String>>>> = files
            .iter()
            .map(|file| {
                let aliases = file.aliases(&modules);
                file.paths
                    .iter()
                    .map(|path| file.absolute(path, &modules, &aliases))
                    .collect()
            })
            .collect();

        // What each file re-exports: its top-level `pub use`s.
        let mut reexports = vec![Reexports::default(); files.len()];
        for (index, file) in files.iter().enumerate() {
            for (path, target) in file.paths.iter().zip(&absolute[index]) {
                let (
                    Some(target),
                    PathKind::Use {
                        binding,
                        public: true,
                        top_level: true,
                    },
                ) = (target, &path.kind)
                else {
                    continue;
                };
                if path.glob {
                    reexports[index].globs.push(target.clone());
                } else if let Some(binding) = binding.as_ref().filter(|name| *name != "_") {
                    reexports[index]
                        .names
                        .insert(binding.clone(), target.clone());
                }
            }
        }

        let mut krate = Crate {
            files,
            modules,
            references: Vec::new(),
        };
        let mut references = Vec::new();
        for (index, file) in krate.files.iter().enumerate() {
            for (path, target) in file.paths.iter().zip(&absolute[index]) {
                let Some(target) = target else { continue };
                references.push(Reference {
                    from: index,
                    line: path.line,
                    written: path.written(),
                    target: target.clone(),
                    defined_in: krate.defining_file(target, &reexports, 0),
                });
            }
        }
        krate.references = references;
        krate
    }

    /// How many references lead from one file to another.
    fn references_between_files(&self) -> usize {
        self.references
            .iter()
            .filter(|reference| reference.defined_in.is_some_and(|to| to != reference.from))
            .count()
    }

    /// The file that defines the item at `path` (from the crate root): the
    /// deepest module the path walks into, or, where that module's file
    /// re-exports the next name, wherever the re-export leads.
    fn defining_file(
        &self,
        path: &[String],
        reexports: &[Reexports],
        hops: usize,
    ) -> Option<usize> {
        let mut depth = 0;
        while depth < path.len() && self.modules.contains_key(&path[..=depth]) {
            depth += 1;
        }
        let file = *self.modules.get(&path[..depth])?;
        let Some(name) = path.get(depth) else {
            return Some(file);
        };
        if hops < MAX_REEXPORT_HOPS
            && let Some(mut next) = self.reexported(file, name, reexports)
        {
            next.extend_from_slice(&path[depth + 1..]);
            if let Some(found) = self.defining_file(&next, reexports, hops + 1) {
                return Some(found);
            }
        }
        Some(file)
    }

    /// Where `file` gets `name` from, if it re-exports it: by name
    /// (`pub use snapshot::Snapshot;`), or by a glob (`pub use health::*;`)
    /// from a module whose file declares `pub` an item of that name or
    /// re-exports it by name.
    fn reexported(&self, file: usize, name: &str, reexports: &[Reexports]) -> Option<Vec<String>> {
        if let Some(target) = reexports[file].names.get(name) {
            return Some(target.clone());
        }
        reexports[file].globs.iter().find_map(|module| {
            let &child = self.modules.get(module)?;
            let provides = self.files[child].pub_items.contains(name)
                || reexports[child].names.contains_key(name);
            provides.then(|| {
                let mut path = module.clone();
                path.push(name.to_owned());
                path
            })
        })
    }
}

/// What one file re-exports, each from the crate root.
#[derive(Debug, Clone, Default)]
struct Reexports {
    /// `pub use a::b::C as D;`: `D` → `a::b::C`.
    names: BTreeMap<String, Vec<String>>,
    /// `pub use a::b::*;`: `a::b`.
    globs: Vec<Vec<String>>,
}

impl File {
    fn read(path: &str, text: &str) -> File {
        let binary = path == "main.rs";
        let module = module_of(path);
        let part = match path {
            "lib.rs" => None,
            "main.rs" => Some(BINARY_PART.to_owned()),
            _ => module.first().cloned(),
        };
        let mut file = File {
            path: path.to_owned(),
            module,
            binary,
            part,
            tokens: tokenize(&code_only(text)),
            paths: Vec::new(),
            local_names: BTreeSet::new(),
            pub_items: BTreeSet::new(),
            test_children: Vec::new(),
            test_only: false,
        };
        file.find_paths();
        file
    }

    /// Fills `paths`, `local_names` and `pub_items` from `tokens`.
    fn find_paths(&mut self) {
        let tokens = &self.tokens;
        let text = |at: usize| tokens.get(at).map_or("", |token| token.text.as_str());
        // One entry per open brace: the inline module's name where the brace
        // opens one (`mod tests {`), so that `super` and `self` are read
        // from the module they are written in.
        let mut braces: Vec<Option<String>> = Vec::new();
        let mut at = 0;
        let scope =
            |braces: &[Option<String>]| braces.iter().flatten().cloned().collect::<Vec<_>>();
        while at < tokens.len() {
            match text(at) {
                "{" => {
                    let module = (at >= 2 && text(at - 2) == "mod" && is_identifier(text(at - 1)))
                        .then(|| text(at - 1).to_owned());
                    braces.push(module);
                    at += 1;
                }
                "}" => {
                    braces.pop();
                    at += 1;
                }
                "use"
                    if matches!(text(at + 1), "::" | "{" | "*") || is_identifier(text(at + 1)) =>
                {
                    let public = is_public(tokens, at);
                    let mut leaves = Vec::new();
                    at = use_tree(tokens, at + 1, Vec::new(), &mut leaves);
                    // `use {self};` and the like name nothing.
                    for leaf in leaves.into_iter().filter(|leaf| !leaf.path.is_empty()) {
                        if let Some(binding) = &leaf.binding {
                            self.local_names.insert(binding.clone());
                        }
                        self.paths.push(WrittenPath {
                            segments: leaf.path,
                            glob: leaf.glob,
                            line: leaf.line,
                            scope: scope(&braces),
                            kind: PathKind::Use {
                                binding: leaf.binding,
                                public,
                                top_level: braces.is_empty(),
                            },
                        });
                    }
                }
                "extern" if text(at + 1) == "crate" && is_identifier(text(at + 2)) => {
                    let name = text(at + 2).to_owned();
                    self.local_names.insert(name.clone());
                    self.paths.push(WrittenPath {
                        segments: vec![name.clone()],
                        glob: false,
                        line: tokens[at].line,
                        scope: scope(&braces),
                        kind: PathKind::Use {
                            binding: Some(name),
                            public: false,
                            top_level: false,
                        },
                    });
                    at += 3;
                }
                // `pub(in crate::a)` is a visibility, not a use of `a`.
                "pub" if text(at + 1) == "(" && text(at + 2) == "in" => {
                    while at < tokens.len() && text(at) != ")" {
                        at += 1;
                    }
                }
                word if is_identifier(word)
                    && (at == 0 || text(at - 1) != "::")
                    && text(at + 1) == "::"
                    && is_identifier(text(at + 2)) =>
                {
                    let line = tokens[at].line;
                    let mut segments = vec![word.to_owned()];
                    at += 1;
                    while text(at) == "::" && is_identifier(text(at + 1)) {
                        segments.push(text(at + 1).to_owned());
                        at += 2;
                    }
                    self.paths.push(WrittenPath {
                        segments,
                        glob: false,
                        line,
                        scope: scope(&braces),
                        kind: PathKind::Inline,
                    });
                }
                word => {
                    if ITEM_KEYWORDS.contains(&word) && is_identifier(text(at + 1)) {
                        self.local_names.insert(text(at + 1).to_owned());
                    }
                    if word == "macro_rules" && text(at + 1) == "!" {
                        self.local_names.insert(text(at + 2).to_owned());
                    }
                    if word == "mod"
                        && braces.is_empty()
                        && is_identifier(text(at + 1))
                        && text(at + 2) == ";"
                        && is_test_only(tokens, at)
                    {
                        self.test_children.push(text(at + 1).to_owned());
                    }
                    if word == "pub"
                        && braces.is_empty()
                        && let Some(name) = pub_item_name(tokens, at)
                    {
                        self.pub_items.insert(name.to_owned());
                    }
                    at += 1;
                }
            }
        }
    }

    /// What the file's `use`s bind to paths of the crate (`use
    /// crate::balance::key;` binds `key`), so that `key::KeySource` written
    /// in code leads to `balance::key`. Scopes are not told apart.
    fn aliases(&self, modules: &BTreeMap<Vec<String>, usize>) -> BTreeMap<String, Vec<String>> {
        let none = BTreeMap::new();
        self.paths
            .iter()
            .filter_map(|path| match &path.kind {
                PathKind::Use {
                    binding: Some(binding),
                    ..
                } if !path.glob && binding != "_" => {
                    Some((binding.clone(), self.absolute(path, modules, &none)?))
                }
                _ => None,
            })
            .collect()
    }

    /// `path` from the crate root, or `None` when it leads outside the crate
    /// (another crate, or a name local to the file).
    fn absolute(
        &self,
        path: &WrittenPath,
        modules: &BTreeMap<Vec<String>, usize>,
        aliases: &BTreeMap<String, Vec<String>>,
    ) -> Option<Vec<String>> {
        let (first, rest) = path.segments.split_first()?;
        // The module the path is written in: the file's, and the inline
        // modules around it.
        let here = || {
            let mut module = self.module.clone();
            module.extend(path.scope.iter().cloned());
            module
        };
        let child = || {
            let mut module = self.module.clone();
            module.push(first.clone());
            module
        };
        let (mut base, rest) = match first.as_str() {
            // The binary has no modules of its own: its `crate::` is taken
            // to be the library, like `affinity::`.
            "crate" => (Vec::new(), rest),
            "affinity" if self.binary => (Vec::new(), rest),
            // The binary's own modules are not the library's.
            "self" | "super" if self.binary => return None,
            "self" => (here(), rest),
            "super" => {
                let mut base = here();
                let mut rest = path.segments.as_slice();
                while rest.first().is_some_and(|segment| segment == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            name if aliases.contains_key(name) => (aliases[name].clone(), rest),
            // `snapshot::Snapshot` in `pool/mod.rs`: a child module.
            _ if !self.binary && modules.contains_key(&child()) => (child(), rest),
            _ => return None,
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

/// The module path of the file at `path` under `src/`.
fn module_of(path: &str) -> Vec<String> {
    let stem = path.strip_suffix(".rs").unwrap_or(path);
    let mut segments: Vec<String> = stem.split('/').map(str::to_owned).collect();
    let crate_root = segments.len() == 1 && (segments[0] == "lib" || segments[0] == "main");
    if crate_root || segments.last().is_some_and(|last| last == "mod") {
        segments.pop();
    }
    segments
}

/// One name a `use` tree brings in.
struct UseLeaf {
    /// The full path, groups expanded (`use a::{b::C}` → `a::b::C`); for
    /// `self` in a group, the group's path.
    path: Vec<String>,
    /// The name it is bound to; `None` for a glob.
    binding: Option<String>,
    glob: bool,
    line: usize,
}

/// Reads the `use` tree that starts at `tokens[at]`, under `prefix`, adding a
/// leaf per name it brings in; returns the index just after the tree.
fn use_tree(
    tokens: &[Token],
    mut at: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<UseLeaf>,
) -> usize {
    loop {
        let Some(token) = tokens.get(at) else {
            return at;
        };
        match token.text.as_str() {
            "::" => at += 1,
            "*" => {
                leaves.push(UseLeaf {
                    path: prefix,
                    binding: None,
                    glob: true,
                    line: token.line,
                });
                return at + 1;
            }
            "{" => {
                at += 1;
                while let Some(token) = tokens.get(at) {
                    match token.text.as_str() {
                        "}" => return at + 1,
                        "," => at += 1,
                        _ => {
                            let next = use_tree(tokens, at, prefix.clone(), leaves);
                            if next == at {
                                return at;
                            }
                            at = next;
                        }
                    }
                }
                return at;
            }
            name if is_identifier(name) => {
                if tokens.get(at + 1).is_some_and(|next| next.text == "::") {
                    prefix.push(name.to_owned());
                    at += 2;
                    continue;
                }
                let mut binding = if name == "self" {
                    prefix.last().cloned()
                } else {
                    prefix.push(name.to_owned());
                    Some(name.to_owned())
                };
                at += 1;
                if tokens.get(at).is_some_and(|next| next.text == "as") {
                    binding = tokens.get(at + 1).map(|alias| alias.text.clone());
                    at += 2;
                }
                leaves.push(UseLeaf {
                    path: prefix,
                    binding,
                    glob: false,
                    line: token.line,
                });
                return at;
            }
            _ => return at,
        }
    }
}

/// Whether the `use` at `tokens[at]` is `pub`, `pub(crate)` and the like.
fn is_public(tokens: &[Token], at: usize) -> bool {
    let mut before = at;
    if before > 0 && tokens[before - 1].text == ")" {
        while before > 0 && tokens[before - 1].text != "(" {
            before -= 1;
        }
        before = before.saturating_sub(1);
    }
    before > 0 && tokens[before - 1].text == "pub"
}

/// The name of the item declared by the `pub` at `tokens[at]`, if it
/// declares one (`pub const fn x`, `pub(crate) struct X`, `pub static mut
/// X`); `None` for `pub use` and fields.
fn pub_item_name(tokens: &[Token], mut at: usize) -> Option<&str> {
    at += 1;
    if tokens.get(at)?.text == "(" {
        while tokens.get(at)?.text != ")" {
            at += 1;
        }
        at += 1;
    }
    let mut constant = false;
    loop {
        let word = tokens.get(at)?.text.as_str();
        match word {
            "const" | "static" => constant = true,
            // `extern "C"`: the string is emptied to two quotes.
            "async" | "unsafe" | "extern" | "mut" | "default" | "\"" => {}
            "mod" | "struct" | "enum" | "union" | "trait" | "type" | "fn" => {
                return tokens.get(at + 1).map(|name| name.text.as_str());
            }
            _ if constant && is_identifier(word) => return Some(word),
            _ => return None,
        }
        at += 1;
    }
}

/// Whether `word` is an identifier (or keyword), not a number or a mark.
fn is_identifier(word: &str) -> bool {
    word.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// Whether `c` may be part of an identifier or a number.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The words and marks of `code`, each with its line (from 1).
fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c == '\n' {
            line += 1;
            at += 1;
        } else if c.is_whitespace() {
            at += 1;
        } else if is_word_char(c) {
            let start = at;
            while at < chars.len() && is_word_char(chars[at]) {
                at += 1;
            }
            tokens.push(Token {
                text: chars[start..at].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(at + 1) == Some(&':') {
            tokens.push(Token {
                text: "::".to_owned(),
                line,
            });
            at += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            at += 1;
        }
    }
    tokens
}

/// `text` without its comments, and with its string and character literals
/// emptied (`"http://x"` → `""`, `'{'` → `''`), line breaks kept so that
/// lines keep their numbers.
///
/// Handles `//` and `///`/`//!` comments, nested `/* */` comments, strings
/// with escapes over several lines, byte strings, raw strings `r"…"` and
/// `r#"…"#`, character literals (`'"'`, `'\''`) and lifetimes (`'a`).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at_char = |at: usize| chars.get(at).copied();
    let mut code = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(c) = at_char(at) {
        let next = at_char(at + 1);
        if c == '/' && next == Some('/') {
            while at_char(at).is_some_and(|c| c != '\n') {
                at += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while let Some(c) = at_char(at) {
                match (c, at_char(at + 1)) {
                    ('/', Some('*')) => {
                        depth += 1;
                        at += 2;
                    }
                    ('*', Some('/')) => {
                        depth -= 1;
                        at += 2;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {
                        if c == '\n' {
                            code.push('\n');
                        }
                        at += 1;
                    }
                }
            }
            code.push(' ');
        } else if c == '"' {
            at += 1;
            while let Some(c) = at_char(at) {
                match c {
                    '\\' => {
                        // An escaped line break continues the string.
                        if at_char(at + 1) == Some('\n') {
                            code.push('\n');
                        }
                        at += 2;
                    }
                    '"' => {
                        at += 1;
                        break;
                    }
                    _ => {
                        if c == '\n' {
                            code.push('\n');
                        }
                        at += 1;
                    }
                }
            }
            code.push_str("\"\"");
        } else if let Some(hashes) = raw_string_start(&chars, at) {
            // `r`, the hashes and the opening quote; the end is a quote and
            // as many hashes.
            at += hashes + 2;
            let closes = |at: usize| {
                at_char(at) == Some('"') && (1..=hashes).all(|k| at_char(at + k) == Some('#'))
            };
            while at < chars.len() && !closes(at) {
                if chars[at] == '\n' {
                    code.push('\n');
                }
                at += 1;
            }
            at += hashes + 1;
            code.push_str("\"\"");
        } else if c == '\'' {
            if next == Some('\\') {
                // `'\n'`, `'\''`, `'\u{1F600}'`: skip the escaped character,
                // then to the closing quote.
                at += 3;
                while at_char(at).is_some_and(|c| c != '\'' && c != '\n') {
                    at += 1;
                }
                at += 1;
                code.push_str("''");
            } else if at_char(at + 2) == Some('\'') {
                // `'x'`, `'"'`, `'{'`.
                at += 3;
                code.push_str("''");
            } else {
                // A lifetime or a label: `'a`, `'static`, `'outer:`.
                code.push(c);
                at += 1;
            }
        } else {
            code.push(c);
            at += 1;
        }
    }
    code
}

/// If a raw string (`r"`, `r#"`, `br"`, `cr#"`) starts with the `r` at
/// `chars[at]`, how many `#` it has.
fn raw_string_start(chars: &[char], at: usize) -> Option<usize> {
    if chars[at] != 'r' {
        return None;
    }
    // The `r` starts a word, or follows a `b` or `c` that does.
    let starts_word = |at: usize| at == 0 || !is_word_char(chars[at - 1]);
    let prefixed = at > 0 && matches!(chars[at - 1], 'b' | 'c') && starts_word(at - 1);
    if !starts_word(at) && !prefixed {
        return None;
    }
    let hashes = chars[at + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(at + 1 + hashes) == Some(&'"')).then_some(hashes)
}

// ---------------------------------------------------------------------------
// The checker's own tests, on small made-up trees.
// ---------------------------------------------------------------------------

mod the_checker {
    use super::*;

    /// A crate of the given (path under `src/`, text) files.
    fn tree(files: &[(&str, &str)]) -> Crate {
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
            .collect();
        Crate::new(&sources)
    }

    /// The files of each circle.
    fn circles(krate: &Crate) -> Vec<Vec<String>> {
        import_circles(krate)
            .into_iter()
            .map(|circle| circle.files)
            .collect()
    }

    /// Where each reference of `file` leads: (line, file it leads to).
    fn edges_of(krate: &Crate, file: &str) -> Vec<(usize, String)> {
        let from = krate
            .files
            .iter()
            .position(|candidate| candidate.path == file)
            .expect("the file is in the tree");
        krate
            .references
            .iter()
            .filter(|reference| reference.from == from)
            .filter_map(|reference| {
                let to = reference.defined_in?;
                (to != from).then(|| (reference.line, krate.files[to].path.clone()))
            })
            .collect()
    }

    #[test]
    fn a_forbidden_arrow_is_reported_with_its_file_and_line() {
        let krate = tree(&[
            ("lib.rs", "pub mod pool;\npub mod proxy;\n"),
            (
                "pool/mod.rs",
                "//! The pool.\n\nuse std::sync::Arc;\nuse crate::proxy::Handle;\n",
            ),
            ("proxy/mod.rs", "pub struct Handle;\n"),
        ]);
        let found = forbidden_arrows(&krate);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].file, "pool/mod.rs");
        assert_eq!(found[0].line, 4);
        assert!(
            found[0].what.contains("crate::proxy::Handle"),
            "{}",
            found[0]
        );
        assert!(
            found[0].what.contains("pool may not use proxy"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn an_allowed_arrow_is_not_reported() {
        let krate = tree(&[
            (
                "proxy/mod.rs",
                "use crate::pool::Pool;\nuse crate::balance::hash;\n",
            ),
            ("pool/mod.rs", "pub struct Pool;\n"),
            ("balance/mod.rs", "pub mod hash;\n"),
            ("balance/hash.rs", "pub fn hash() {}\n"),
            ("main.rs", "use affinity::listener::start;\nfn main() {}\n"),
            ("listener/mod.rs", "pub fn start() {}\n"),
        ]);
        assert_eq!(forbidden_arrows(&krate), []);
        assert_eq!(edges_of(&krate, "proxy/mod.rs").len(), 2);
        assert_eq!(
            edges_of(&krate, "main.rs"),
            [(1, "listener/mod.rs".to_owned())]
        );
    }

    #[test]
    fn an_inline_path_in_the_binary_is_checked_like_a_use() {
        let krate = tree(&[
            ("main.rs", "fn main() {\n    affinity::admin::serve();\n}\n"),
            ("admin/mod.rs", "pub fn serve() {}\n"),
        ]);
        let found = forbidden_arrows(&krate);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].file.as_str(), found[0].line), ("main.rs", 2));
    }

    #[test]
    fn a_reexport_cannot_launder_a_forbidden_arrow() {
        // The config part re-exports a pool type (itself a violation), and
        // the core reaches it through config: both are reported.
        let krate = tree(&[
            ("config/mod.rs", "pub use crate::pool::Pool;\n"),
            ("pool/mod.rs", "pub struct Pool;\n"),
            ("balance/mod.rs", "use crate::config::Pool;\n"),
        ]);
        let found: Vec<String> = forbidden_arrows(&krate)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with("src/balance/mod.rs:1: balance may not use config"));
        assert!(found[1].starts_with("src/balance/mod.rs:1: balance may not use pool"));
        assert!(found[1].contains("through a re-export"));
        assert!(found[2].starts_with("src/config/mod.rs:1: config may not use pool"));
    }

    #[test]
    fn a_file_outside_the_parts_is_reported() {
        let krate = tree(&[("lib.rs", "pub mod util;\n"), ("util.rs", "")]);
        let found = forbidden_arrows(&krate);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].file, "util.rs");
    }

    #[test]
    fn an_io_crate_in_the_core_is_reported() {
        let krate = tree(&[(
            "balance/probe.rs",
            "use std::fmt;\n\nuse tokio::net::TcpStream;\n\nfn f() -> fmt::Result { Ok(()) }\n",
        )]);
        let found: Vec<String> = io_in_the_core(&krate)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "src/balance/probe.rs:3: the core may not hold a socket: `TcpStream`",
                "src/balance/probe.rs:3: the core may not use `tokio`: tokio::net::TcpStream",
            ]
        );
    }

    #[test]
    fn an_inline_io_path_in_the_core_is_reported_and_local_paths_are_not() {
        let text = "\
use std::sync::atomic;
use crate::balance::member::{self, Member};

mod inner {
    pub fn f() {}
}

enum Chunk { A }

fn f(members: &[Member]) -> u64 {
    use Chunk::*;
    let _ = atomic::Ordering::Relaxed;
    let _ = member::total_weight(members);
    let _ = Self::x() + u64::MAX + inner::f();
    hyper_util::rt::spawn();
    let _ = prop::collection::vec(0u8.., 1..4);
    0
}
";
        let krate = tree(&[("balance/table.rs", text), ("balance/member.rs", "")]);
        let found = io_in_the_core(&krate);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].line, 15);
        assert!(found[0].what.contains("`hyper_util`"), "{}", found[0]);
    }

    #[test]
    fn a_socket_outside_the_core_is_no_concern_of_the_core_rule() {
        let krate = tree(&[("listener/mod.rs", "use tokio::net::TcpListener;\n")]);
        assert_eq!(io_in_the_core(&krate), []);
    }

    #[test]
    fn a_two_file_circle_is_reported() {
        let krate = tree(&[
            (
                "admin/mod.rs",
                "use crate::admin::page::Page;\npub struct Admin;\n",
            ),
            (
                "admin/page.rs",
                "pub struct Page;\n\nfn f(_: crate::admin::Admin) {}\n",
            ),
        ]);
        assert_eq!(circles(&krate), [["admin/mod.rs", "admin/page.rs"]]);
        let circle = import_circles(&krate).remove(0);
        let shown = circle.to_string();
        assert!(
            shown.contains("src/admin/mod.rs:1: crate::admin::page::Page (→ src/admin/page.rs)"),
            "{shown}"
        );
        assert!(
            shown.contains("src/admin/page.rs:3: crate::admin::Admin (→ src/admin/mod.rs)"),
            "{shown}"
        );
    }

    #[test]
    fn a_three_file_circle_is_reported() {
        let krate = tree(&[
            (
                "pool/mod.rs",
                "mod health;\nmod metrics;\nuse self::metrics::Stats;\npub struct Pool;\n",
            ),
            (
                "pool/metrics.rs",
                "use super::health::Checks;\npub struct Stats;\n",
            ),
            ("pool/health.rs", "use super::Pool;\npub struct Checks;\n"),
        ]);
        assert_eq!(
            circles(&krate),
            [["pool/health.rs", "pool/metrics.rs", "pool/mod.rs"]]
        );
    }

    #[test]
    fn a_chain_is_no_circle() {
        let krate = tree(&[
            (
                "pool/mod.rs",
                "use self::metrics::Stats;\npub struct Pool;\n",
            ),
            (
                "pool/metrics.rs",
                "use super::health::Checks;\npub struct Stats;\n",
            ),
            ("pool/health.rs", "pub struct Checks;\n"),
        ]);
        assert_eq!(circles(&krate), Vec::<Vec<String>>::new());
        assert_eq!(
            edges_of(&krate, "pool/metrics.rs"),
            [(1, "pool/health.rs".to_owned())]
        );
    }

    #[test]
    fn a_reference_through_a_reexport_leads_to_the_defining_file() {
        let pool =
            "mod health;\nmod snapshot;\n\npub use snapshot::Snapshot;\npub use health::Checks;\n";
        let quiet = tree(&[
            ("pool/mod.rs", pool),
            (
                "pool/health.rs",
                "use crate::pool::Snapshot;\npub struct Checks;\n",
            ),
            ("pool/snapshot.rs", "pub struct Snapshot;\n"),
        ]);
        assert_eq!(circles(&quiet), Vec::<Vec<String>>::new());
        assert_eq!(
            edges_of(&quiet, "pool/health.rs"),
            [(1, "pool/snapshot.rs".to_owned())]
        );

        let circle = tree(&[
            ("pool/mod.rs", pool),
            (
                "pool/health.rs",
                "use crate::pool::Snapshot;\npub struct Checks;\n",
            ),
            (
                "pool/snapshot.rs",
                "use crate::pool::Checks;\npub struct Snapshot;\n",
            ),
        ]);
        assert_eq!(circles(&circle), [["pool/health.rs", "pool/snapshot.rs"]]);
    }

    #[test]
    fn reexports_are_followed_across_files_and_through_globs() {
        let krate = tree(&[
            (
                "lib.rs",
                "pub mod balance;\npub use balance::Key as RequestKey;\n",
            ),
            (
                "balance/mod.rs",
                "mod key;\nmod table;\npub use self::key::*;\npub(crate) use table::{Table, build};\n",
            ),
            ("balance/key.rs", "pub enum Key { Ip }\n"),
            ("balance/table.rs", "pub struct Table;\npub fn build() {}\n"),
            (
                "config/mod.rs",
                "use crate::RequestKey;\nuse crate::balance::{Table, build};\n",
            ),
        ]);
        assert_eq!(
            edges_of(&krate, "config/mod.rs"),
            [
                (1, "balance/key.rs".to_owned()),
                (2, "balance/table.rs".to_owned()),
                (2, "balance/table.rs".to_owned()),
            ]
        );
    }

    #[test]
    fn a_comment_mentioning_a_path_is_no_reference() {
        let text = "\
//! Unlike crate::proxy, the pool never forwards.
/// See [`crate::proxy::Handle`].
pub struct Pool; // crate::proxy::Handle holds one
/* crate::proxy::a /* nested crate::proxy::b */ crate::proxy::c */
";
        let krate = tree(&[
            ("pool/mod.rs", text),
            ("proxy/mod.rs", "pub struct Handle;\n"),
        ]);
        assert_eq!(forbidden_arrows(&krate), []);
        assert!(krate.references.is_empty(), "{:#?}", krate.references);
    }

    #[test]
    fn a_url_in_a_string_does_not_hide_the_code_after_it() {
        let text = "\
fn f() {
    let url = \"http://example.com/a//b\"; let _ = crate::proxy::Handle;
    let quote = '\"'; let _ = crate::proxy::Other;
    let raw = r#\"a \"// b\"#; let _ = crate::proxy::Third;
    let lifetime: &'static str = \"x\"; let _ = crate::proxy::Fourth;
    let text = \"not crate::proxy::Fifth\";
}
";
        let krate = tree(&[("pool/mod.rs", text), ("proxy/mod.rs", "")]);
        let lines: Vec<usize> = forbidden_arrows(&krate).iter().map(|v| v.line).collect();
        assert_eq!(lines, [2, 3, 4, 5]);
    }

    /// A method of `lines` lines, its signature over three of them, its body
    /// with braces in a string and a character that must not end it early.
    fn method(name: &str, lines: usize) -> String {
        format!(
            "    pub fn {name}(\n        &self,\n    ) -> u8 {{\n{}        let _ = \"\n    }}\n\";\n        let _ = '}}';\n    }}\n",
            "        step();\n".repeat(lines - 8)
        )
    }

    #[test]
    fn a_function_of_81_lines_on_the_request_path_is_reported_and_one_of_80_is_not() {
        let text = format!(
            "impl Handler {{\n    fn declared(&self);\n    fn short(&self) -> u8 {{ 0 }}\n{}\n{}}}\n",
            method("eighty", 80),
            method("eighty_one", 81)
        );
        let krate = tree(&[("proxy/handler.rs", &text)]);
        let found = long_functions(&krate);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].line, 85);
        assert_eq!(found[0].what, "fn eighty_one is 81 lines long (at most 80)");

        let elsewhere = tree(&[("pool/handler.rs", &text)]);
        assert_eq!(long_functions(&elsewhere), []);
    }

    #[test]
    fn test_code_on_the_request_path_may_have_long_functions() {
        let inline = format!(
            "fn serve() {{}}\n\n#[cfg(test)]\n#[allow(dead_code)]\nmod tests {{\n    struct Handler;\n    impl Handler {{\n{}    }}\n}}\n",
            method("cases", 200)
        );
        let own_file = format!("impl Handler {{\n{}}}\n", method("cases", 200));
        let krate = tree(&[
            ("proxy/mod.rs", "mod handler;\n#[cfg(test)]\nmod tests;\n"),
            ("proxy/handler.rs", &inline),
            ("proxy/tests.rs", &own_file),
        ]);
        assert_eq!(long_functions(&krate), []);
        // The same file outside `#[cfg(test)]` is reported.
        let krate = tree(&[
            ("proxy/mod.rs", "mod tests;\n"),
            ("proxy/tests.rs", &own_file),
        ]);
        assert_eq!(long_functions(&krate).len(), 1);
    }

    #[test]
    fn a_nested_use_group_over_several_lines_expands_to_full_paths() {
        let text = "\
use crate::pool::{
    Pool,
    snapshot::{Selector, Snapshot as Current},
};
use crate::balance::key::{self, KeySource};
pub(crate) use super::{Load, Policy};
";
        let krate = tree(&[("pool/x/mod.rs", text)]);
        let paths: Vec<(String, usize, Option<&str>, bool)> = krate.files[0]
            .paths
            .iter()
            .map(|path| match &path.kind {
                PathKind::Use {
                    binding, public, ..
                } => (path.written(), path.line, binding.as_deref(), *public),
                PathKind::Inline => panic!("no inline path here: {path:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("crate::pool::Pool".to_owned(), 2, Some("Pool"), false),
                (
                    "crate::pool::snapshot::Selector".to_owned(),
                    3,
                    Some("Selector"),
                    false
                ),
                (
                    "crate::pool::snapshot::Snapshot".to_owned(),
                    3,
                    Some("Current"),
                    false
                ),
                ("crate::balance::key".to_owned(), 5, Some("key"), false),
                (
                    "crate::balance::key::KeySource".to_owned(),
                    5,
                    Some("KeySource"),
                    false
                ),
                ("super::Load".to_owned(), 6, Some("Load"), true),
                ("super::Policy".to_owned(), 6, Some("Policy"), true),
            ]
        );
        let targets: Vec<String> = krate
            .references
            .iter()
            .map(|reference| reference.target.join("::"))
            .collect();
        assert_eq!(targets[5], "pool::Load");
    }

    #[test]
    fn super_is_read_from_the_module_it_is_written_in() {
        let random = "\
use super::Policy;

fn pick() {}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::testing::members;
}
";
        let krate = tree(&[
            (
                "balance/policy/mod.rs",
                "mod random;\nmod testing;\npub trait Policy {}\n",
            ),
            ("balance/policy/random.rs", random),
            ("balance/policy/testing.rs", "pub fn members() {}\n"),
            (
                "balance/mod.rs",
                "pub mod policy;\nuse super::config::Config;\n",
            ),
            ("config/mod.rs", "pub struct Config;\n"),
        ]);
        assert_eq!(
            edges_of(&krate, "balance/policy/random.rs"),
            [
                (1, "balance/policy/mod.rs".to_owned()),
                (8, "balance/policy/testing.rs".to_owned()),
            ]
        );
        // `super` of a `mod.rs` is the module above its folder.
        assert_eq!(
            edges_of(&krate, "balance/mod.rs"),
            [(2, "config/mod.rs".to_owned())]
        );
    }

    #[test]
    fn an_indented_use_of_super_in_a_tests_module_is_no_edge() {
        let text = "\
pub struct Snapshot;

#[cfg(test)]
mod tests {
    use super::*;
    use super::Snapshot as Same;
}
";
        let krate = tree(&[
            ("pool/mod.rs", "mod snapshot;\npub struct Pool;\n"),
            ("pool/snapshot.rs", text),
        ]);
        assert_eq!(edges_of(&krate, "pool/snapshot.rs"), []);
        assert_eq!(krate.references.len(), 2, "{:#?}", krate.references);
    }

    #[test]
    fn a_child_module_declaration_is_no_reference_but_its_use_is() {
        let krate = tree(&[
            (
                "pool/mod.rs",
                "mod snapshot;\npub mod health;\n\nfn f() { snapshot::build(); }\n",
            ),
            ("pool/snapshot.rs", "pub fn build() {}\n"),
            ("pool/health.rs", ""),
        ]);
        assert_eq!(
            edges_of(&krate, "pool/mod.rs"),
            [(4, "pool/snapshot.rs".to_owned())]
        );
    }

    #[test]
    fn a_use_alias_leads_inline_paths_to_their_file() {
        let text = "\
use crate::balance::policy;

fn f() {
    policy::round_robin::RoundRobin::new();
}
";
        let krate = tree(&[
            ("proxy/mod.rs", text),
            ("balance/mod.rs", "pub mod policy;\n"),
            ("balance/policy/mod.rs", "pub mod round_robin;\n"),
            ("balance/policy/round_robin.rs", "pub struct RoundRobin;\n"),
        ]);
        assert_eq!(
            edges_of(&krate, "proxy/mod.rs"),
            [
                (1, "balance/policy/mod.rs".to_owned()),
                (4, "balance/policy/round_robin.rs".to_owned()),
            ]
        );
    }

    #[test]
    fn files_map_to_their_modules() {
        assert_eq!(module_of("pool/snapshot.rs"), ["pool", "snapshot"]);
        assert_eq!(module_of("pool/mod.rs"), ["pool"]);
        assert_eq!(
            module_of("balance/policy/random.rs"),
            ["balance", "policy", "random"]
        );
        assert_eq!(module_of("lib.rs"), Vec::<String>::new());
        assert_eq!(module_of("main.rs"), Vec::<String>::new());
        let krate = tree(&[
            ("admin/page.html", "<p>crate::proxy</p>"),
            ("admin/mod.rs", ""),
        ]);
        assert_eq!(krate.files.len(), 1);
    }

    #[test]
    fn the_layout_check_names_what_is_missing() {
        let sources: Vec<(String, String)> = [
            "lib.rs",
            "main.rs",
            "balance/mod.rs",
            "pool/mod.rs",
            "pool/x.rs",
        ]
        .iter()
        .map(|path| ((*path).to_owned(), String::new()))
        .collect();
        assert_eq!(
            missing_folders(&sources),
            [
                "src/listener/mod.rs",
                "src/proxy/mod.rs",
                "src/admin/mod.rs",
                "src/config/mod.rs"
            ]
        );
    }
}

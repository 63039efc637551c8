//! Reading a crate: its modules from `mod` declarations, starting at the root file, and
//! each module's references to the others.
//!
//! A path is followed when it starts with `crate`, `super` or `self`, with a child module of
//! the scope it is written in, or with a name a `use` in that scope brought in; it then
//! belongs to the longest module its absolute path starts with. Anything else names another
//! crate or a local item. In code, only paths of two segments or more count: a single name
//! is a value or a type, and the `use` that brought it in already counted.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Attribute, Item, UseTree};

use crate::{Graph, Module, Reference};

/// Read the crate whose root file is `root` (`src/lib.rs` or `src/main.rs`); `load` gives a
/// file's text, or `None` when there is no such file.
pub fn crate_graph(root: &Path, load: &dyn Fn(&Path) -> Option<String>) -> anyhow::Result<Graph> {
    let files = modules(root, load)?;
    let mut graph = Graph::default();
    let known: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    for file in &files {
        graph.modules.insert(file.module.clone(), file.path.clone());
        for (target, reference) in references(file, &known) {
            let to = owner(&target, &known);
            if to != file.module {
                graph.edges.entry((file.module.clone(), to)).or_insert(reference);
            }
        }
    }
    Ok(graph)
}

/// A crate from the files under `dir` on disk, `lib.rs` (or else `main.rs`) its root. File
/// names in references are given relative to `relative_to`.
pub fn crate_dir(dir: &Path, relative_to: &Path) -> anyhow::Result<Graph> {
    let root = [dir.join("lib.rs"), dir.join("main.rs")]
        .into_iter()
        .find(|f| f.is_file())
        .with_context(|| format!("{} has neither lib.rs nor main.rs", dir.display()))?;
    let mut graph = crate_graph(&root, &|path| std::fs::read_to_string(path).ok())?;
    let relative = |p: &Path| p.strip_prefix(relative_to).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf());
    for file in graph.modules.values_mut() {
        *file = relative(file);
    }
    for reference in graph.edges.values_mut() {
        reference.file = relative(&reference.file);
    }
    Ok(graph)
}

/// One module's file, parsed.
struct File {
    module: Module,
    path: PathBuf,
    ast: syn::File,
}

/// Every module of the crate, following `mod name;` declarations (outside test code) from
/// the root file: `name.rs` or `name/mod.rs` beside a root or `mod.rs`, else in the folder
/// named after the declaring file.
fn modules(root: &Path, load: &dyn Fn(&Path) -> Option<String>) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    let mut todo = vec![(Module::new(), root.to_path_buf())];
    while let Some((module, path)) = todo.pop() {
        let text = load(&path).with_context(|| format!("reading {}", path.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let dir = if module.is_empty() || stem == "mod" { folder } else { folder.join(stem) };
        for item in &ast.items {
            let Item::Mod(declared) = item else { continue };
            if declared.content.is_some() || is_test(&declared.attrs) {
                continue;
            }
            let name = declared.ident.to_string();
            let candidates = [dir.join(format!("{name}.rs")), dir.join(&name).join("mod.rs")];
            let Some(child) = candidates.iter().find(|c| load(c).is_some()) else {
                bail!(
                    "{}: `mod {name};` has neither {} nor {}",
                    path.display(),
                    candidates[0].display(),
                    candidates[1].display()
                );
            };
            let mut child_module = module.clone();
            child_module.push(name);
            todo.push((child_module, child.clone()));
        }
        files.push(File { module, path, ast });
    }
    files.sort_by(|a, b| a.module.cmp(&b.module));
    Ok(files)
}

/// The module a resolved path belongs to: the longest one it starts with.
fn owner(target: &[String], known: &BTreeSet<Module>) -> Module {
    (0..=target.len()).rev().map(|n| target[..n].to_vec()).find(|m| known.contains(m)).unwrap_or_default()
}

/// Every resolved path in `file`'s code outside tests, with where it is written.
fn references(file: &File, known: &BTreeSet<Module>) -> Vec<(Module, Reference)> {
    let mut reader = Reader {
        known,
        path: &file.path,
        scope: file.module.clone(),
        imports: HashMap::new(),
        collecting_imports: true,
        found: Vec::new(),
    };
    reader.visit_file(&file.ast);
    reader.collecting_imports = false;
    reader.visit_file(&file.ast);
    reader.found
}

/// Walks one file twice: first for the names each scope's `use`s bring in, then for the
/// references.
struct Reader<'a> {
    known: &'a BTreeSet<Module>,
    path: &'a Path,
    /// The module being read: the file's, or an inline one in it.
    scope: Module,
    /// Scope → name brought in by a `use` → the absolute path it stands for.
    imports: HashMap<Module, HashMap<String, Module>>,
    collecting_imports: bool,
    found: Vec<(Module, Reference)>,
}

impl Reader<'_> {
    /// The absolute path `segments` stands for in the current scope, if it is in this crate.
    fn resolve(&self, segments: &[String]) -> Option<Module> {
        let (first, rest) = segments.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" => Some([self.scope.as_slice(), rest].concat()),
            "super" => {
                let mut base = self.scope.clone();
                let mut rest = segments;
                while let Some(("super", after)) = rest.split_first().map(|(s, after)| (s.as_str(), after)) {
                    base.pop()?;
                    rest = after;
                }
                Some([base.as_slice(), rest].concat())
            }
            name => {
                let child = [self.scope.as_slice(), &[name.to_string()]].concat();
                if self.known.iter().any(|m| m.starts_with(&child)) {
                    return Some([self.scope.as_slice(), segments].concat());
                }
                let imported = self.imports.get(&self.scope)?.get(name)?;
                Some([imported.as_slice(), rest].concat())
            }
        }
    }

    fn note(&mut self, segments: &[String], line: usize) {
        if let Some(target) = self.resolve(segments) {
            let reference = Reference { file: self.path.to_path_buf(), line, path: segments.join("::") };
            self.found.push((target, reference));
        }
    }

    /// Paths written inside a macro call: runs of `name::name…`, in every group.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.scan(group.stream()),
                TokenTree::Ident(first) => {
                    let mut segments = vec![first.to_string()];
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                        (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
                    {
                        if !(a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':') {
                            break;
                        }
                        segments.push(next.to_string());
                        i += 3;
                    }
                    if segments.len() > 1 && !self.collecting_imports {
                        self.note(&segments, first.span().start().line);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Reader<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test(attributes(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        if let Some((_, items)) = &module.content {
            self.scope.push(module.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.scope.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_some() {
            return;
        }
        let mut leaves = Vec::new();
        use_leaves(&item.tree, Vec::new(), &mut leaves);
        for leaf in leaves {
            if self.collecting_imports {
                if let (Some(name), Some(target)) = (&leaf.name, self.resolve(&leaf.segments)) {
                    self.imports.entry(self.scope.clone()).or_default().insert(name.clone(), target);
                }
            } else {
                self.note(&leaf.segments, leaf.line);
            }
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 && !self.collecting_imports {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.note(&segments, path.segments[0].ident.span().start().line);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        self.scan(mac.tokens.clone());
    }
}

/// One name a `use` brings in (none for a glob), and the path it stands for.
struct Leaf {
    segments: Vec<String>,
    name: Option<String>,
    line: usize,
}

fn use_leaves(tree: &UseTree, prefix: Vec<String>, out: &mut Vec<Leaf>) {
    let with = |ident: &syn::Ident| {
        let mut segments = prefix.clone();
        if ident != "self" {
            segments.push(ident.to_string());
        }
        segments
    };
    match tree {
        UseTree::Path(path) => use_leaves(&path.tree, with(&path.ident), out),
        UseTree::Name(name) => {
            let segments = with(&name.ident);
            let line = name.ident.span().start().line;
            out.push(Leaf { name: segments.last().cloned(), segments, line });
        }
        UseTree::Rename(rename) => {
            let line = rename.ident.span().start().line;
            out.push(Leaf { segments: with(&rename.ident), name: Some(rename.rename.to_string()), line });
        }
        UseTree::Glob(glob) => {
            out.push(Leaf { segments: prefix, name: None, line: glob.star_token.span.start().line });
        }
        UseTree::Group(group) => {
            for tree in &group.items {
                use_leaves(tree, prefix.clone(), out);
            }
        }
    }
}

/// `#[cfg(test)]` among `attrs`.
fn is_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && matches!(&attr.meta, syn::Meta::List(list) if list.tokens.to_string() == "test")
    })
}

fn attributes(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A crate from `(file, text)` pairs under `src/`.
    pub(crate) fn graph(files: &[(&str, &str)]) -> Graph {
        let files: BTreeMap<PathBuf, String> =
            files.iter().map(|(name, text)| (Path::new("src").join(name), text.to_string())).collect();
        crate_graph(Path::new("src/lib.rs"), &|path| files.get(path).cloned()).unwrap()
    }

    fn edges(graph: &Graph) -> Vec<(String, String)> {
        graph.edges.keys().map(|(a, b)| (crate::name(a), crate::name(b))).collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn every_kind_of_path_is_followed_to_its_module() {
        let graph = graph(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c; pub const X: u8 = 1;"),
            ("a/mod.rs", "pub mod inner; use crate::b::{self, Thing as Other}; fn f() { inner::g(); b::h(); }"),
            ("a/inner.rs", "use super::super::c; fn g() -> u8 { crate::X }"),
            ("b.rs", "pub mod deep; pub struct Thing; fn h() { self::deep::k(); }"),
            ("b/deep.rs", "pub fn k() { tracing::info!(x = %crate::c::VALUE); }"),
            ("c.rs", "pub const VALUE: u8 = 2; fn local() { let v = std::mem::size_of::<u8>(); String::new(); }"),
        ]);
        assert_eq!(
            edges(&graph),
            [
                pair("a", "a::inner"),
                pair("a", "b"),
                pair("a::inner", "crate"),
                pair("a::inner", "c"),
                pair("b", "b::deep"),
                pair("b::deep", "c"),
            ]
        );
        let reference = &graph.edges[&(vec!["b".to_string(), "deep".to_string()], vec!["c".to_string()])];
        assert_eq!((reference.file.as_path(), reference.line), (Path::new("src/b/deep.rs"), 1));
        assert_eq!(reference.path, "crate::c::VALUE");
    }

    #[test]
    fn tests_docs_and_declarations_are_no_references() {
        let graph = graph(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "//! See [`crate::b::Thing`].\n#[cfg(test)] mod tests { use crate::b::Thing; }\n#[cfg(test)] use crate::b;"),
            ("b.rs", "pub struct Thing; #[cfg(test)] mod tests { use super::*; }"),
        ]);
        assert_eq!(edges(&graph), Vec::<(String, String)>::new());
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let files: BTreeMap<PathBuf, String> = [(PathBuf::from("src/lib.rs"), "mod gone;".to_string())].into();
        let err = crate_graph(Path::new("src/lib.rs"), &|path| files.get(path).cloned()).unwrap_err();
        assert!(err.to_string().contains("`mod gone;`"), "{err}");
    }
}

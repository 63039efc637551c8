//! The module graph of a Rust crate, read from its source with `syn`: which of its modules
//! refers to which (through `crate::…`, `super::…`, `self::…`, child modules, and the names
//! a `use` brings in). `scripts/test` fails on any circle among the controller's modules,
//! naming the references that make it; the same graph, drawn by graphviz, is the module
//! diagram in `docs/architecture.md`.
//!
//! A module is a file (`lib.rs`, `a.rs`, `a/mod.rs`, `a/b.rs`); inline modules belong to their
//! file. Test code (`#[cfg(test)]`) is left out: a test may reach anywhere. References in doc
//! comments do not count; paths in macro calls (`tokio::select!`, `format!`) do.
//!
//! # Layout
//! - [`read`]: finding a crate's modules and the references between them.
//! - [`circles`]: the groups of modules that refer to each other in a circle.
//! - [`dot`]: the graph in graphviz's language.

pub mod circles;
pub mod dot;
pub mod read;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A module, by its path from the crate root (empty: the root).
pub type Module = Vec<String>;

/// How a module is written in messages and the diagram: `a::b`, or `crate` for the root.
pub fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Where one module refers to another: the first such place in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub file: PathBuf,
    pub line: usize,
    /// The path as written, `crate::db::demos` say.
    pub path: String,
}

/// A crate's modules and which refers to which.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module, with its file.
    pub modules: BTreeMap<Module, PathBuf>,
    /// `(from, to)` for each module that refers to another, with the first reference.
    pub edges: BTreeMap<(Module, Module), Reference>,
}

impl Graph {
    /// The modules `module` refers to.
    pub fn targets<'g>(&'g self, module: &'g [String]) -> impl Iterator<Item = &'g Module> + 'g {
        self.edges.keys().filter(move |(from, _)| from == module).map(|(_, to)| to)
    }
}

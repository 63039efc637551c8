//! The graph in graphviz's language: one box per module, the modules of each folder framed
//! together, one arrow per module that refers to another (pointing at the one it uses), and
//! the members of any circle in red.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::circles::Circle;
use crate::{name, Graph, Module};

/// `graph` as a `digraph` called `title`, its `circles` marked.
pub fn render(graph: &Graph, circles: &[Circle], title: &str) -> String {
    let in_circle: BTreeSet<&Module> = circles.iter().flat_map(|c| &c.members).collect();
    // The folders: modules that have modules of their own.
    let folders: BTreeSet<&Module> = graph
        .modules
        .keys()
        .filter(|m| !m.is_empty() && graph.modules.keys().any(|c| c.len() == m.len() + 1 && c.starts_with(m)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(title));
    out.push_str("  graph [rankdir=LR, ranksep=0.9, nodesep=0.15, fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f5f5f5\", fontname=\"Helvetica\", fontsize=10, height=0.25];\n");
    out.push_str("  edge [color=\"#00000055\", arrowsize=0.5];\n");
    // Each module goes into the frame of its folder (the folder's own `mod.rs` too).
    let mut framed: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for module in graph.modules.keys() {
        let parent = module.split_last().map(|(_, parent)| parent).filter(|p| !p.is_empty());
        match (folders.contains(module), parent) {
            (true, _) => framed.entry(module).or_default().push(module),
            (false, Some(parent)) => {
                framed.entry(folders.get(&parent.to_vec()).expect("a parent is a folder")).or_default().push(module)
            }
            (false, None) => node(&mut out, "  ", module, None, in_circle.contains(module)),
        }
    }
    for (folder, modules) in framed {
        let _ = writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{}", name(folder))));
        let _ = writeln!(
            out,
            "    label={}; style=\"rounded\"; color=\"#bbbbbb\";",
            quote(&format!("{}/", folder.join("/")))
        );
        for module in modules {
            let label = if module == folder { "mod".to_string() } else { module.last().cloned().unwrap_or_default() };
            node(&mut out, "    ", module, Some(&label), in_circle.contains(module));
        }
        out.push_str("  }\n");
    }
    for (from, to) in graph.edges.keys() {
        let _ = writeln!(out, "  {} -> {};", quote(&name(from)), quote(&name(to)));
    }
    out.push_str("}\n");
    out
}

fn node(out: &mut String, indent: &str, module: &Module, label: Option<&str>, in_circle: bool) {
    let label = label.map_or_else(|| if module.is_empty() { "lib.rs".to_string() } else { name(module) }, String::from);
    let colour = if in_circle { ", fillcolor=\"#f6c4c4\", color=\"#b00000\"" } else { "" };
    let _ = writeln!(out, "{indent}{} [label={}{colour}];", quote(&name(module)), quote(&label));
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circles::circles;
    use crate::read::tests::graph;

    #[test]
    fn folders_are_framed_and_circles_marked() {
        let graph = graph(&[
            ("lib.rs", "pub mod db; pub mod web;"),
            ("db/mod.rs", "pub mod demos;"),
            ("db/demos.rs", "pub fn get() { crate::web::x(); }"),
            ("web.rs", "pub fn x() { crate::db::demos::get(); }"),
        ]);
        let dot = render(&graph, &circles(&graph), "t");
        assert!(dot.starts_with("digraph \"t\" {"), "{dot}");
        assert!(dot.contains("subgraph \"cluster_db\" {\n    label=\"db/\";"), "{dot}");
        assert!(dot.contains("\"db::demos\" [label=\"demos\", fillcolor=\"#f6c4c4\""), "{dot}");
        assert!(dot.contains("\"crate\" [label=\"lib.rs\"];"), "{dot}");
        assert!(dot.contains("\"web\" -> \"db::demos\";"), "{dot}");
    }
}

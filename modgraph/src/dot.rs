//! The graph in graphviz's language: one box per module, named by its path and coloured by
//! its top-level module (a folder's modules share a colour), one arrow per module that
//! refers to another, pointing at the one it uses, top to bottom; the members of any circle
//! in red. Graphviz's `tred` leaves out the arrows a longer path already implies, for a
//! lighter drawing of the same layers.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::circles::Circle;
use crate::{name, Graph, Module};

/// Fill colours, one per top-level module that has modules of its own, in turn.
const PALETTE: [&str; 10] =
    ["#dbe9f6", "#fde2c8", "#d9f0d3", "#e8dcf0", "#fbe3e8", "#fff4c2", "#d4efee", "#ece3d6", "#e3e7ec", "#f3dcd2"];

/// `graph` as a `digraph` called `title`, its `circles` marked.
pub fn render(graph: &Graph, circles: &[Circle], title: &str) -> String {
    let in_circle: BTreeSet<&Module> = circles.iter().flat_map(|c| &c.members).collect();
    // Top-level modules with modules of their own, each with a colour.
    let folders: Vec<&String> =
        graph.modules.keys().filter(|m| m.len() == 2).map(|m| &m[0]).collect::<BTreeSet<_>>().into_iter().collect();
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(title));
    out.push_str("  graph [rankdir=TB, ranksep=0.45, nodesep=0.12, fontname=\"Helvetica\"];\n");
    out.push_str(
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f5f5f5\", fontname=\"Helvetica\", fontsize=10, \
         height=0.25];\n",
    );
    out.push_str("  edge [color=\"#00000066\", arrowsize=0.5];\n");
    for module in graph.modules.keys() {
        let label = if module.is_empty() { "lib.rs".to_string() } else { name(module) };
        let folder = module.first().and_then(|top| folders.iter().position(|f| *f == top));
        let colour = match (in_circle.contains(module), folder) {
            (true, _) => ", fillcolor=\"#f6c4c4\", color=\"#b00000\"".to_string(),
            (false, Some(i)) => format!(", fillcolor=\"{}\"", PALETTE[i % PALETTE.len()]),
            (false, None) => String::new(),
        };
        let _ = writeln!(out, "  {} [label={}{colour}];", quote(&name(module)), quote(&label));
    }
    for (from, to) in graph.edges.keys() {
        let _ = writeln!(out, "  {} -> {};", quote(&name(from)), quote(&name(to)));
    }
    out.push_str("}\n");
    out
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
    fn modules_are_named_coloured_by_folder_and_circles_marked() {
        let graph = graph(&[
            ("lib.rs", "pub mod db; pub mod web; pub mod cli;"),
            ("db/mod.rs", "pub mod demos;"),
            ("db/demos.rs", "pub fn get() { crate::web::x(); }"),
            ("web.rs", "pub fn x() { crate::db::demos::get(); }"),
            ("cli.rs", "fn main() { crate::db::demos::get(); }"),
        ]);
        let dot = render(&graph, &circles(&graph), "t");
        assert!(dot.starts_with("digraph \"t\" {"), "{dot}");
        assert!(dot.contains("  \"crate\" [label=\"lib.rs\"];"), "{dot}");
        assert!(dot.contains("  \"db\" [label=\"db\", fillcolor=\"#dbe9f6\"];"), "{dot}");
        assert!(dot.contains("  \"db::demos\" [label=\"db::demos\", fillcolor=\"#f6c4c4\""), "{dot}");
        assert!(dot.contains("  \"cli\" [label=\"cli\"];"), "{dot}");
        assert!(dot.contains("  \"cli\" -> \"db::demos\";"), "{dot}");
    }
}

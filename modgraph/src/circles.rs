//! Circles: groups of modules each of which reaches every other through references (the
//! graph's strongly connected components of two or more modules, found with Tarjan's
//! algorithm). Each is shown as one shortest way round it, plus every reference inside it:
//! breaking the circle means removing one of those.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use crate::{name, Graph, Module};

/// Modules that refer to each other in a circle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    /// Every module in it, in order.
    pub members: Vec<Module>,
    /// A shortest way round, from its first member back to it.
    pub round: Vec<Module>,
}

/// Every circle in `graph`, by first member.
pub fn circles(graph: &Graph) -> Vec<Circle> {
    let mut search =
        Tarjan { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for module in graph.modules.keys() {
        if !search.index.contains_key(module) {
            search.visit(module);
        }
    }
    let mut circles: Vec<Circle> = search
        .found
        .into_iter()
        .filter(|members| members.len() > 1)
        .map(|mut members| {
            members.sort();
            let round = round(graph, &members);
            Circle { members, round }
        })
        .collect();
    circles.sort_by(|a, b| a.members.cmp(&b.members));
    circles
}

/// A report of `circles` naming each reference inside them, for people.
pub fn report(graph: &Graph, circles: &[Circle]) -> String {
    let mut out = String::new();
    for circle in circles {
        let members: Vec<String> = circle.members.iter().map(|m| name(m)).collect();
        let round: Vec<String> = circle.round.iter().map(|m| name(m)).collect();
        let _ = writeln!(out, "a circle of {} modules: {}", members.len(), members.join(", "));
        let _ = writeln!(out, "  for example {}", round.join(" -> "));
        let _ = writeln!(out, "  its references (remove one to break the circle):");
        let inside: BTreeSet<&Module> = circle.members.iter().collect();
        for ((from, to), reference) in &graph.edges {
            if inside.contains(from) && inside.contains(to) {
                let _ = writeln!(
                    out,
                    "    {} -> {}: {}:{} {}",
                    name(from),
                    name(to),
                    reference.file.display(),
                    reference.line,
                    reference.path
                );
            }
        }
    }
    out
}

struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g Module, usize>,
    low: BTreeMap<&'g Module, usize>,
    stack: Vec<&'g Module>,
    found: Vec<Vec<Module>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, module: &'g Module) {
        let number = self.index.len();
        self.index.insert(module, number);
        self.low.insert(module, number);
        self.stack.push(module);
        for target in self.graph.targets(module) {
            if !self.index.contains_key(target) {
                self.visit(target);
                let low = self.low[module].min(self.low[target]);
                self.low.insert(module, low);
            } else if self.stack.contains(&target) {
                let low = self.low[module].min(self.index[target]);
                self.low.insert(module, low);
            }
        }
        if self.low[module] == self.index[module] {
            let mut component = Vec::new();
            while let Some(top) = self.stack.pop() {
                component.push(top.clone());
                if top == module {
                    break;
                }
            }
            self.found.push(component);
        }
    }
}

/// A shortest way from the first of `members` back to it, staying among them.
fn round(graph: &Graph, members: &[Module]) -> Vec<Module> {
    let start = &members[0];
    let inside: BTreeSet<&Module> = members.iter().collect();
    let mut came_from: BTreeMap<&Module, &Module> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(module) = queue.pop_front() {
        for target in graph.targets(module).filter(|t| inside.contains(t)) {
            if target == start {
                let mut way = vec![start.clone(), module.clone()];
                let mut at = module;
                while at != start {
                    at = came_from[at];
                    way.push(at.clone());
                }
                way.reverse();
                return way;
            }
            if !came_from.contains_key(target) {
                came_from.insert(target, module);
                queue.push_back(target);
            }
        }
    }
    unreachable!("every member of a strongly connected component reaches the others")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tests::graph;

    fn names(modules: &[Module]) -> Vec<String> {
        modules.iter().map(|m| name(m)).collect()
    }

    #[test]
    fn circles_are_found_and_named_with_their_references() {
        let graph = graph(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d; pub mod e;"),
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "pub struct X; fn f() { crate::c::g(); }"),
            ("c.rs", "pub fn g() { crate::a::h(); crate::d::i(); }"),
            ("d.rs", "pub fn i() {}"),
            ("e.rs", "use crate::d;"),
        ]);
        let found = circles(&graph);
        assert_eq!(found.len(), 1);
        assert_eq!(names(&found[0].members), ["a", "b", "c"]);
        assert_eq!(names(&found[0].round), ["a", "b", "c", "a"]);
        let report = report(&graph, &found);
        assert!(report.contains("a circle of 3 modules: a, b, c"), "{report}");
        assert!(report.contains("c -> a: src/c.rs:1 crate::a::h"), "{report}");
        assert!(!report.contains("c -> d"), "{report}");
    }

    #[test]
    fn a_module_and_its_parent_can_make_a_circle() {
        let graph = graph(&[
            ("lib.rs", "pub mod edge;"),
            ("edge/mod.rs", "pub mod proxy; pub struct Table; fn f() { proxy::serve(); }"),
            ("edge/proxy.rs", "use super::Table; pub fn serve() {}"),
        ]);
        let found = circles(&graph);
        assert_eq!(found.len(), 1);
        assert_eq!(names(&found[0].round), ["edge", "edge::proxy", "edge"]);
    }

    #[test]
    fn layers_make_no_circle() {
        let graph = graph(&[
            ("lib.rs", "pub mod a; pub mod b; fn main() { a::run(); b::run(); }"),
            ("a.rs", "pub fn run() { crate::b::run(); }"),
            ("b.rs", "pub fn run() {}"),
        ]);
        assert_eq!(circles(&graph), []);
    }
}

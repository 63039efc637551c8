//! `bench-plots`: draws the figures that benchmark scripts write as JSON into PNG files,
//! one per figure, each titled with the machine it ran on.
//!
//! Usage: `bench-plots [--out DIR] RESULTS.json...` (default `DIR`: `docs/bench`). Each
//! results file holds:
//!
//! ```json
//! { "machine": "2 cores, … 23 GiB",          (optional: this machine's, read from /proc)
//!   "figures": [ { "name": "e2e-webhook-to-200",   (the PNG's file name)
//!                  "title": "Webhook → first 200", "unit": "s",
//!                  "note": "one more line under the title",            (optional)
//!                  "target_ratio": 1.15,       (optional: a line at baseline × ratio)
//!                  "bars": [ { "label": "shell baseline", "value": 2.7, "baseline": true,
//!                              "samples": [2.6, 2.8],                  (optional: dots)
//!                              "stages": [["clone", 0.02], ["build", 2.1]] } ] },
//!                { "name": "sustained-throughput", "title": "…", "unit": "deliveries/s",
//!                  "x_unit": "s",                        (a figure of lines over time)
//!                  "series": [ { "label": "demofleet", "points": [[10, 4012], [20, 3990]] } ],
//!                  "lines": [ { "label": "4 × demoservice", "value": 2800 } ] } ] }
//! ```
//!
//! A figure with `bars` is drawn as bars ([`bars`]): stacked by stage when a bar has
//! `stages`, each labelled with its ratio against the baseline bar. A figure with `series`
//! is drawn as lines over `x` ([`lines`]), with `lines` as dashed horizontal references
//! (targets). Fonts come from a TrueType file (`DEMOFLEET_PLOT_FONT`, Debian's
//! fonts-dejavu-core by default), so no fontconfig or freetype is needed.

mod bars;
mod lines;

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1000, 600);
/// Stage and series colours, in the order their names first appear in a figure.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const BASELINE_COLOR: RGBColor = RGBColor(150, 150, 150);
const BAR_COLOR: RGBColor = RGBColor(31, 119, 180);

#[derive(Debug, Deserialize)]
struct Results {
    machine: Option<String>,
    figures: Vec<Figure>,
}

#[derive(Debug, Deserialize)]
struct Figure {
    name: String,
    title: String,
    unit: String,
    note: Option<String>,
    target_ratio: Option<f64>,
    #[serde(default)]
    bars: Vec<Bar>,
    /// The unit of `x` in a figure of series.
    x_unit: Option<String>,
    #[serde(default)]
    series: Vec<Series>,
    /// Horizontal reference lines of a figure of series.
    #[serde(default)]
    lines: Vec<Reference>,
}

#[derive(Debug, Deserialize)]
struct Bar {
    label: String,
    value: f64,
    #[serde(default)]
    baseline: bool,
    #[serde(default)]
    samples: Vec<f64>,
    #[serde(default)]
    stages: Vec<(String, f64)>,
}

/// A measurement over time: `(x, y)` points, drawn as one line.
#[derive(Debug, Deserialize)]
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// A horizontal line at `value`, such as a target.
#[derive(Debug, Deserialize)]
struct Reference {
    label: String,
    value: f64,
}

fn main() -> anyhow::Result<()> {
    let mut out = PathBuf::from("docs/bench");
    let mut inputs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a folder")?.into(),
            "-h" | "--help" => {
                println!("usage: bench-plots [--out DIR] RESULTS.json...");
                return Ok(());
            }
            _ => inputs.push(PathBuf::from(arg)),
        }
    }
    anyhow::ensure!(!inputs.is_empty(), "usage: bench-plots [--out DIR] RESULTS.json...");
    register_fonts()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let this_machine = machine();
    for input in &inputs {
        let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
        let results: Results = serde_json::from_str(&text).with_context(|| format!("parsing {}", input.display()))?;
        let machine = results.machine.as_deref().unwrap_or(&this_machine);
        for figure in &results.figures {
            let path = out.join(format!("{}.png", figure.name));
            let drawn = if figure.series.is_empty() {
                bars::draw(figure, machine, &path)
            } else {
                lines::draw(figure, machine, &path)
            };
            drawn.with_context(|| format!("drawing {}", path.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// The regular and bold faces under the name `sans-serif`.
fn register_fonts() -> anyhow::Result<()> {
    let regular = std::env::var("DEMOFLEET_PLOT_FONT").unwrap_or_else(|_| DEFAULT_FONT.into());
    let bold = regular.replace(".ttf", "-Bold.ttf");
    let load = |path: &str| -> anyhow::Result<&'static [u8]> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the font {path} (apt-get install fonts-dejavu-core)"))?;
        Ok(Box::leak(bytes.into_boxed_slice()))
    };
    let regular_bytes = load(&regular)?;
    let bold_bytes = if Path::new(&bold).exists() { load(&bold)? } else { regular_bytes };
    plotters::style::register_font("sans-serif", FontStyle::Normal, regular_bytes)
        .map_err(|_| anyhow::anyhow!("{regular} is not a font ab_glyph reads"))?;
    plotters::style::register_font("sans-serif", FontStyle::Bold, bold_bytes)
        .map_err(|_| anyhow::anyhow!("{bold} is not a font ab_glyph reads"))?;
    Ok(())
}

/// "2 cores, Intel(R) Xeon(R) Processor, 23 GiB", from /proc.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{cores} cores, {model}, {} GiB", kib / (1024 * 1024))
}

/// Draw the figure's title, the machine and the note at the top of `root`; the area below.
fn header<'a>(
    root: &DrawingArea<BitMapBackend<'a>, Shift>,
    figure: &Figure,
    machine: &str,
) -> anyhow::Result<DrawingArea<BitMapBackend<'a>, Shift>> {
    let (header, body) = root.split_vertically(if figure.note.is_some() { 96 } else { 72 });
    let centered = |size: u32, style: FontStyle| {
        TextStyle::from(("sans-serif", size).into_font().style(style)).pos(Pos::new(HPos::Center, VPos::Top))
    };
    let middle = SIZE.0 as i32 / 2;
    header.draw(&Text::new(figure.title.clone(), (middle, 10), centered(26, FontStyle::Bold)))?;
    header.draw(&Text::new(format!("machine: {machine}"), (middle, 44), centered(17, FontStyle::Normal)))?;
    if let Some(note) = &figure.note {
        header.draw(&Text::new(note.clone(), (middle, 68), centered(17, FontStyle::Normal)))?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_files_read_with_optional_fields_left_out() {
        let results: Results = serde_json::from_str(
            r#"{"figures": [{"name": "n", "title": "t", "unit": "s",
                "bars": [{"label": "a", "value": 1.0, "baseline": true}, {"label": "b", "value": 1.1,
                          "stages": [["x", 0.5], ["y", 0.6]]}]},
                {"name": "m", "title": "t", "unit": "ms", "x_unit": "s",
                 "series": [{"label": "a", "points": [[10, 1.5], [20, 2.5]]}]}]}"#,
        )
        .unwrap();
        assert!(results.machine.is_none());
        assert_eq!(results.figures[0].bars[1].stages.len(), 2);
        assert!(results.figures[0].target_ratio.is_none() && results.figures[0].series.is_empty());
        assert_eq!(results.figures[1].series[0].points[1], (20.0, 2.5));
        assert!(results.figures[1].bars.is_empty() && results.figures[1].lines.is_empty());
    }
}

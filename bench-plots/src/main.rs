//! `bench-plots`: draws the figures that benchmark scripts write as JSON into PNG files,
//! one per figure, each titled with the machine it ran on and each bar labelled with its
//! ratio against the figure's baseline bar.
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
//!                              "stages": [["clone", 0.02], ["build", 2.1]] } ] } ] }
//! ```
//!
//! A bar with `stages` is drawn stacked, one colour per stage name across the figure.
//! Fonts come from a TrueType file (`DEMOFLEET_PLOT_FONT`, Debian's fonts-dejavu-core by
//! default), so no fontconfig or freetype is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1000, 600);
/// Stage colours, in the order stage names first appear in a figure.
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
    bars: Vec<Bar>,
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
            draw(figure, machine, &path).with_context(|| format!("drawing {}", path.display()))?;
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

/// How a bar compares with the baseline: "1.08× baseline".
fn ratio_text(value: f64, baseline: Option<f64>) -> Option<String> {
    let base = baseline.filter(|b| *b > 0.0)?;
    Some(format!("{:.2}× baseline", value / base))
}

/// A value with a sensible number of digits for its size.
fn value_text(value: f64, unit: &str) -> String {
    let digits = if value.abs() >= 100.0 {
        0
    } else if value.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

fn draw(figure: &Figure, machine: &str, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!figure.bars.is_empty(), "figure {} has no bars", figure.name);
    let baseline = figure.bars.iter().find(|b| b.baseline).map(|b| b.value);
    let target = baseline.zip(figure.target_ratio).map(|(b, r)| b * r);
    let top = figure
        .bars
        .iter()
        .flat_map(|b| {
            let stacked: f64 = b.stages.iter().map(|(_, v)| v).sum();
            b.samples.iter().copied().chain([b.value, stacked])
        })
        .chain(target)
        .fold(0.0_f64, f64::max);
    let y_max = if top > 0.0 { top * 1.25 } else { 1.0 };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
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

    let mut stage_names: Vec<&str> = Vec::new();
    for bar in &figure.bars {
        for (name, _) in &bar.stages {
            if !stage_names.contains(&name.as_str()) {
                stage_names.push(name);
            }
        }
    }
    let legend_width = if stage_names.is_empty() && target.is_none() { 0 } else { 230 };
    let (plot, legend) = body.split_horizontally(SIZE.0 - legend_width);

    let n = figure.bars.len() as u32;
    let labels: Vec<&str> = figure.bars.iter().map(|b| b.label.as_str()).collect();
    let mut chart = ChartBuilder::on(&plot)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // A segmented range of 0..k has k + 1 segments: one per bar.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(RGBColor(240, 240, 240))
        .x_labels(labels.len())
        .x_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).map_or(String::new(), |l| l.to_string()),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 18))
        .y_desc(figure.unit.as_str())
        .y_label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;

    // Bars take two fifths of their segment.
    let margin = (SIZE.0 - legend_width - 110) * 3 / n / 10;
    let segment = |i: u32| (SegmentValue::Exact(i), SegmentValue::Exact(i + 1));

    // Plain bars: the baseline grey, the others blue.
    for (i, bar) in (0..n).zip(&figure.bars).filter(|(_, b)| b.stages.is_empty()) {
        let (left, right) = segment(i);
        let color = if bar.baseline { BASELINE_COLOR } else { BAR_COLOR };
        let mut rect = Rectangle::new([(left, 0.0), (right, bar.value)], color.filled());
        rect.set_margin(0, 0, margin, margin);
        chart.draw_series([rect])?;
    }

    // Stacked bars, one colour per stage name.
    let mut stacks: BTreeMap<u32, f64> = BTreeMap::new();
    for (k, stage) in stage_names.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let mut rects = Vec::new();
        for (i, bar) in (0..n).zip(&figure.bars) {
            let Some((_, value)) = bar.stages.iter().find(|(name, _)| name == stage) else { continue };
            let bottom = stacks.entry(i).or_insert(0.0);
            let (left, right) = segment(i);
            let mut rect = Rectangle::new([(left, *bottom), (right, *bottom + value)], color.filled());
            rect.set_margin(0, 0, margin, margin);
            rects.push(rect);
            *bottom += value;
        }
        chart.draw_series(rects)?;
    }

    // Every round's value, as rings on the bar's centre line.
    for (i, bar) in (0..n).zip(&figure.bars) {
        chart.draw_series(
            bar.samples.iter().map(|s| Circle::new((SegmentValue::CenterOf(i), *s), 4, BLACK.stroke_width(1))),
        )?;
    }

    if let (Some(line), Some(ratio)) = (target, figure.target_ratio) {
        let red = RGBColor(200, 30, 30);
        chart.draw_series([PathElement::new(
            vec![(SegmentValue::Exact(0), line), (SegmentValue::Exact(n), line)],
            red.stroke_width(2),
        )])?;
        legend.draw(&PathElement::new(vec![(10, 40), (32, 40)], red.stroke_width(3)))?;
        legend.draw(&Text::new(format!("target: ≤ {ratio}×"), (40, 32), ("sans-serif", 16)))?;
    }

    // The value and its ratio against the baseline above each bar.
    let above = TextStyle::from(("sans-serif", 17).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, bar) in (0..n).zip(&figure.bars) {
        let stacked: f64 = bar.stages.iter().map(|(_, v)| v).sum();
        let height = bar.value.max(stacked).max(bar.samples.iter().copied().fold(0.0, f64::max));
        let mut lines = vec![value_text(bar.value, &figure.unit)];
        if bar.baseline {
            lines.push("baseline".into());
        } else if let Some(ratio) = ratio_text(bar.value, baseline) {
            lines.push(ratio);
        }
        let at = (SegmentValue::CenterOf(i), height);
        let element = EmptyElement::at(at)
            + Text::new(lines[0].clone(), (0, -26), above.clone())
            + Text::new(lines.get(1).cloned().unwrap_or_default(), (0, -6), above.clone());
        chart.plotting_area().draw(&element)?;
    }

    // Stages from the bottom of a bar up, as they are stacked.
    for (k, stage) in stage_names.iter().enumerate().rev() {
        let y = 70 + 26 * (stage_names.len() - 1 - k) as i32;
        let color = PALETTE[k % PALETTE.len()];
        legend.draw(&Rectangle::new([(12, y), (30, y + 18)], color.filled()))?;
        legend.draw(&Text::new(stage.to_string(), (40, y), ("sans-serif", 16)))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_against_the_baseline() {
        assert_eq!(ratio_text(3.0, Some(2.5)).as_deref(), Some("1.20× baseline"));
        assert_eq!(ratio_text(3.0, None), None);
        assert_eq!(ratio_text(3.0, Some(0.0)), None);
    }

    #[test]
    fn values_keep_a_few_significant_digits() {
        assert_eq!(value_text(2.7456, "s"), "2.75 s");
        assert_eq!(value_text(17.44, "MB"), "17.4 MB");
        assert_eq!(value_text(5190.4, "req/s"), "5190 req/s");
    }

    #[test]
    fn results_files_read_with_optional_fields_left_out() {
        let results: Results = serde_json::from_str(
            r#"{"figures": [{"name": "n", "title": "t", "unit": "s",
                "bars": [{"label": "a", "value": 1.0, "baseline": true}, {"label": "b", "value": 1.1,
                          "stages": [["x", 0.5], ["y", 0.6]]}]}]}"#,
        )
        .unwrap();
        assert!(results.machine.is_none());
        assert_eq!(results.figures[0].bars[1].stages.len(), 2);
        assert!(results.figures[0].target_ratio.is_none());
    }
}

//! Bar figures: one bar per measurement (stacked by stage when given), each labelled with
//! its value and its ratio to the figure's baseline bar, rings for each round's value, and
//! a target line at baseline × `target_ratio`.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{header, Figure, BAR_COLOR, BASELINE_COLOR, PALETTE, SIZE};

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

pub fn draw(figure: &Figure, machine: &str, path: &Path) -> anyhow::Result<()> {
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
    let body = header(&root, figure, machine)?;

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
    // More than four bars: smaller labels, so that neighbours' do not overlap.
    let crowded = n > 4;
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
        .x_label_style(("sans-serif", if crowded { 15 } else { 18 }))
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
        legend.draw(&Text::new(format!("target: {ratio}× baseline"), (40, 32), ("sans-serif", 16)))?;
    }

    // The value and its ratio against the baseline above each bar.
    let above = TextStyle::from(("sans-serif", if crowded { 14 } else { 17 }).into_font())
        .pos(Pos::new(HPos::Center, VPos::Bottom));
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
}

//! Figures of lines over time: one coloured line per series (with a dot per point), dashed
//! horizontal reference lines (targets), and a legend naming both.

use std::path::Path;

use plotters::prelude::*;

use crate::{header, Figure, PALETTE, SIZE};

const REFERENCE_COLOR: RGBColor = RGBColor(200, 30, 30);

pub fn draw(figure: &Figure, machine: &str, path: &Path) -> anyhow::Result<()> {
    let points = figure.series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_top) = points.fold((0.0_f64, 0.0_f64), |(x, y), (px, py)| (x.max(*px), y.max(*py)));
    let y_top = figure.lines.iter().map(|l| l.value).fold(y_top, f64::max);
    anyhow::ensure!(x_max > 0.0, "figure {} has no points", figure.name);
    let y_max = if y_top > 0.0 { y_top * 1.15 } else { 1.0 };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let body = header(&root, figure, machine)?;
    let mut chart = ChartBuilder::on(&body)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(240, 240, 240))
        .x_desc(figure.x_unit.as_deref().unwrap_or(""))
        .y_desc(figure.unit.as_str())
        .x_label_style(("sans-serif", 15))
        .y_label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;

    for (k, series) in figure.series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(series.points.iter().copied(), color.stroke_width(2)))?
            .label(series.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
        chart.draw_series(series.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    for reference in &figure.lines {
        let style = REFERENCE_COLOR.stroke_width(2);
        let dashes = DashedLineSeries::new([(0.0, reference.value), (x_max, reference.value)], 10, 6, style);
        chart
            .draw_series(dashes)?
            .label(reference.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

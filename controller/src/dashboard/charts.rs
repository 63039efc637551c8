//! Small charts drawn on the server as SVG, so the pages keep working without JavaScript:
//! horizontal bars (demos by state), columns over time (webhook deliveries), a meter (a
//! host's demos against its capacity, its disk) and a timeline (a chain's steps, each a bar
//! of its duration). Every chart is an `img` for assistive technology, named by its title;
//! every label is escaped.

use std::fmt::Write;

/// How a bar is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Normal,
    Good,
    Bad,
    Muted,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Normal => "normal",
            Tone::Good => "good",
            Tone::Bad => "bad",
            Tone::Muted => "muted",
        }
    }

    fn fill(self) -> &'static str {
        match self {
            Tone::Normal => "#3a6ea5",
            Tone::Good => "#2e7d32",
            Tone::Bad => "#c7162b",
            Tone::Muted => "#9aa5b1",
        }
    }
}

/// One bar of [`bars`].
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub tone: Tone,
}

/// One step of [`timeline`]: where it starts and how long it took, in seconds from the
/// chain's start.
pub struct Span {
    pub label: String,
    pub start: f64,
    pub length: f64,
    pub tone: Tone,
    /// Shown after the bar: its duration, an outcome.
    pub note: String,
}

const WIDTH: f64 = 640.0;
const LABEL: f64 = 150.0;
const ROW: f64 = 22.0;

/// Text made safe for SVG (and HTML) content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn open(out: &mut String, title: &str, width: f64, height: f64) {
    let title = escape(title);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{title}" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{title}</title>"#
    );
}

/// Horizontal bars, one per item, scaled to the largest value; each bar's value is written
/// after it.
pub fn bars(title: &str, items: &[Bar]) -> String {
    let max = items.iter().map(|b| b.value).fold(0.0, f64::max).max(1.0);
    let height = ROW * items.len().max(1) as f64 + 4.0;
    let mut out = String::new();
    open(&mut out, title, WIDTH, height);
    if items.is_empty() {
        let _ = write!(out, r#"<text x="0" y="16" class="empty">nothing yet</text>"#);
    }
    let room = WIDTH - LABEL - 70.0;
    for (i, bar) in items.iter().enumerate() {
        let y = i as f64 * ROW;
        let width = (bar.value / max * room).max(if bar.value > 0.0 { 2.0 } else { 0.0 });
        let _ = write!(
            out,
            r#"<text x="{x}" y="{ty}" text-anchor="end">{label}</text><rect class="{class}" x="{LABEL}" y="{ry}" width="{width:.1}" height="16" fill="{fill}"/><text x="{vx:.1}" y="{ty}">{value}</text>"#,
            x = LABEL - 6.0,
            ty = y + 15.0,
            label = escape(&bar.label),
            class = bar.tone.class(),
            ry = y + 3.0,
            fill = bar.tone.fill(),
            vx = LABEL + width + 6.0,
            value = bar.value,
        );
    }
    out.push_str("</svg>");
    out
}

/// Columns over time, left (oldest) to right, each labelled below every `label_every`.
pub fn columns(title: &str, items: &[(String, i64)], label_every: usize) -> String {
    let height = 150.0;
    let plot = 110.0;
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let step = WIDTH / items.len().max(1) as f64;
    let mut out = String::new();
    open(&mut out, title, WIDTH, height);
    let _ = write!(out, r#"<text x="0" y="12">{}</text>"#, max as i64);
    for (i, (label, n)) in items.iter().enumerate() {
        let h = *n as f64 / max * (plot - 16.0);
        let x = i as f64 * step;
        let _ = write!(
            out,
            r#"<rect class="normal" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"><title>{label}: {n}</title></rect>"#,
            y = plot - h,
            w = (step - 2.0).max(1.0),
            fill = Tone::Normal.fill(),
            label = escape(label),
        );
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(out, r#"<text x="{x:.1}" y="{ty}">{}</text>"#, escape(label), ty = plot + 16.0);
        }
    }
    let _ = write!(out, r##"<line x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}" stroke="#888"/>"##);
    out.push_str("</svg>");
    out
}

/// A meter: `used` of `total`, with `text` beside it; red beyond 90 %.
pub fn meter(title: &str, used: f64, total: f64, text: &str) -> String {
    let (width, height, bar) = (260.0, 20.0, 120.0);
    let share = if total > 0.0 { (used / total).clamp(0.0, 1.0) } else { 0.0 };
    let tone = if share > 0.9 { Tone::Bad } else { Tone::Normal };
    let mut out = String::new();
    open(&mut out, title, width, height);
    let _ = write!(
        out,
        r##"<rect x="0" y="3" width="{bar}" height="14" fill="#e3e7eb"/><rect class="{class}" x="0" y="3" width="{w:.1}" height="14" fill="{fill}"/><text x="{tx}" y="15">{text}</text>"##,
        class = tone.class(),
        w = share * bar,
        fill = tone.fill(),
        tx = bar + 8.0,
        text = escape(text),
    );
    out.push_str("</svg>");
    out
}

/// A chain's steps as bars along time, each from its start for its duration, with a scale
/// in seconds.
pub fn timeline(title: &str, spans: &[Span]) -> String {
    let end = spans.iter().map(|s| s.start + s.length).fold(0.0, f64::max).max(0.001);
    let room = WIDTH - LABEL - 160.0;
    let height = ROW * spans.len().max(1) as f64 + 22.0;
    let mut out = String::new();
    open(&mut out, title, WIDTH, height);
    for (i, span) in spans.iter().enumerate() {
        let y = i as f64 * ROW;
        let x = LABEL + span.start / end * room;
        let width = (span.length / end * room).max(2.0);
        let _ = write!(
            out,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect class="{class}" x="{x:.1}" y="{ry}" width="{width:.1}" height="16" fill="{fill}"/><text x="{nx:.1}" y="{ty}">{note}</text>"#,
            lx = LABEL - 6.0,
            ty = y + 15.0,
            label = escape(&span.label),
            class = span.tone.class(),
            ry = y + 3.0,
            fill = span.tone.fill(),
            nx = x + width + 6.0,
            note = escape(&span.note),
        );
    }
    let axis = ROW * spans.len().max(1) as f64 + 4.0;
    let _ = write!(
        out,
        r##"<line x1="{LABEL}" y1="{axis}" x2="{right}" y2="{axis}" stroke="#888"/><text x="{LABEL}" y="{ty}">0 s</text><text x="{right}" y="{ty}" text-anchor="end">{end}</text>"##,
        right = LABEL + room,
        ty = axis + 14.0,
        end = seconds(end),
    );
    out.push_str("</svg>");
    out
}

/// `0.42 s`, `12.3 s`, `4 min 05 s`.
pub fn seconds(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} s")
    } else if value < 120.0 {
        format!("{value:.1} s")
    } else {
        format!("{} min {:02} s", (value / 60.0) as u64, (value % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_charts_named() {
        let svg = bars("Demos <by> state", &[Bar { label: "<script>".into(), value: 3.0, tone: Tone::Good }]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"aria-label="Demos &lt;by&gt; state""#) && svg.contains("&lt;script&gt;"));
        assert!(!svg.contains("<script>"));
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let svg = bars(
            "x",
            &[
                Bar { label: "a".into(), value: 10.0, tone: Tone::Normal },
                Bar { label: "b".into(), value: 5.0, tone: Tone::Normal },
            ],
        );
        let room = WIDTH - LABEL - 70.0;
        assert!(
            svg.contains(&format!(r#"width="{room:.1}""#)) && svg.contains(&format!(r#"width="{:.1}""#, room / 2.0))
        );
    }

    #[test]
    fn a_timeline_marks_failed_steps_and_spans_the_chain() {
        let spans = [
            Span { label: "checkout".into(), start: 0.0, length: 1.0, tone: Tone::Good, note: "1.00 s".into() },
            Span { label: "build".into(), start: 1.0, length: 3.0, tone: Tone::Bad, note: "failed".into() },
        ];
        let svg = timeline("chain", &spans);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"class="bad""#) && svg.contains("4.00 s"));
    }

    #[test]
    fn a_meter_turns_red_when_nearly_full() {
        assert!(meter("disk", 95.0, 100.0, "95 %").contains(r#"class="bad""#));
        assert!(meter("demos", 1.0, 4.0, "1 / 4").contains(r#"class="normal""#));
        assert!(meter("nothing", 0.0, 0.0, "-").contains(r#"width="0.0""#));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(0.4211), "0.42 s");
        assert_eq!(seconds(12.34), "12.3 s");
        assert_eq!(seconds(245.0), "4 min 05 s");
    }
}

//! The timeline chart of a scenario: one panel per target, the latency of every request
//! at the time it was due, coloured by what it got, the fault window shaded, and the
//! breaker's state as a band above booksvc's panel.

use std::collections::HashSet;
use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::run::{ScenarioRun, TargetRun};
use crate::sample::Class;

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 330;
const BAND_HEIGHT: u32 = 26;
const Y_LABELS: u32 = 64;
/// The latency axis, in milliseconds (logarithmic).
const Y_MIN: f64 = 0.1;
const Y_MAX: f64 = 10_000.0;

const FRESH: RGBColor = RGBColor(46, 160, 67);
const STALE: RGBColor = RGBColor(31, 119, 180);
const ERROR: RGBColor = RGBColor(214, 39, 40);
const FAULT: RGBColor = RGBColor(120, 120, 120);
const BREAKER: [(i64, &str, RGBColor); 3] = [
    (0, "closed", RGBColor(190, 230, 190)),
    (1, "half-open", RGBColor(255, 200, 90)),
    (2, "open", RGBColor(240, 110, 100)),
];

pub fn draw(run: &ScenarioRun, path: &Path) -> anyhow::Result<()> {
    let height = PANEL_HEIGHT * run.targets.len() as u32 + 40;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root
        .titled(
            &format!(
                "{}: latency of every request ({} req/s per target), by the time it was due",
                run.scenario.name(),
                run.plan.rate
            ),
            ("sans-serif", 18),
        )
        .map_err(plot_error)?;
    for (panel, target) in root
        .split_evenly((run.targets.len(), 1))
        .iter()
        .zip(&run.targets)
    {
        draw_panel(run, target, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel(
    run: &ScenarioRun,
    target: &TargetRun,
    area: &DrawingArea<SVGBackend, Shift>,
) -> anyhow::Result<()> {
    let total = run.plan.total().as_secs_f64();
    let (band_area, plot_area) = area.split_vertically(BAND_HEIGHT + 22);

    let mut band = ChartBuilder::on(&band_area)
        .margin_top(22)
        .margin_right(12)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(0f64..total, 0f64..1f64)
        .map_err(plot_error)?;
    match &target.breaker {
        Some(breaker) => {
            band.draw_series(breaker.spans().into_iter().map(|(from, to, state)| {
                let color = BREAKER
                    .iter()
                    .find(|(s, _, _)| *s == state)
                    .map_or(WHITE, |(_, _, c)| *c);
                Rectangle::new(
                    [(from.as_secs_f64(), 0.0), (to.as_secs_f64(), 1.0)],
                    color.filled(),
                )
            }))
            .map_err(plot_error)?;
            let legend: Vec<_> = BREAKER.iter().map(|(_, name, _)| *name).collect();
            band_area
                .draw_text(
                    &format!(
                        "{} · breaker band: {}",
                        target.target.name,
                        legend.join(" / ")
                    ),
                    &("sans-serif", 14).into_text_style(&band_area),
                    (Y_LABELS as i32, 2),
                )
                .map_err(plot_error)?;
        }
        None => {
            band_area
                .draw_text(
                    &format!("{} · no circuit breaker", target.target.name),
                    &("sans-serif", 14).into_text_style(&band_area),
                    (Y_LABELS as i32, 2),
                )
                .map_err(plot_error)?;
        }
    }

    let mut chart = ChartBuilder::on(&plot_area)
        .margin_right(12)
        .margin_bottom(4)
        .x_label_area_size(34)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(0f64..total, (Y_MIN..Y_MAX).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start (fault shaded)")
        .y_desc("latency, ms")
        .y_label_formatter(&|ms| format!("{ms}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;

    let fault = [
        (target.timing.fault_at.as_secs_f64(), Y_MIN),
        (target.timing.repair_at.as_secs_f64(), Y_MAX),
    ];
    chart
        .draw_series(std::iter::once(Rectangle::new(
            fault,
            FAULT.mix(0.15).filled(),
        )))
        .map_err(plot_error)?
        .label("fault")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], FAULT.mix(0.3).filled()));
    if let Some(healthy) = target.timing.healthy_at {
        let x = healthy.as_secs_f64();
        chart
            .draw_series(LineSeries::new(
                [(x, Y_MIN), (x, Y_MAX)],
                FRESH.stroke_width(1),
            ))
            .map_err(plot_error)?
            .label("healthy again")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], FRESH));
    }

    for (class, name, color) in [
        (Class::Fresh, "fresh", FRESH),
        (Class::Stale, "stale", STALE),
        (Class::Error, "error", ERROR),
    ] {
        // Dots closer than a pixel or two (they are four across) look the same: one is
        // drawn for each 2×2 pixel cell, which keeps the file small (16,000 requests
        // become a few thousand dots).
        let mut seen = HashSet::new();
        let dots: Vec<(f64, f64)> = target
            .samples
            .iter()
            .filter(|sample| sample.class() == class)
            .map(|sample| {
                let ms = (sample.latency.as_secs_f64() * 1000.0).clamp(Y_MIN, Y_MAX);
                (sample.due.as_secs_f64(), ms)
            })
            .filter(|dot| {
                let (x, y) = chart.backend_coord(dot);
                seen.insert((x / 2, y / 2))
            })
            .collect();
        let count = target.samples.iter().filter(|s| s.class() == class).count();
        chart
            .draw_series(
                dots.into_iter()
                    .map(|dot| Circle::new(dot, 2, color.filled())),
            )
            .map_err(plot_error)?
            .label(format!("{name} ({count})"))
            .legend(move |(x, y)| Circle::new((x + 6, y), 3, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_every_request_class_the_fault_and_the_breaker_band() {
        let run = crate::analysis::tests::story();
        let path = std::env::temp_dir().join(format!("drill-chart-{}.svg", std::process::id()));
        draw(&run, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("database-stop: latency of every request"));
        for label in [
            "fresh (45)",
            "stale (35)",
            "error (0)",
            "fault",
            "healthy again",
            "breaker band",
        ] {
            assert!(svg.contains(label), "no {label:?} in the chart");
        }
        // One dot per occupied pixel, at most one per request, plus the legend's.
        let dots = svg.matches("<circle").count();
        assert!(dots > 10 && dots <= 80 + 3, "{dots} dots");
        // The open breaker's colour fills the band.
        assert!(svg.contains("#F06E64"), "no open-breaker span");
    }
}

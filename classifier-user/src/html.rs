//! `classifier report … --format html`: one self-contained page an analyst
//! can open on an air-gapped laptop, print, and publish from. Charts are
//! inline SVG built here (no scripts, styles inline, no fonts or images
//! fetched; a Content-Security-Policy forbids any fetch), each with a
//! title, a description and the table behind it. Colours are the
//! Okabe–Ito palette, which stays distinguishable for colour-blind readers.
//!
//! Every table cell holding a number carries `data-field` and the plain
//! number (no separators), so numbers copy cleanly and tests can read them.

use std::{collections::BTreeMap, collections::BTreeSet, fmt::Write as _};

use time::OffsetDateTime;

use crate::{
    history::{Interval, MergedHistory},
    report::{Learning, Report, TopRow, rfc3339},
};

/// Okabe–Ito, then grey for "other".
const PALETTE: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
];
const OTHER_COLOUR: &str = "#8c8c8c";
/// Services the time series names; the rest are stacked as "other".
const SERIES_SERVICES: usize = 6;
/// Services the share chart draws.
const CHART_SERVICES: usize = 12;
const CHART_WIDTH: f64 = 760.0;

/// The page for a merged history.
pub fn render(history: &MergedHistory) -> String {
    let report = &history.report;
    let mut page = String::new();
    let title = format!(
        "classifier report: {} to {} UTC",
        seconds(Some(&report.start)),
        seconds(Some(&report.end))
    );
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    provenance(&mut page, history);
    // The figures first, then the numbers behind them.
    let mut tables = String::new();
    services_section(&mut page, &mut tables, report);
    series_section(&mut page, &mut tables, history);
    page.push_str(&tables);
    top_section(
        &mut page,
        "top-sources",
        "Top watched sources",
        "Watched address",
        &report.top_sources,
    );
    top_section(
        &mut page,
        "top-endpoints",
        "Top endpoints",
        "Endpoint",
        &report.top_endpoints,
    );
    if let Some(learning) = &report.learning {
        learning_section(&mut page, learning, report.merged_from.len());
    }
    totals_section(&mut page, history);
    if !history.by_sensor.is_empty() {
        by_sensor_section(&mut page, &history.by_sensor);
    }
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1a1a;background:#fff;margin:0}\
main{max-width:64rem;margin:0 auto;padding:1.5rem}\
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}\
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
tr.gap td{background:#f2f2f2;font-style:italic}\
figure{margin:.5rem 0}figcaption{font-size:.9rem;color:#444}\
svg text{font-family:inherit;font-size:12px;fill:#1a1a1a}\
code{font-size:.85rem;word-break:break-all}\
@media print{main{max-width:none;padding:0}h2{break-after:avoid}figure,table{break-inside:avoid}}";

fn provenance(page: &mut String, history: &MergedHistory) {
    let report = &history.report;
    let counts = &history.counts;
    let sensors: BTreeSet<&str> = history
        .intervals
        .iter()
        .map(|i| i.sensor.as_str())
        .collect();
    let _ = write!(
        page,
        "<section id=\"provenance\">\n<table>\n\
         <tr><th>Period</th><td>{} to {}</td></tr>\n\
         <tr><th>Sensors</th><td>{}</td></tr>\n\
         <tr><th>Interfaces</th><td>{}</td></tr>\n\
         <tr><th>Snapshots</th><td>{}</td></tr>\n",
        escape(&report.start),
        escape(&report.end),
        escape(&sensors.into_iter().collect::<Vec<_>>().join(", ")),
        escape(&report.interfaces.join(", ")),
        escape(&counts.coverage_line()),
    );
    if let Some(key_id) = &report.pseudonym_key_id {
        // Readers of the top sources must know what they are.
        let _ = writeln!(
            page,
            "<tr><th>Watched addresses</th><td>keyed pseudonyms, not real addresses \
             (240.0.0.0/4, 100::/64; key id <code>{}</code>)</td></tr>",
            escape(key_id)
        );
    }
    page.push_str(
        "</table>\n<h2>Feeds</h2>\n<table id=\"feeds\">\n<tr><th>Feed</th><th>SHA-256</th></tr>\n",
    );
    for feed in &report.feeds {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            escape(&feed.name),
            escape(&feed.sha256)
        );
    }
    page.push_str("</table>\n</section>\n");
}

/// Figure 1 into `figures`, the services table into `tables`.
fn services_section(figures: &mut String, tables: &mut String, report: &Report) {
    let sources: BTreeSet<_> = report.flows.iter().map(|flow| flow.watched).collect();
    let all_sources = sources.len() as f64;
    // Every service that saw traffic, also one whose packets were counted
    // when the flow table had no room for its flows.
    let mut rows: Vec<_> = report
        .services
        .iter()
        .filter(|row| row.flows > 0 || row.packets > 0)
        .collect();
    rows.sort_by(|a, b| {
        (b.flows, b.packets)
            .cmp(&(a.flows, a.packets))
            .then(a.service.cmp(&b.service))
    });
    let with_flows = rows.iter().filter(|row| row.flows > 0).count();
    let source_share = |unique: u64| {
        if all_sources > 0.0 {
            unique as f64 / all_sources
        } else {
            0.0
        }
    };

    // The chart names the services with the most flows; the table has all.
    let bars: Vec<(String, [f64; 2])> = rows
        .iter()
        .take(CHART_SERVICES.min(with_flows))
        .map(|row| {
            (
                row.service.clone(),
                [row.share, source_share(row.unique_sources)],
            )
        })
        .collect();
    let description = format!(
        "Each service's share of the {} matched flows and of the {} watched sources seen with any service ({} of {} services with flows drawn, by flows); the table \"Services\" holds the numbers for all.",
        report.services.iter().map(|row| row.flows).sum::<u64>(),
        sources.len(),
        bars.len(),
        with_flows
    );
    figures.push_str(
        "<section id=\"shares-figure\">\n<h2>Services: shares of flows and sources</h2>\n",
    );
    share_chart(figures, &bars, &description);
    figures.push_str("</section>\n");

    tables.push_str("<section id=\"services-section\">\n<h2>Services</h2>\n");
    tables.push_str(
        "<table id=\"services\">\n<tr><th>Service</th><th class=\"n\">Flows</th>\
         <th class=\"n\">Share of flows</th><th class=\"n\">Unique sources</th>\
         <th class=\"n\">Share of sources</th><th class=\"n\">Flows named by learning</th>\
         <th class=\"n\">Packets</th><th class=\"n\">Bytes</th><th>First seen (UTC)</th><th>Last seen (UTC)</th></tr>\n",
    );
    for row in &rows {
        let _ = writeln!(
            tables,
            "<tr data-service=\"{service}\"><td>{service}</td>{}{}{}{}{}{}{}<td>{}</td><td>{}</td></tr>",
            number("flows", row.flows),
            percent("share", row.share),
            number("unique_sources", row.unique_sources),
            percent("source_share", source_share(row.unique_sources)),
            number("flows_learned", row.flows_learned),
            number("packets", row.packets),
            number("bytes", row.bytes),
            seconds(row.first_seen.as_deref()),
            seconds(row.last_seen.as_deref()),
            service = escape(&row.service),
        );
    }
    tables.push_str("</table>\n</section>\n");
}

/// Horizontal grouped bars: per service, share of flows and of sources.
fn share_chart(page: &mut String, bars: &[(String, [f64; 2])], description: &str) {
    const LABEL: f64 = 150.0;
    const ROW: f64 = 34.0;
    const TOP: f64 = 30.0;
    let plot = CHART_WIDTH - LABEL - 60.0;
    let height = TOP + ROW * bars.len().max(1) as f64 + 40.0;
    let _ = write!(
        page,
        "<figure>\n<svg role=\"img\" aria-labelledby=\"share-title share-desc\" viewBox=\"0 0 {CHART_WIDTH} {height}\" width=\"100%\">\n\
         <title id=\"share-title\">Share of flows and of watched sources per service</title>\n\
         <desc id=\"share-desc\">{}</desc>\n",
        escape(description)
    );
    let series = [
        ("share of flows", PALETTE[0]),
        ("share of watched sources", PALETTE[1]),
    ];
    for (index, (name, colour)) in series.iter().enumerate() {
        let x = LABEL + index as f64 * 220.0;
        let _ = writeln!(
            page,
            "<rect x=\"{x}\" y=\"6\" width=\"14\" height=\"14\" fill=\"{colour}\"/><text x=\"{}\" y=\"18\">{name}</text>",
            x + 20.0
        );
    }
    for (row, (service, values)) in bars.iter().enumerate() {
        let y = TOP + ROW * row as f64;
        let _ = writeln!(
            page,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            LABEL - 8.0,
            y + 20.0,
            escape(service)
        );
        for (index, value) in values.iter().enumerate() {
            let bar_y = y + 4.0 + index as f64 * 13.0;
            let width = (plot * value.clamp(0.0, 1.0)).max(0.5);
            let _ = writeln!(
                page,
                "<rect x=\"{LABEL}\" y=\"{bar_y}\" width=\"{width:.1}\" height=\"12\" fill=\"{}\"><title>{}: {} {:.1} %</title></rect>\
                 <text x=\"{:.1}\" y=\"{}\">{:.1} %</text>",
                series[index].1,
                escape(service),
                series[index].0,
                value * 100.0,
                LABEL + width + 4.0,
                bar_y + 10.0,
                value * 100.0
            );
        }
    }
    let axis_y = TOP + ROW * bars.len().max(1) as f64;
    let _ = write!(
        page,
        "<line x1=\"{LABEL}\" y1=\"{TOP}\" x2=\"{LABEL}\" y2=\"{axis_y}\" stroke=\"#444\"/>\
         <line x1=\"{LABEL}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#444\"/>",
        LABEL + plot
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = LABEL + plot * tick;
        let _ = write!(
            page,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}%</text>",
            axis_y + 16.0,
            tick * 100.0
        );
    }
    let _ = write!(
        page,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">share (per cent)</text>\n</svg>\n\
         <figcaption>Figure 1. {}</figcaption>\n</figure>\n",
        LABEL + plot / 2.0,
        axis_y + 34.0,
        escape(description)
    );
}

/// One column of the time series: an interval (sensors' snapshots with
/// the same bounds summed) or a stretch no snapshot covers.
enum Column<'a> {
    Counted {
        start: OffsetDateTime,
        end: OffsetDateTime,
        intervals: Vec<&'a Interval>,
    },
    Gap {
        start: OffsetDateTime,
        end: OffsetDateTime,
    },
}

impl Column<'_> {
    fn bounds(&self) -> (OffsetDateTime, OffsetDateTime) {
        match self {
            Self::Counted { start, end, .. } | Self::Gap { start, end } => (*start, *end),
        }
    }
}

fn columns(intervals: &[Interval]) -> Vec<Column<'_>> {
    let mut grouped: BTreeMap<(OffsetDateTime, OffsetDateTime), Vec<&Interval>> = BTreeMap::new();
    for interval in intervals {
        grouped
            .entry((interval.start, interval.end))
            .or_default()
            .push(interval);
    }
    let mut columns = Vec::new();
    let mut covered_until: Option<OffsetDateTime> = None;
    for ((start, end), intervals) in grouped {
        if let Some(until) = covered_until
            && start > until
        {
            columns.push(Column::Gap {
                start: until,
                end: start,
            });
        }
        covered_until = Some(covered_until.map_or(end, |until| until.max(end)));
        columns.push(Column::Counted {
            start,
            end,
            intervals,
        });
    }
    columns
}

/// The first start and the latest end of the columns (the last column,
/// ordered by start, may end before an earlier, longer one).
fn time_span(columns: &[Column<'_>]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let start = columns.iter().map(|column| column.bounds().0).min()?;
    let end = columns.iter().map(|column| column.bounds().1).max()?;
    Some((start, end))
}

/// Figure 2 into `figures`, the table behind it into `tables`.
fn series_section(figures: &mut String, tables: &mut String, history: &MergedHistory) {
    let columns = columns(&history.intervals);
    let mut by_service: BTreeMap<&str, u64> = BTreeMap::new();
    for interval in &history.intervals {
        for (service, packets) in &interval.packets {
            *by_service.entry(service).or_default() += packets;
        }
    }
    let mut ranked: Vec<(&str, u64)> = by_service.into_iter().filter(|(_, p)| *p > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named: Vec<&str> = ranked
        .iter()
        .take(SERIES_SERVICES)
        .map(|(service, _)| *service)
        .collect();
    let has_other = ranked.len() > named.len();

    // Per counted column: packets per named service, then other.
    let stacks: Vec<Option<Vec<u64>>> = columns
        .iter()
        .map(|column| match column {
            Column::Gap { .. } => None,
            Column::Counted { intervals, .. } => {
                let mut stack = vec![0u64; named.len() + 1];
                for interval in intervals {
                    for (service, packets) in &interval.packets {
                        let slot = named
                            .iter()
                            .position(|name| name == service)
                            .unwrap_or(named.len());
                        stack[slot] += packets;
                    }
                }
                Some(stack)
            }
        })
        .collect();

    figures.push_str("<section id=\"series-figure\">\n<h2>Matched packets over time</h2>\n");
    let gaps = stacks.iter().filter(|stack| stack.is_none()).count();
    let description = format!(
        "Matched packets per snapshot interval, stacked by service ({} named, the rest as other); {} stretch(es) without any snapshot are drawn as hatched gaps, not zeros. The table \"Matched packets per interval\" holds the numbers.",
        named.len(),
        gaps
    );
    series_chart(figures, &columns, &stacks, &named, has_other, &description);
    figures.push_str("</section>\n");

    let page = tables;
    page.push_str("<section id=\"series-section\">\n<h2>Matched packets per interval</h2>\n");
    page.push_str("<table id=\"series\">\n<tr><th>Start (UTC)</th><th>End (UTC)</th>");
    for service in &named {
        let _ = write!(page, "<th class=\"n\">{}</th>", escape(service));
    }
    page.push_str("<th class=\"n\">other</th><th class=\"n\">All</th><th>Sensors</th></tr>\n");
    for (column, stack) in columns.iter().zip(&stacks) {
        match (column, stack) {
            (
                Column::Counted {
                    start,
                    end,
                    intervals,
                },
                Some(stack),
            ) => {
                let sensors: BTreeSet<&str> = intervals.iter().map(|i| i.sensor.as_str()).collect();
                let partial = intervals.iter().any(|i| i.partial);
                let _ = write!(
                    page,
                    "<tr data-start=\"{}\"><td>{}</td><td>{}{}</td>",
                    rfc3339(*start),
                    seconds_of(*start),
                    seconds_of(*end),
                    if partial { " (partial)" } else { "" }
                );
                for (service, packets) in named.iter().zip(stack) {
                    page.push_str(&number(service, *packets));
                }
                page.push_str(&number("other", stack[named.len()]));
                page.push_str(&number("all", stack.iter().sum()));
                let _ = writeln!(
                    page,
                    "<td>{}</td></tr>",
                    escape(&sensors.into_iter().collect::<Vec<_>>().join(", "))
                );
            }
            (Column::Gap { start, end }, _) | (Column::Counted { start, end, .. }, None) => {
                let _ = writeln!(
                    page,
                    "<tr class=\"gap\"><td>{}</td><td>{}</td><td colspan=\"{}\">no snapshot: not counted (not zero)</td></tr>",
                    seconds_of(*start),
                    seconds_of(*end),
                    named.len() + 3
                );
            }
        }
    }
    page.push_str("</table>\n</section>\n");
}

fn series_chart(
    page: &mut String,
    columns: &[Column<'_>],
    stacks: &[Option<Vec<u64>>],
    named: &[&str],
    has_other: bool,
    description: &str,
) {
    const LEFT: f64 = 70.0;
    const TOP: f64 = 40.0;
    const PLOT_HEIGHT: f64 = 240.0;
    let plot = CHART_WIDTH - LEFT - 20.0;
    let height = TOP + PLOT_HEIGHT + 60.0;
    let Some((t0, t1)) = time_span(columns) else {
        return;
    };
    let span = (t1 - t0).as_seconds_f64().max(1e-9);
    let x_of = |t: OffsetDateTime| LEFT + plot * ((t - t0).as_seconds_f64() / span);
    let highest = stacks
        .iter()
        .flatten()
        .map(|stack| stack.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let y_of = |packets: u64| TOP + PLOT_HEIGHT * (1.0 - packets as f64 / highest as f64);

    let _ = write!(
        page,
        "<figure>\n<svg role=\"img\" aria-labelledby=\"series-title series-desc\" viewBox=\"0 0 {CHART_WIDTH} {height}\" width=\"100%\">\n\
         <title id=\"series-title\">Matched packets per service per snapshot interval</title>\n\
         <desc id=\"series-desc\">{}</desc>\n\
         <defs><pattern id=\"gap-hatch\" width=\"8\" height=\"8\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
         <rect width=\"8\" height=\"8\" fill=\"#f2f2f2\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"8\" stroke=\"#b0b0b0\" stroke-width=\"3\"/></pattern></defs>\n",
        escape(description)
    );
    // Legend.
    let mut legend: Vec<(&str, &str)> = named
        .iter()
        .enumerate()
        .map(|(index, name)| (*name, PALETTE[index % PALETTE.len()]))
        .collect();
    if has_other {
        legend.push(("other", OTHER_COLOUR));
    }
    let mut x = LEFT;
    for (name, colour) in &legend {
        let _ = write!(
            page,
            "<rect x=\"{x:.1}\" y=\"6\" width=\"14\" height=\"14\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"18\">{}</text>",
            x + 18.0,
            escape(name)
        );
        x += 26.0 + 7.0 * name.chars().count() as f64;
    }
    page.push('\n');

    for (column, stack) in columns.iter().zip(stacks) {
        let (start, end) = column.bounds();
        let (x0, x1) = (x_of(start), x_of(end));
        let width = ((x1 - x0) * 0.9).max(1.0);
        let x = x0 + (x1 - x0 - width) / 2.0;
        match stack {
            None => {
                let _ = writeln!(
                    page,
                    "<rect class=\"gap\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{PLOT_HEIGHT}\" fill=\"url(#gap-hatch)\">\
                     <title>{} to {}: no snapshot (not counted)</title></rect>\
                     <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">no data</text>",
                    (x1 - x0).max(1.0),
                    rfc3339(start),
                    rfc3339(end),
                    (x0 + x1) / 2.0,
                    TOP + PLOT_HEIGHT / 2.0
                );
            }
            Some(stack) => {
                let mut below = 0u64;
                for (index, packets) in stack.iter().enumerate() {
                    if *packets == 0 {
                        continue;
                    }
                    let (name, colour) = if index < named.len() {
                        (named[index], PALETTE[index % PALETTE.len()])
                    } else {
                        ("other", OTHER_COLOUR)
                    };
                    let top = y_of(below + packets);
                    let _ = write!(
                        page,
                        "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{colour}\" stroke=\"#fff\" stroke-width=\"0.5\">\
                         <title>{}: {packets} packets from {}</title></rect>",
                        y_of(below) - top,
                        escape(name),
                        rfc3339(start)
                    );
                    below += packets;
                }
                page.push('\n');
            }
        }
    }
    // Axes, ticks and labels.
    let axis_y = TOP + PLOT_HEIGHT;
    let _ = write!(
        page,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{axis_y}\" stroke=\"#444\"/>\
         <line x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{:.1}\" y2=\"{axis_y}\" stroke=\"#444\"/>",
        LEFT + plot
    );
    for step in 0..=4u64 {
        let packets = highest * step / 4;
        let _ = write!(
            page,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{packets}</text>",
            LEFT - 6.0,
            y_of(packets) + 4.0
        );
    }
    for (t, anchor) in [(t0, "start"), (t1, "end")] {
        let _ = write!(
            page,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x_of(t),
            axis_y + 16.0,
            seconds_of(t)
        );
    }
    let _ = write!(
        page,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">time (UTC), one column per snapshot interval</text>\
         <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">matched packets</text>\n</svg>\n\
         <figcaption>Figure 2. {}</figcaption>\n</figure>\n",
        LEFT + plot / 2.0,
        axis_y + 36.0,
        TOP + PLOT_HEIGHT / 2.0,
        TOP + PLOT_HEIGHT / 2.0,
        escape(description)
    );
}

fn top_section(page: &mut String, id: &str, heading: &str, column: &str, rows: &[TopRow]) {
    let _ = write!(
        page,
        "<section>\n<h2>{heading}</h2>\n<table id=\"{id}\">\n<tr><th>{column}</th>\
         <th class=\"n\">Packets</th><th class=\"n\">Bytes</th><th class=\"n\">Flows</th><th>Services</th></tr>\n"
    );
    for row in rows {
        let _ = writeln!(
            page,
            "<tr data-address=\"{address}\"><td>{address}</td>{}{}{}<td>{}</td></tr>",
            number("packets", row.packets),
            number("bytes", row.bytes),
            number("flows", row.flows),
            escape(&row.services.join(", ")),
            address = escape(&row.address.to_string()),
        );
    }
    page.push_str("</table>\n</section>\n");
}

fn totals_section(page: &mut String, history: &MergedHistory) {
    let report = &history.report;
    let totals = &report.totals;
    let table = &report.flow_table;
    let counts = &history.counts;
    page.push_str("<section>\n<h2>Totals and coverage</h2>\n<table id=\"totals\">\n");
    count_rows(
        page,
        &[
            ("packets", "Packets", totals.packets),
            ("bytes", "Bytes", totals.bytes),
            ("ipv4", "IPv4 packets", totals.ipv4),
            ("ipv6", "IPv6 packets", totals.ipv6),
            ("other", "Other packets", totals.other),
            ("malformed", "Malformed packets", totals.malformed),
            ("watched", "Packets of watched addresses", totals.watched),
            (
                "matched",
                "Matched packets (watched and endpoint)",
                totals.matched,
            ),
        ],
    );
    page.push_str("</table>\n<table id=\"coverage\">\n");
    count_rows(
        page,
        &[
            ("drains", "Drains", table.drains),
            ("inserts", "Flow-table inserts", table.inserts),
            ("evictions", "Flow-table evictions", table.evictions),
            (
                "insert_failures",
                "Flow-table insert failures",
                table.insert_failures,
            ),
            ("snapshots", "Snapshots used", counts.used as u64),
            ("restarts", "Daemon restarts", counts.restarts),
            (
                "duplicates",
                "Identical copies skipped",
                counts.duplicates as u64,
            ),
            (
                "overlapping",
                "Overlapping snapshots skipped",
                counts.overlapping as u64,
            ),
        ],
    );
    let _ = writeln!(
        page,
        "<tr><th>Seconds without a counting program</th><td class=\"n\" data-field=\"gap_seconds\">{:.1}</td></tr>",
        counts.gap_seconds
    );
    let _ = writeln!(
        page,
        "<tr><th>Seconds no snapshot covers</th><td class=\"n\" data-field=\"uncovered_seconds\">{:.1}</td></tr>",
        counts.uncovered_seconds
    );
    let reasons = report.malformed_reasons();
    if !reasons.is_empty() {
        let _ = writeln!(
            page,
            "<tr><th>Malformed by reason</th><td>{}</td></tr>",
            escape(&reasons.join(", "))
        );
    }
    page.push_str("</table>\n</section>\n");
}

/// What learning did over the `snapshots` merged, and the endpoints it
/// held at the end of each sensor's latest one (`MergedLearning`).
fn learning_section(page: &mut String, learning: &Learning, snapshots: usize) {
    page.push_str("<section>\n<h2>Learning</h2>\n<table id=\"learning\">\n");
    count_rows(
        page,
        &[
            (
                "handed_over",
                "Packets handed over to learn from",
                learning.handed_over,
            ),
            (
                "ring_drops",
                "Not handed over: ring buffer full",
                learning.ring_drops,
            ),
            (
                "throttled",
                "Not handed over: over the rate",
                learning.throttled,
            ),
        ],
    );
    let s = &learning.stats;
    if let Some(covered) = learning.stats_cover_snapshots
        && !learning.stats_unknown()
    {
        count_rows(
            page,
            &[
                (
                    "stats_cover_snapshots",
                    "Snapshots the counts below cover",
                    covered,
                ),
                (
                    "snapshots_merged",
                    "Snapshots merged (each part of a merged report given)",
                    snapshots as u64,
                ),
            ],
        );
    }
    if !learning.stats_unknown() {
        count_rows(
            page,
            &[
                (
                    "dns_responses",
                    "DNS responses to watched hosts",
                    s.dns_responses,
                ),
                ("dns_unparsed", "DNS responses unreadable", s.dns_unparsed),
                (
                    "dns_matched",
                    "DNS responses for listed domains",
                    s.dns_matched,
                ),
                ("tcp_segments", "TCP segments read", s.tcp_segments),
                ("tls_flows_named", "Flows named by TLS", s.tls_flows_named),
                ("learned", "Addresses learned", s.learned),
                ("renewed", "Addresses learned again", s.renewed),
                ("expired", "Addresses expired", s.expired),
                (
                    "skipped_shared_hosting",
                    "Not learned: shared hosting or CDN",
                    s.skipped_shared_hosting,
                ),
                ("skipped_watched", "Not learned: watched", s.skipped_watched),
                (
                    "skipped_capacity",
                    "Not learned: table full",
                    s.skipped_capacity,
                ),
            ],
        );
    } else {
        // Older snapshots counted from their daemon's start: not summed.
        page.push_str(
            "<tr><th>DNS responses, TLS names, addresses learned</th>\
             <td>not known: the snapshots predate per-interval learning counts</td></tr>\n",
        );
    }
    let feeds: Vec<String> = learning
        .domain_feeds
        .iter()
        .map(|(name, sha256)| format!("{name} (SHA-256 {sha256})"))
        .collect();
    let _ = writeln!(
        page,
        "<tr><th>Domain feeds</th><td>{}</td></tr>\n</table>",
        escape(&feeds.join(", "))
    );
    if !learning.endpoints.is_empty() {
        page.push_str(
            "<table id=\"learned-endpoints\">\n<tr><th>Endpoint</th><th>Service</th><th>Name</th>\
             <th>Learned from</th><th>Asked by</th><th>Answered by</th><th>Until</th></tr>\n",
        );
        for endpoint in &learning.endpoints {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&endpoint.address.to_string()),
                escape(&endpoint.service),
                escape(&endpoint.name),
                escape(&endpoint.how),
                escape(&endpoint.watched.to_string()),
                escape(&endpoint.resolver.to_string()),
                seconds(Some(&endpoint.expires_at)),
            );
        }
        page.push_str("</table>\n");
    }
    page.push_str("</section>\n");
}

/// `--by-sensor`: each sensor's own totals; the merged figures above
/// count a source or flow seen by several sensors once.
fn by_sensor_section(page: &mut String, sensors: &[Report]) {
    page.push_str(
        "<section>\n<h2>By sensor</h2>\n<table id=\"by-sensor\">\n<tr><th>Sensor</th>\
         <th class=\"n\">Packets</th><th class=\"n\">Watched</th><th class=\"n\">Matched</th>\
         <th class=\"n\">Flows</th><th class=\"n\">Unique sources</th><th>Services</th></tr>\n",
    );
    for report in sensors {
        let sources: BTreeSet<_> = report.flows.iter().map(|flow| flow.watched).collect();
        let services: Vec<&str> = report
            .services
            .iter()
            .filter(|row| row.flows > 0)
            .map(|row| row.service.as_str())
            .collect();
        let _ = writeln!(
            page,
            "<tr data-sensor=\"{sensor}\"><td>{sensor}</td>{}{}{}{}{}<td>{}</td></tr>",
            number("packets", report.totals.packets),
            number("watched", report.totals.watched),
            number("matched", report.totals.matched),
            number("flows", report.distinct_flows() as u64),
            number("unique_sources", sources.len() as u64),
            escape(&services.join(", ")),
            sensor = escape(&report.sensor),
        );
    }
    page.push_str("</table>\n</section>\n");
}

/// Table rows of counts: a label, and the number with its field name.
fn count_rows(page: &mut String, rows: &[(&str, &str, u64)]) {
    for (field, label, value) in rows {
        let _ = writeln!(page, "<tr><th>{label}</th>{}</tr>", number(field, *value));
    }
}

fn number(field: &str, value: u64) -> String {
    format!(
        "<td class=\"n\" data-field=\"{}\">{value}</td>",
        escape(field)
    )
}

fn percent(field: &str, fraction: f64) -> String {
    format!(
        "<td class=\"n\" data-field=\"{field}\" data-value=\"{fraction}\">{:.1} %</td>",
        fraction * 100.0
    )
}

/// A report time to the second, for tables ("2026-11-26 10:31:03").
fn seconds(time: Option<&str>) -> String {
    let Some(text) = time else {
        return String::new();
    };
    match crate::report::parse_time(text) {
        Some(time) => seconds_of(time),
        None => escape(text),
    }
}

/// A time to the second ("2026-11-26 10:31:03").
fn seconds_of(time: OffsetDateTime) -> String {
    time.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// Text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(text: &str) -> OffsetDateTime {
        crate::report::parse_time(text).expect("a time")
    }

    fn interval(sensor: &str, start: &str, end: &str, packets: &[(&str, u64)]) -> Interval {
        Interval {
            sensor: sensor.into(),
            start: time(start),
            end: time(end),
            partial: false,
            packets: packets.iter().map(|(s, p)| (s.to_string(), *p)).collect(),
        }
    }

    /// A report of sensor s1's hour with nothing counted.
    fn empty_hour() -> Report {
        Report::build(
            &crate::drain::Ledger::default(),
            &crate::loader::ServiceTable::new(Vec::new()),
            crate::report::ReportContext {
                start: time("2026-11-24T19:00:00Z"),
                end: time("2026-11-24T20:00:00Z"),
                sensor: "s1".into(),
                interfaces: vec!["eth1".into()],
                feeds: Vec::new(),
            },
        )
    }

    #[test]
    fn a_service_with_packets_but_no_flows_is_in_the_services_table() {
        // Under flow-table pressure a service's packets are counted though
        // no flow of it could be recorded: the table still lists it.
        let mut report = empty_hour();
        let mut row = crate::report::ServiceRow::empty("pia".into());
        row.packets = 10;
        row.bytes = 900;
        report.services = vec![row];
        let (mut figures, mut tables) = (String::new(), String::new());
        services_section(&mut figures, &mut tables, &report);
        assert!(
            tables.contains("<tr data-service=\"pia\"><td>pia</td>"),
            "{tables}"
        );
        assert!(
            figures.contains("(0 of 0 services with flows drawn"),
            "{figures}"
        );
    }

    #[test]
    fn pseudonyms_are_named_as_such_with_their_key() {
        let history = |key: Option<&str>| {
            let mut report = empty_hour();
            report.pseudonym_key_id = key.map(str::to_string);
            MergedHistory {
                report,
                counts: Default::default(),
                intervals: Vec::new(),
                by_sensor: Vec::new(),
                inputs: Vec::new(),
            }
        };
        let mut keyed = String::new();
        provenance(&mut keyed, &history(Some("0123456789abcdef")));
        assert!(
            keyed.contains(
                "<tr><th>Watched addresses</th><td>keyed pseudonyms, not real addresses \
                 (240.0.0.0/4, 100::/64; key id <code>0123456789abcdef</code>)</td></tr>\n</table>"
            ),
            "{keyed}"
        );
        let mut plain = String::new();
        provenance(&mut plain, &history(None));
        assert!(!plain.contains("pseudonyms"), "{plain}");
        assert!(
            plain.contains("</td></tr>\n</table>\n<h2>Feeds</h2>"),
            "{plain}"
        );
    }

    #[test]
    fn the_learning_section_gives_its_counts_and_endpoints_or_says_they_are_unknown() {
        let endpoint = crate::learn::LearnedEndpoint {
            address: "198.51.100.7".parse().unwrap(),
            service: "hotspot-shield".into(),
            domain: "hotspotshield.com".into(),
            name: "api.hotspotshield.com".into(),
            watched: "175.45.176.9".parse().unwrap(),
            resolver: "175.45.176.1".parse().unwrap(),
            how: "dns".into(),
            learned_at: "2026-11-24T19:10:00Z".into(),
            expires_at: "2026-11-24T20:10:00Z".into(),
            expires_at_unix_ns: 0,
        };
        let mut learning = Learning {
            domain_feeds: vec![("vpn-domains.csv".into(), "ab12".into())],
            stats: crate::learn::LearnStats {
                dns_responses: 12,
                learned: 3,
                ..Default::default()
            },
            handed_over: 40,
            ring_drops: 1,
            throttled: 2,
            endpoints: vec![endpoint],
            stats_per_interval: true,
            stats_cover_snapshots: None,
        };
        let mut page = String::new();
        learning_section(&mut page, &learning, 3);
        for expected in [
            "data-field=\"handed_over\">40<",
            "data-field=\"ring_drops\">1<",
            "data-field=\"throttled\">2<",
            "data-field=\"dns_responses\">12<",
            "data-field=\"learned\">3<",
            "vpn-domains.csv (SHA-256 ab12)",
            "<tr><td>198.51.100.7</td><td>hotspot-shield</td><td>api.hotspotshield.com</td>\
             <td>dns</td><td>175.45.176.9</td><td>175.45.176.1</td><td>2026-11-24 20:10:00</td></tr>",
        ] {
            assert!(page.contains(expected), "{expected} in {page}");
        }
        assert!(!page.contains("stats_cover_snapshots"), "{page}");
        learning.stats_cover_snapshots = Some(2);
        let mut page = String::new();
        learning_section(&mut page, &learning, 3);
        assert!(
            page.contains("data-field=\"stats_cover_snapshots\">2<"),
            "{page}"
        );
        assert!(
            page.contains("data-field=\"snapshots_merged\">3<"),
            "{page}"
        );
        learning.stats_per_interval = false;
        learning.stats_cover_snapshots = Some(0);
        let mut page = String::new();
        learning_section(&mut page, &learning, 3);
        assert!(!page.contains("dns_responses"), "{page}");
        assert!(page.contains("not known"), "{page}");
        assert!(page.contains("data-field=\"handed_over\">40<"), "{page}");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_stretch_without_snapshots_is_a_gap_and_sensors_with_one_interval_share_a_column() {
        let intervals = [
            interval(
                "a",
                "2026-11-26T10:00:00Z",
                "2026-11-26T11:00:00Z",
                &[("x", 1)],
            ),
            interval(
                "b",
                "2026-11-26T10:00:00Z",
                "2026-11-26T11:00:00Z",
                &[("x", 2)],
            ),
            interval("a", "2026-11-26T11:00:00Z", "2026-11-26T12:00:00Z", &[]),
            interval(
                "a",
                "2026-11-26T13:00:00Z",
                "2026-11-26T14:00:00Z",
                &[("y", 5)],
            ),
        ];
        let kinds: Vec<String> = columns(&intervals)
            .iter()
            .map(|column| match column {
                Column::Counted {
                    start, intervals, ..
                } => {
                    format!("{}x{}", start.hour(), intervals.len())
                }
                Column::Gap { start, end } => format!("gap {}-{}", start.hour(), end.hour()),
            })
            .collect();
        assert_eq!(kinds, ["10x2", "11x1", "gap 12-13", "13x1"]);
    }

    #[test]
    fn the_time_axis_ends_at_the_latest_end_not_the_last_column() {
        // Sensor b's short interval starts after a's hour and ends inside it.
        let intervals = [
            interval("a", "2026-11-26T11:00:00Z", "2026-11-26T12:00:00Z", &[]),
            interval("b", "2026-11-26T11:20:00Z", "2026-11-26T11:40:00Z", &[]),
        ];
        let (start, end) = time_span(&columns(&intervals)).unwrap();
        assert_eq!(
            (start, end),
            (time("2026-11-26T11:00:00Z"), time("2026-11-26T12:00:00Z"))
        );
    }
}

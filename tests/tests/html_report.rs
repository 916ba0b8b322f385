//! `classifier report --format html` rendered in headless Chromium: real
//! snapshots (a generated capture replayed by `classifier pcap` in 5 s
//! intervals, one snapshot removed to leave a gap) give a page whose
//! screenshot is not blank, which logs nothing to the console and makes no
//! network request (Chromium runs in a network namespace of its own, its
//! net log read), and whose tables hold exactly the JSON report's numbers.
//! A control page with a console error and an image fetch proves both
//! checks can fail.

use std::{collections::BTreeMap, path::Path, process::Command};

use classifier_tests::{
    daemon::{services, snapshot_files, temp_dir},
    path_str as text, require_root, run_classifier,
};
use scraper::{ElementRef, Html, Selector};
use serde_json::Value;

/// What Chromium showed and did for one page.
struct Rendered {
    screenshot: Vec<u8>,
    dom: String,
    console: Vec<String>,
    requests: Vec<String>,
}

/// Renders `page` with headless Chromium in a fresh network namespace (so
/// nothing can leave this host): a screenshot, the DOM after load, the
/// console messages (Chromium logs them to stderr) and the URLs the page
/// asked the network for (from Chromium's net log).
fn render(page: &Path, work: &Path) -> Rendered {
    let url = format!("file://{}", page.display());
    let chromium = |extra: &[&str]| {
        let output = Command::new("timeout")
            .args(["120", "unshare", "--net", "chromium", "--headless"])
            .args(["--no-sandbox", "--disable-gpu", "--no-first-run"])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .arg(format!(
                "--user-data-dir={}",
                work.join("chromium-profile").display()
            ))
            .args([
                "--window-size=1000,2000",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium (the test set-up installs Debian's chromium)");
        assert!(output.status.success(), "chromium: {output:?}");
        output
    };
    let screenshot = work.join("screenshot.png");
    let net_log = work.join("net-log.json");
    let output = chromium(&[
        &format!("--screenshot={}", screenshot.display()),
        &format!("--log-net-log={}", net_log.display()),
    ]);
    // Chromium's own pages (`source: chrome://…`, e.g. a "slow network"
    // notice of its internal UI) log too; only the page's messages count.
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains(":CONSOLE") && !line.contains("source: chrome://"))
        .map(str::to_string)
        .collect();
    let dom = String::from_utf8(chromium(&["--dump-dom"]).stdout).expect("UTF-8 DOM");
    Rendered {
        screenshot: std::fs::read(&screenshot).expect("the screenshot"),
        dom,
        console,
        requests: page_requests(&net_log),
    }
}

/// URLs of network requests made for a `file://` page (Chromium's own
/// background requests belong to no page and are left out).
fn page_requests(net_log: &Path) -> Vec<String> {
    let log: Value =
        serde_json::from_slice(&std::fs::read(net_log).expect("the net log")).expect("JSON");
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(start_job.is_u64(), "net log without URL_REQUEST_START_JOB");
    log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["type"] == *start_job)
        .filter(|event| {
            event["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|key| key.contains("file://"))
        })
        .filter_map(|event| event["params"]["url"].as_str().map(str::to_string))
        .collect()
}

/// Share of pixels that are not (near) white, and how many distinct
/// colours the screenshot has.
fn ink(png_bytes: &[u8]) -> (f64, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a buffer size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let mut inked = 0usize;
    let mut colours = std::collections::HashSet::new();
    let total = pixels.len() / channels;
    for pixel in pixels.chunks(channels) {
        if pixel.iter().take(3).any(|&value| value < 235) {
            inked += 1;
        }
        colours.insert(pixel.iter().take(3).copied().collect::<Vec<u8>>());
    }
    (inked as f64 / total as f64, colours.len())
}

fn selector(css: &str) -> Selector {
    Selector::parse(css).expect("a selector")
}

/// `data-field` → number of the row's cells.
fn fields(row: ElementRef<'_>) -> BTreeMap<String, u64> {
    row.select(&selector("td[data-field]"))
        .filter_map(|cell| {
            let value = cell.text().collect::<String>().trim().parse().ok()?;
            Some((cell.attr("data-field")?.to_string(), value))
        })
        .collect()
}

/// Rows of the table `id` that carry `key`, by that attribute's value.
fn rows_by(dom: &Html, id: &str, key: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    dom.select(&selector(&format!("table#{id} tr[{key}]")))
        .map(|row| (row.attr(key).unwrap_or("").to_string(), fields(row)))
        .collect()
}

#[test]
fn the_html_report_renders_offline_and_its_tables_equal_the_json_report() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("html-report");

    // The control: a console error and an image fetch are both caught.
    let control = dir.join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><html><body><p>control</p>\
         <script>console.error('control error')</script>\
         <img src=\"http://report-fetch.invalid/x.png\"></body></html>",
    )
    .expect("control page");
    let rendered = render(&control, &dir);
    assert!(
        rendered
            .console
            .iter()
            .any(|line| line.contains("control error")),
        "the console check misses an error: {:?}",
        rendered.console
    );
    assert_eq!(
        rendered.requests,
        ["http://report-fetch.invalid/x.png"],
        "the request check misses a fetch"
    );

    // Snapshots: 40 s of generated traffic in 5 s intervals, the fourth
    // removed (a stretch no snapshot covers).
    let capture = dir.join("mix.pcap");
    let snapshots = dir.join("snapshots");
    let output = run_classifier(&[
        "generate",
        "--pcap",
        text(&capture),
        "--conversations",
        "500",
        "--duration",
        "40s",
    ]);
    assert!(output.status.success(), "{output:?}");
    let output = run_classifier(&[
        "pcap",
        text(&capture),
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "5s",
    ]);
    assert!(output.status.success(), "{output:?}");
    let files = snapshot_files(&snapshots);
    assert!(files.len() >= 8, "{files:?}");
    std::fs::remove_file(&files[3]).expect("remove a snapshot");

    let page = dir.join("report.html");
    let output = run_classifier(&[
        "report",
        text(&snapshots),
        "--format",
        "html",
        "--output",
        text(&page),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "--output writes the file only");
    let output = run_classifier(&["report", text(&snapshots), "--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");

    let rendered = render(&page, &dir);
    assert!(rendered.console.is_empty(), "{:?}", rendered.console);
    assert!(rendered.requests.is_empty(), "{:?}", rendered.requests);
    let (inked, colours) = ink(&rendered.screenshot);
    assert!(
        inked > 0.05 && colours >= 8,
        "a blank screenshot: {inked:.3} inked, {colours} colours"
    );

    let dom = Html::parse_document(&rendered.dom);
    // Services: every service with flows or packets, each number the
    // JSON's.
    let table = rows_by(&dom, "services", "data-service");
    let json_services = services(&report);
    let with_traffic: Vec<&String> = json_services
        .iter()
        .filter(|(_, row)| row["flows"].as_u64() > Some(0) || row["packets"].as_u64() > Some(0))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(table.keys().collect::<Vec<_>>(), with_traffic);
    for (service, cells) in &table {
        for field in [
            "flows",
            "unique_sources",
            "flows_learned",
            "packets",
            "bytes",
        ] {
            assert_eq!(
                Some(cells[field]),
                json_services[service][field].as_u64(),
                "{service} {field}"
            );
        }
    }
    // Totals and flow-table coverage.
    let totals: BTreeMap<String, u64> = dom
        .select(&selector("table#totals tr"))
        .flat_map(fields)
        .collect();
    for field in [
        "packets",
        "bytes",
        "ipv4",
        "ipv6",
        "other",
        "malformed",
        "watched",
        "matched",
    ] {
        assert_eq!(
            Some(totals[field]),
            report["totals"][field].as_u64(),
            "{field}"
        );
    }
    let coverage: BTreeMap<String, u64> = dom
        .select(&selector("table#coverage tr"))
        .flat_map(fields)
        .collect();
    for field in ["drains", "inserts", "evictions", "insert_failures"] {
        assert_eq!(
            Some(coverage[field]),
            report["flow_table"][field].as_u64(),
            "{field}"
        );
    }
    assert_eq!(coverage["snapshots"], files.len() as u64 - 1);
    // The removed snapshot's 5 s are not covered by any.
    let uncovered: Vec<String> = dom
        .select(&selector("td[data-field=uncovered_seconds]"))
        .map(|cell| cell.text().collect())
        .collect();
    assert_eq!(uncovered, ["5.0"]);
    // Top sources and endpoints.
    for (id, key) in [
        ("top-sources", "top_sources"),
        ("top-endpoints", "top_endpoints"),
    ] {
        let table = rows_by(&dom, id, "data-address");
        let rows = report[key].as_array().expect("top rows");
        assert_eq!(table.len(), rows.len(), "{id}");
        for row in rows {
            let cells = &table[row["address"].as_str().expect("address")];
            for field in ["packets", "bytes", "flows"] {
                assert_eq!(Some(cells[field]), row[field].as_u64(), "{id} {field}");
            }
        }
    }
    // The time series: one row per snapshot, the removed one's stretch a
    // gap (drawn hatched, not as zero), and the rows add up to the matched
    // packets, per named service and in all.
    let series = rows_by(&dom, "series", "data-start");
    assert_eq!(series.len(), files.len() - 1);
    assert_eq!(dom.select(&selector("table#series tr.gap")).count(), 1);
    assert_eq!(dom.select(&selector("svg rect.gap")).count(), 1);
    let sum = |field: &str| -> u64 { series.values().map(|cells| cells[field]).sum() };
    assert_eq!(Some(sum("all")), report["totals"]["matched"].as_u64());
    for (service, row) in &json_services {
        if series
            .values()
            .next()
            .is_some_and(|cells| cells.contains_key(service.as_str()))
        {
            assert_eq!(Some(sum(service)), row["packets"].as_u64(), "{service}");
        }
    }
    // Feeds with their SHA-256, and accessible charts.
    let feeds = dom
        .select(&selector("table#feeds code"))
        .map(|cell| cell.text().collect::<String>())
        .collect::<Vec<_>>();
    let json_feeds: Vec<String> = report["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .map(|feed| feed["sha256"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(feeds, json_feeds);
    for svg in dom.select(&selector("svg")) {
        assert_eq!(svg.attr("role"), Some("img"));
        let labelled_by = svg.attr("aria-labelledby").unwrap_or("");
        for id in labelled_by.split_whitespace() {
            assert_eq!(svg.select(&selector(&format!("#{id}"))).count(), 1, "{id}");
        }
        assert_eq!(labelled_by.split_whitespace().count(), 2);
        assert!(svg.select(&selector("text")).count() > 5, "axis labels");
    }
    let _ = std::fs::remove_dir_all(dir);
}

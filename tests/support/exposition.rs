//! A strict reader of the OpenMetrics 1.0 text format (what `/metrics` serves), so a test fails
//! on any line a Prometheus server would reject: metadata once per family and before its
//! samples, families contiguous, sample names that fit their family's type, quoted and escaped
//! label values, float values, histograms whose buckets grow up to `+Inf` = `_count`, and
//! `# EOF` last. Also sums samples for the assertions.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of the samples called `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is called `name` and has all of `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
    }
}

/// Parses `text`, or says which line breaks which rule.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text.strip_suffix("# EOF\n").ok_or("the exposition does not end with `# EOF`")?;
    let mut exposition = Exposition::default();
    let mut current: Option<String> = None;
    let mut seen_samples_of: Option<String> = None;
    for (n, line) in body.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, family) = (parts.next().unwrap_or(""), parts.next().ok_or_else(|| fail("metadata without a name"))?);
            let rest = parts.next().unwrap_or("");
            if !valid_name(family) {
                return Err(fail("bad family name"));
            }
            if current.as_deref() != Some(family) {
                if exposition.types.contains_key(family) {
                    return Err(fail("a family appears twice"));
                }
                current = Some(family.to_owned());
                exposition.types.insert(family.to_owned(), "unknown".to_owned());
            }
            if seen_samples_of.as_deref() == Some(family) {
                return Err(fail("metadata after the family's samples"));
            }
            match keyword {
                "TYPE" if ["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"].contains(&rest) => {
                    exposition.types.insert(family.to_owned(), rest.to_owned());
                }
                "UNIT" if family.ends_with(&format!("_{rest}")) => {}
                "HELP" => {}
                _ => return Err(fail("unknown metadata, type, or a unit the name does not end with")),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|why| fail(&why))?;
        let family = current.as_deref().ok_or_else(|| fail("a sample before any family"))?;
        let kind = exposition.types.get(family).map(String::as_str).unwrap_or("unknown");
        let suffix = sample.name.strip_prefix(family).ok_or_else(|| fail("a sample outside its family"))?;
        let allowed: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"],
            "info" => &["_info"],
            "summary" => &["", "_count", "_sum", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(fail(&format!("suffix {suffix:?} does not fit a {kind}")));
        }
        if kind == "counter" && suffix == "_total" && (sample.value < 0.0 || sample.value.is_nan()) {
            return Err(fail("a negative counter"));
        }
        seen_samples_of = Some(family.to_owned());
        exposition.samples.push(sample);
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("value {v:?} is no float"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<f64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("unexpected fields after the value (an exemplar?)".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// `k="v",k2="v2"}` → the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find("=\"").ok_or("a label without =\"")?;
        let key = &text[..eq];
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = text[eq + 2..].char_indices();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break eq + 2 + i + 1,
                (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        text = &text[end..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

/// A series' labels but `le`, in order.
type LabelPairs = Vec<(String, String)>;

/// Buckets of each histogram series never decrease, end at `+Inf`, and that bucket is `_count`.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<LabelPairs, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in exposition.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = sample.labels.get("le").ok_or_else(|| format!("{family}: a bucket without le"))?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("{family}: le {le:?}"))? };
            let key = sample.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            series.entry(key).or_default().push((le, sample.value));
        }
        for (labels, buckets) in series {
            if buckets.windows(2).any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets out of order or decreasing"));
            }
            let label_refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = exposition.sum(&format!("{family}_count"), &label_refs);
            match buckets.last() {
                Some((le, last)) if le.is_infinite() && *last == count => {}
                _ => return Err(format!("{family}{labels:?}: the +Inf bucket is missing or is not _count")),
            }
        }
    }
    Ok(())
}

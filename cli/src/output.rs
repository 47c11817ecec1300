//! Output for people and for scripts: aligned tables by default, or one JSON
//! object per line with `--output json`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

/// Rows under `headers`: a table with columns as wide as their widest cell,
/// or JSON lines keyed by the headers (lowercase, spaces as `_`).
pub(crate) fn rows(output: Output, headers: &[&str], rows: &[Vec<String>]) -> String {
    match output {
        Output::Json => rows
            .iter()
            .map(|r| {
                let obj: Map<String, Value> = headers
                    .iter()
                    .zip(r)
                    .map(|(h, v)| (h.to_ascii_lowercase().replace(' ', "_"), Value::String(v.clone())))
                    .collect();
                Value::Object(obj).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Output::Table => {
            let widths: Vec<usize> = (0..headers.len())
                .map(|i| {
                    rows.iter()
                        .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                        .max()
                        .unwrap_or(0)
                        .max(headers[i].len())
                })
                .collect();
            let line = |cells: Vec<&str>| {
                let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
                padded.join("  ").trim_end().to_owned()
            };
            std::iter::once(line(headers.to_vec()))
                .chain(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_json_keys_follow_the_headers() {
        let data = vec![vec!["iris".to_owned(), "12".to_owned()], vec!["fraud-detector".to_owned(), "3".to_owned()]];
        let table = rows(Output::Table, &["NAME", "VERSIONS"], &data);
        assert_eq!(table, "NAME            VERSIONS\niris            12\nfraud-detector  3");
        let json: Value = serde_json::from_str(&rows(Output::Json, &["NAME", "LATEST VERSION"], &data[..1])).unwrap();
        assert_eq!(json, serde_json::json!({"name": "iris", "latest_version": "12"}));
    }
}

//! REST `/predict`'s body, `{"data": [numbers...]}` (one row), and its
//! reply, `{"modelVersion", "variant"?, "prediction"}`.
//!
//! The body every client sends, an object holding only `data` and its
//! numbers, is read by hand; anything else (more keys, a key escaped, a
//! number out of range, bad JSON) goes to serde_json, which answers it as it
//! always did. Why: serde_json spent ~1.9k instructions on a four-number row
//! of the tiny model's request, most of them ~400 per number (callgrind,
//! BENCHMARKS.md); the hand-read path takes a number's digits by the JSON
//! grammar and its value by Clinger's fast path, or else the standard
//! library's parse, both correctly rounded. (serde_json's default parse is
//! not always: a long or large-exponent number may come out one unit in the
//! last place off, as `-1.5e93` does.)

use serde::Deserialize;

use crate::tensor::TensorData;

#[derive(Debug, Deserialize)]
struct Body {
    data: Vec<f64>,
}

/// The row's numbers, or serde_json's account of why the body is not one.
pub(crate) fn read(body: &[u8]) -> Result<Vec<f64>, serde_json::Error> {
    match plain(body) {
        Some(row) => Ok(row),
        None => serde_json::from_slice::<Body>(body).map(|b| b.data),
    }
}

/// The reply's JSON. Written field by field: serde_json's derived
/// serializer for the reply's struct cost ~0.4k more instructions per tiny
/// request (the keys escaped at run time; callgrind, BENCHMARKS.md).
pub(crate) fn reply(version: &str, variant: Option<&str>, prediction: &TensorData) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + 12 * prediction.len());
    out.extend_from_slice(br#"{"modelVersion":"#);
    serde_json::to_writer(&mut out, version)?;
    if let Some(variant) = variant {
        out.extend_from_slice(br#","variant":"#);
        serde_json::to_writer(&mut out, variant)?;
    }
    out.extend_from_slice(br#","prediction":"#);
    serde_json::to_writer(&mut out, prediction)?;
    out.push(b'}');
    Ok(out)
}

/// The row, when `body` is exactly `{"data":[...]}` with JSON whitespace
/// anywhere between tokens and every number finite; `None` otherwise.
fn plain(body: &[u8]) -> Option<Vec<f64>> {
    let mut r = Reader { b: body, i: 0 };
    for token in [&b"{"[..], b"\"data\"", b":", b"["] {
        r.ws();
        r.literal(token)?;
    }
    let mut row = Vec::new();
    r.ws();
    if r.peek() == Some(b']') {
        r.i += 1;
    } else {
        loop {
            row.push(r.number()?);
            r.ws();
            match r.next()? {
                b',' => r.ws(),
                b']' => break,
                _ => return None,
            }
        }
    }
    r.ws();
    r.literal(b"}")?;
    r.ws();
    (r.i == body.len()).then_some(row)
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, token: &[u8]) -> Option<()> {
        let rest = self.b.get(self.i..)?;
        rest.starts_with(token).then(|| self.i += token.len())
    }

    /// Reads a run of digits into `acc` (saturating: `exact` turns false
    /// once the value passes 2^53); how many there were.
    fn digits(&mut self, acc: &mut u64, exact: &mut bool) -> usize {
        let start = self.i;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            *acc = acc.saturating_mul(10).saturating_add(u64::from(d - b'0'));
            self.i += 1;
        }
        *exact &= *acc <= MAX_EXACT;
        self.i - start
    }

    /// One JSON number, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`,
    /// when finite as an f64 (serde_json refuses the rest).
    ///
    /// Digits that fit in an f64 exactly, scaled by a power of ten that does
    /// too (at most 22), give the correctly rounded value in one multiply
    /// or divide (Clinger's fast path); the rest go to the standard
    /// library's parse, correctly rounded as well.
    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let (mut mantissa, mut exact) = (0u64, true);
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits(&mut mantissa, &mut exact);
            }
            _ => return None,
        }
        let mut scale: i64 = 0;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let n = self.digits(&mut mantissa, &mut exact);
            if n == 0 {
                return None;
            }
            scale -= n as i64;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            let minus = self.peek() == Some(b'-');
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let mut e = 0u64;
            if self.digits(&mut e, &mut true) == 0 {
                return None;
            }
            let e = i64::try_from(e).unwrap_or(i64::MAX);
            scale = if minus { scale.saturating_sub(e) } else { scale.saturating_add(e) };
        }
        if exact && scale.unsigned_abs() < POW10.len() as u64 {
            #[allow(clippy::cast_precision_loss)] // exact: mantissa ≤ 2^53
            let m = mantissa as f64;
            let p = POW10[scale.unsigned_abs() as usize];
            let v = if scale < 0 { m / p } else { m * p };
            return Some(if negative { -v } else { v });
        }
        // ASCII by construction, so the conversion cannot fail.
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    }
}

/// The largest integer every smaller one of which an f64 holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// The powers of ten an f64 holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn serde(body: &str) -> Option<Vec<f64>> {
        serde_json::from_str::<Body>(body).ok().map(|b| b.data)
    }

    #[test]
    fn plain_rows_are_read_by_hand_and_the_rest_by_serde() {
        for (body, row) in [
            (r#"{"data":[5.1,3.5,1.4,0.2]}"#, Some(vec![5.1, 3.5, 1.4, 0.2])),
            ("\t{ \"data\" :\r\n[ -0 , 1e3,2E-2 ,-7.25e+1 ] }\n", Some(vec![-0.0, 1e3, 2e-2, -72.5])),
            (r#"{"data":[]}"#, Some(vec![])),
            (r#"{"data":[0.1e-400]}"#, Some(vec![0.0])),
        ] {
            assert_eq!(plain(body.as_bytes()), row, "{body}");
            assert_eq!(serde(body), row, "serde_json agrees on {body}");
        }
        // Not plain: serde_json decides, reading or refusing them as before.
        for body in [
            r#"{"data":[1],"extra":true}"#,
            r#"{"\u0064ata":[1]}"#,
            r#"{"data":[1e400]}"#,
            r#"{"data":[01]}"#,
            r#"{"data":[.5]}"#,
            r#"{"data":[5.]}"#,
            r#"{"data":[+5]}"#,
            r#"{"data":[1,]}"#,
            r#"{"data":[,1]}"#,
            r#"{"data":[NaN]}"#,
            r#"{"data":[inf]}"#,
            r#"{"data":["1"]}"#,
            r#"{"data":[1]} x"#,
            r#"{"data":[1]"#,
            "{\"data\":[1]}\u{a0}",
            r#"{"data":[1e]}"#,
            r#"{"data":[-]}"#,
            "",
        ] {
            assert_eq!(plain(body.as_bytes()), None, "{body}");
            assert_eq!(read(body.as_bytes()).ok(), serde(body), "{body}");
        }
        assert_eq!(read(br#"{"extra":0,"data":[2.5]}"#).unwrap(), [2.5], "serde_json reads what is not plain");
        let err = read(br#"{"data":[1e400]}"#).unwrap_err().to_string();
        assert!(err.contains("number out of range"), "serde_json's own account: {err}");
    }

    /// The reply is the JSON serde_json makes of the same fields, escapes
    /// and float32 digits included.
    #[test]
    fn replies_are_the_json_of_their_fields() {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Reply<'a> {
            model_version: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            variant: Option<&'a str>,
            prediction: &'a TensorData,
        }
        for (version, variant, prediction) in [
            ("1", None, TensorData::F32(vec![0.000_4, 0.234_7, 0.764_737_5, f32::NAN])),
            ("12", Some("challenger \"b\"\n\u{7f}é"), TensorData::I64(vec![-3, i64::MAX])),
            ("3", Some(""), TensorData::Str(vec!["a\\b".into()])),
            ("4", None, TensorData::F64(vec![])),
        ] {
            let got = reply(version, variant, &prediction).unwrap();
            let want = serde_json::to_vec(&Reply { model_version: version, variant, prediction: &prediction }).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
        }
    }

    /// Every body one edit away from plain ones (a byte inserted anywhere,
    /// one removed, the rest cut off): the hand-read path never takes one
    /// serde_json refuses, nor reads one differently.
    #[test]
    fn no_body_near_a_plain_one_is_read_otherwise_than_serde_json_would() {
        let bytes = b"{}[]:,\"-+.eE019 \t\n\x0bxa\xa0";
        let mut checked = 0;
        for base in [&br#"{"data":[-1.5e3,0,27]}"#[..], br#" { "data" : [ 0.25 ] } "#, br#"{"data":[]}"#] {
            let mut near: Vec<Vec<u8>> = Vec::new();
            for at in 0..=base.len() {
                near.push(base[..at].to_vec());
                for &b in bytes {
                    near.push([&base[..at], &[b], &base[at..]].concat());
                }
                if at < base.len() {
                    near.push([&base[..at], &base[at + 1..]].concat());
                }
            }
            for body in near {
                let text = String::from_utf8_lossy(&body);
                let Some(got) = plain(&body) else { continue };
                let want = serde_json::from_slice::<Body>(&body).map(|b| b.data);
                let want = want.unwrap_or_else(|e| panic!("read by hand, refused by serde_json ({e}): {text}"));
                assert_eq!(got.len(), want.len(), "{text}");
                for (g, w) in got.iter().zip(&want) {
                    // serde_json's default parse is not always correctly
                    // rounded: -1.5e93 comes out one unit in the last place off.
                    assert!(g.to_bits().abs_diff(w.to_bits()) <= 1, "{g:e} against serde_json's {w:e}: {text}");
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} edited bodies were plain");
    }

    /// A JSON number as clients write them: sign, integer part, fraction,
    /// exponent, with at most 15 significant digits and a small exponent, so
    /// that serde_json's default (not always correctly rounded) parse is
    /// exact too.
    fn number() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            0u64..1_000_000_000,
            prop::option::of(0u32..1_000_000),
            prop::option::of((any::<bool>(), 0u8..3, 0i32..10)),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = format!("{}{int}", if neg { "-" } else { "" });
                if let Some(f) = frac {
                    s.push_str(&format!(".{f:06}"));
                }
                if let Some((upper, sign, e)) = exp {
                    s.push(if upper { 'E' } else { 'e' });
                    s.push_str(["", "+", "-"][usize::from(sign)]);
                    s.push_str(&e.to_string());
                }
                s
            })
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec![' ', '\t', '\n', '\r']), 0..3).prop_map(String::from_iter)
    }

    /// Any JSON number: up to 24 integer and 24 fraction digits, leading
    /// zeros after the point, exponents to ±400.
    fn any_number() -> impl Strategy<Value = String> {
        let digits = |n| {
            prop::collection::vec(0u8..10, n).prop_map(|d| d.iter().map(|d| char::from(b'0' + d)).collect::<String>())
        };
        (
            any::<bool>(),
            prop_oneof![Just("0".to_owned()), (1u8..10, digits(0..24)).prop_map(|(h, t)| format!("{h}{t}"))],
            prop::option::of(digits(1..24)),
            prop::option::of((prop::sample::select(vec!["e", "E", "e+", "e-", "E-"]), 0u16..400)),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = format!("{}{int}", if neg { "-" } else { "" });
                if let Some(f) = frac {
                    s = format!("{s}.{f}");
                }
                if let Some((e, n)) = exp {
                    s = format!("{s}{e}{n}");
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Every number reads as the standard library's correctly rounded
        /// parse reads it, bit for bit, or not at all when that is infinite.
        #[test]
        fn numbers_read_as_the_standard_library_parses_them(text in any_number()) {
            let mut r = Reader { b: text.as_bytes(), i: 0 };
            let got = r.number();
            let want = text.parse::<f64>().ok().filter(|v| v.is_finite());
            prop_assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{}", text);
            if got.is_some() {
                prop_assert_eq!(r.i, text.len(), "{}", text);
            }
        }

        /// Bodies as clients send them read to serde_json's numbers, bit for bit.
        #[test]
        fn plain_rows_read_as_serde_json_reads_them(numbers in prop::collection::vec((number(), ws(), ws()), 0..12), pad in prop::collection::vec(ws(), 9)) {
            let items: Vec<String> = numbers.iter().map(|(n, a, b)| format!("{a}{n}{b}")).collect();
            let body = format!("{}{{{}\"data\"{}:{}[{}]{}}}{}", pad[0], pad[1], pad[2], pad[3], items.join(","), pad[4], pad[5]);
            let got = plain(body.as_bytes());
            prop_assert!(got.is_some(), "not read by hand: {body}");
            let want = serde(&body);
            prop_assert!(want.is_some(), "serde_json refuses {body}");
            let (got, want) = (got.unwrap(), want.unwrap());
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{}", body);
        }

    }
}

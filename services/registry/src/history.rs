//! Who moved which alias or stage, when and why: every move made through
//! Ferry (SetAlias, TransitionStage, Rollback) is recorded in MLflow — the
//! registered model's `ferry.history` tag keeps the recent moves (what
//! Rollback reads), and the version moved to gets `ferry.last_move` — so the
//! record lives with the model, readable with MLflow's own clients too.

use serde::{Deserialize, Serialize};

/// The registered-model tag holding recent moves (JSON, oldest first).
pub const HISTORY_TAG: &str = "ferry.history";
/// The model-version tag holding the move that last pointed something at it.
pub const LAST_MOVE_TAG: &str = "ferry.last_move";
/// MLflow refuses tag values over 5,000 characters; the oldest moves give way.
const MAX_HISTORY_CHARS: usize = 4_500;

/// One move of an alias or a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// `alias:champion` or `stage:Production`.
    pub target: String,
    /// The version it designated before (empty: none).
    #[serde(default)]
    pub from: String,
    pub to: String,
    /// The caller's identity (the token's name; `anonymous` without auth).
    pub by: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For a stage move: the stage `to` was in before, where a rollback returns it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_previous_stage: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// The moves recorded in a history tag; a tag edited into nonsense reads as none.
pub fn parse(tag: Option<&str>) -> Vec<Move> {
    tag.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
}

/// The tag's new value with `m` appended, the oldest moves dropped to fit.
pub fn append(mut moves: Vec<Move>, m: Move) -> String {
    moves.push(m);
    loop {
        let text = serde_json::to_string(&moves).unwrap_or_else(|_| "[]".into());
        if text.len() <= MAX_HISTORY_CHARS || moves.len() <= 1 {
            return text;
        }
        moves.remove(0);
    }
}

/// What a rollback of `target` returns to: the last recorded move of it,
/// which must still be in force (`current`), else the caller is told why not.
pub fn rollback_of<'a>(moves: &'a [Move], target: &str, current: Option<&str>) -> Result<&'a Move, String> {
    let last = moves.iter().rev().find(|m| m.target == target).ok_or_else(|| {
        format!("no move of {target} was made through Ferry, so there is nothing to roll back to; move it explicitly")
    })?;
    match current {
        Some(v) if v == last.to => Ok(last),
        other => Err(format!(
            "{target} designates {}, not version {} as Ferry last set it (it was moved elsewhere since); move it explicitly",
            other.map_or_else(|| "no version".to_owned(), |v| format!("version {v}")),
            last.to
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(target: &str, from: &str, to: &str) -> Move {
        Move {
            target: target.into(),
            from: from.into(),
            to: to.into(),
            by: "ci".into(),
            at_ms: 1,
            reason: String::new(),
            to_previous_stage: String::new(),
            rollback: false,
        }
    }

    #[test]
    fn rollback_returns_to_the_last_recorded_move_while_it_is_in_force() {
        let moves =
            vec![mv("alias:champion", "", "1"), mv("alias:champion", "1", "2"), mv("stage:Production", "", "2")];
        assert_eq!(rollback_of(&moves, "alias:champion", Some("2")).unwrap().from, "1");
        let moved_elsewhere = rollback_of(&moves, "alias:champion", Some("3")).unwrap_err();
        assert!(moved_elsewhere.contains("version 3") && moved_elsewhere.contains("version 2"), "{moved_elsewhere}");
        assert!(rollback_of(&moves, "alias:challenger", Some("1")).unwrap_err().contains("no move"));
        // A rollback is a move too: rolling back again undoes it.
        let undone = [moves, vec![mv("alias:champion", "2", "1")]].concat();
        assert_eq!(rollback_of(&undone, "alias:champion", Some("1")).unwrap().from, "2");
    }

    #[test]
    fn the_history_keeps_the_newest_moves_within_mlflows_tag_limit() {
        let mut text = String::new();
        for i in 0..200 {
            let mut m = mv("alias:champion", &i.to_string(), &(i + 1).to_string());
            m.reason = "a reason of some length, as people write them".into();
            text = append(parse(Some(&text)), m);
        }
        assert!(text.len() <= MAX_HISTORY_CHARS, "{}", text.len());
        let kept = parse(Some(&text));
        assert_eq!(kept.last().map(|m| m.to.as_str()), Some("200"), "the newest move is kept");
        assert!(kept.len() > 10);
        assert!(parse(Some("not json")).is_empty());
    }
}

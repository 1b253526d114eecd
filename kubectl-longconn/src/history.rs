//! Which record of `status.history` a command means: one named by its number, the one the pods
//! run (`status.currentRevision`), the one the spec asks for (`status.updateRevision`), or the
//! last one that completed before it. A revision returned to is recorded again under the next number,
//! so a revision stands for its newest record.

use longconn_operator::crd::{LongConnService, RevisionRecord, RevisionResult};

use crate::decide::{Refused, name};

/// The records, oldest first; none before the operator wrote any.
pub fn records(lcs: &LongConnService) -> &[RevisionRecord] {
    lcs.status.as_ref().map_or(&[], |s| s.history.as_slice())
}

/// The newest record of `revision`.
fn newest<'a>(lcs: &'a LongConnService, revision: Option<&str>) -> Option<&'a RevisionRecord> {
    let revision = revision?;
    records(lcs).iter().rev().find(|r| r.revision == revision)
}

/// The record the pods run: the newest of `status.currentRevision`.
pub fn running(lcs: &LongConnService) -> Option<&RevisionRecord> {
    newest(lcs, lcs.status.as_ref()?.current_revision.as_deref())
}

/// The record the spec asks for: the newest of `status.updateRevision`.
pub fn asked_for(lcs: &LongConnService) -> Option<&RevisionRecord> {
    newest(lcs, lcs.status.as_ref()?.update_revision.as_deref())
}

/// The record numbered `number`.
pub fn numbered(lcs: &LongConnService, number: i64) -> Result<&RevisionRecord, Refused> {
    let records = records(lcs);
    if records.is_empty() {
        return Err(Refused::NoHistory { name: name(lcs) });
    }
    records
        .iter()
        .find(|r| r.number == number)
        .ok_or_else(|| Refused::NoSuchRevision {
            name: name(lcs),
            number,
            numbers: records.iter().map(|r| r.number).collect(),
        })
}

/// Where `undo` without a number returns: the newest record before the one the spec asks for,
/// of another revision, whose rollout completed (the last revision that ran whole).
pub fn last_complete(lcs: &LongConnService) -> Result<&RevisionRecord, Refused> {
    let records = records(lcs);
    if records.is_empty() {
        return Err(Refused::NoHistory { name: name(lcs) });
    }
    let Some(asked) = asked_for(lcs) else {
        return Err(Refused::NothingAsked { name: name(lcs) });
    };
    records
        .iter()
        .rev()
        .filter(|r| r.number < asked.number && r.revision != asked.revision)
        .find(|r| {
            r.outcome
                .as_ref()
                .is_some_and(|o| o.result == RevisionResult::Complete)
        })
        .ok_or_else(|| Refused::NothingBefore {
            name: name(lcs),
            number: asked.number,
            revision: asked.revision.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn a_revision_returned_to_stands_for_its_newest_record() {
        let mut lcs = fixtures::waiting_for_promotion();
        fixtures::set_history(
            &mut lcs,
            "[{number: 1, revision: a, outcome: {result: Complete}}, \
             {number: 2, revision: x, outcome: {result: Complete}}, \
             {number: 3, revision: a, outcome: {result: Complete}}, \
             {number: 4, revision: y, outcome: {result: Aborted}}, \
             {number: 5, revision: b}]",
        );
        assert_eq!(running(&lcs).map(|r| r.number), Some(3));
        assert_eq!(asked_for(&lcs).map(|r| r.number), Some(5));
        assert_eq!(
            last_complete(&lcs).map(|r| r.number),
            Ok(3),
            "the newest complete record before 5, skipping the aborted y"
        );
    }

    #[test]
    fn a_number_not_in_the_history_is_refused_with_the_numbers_there_are() {
        let lcs = fixtures::with_history();
        assert_eq!(numbered(&lcs, 5).map(|r| r.revision.as_str()), Ok("z"));
        assert_eq!(
            numbered(&lcs, 9),
            Err(Refused::NoSuchRevision {
                name: "chat".to_owned(),
                number: 9,
                numbers: vec![1, 2, 3, 4, 5, 6],
            })
        );
        assert_eq!(
            numbered(&fixtures::waiting_for_promotion(), 1),
            Err(Refused::NoHistory {
                name: "chat".to_owned()
            })
        );
    }
}

//! Made-up rules over the synthetic load of `sealmq audit load`
//! (`sealmq_audit::store::synthetic`: device `load-NNNN` publishes
//! `{"ctr":C,…}` on `load/load-NNNN/<C % 8>`), for measuring what rules
//! cost on the log's path and in replay.
//!
//! Rule `i` listens on `load/+/<i % 8>`, so every record matches about one
//! rule in eight and each of those evaluates its `when`. Of the records
//! whose counter is a multiple of 101 (coprime with 8, so every topic gets
//! its share), the one rule whose `i / 8` equals `(C / 101) % ⌈n / 8⌉`
//! fires: about 1 % of records fire once each when `n` is a multiple of 8
//! (fewer for other `n`; `audit load` prints the share it got).

/// The counter step at which rules fire: about 1 % of records.
const FIRE_EVERY: u64 = 101;

/// The documents of `n` synthetic rules, named `load-0` … `load-<n-1>`.
pub fn rule_documents(n: usize) -> Vec<String> {
    let groups = n.div_ceil(8).max(1);
    (0..n)
        .map(|i| {
            format!(
                "name = \"load-{i}\"\n\
                 on = \"load/+/{topic}\"\n\
                 when = \"int(json.ctr) % {FIRE_EVERY} == 0 && int(json.ctr) / {FIRE_EVERY} % {groups} == {group}\"\n\
                 [publish]\n\
                 topic = \"load-actions/{{1}}\"\n\
                 payload = \"'rule {i} fired on ' + topic\"\n\
                 qos = 0\n\
                 retain = false\n",
                topic = i % 8,
                group = i / 8,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleDocument;

    #[test]
    fn synthetic_rules_parse_and_have_distinct_names() {
        let documents = rule_documents(20);
        let names: std::collections::HashSet<String> = documents
            .iter()
            .map(|d| RuleDocument::parse(d.as_bytes()).expect("a synthetic rule parses").name().to_string())
            .collect();
        assert_eq!(names.len(), 20);
    }
}

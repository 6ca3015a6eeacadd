//! The execution semantics of spec/rules.md (and the contract's choices
//! where it is silent), through the engine's fold.

use sealmq_audit::{PublishRecord, Record, RuleEvent, RuleRecord, sha256};
use sealmq_rules::{Outcome, RetainedTexts, RuleDocument, RuleError, Rules, Trigger, evaluate};

fn doc(name: &str, on: &str, when: &str, topic: &str, payload: &str, retain: bool) -> Vec<u8> {
    format!(
        "name = {name:?}\non = {on:?}\nwhen = {when:?}\n[publish]\ntopic = {topic:?}\npayload = {payload:?}\nqos = 0\nretain = {retain}\n"
    )
    .into_bytes()
}

fn install(document: &[u8]) -> Record {
    let name = RuleDocument::parse(document).unwrap().name().to_string();
    Record::Rule(RuleRecord { at_ms: 1, rule_name: name, event: RuleEvent::Installed { document: document.to_vec() } })
}

fn remove(name: &str) -> Record {
    Record::Rule(RuleRecord { at_ms: 1, rule_name: name.into(), event: RuleEvent::Removed })
}

fn publish(topic: &str, payload: &[u8], retain: bool) -> Record {
    Record::Publish(PublishRecord {
        received_ms: 1_700_000_000_000,
        device_id: "dev".into(),
        topic: topic.into(),
        qos: 1,
        retain,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(payload),
        signature: None,
        cause: None,
    })
}

/// Feeds `record` at the engine's next index; the names of the rules that fired, with indices.
fn feed(rules: &mut Rules, record: &Record, payload: &[u8]) -> Vec<(u64, String)> {
    let index = rules.next_index();
    let actions = rules.follow_record(index, record, Some(payload));
    actions.iter().map(|a| (a.index, a.rule.clone())).collect()
}

#[test]
fn rules_fire_in_install_order_and_a_reinstall_moves_to_its_new_index() {
    let mut rules = Rules::new(0);
    feed(&mut rules, &install(&doc("a", "t/#", "true", "out/a", "'x'", false)), b"");
    feed(&mut rules, &install(&doc("b", "t/+", "true", "out/b", "'y'", false)), b"");
    assert_eq!(feed(&mut rules, &publish("t/1", b"", false), b""), [(3, "a".into()), (4, "b".into())]);
    assert_eq!(rules.next_index(), 5);
    feed(&mut rules, &install(&doc("a", "t/#", "true", "out/a2", "'x'", false)), b"");
    assert_eq!(feed(&mut rules, &publish("t/1", b"", false), b""), [(7, "b".into()), (8, "a".into())]);
    let active = rules.active();
    assert_eq!(active.iter().map(|r| (r.name.as_str(), r.install_index)).collect::<Vec<_>>(), [("b", 1), ("a", 5)]);
    // Removal stops firing from its index on.
    feed(&mut rules, &remove("b"), b"");
    assert_eq!(feed(&mut rules, &publish("t/1", b"", false), b""), [(11, "a".into())]);
    // A topic no filter matches costs nothing and fires nothing.
    assert!(feed(&mut rules, &publish("u/1", b"", false), b"").is_empty());
}

#[test]
fn actions_never_trigger_rules() {
    let mut rules = Rules::new(0);
    // Its own action matches its filter.
    feed(&mut rules, &install(&doc("echo", "#", "true", "echo/{0}", "payload", false)), b"");
    assert_eq!(feed(&mut rules, &publish("a", b"hi", false), b"hi"), [(2, "echo".into())]);
    assert_eq!(rules.next_index(), 3);
    // An action record fed as a record (as replay shows it) is no trigger either.
    let action = rules.follow_record(3, &publish("b", b"", false), Some(b""));
    let again = rules.follow_record(5, &Record::Publish(action[0].record.clone()), Some(&action[0].payload));
    assert!(again.is_empty());
}

#[test]
fn retained_sees_the_state_just_before_the_trigger_and_earlier_actions() {
    let mut rules = Rules::new(0);
    feed(&mut rules, &install(&doc("seen", "lamp", "retained('lamp') == 'on'", "log", "'was on'", false)), b"");
    // The trigger itself sets lamp=on, but the rule sees the state before it.
    assert!(feed(&mut rules, &publish("lamp", b"on", true), b"on").is_empty());
    assert_eq!(feed(&mut rules, &publish("lamp", b"off", false), b"off"), [(3, "seen".into())]);
    // An empty retained publish clears it.
    feed(&mut rules, &publish("lamp", b"", true), b"");
    assert!(feed(&mut rules, &publish("lamp", b"x", false), b"x").is_empty());

    // Earlier actions are retained state for later triggers, not for rules of the same trigger.
    let mut rules = Rules::new(0);
    feed(&mut rules, &install(&doc("set", "a", "true", "state", "'x'", true)), b"");
    feed(&mut rules, &install(&doc("read", "+", "retained('state') == 'x'", "out", "'saw x'", false)), b"");
    assert_eq!(feed(&mut rules, &publish("a", b"", false), b""), [(3, "set".into())]);
    assert_eq!(feed(&mut rules, &publish("b", b"", false), b""), [(5, "read".into())]);
    // Non-UTF-8 retained payloads read as "".
    feed(&mut rules, &publish("state", &[0xff, 0xfe], true), &[0xff, 0xfe]);
    assert!(feed(&mut rules, &publish("b", b"", false), b"").is_empty());
}

#[test]
fn variables_and_json_numbers_as_doubles() {
    let mut rules = Rules::new(0);
    let when = "json.moisture < 30.0 && levels[1] == 'bed3' && device == 'dev' && !signed \
                && received_ms == 1700000000000 && text.startsWith('{') && size(payload) == 15 && topic == 'farm/bed3/m'";
    feed(&mut rules, &install(&doc("dry", "farm/+/m", when, "farm/{1}/valve/{device}", "'open'", false)), b"");
    let fired =
        rules.follow_record(1, &publish("farm/bed3/m", b"{\"moisture\":21}", false), Some(b"{\"moisture\":21}"));
    assert_eq!(fired.len(), 1, "an integer in JSON compares as a double");
    assert_eq!(fired[0].record.topic, "farm/bed3/valve/dev");
    assert_eq!(fired[0].record.device_id, "$rule/dry");
    assert_eq!(fired[0].record.received_ms, 1_700_000_000_000);
    assert_eq!(fired[0].record.cause.unwrap().trigger_index, 1);
}

#[test]
fn errors_mean_no_action() {
    let rule = |when: &str, topic: &str, payload: &str| {
        RuleDocument::parse(&doc("r", "a/#", when, topic, payload, false)).unwrap()
    };
    let record = publish("a", b"{}", false);
    let Record::Publish(p) = &record else { unreachable!() };
    let trigger = Trigger::of(p, b"{}");
    let none = RetainedTexts::new();
    assert!(matches!(evaluate(&rule("json.missing > 1.0", "o", "'x'"), &trigger, &none), Outcome::WhenError(_)));
    assert!(matches!(evaluate(&rule("'not a bool'", "o", "'x'"), &trigger, &none), Outcome::WhenError(_)));
    assert_eq!(evaluate(&rule("false", "o", "'x'"), &trigger, &none), Outcome::WhenFalse);
    assert!(matches!(evaluate(&rule("true", "o", "42"), &trigger, &none), Outcome::PayloadError(_)));
    assert!(matches!(evaluate(&rule("true", "o", "json.nope"), &trigger, &none), Outcome::PayloadError(_)));
    assert!(matches!(evaluate(&rule("true", "o/{3}", "'x'"), &trigger, &none), Outcome::BadTopic(_)));
    assert!(matches!(evaluate(&rule("true", "o", "'x'.repeat(1)"), &trigger, &none), Outcome::PayloadError(_)));
    assert!(matches!(evaluate(&rule("true", "o", "b'\\x00\\x01'"), &trigger, &none), Outcome::Fired(_)));
    let fired = evaluate(&rule("true", "o/{0}", "'x'"), &trigger, &none);
    assert_eq!(fired.to_string(), "fires: publishes \"x\" to \"o/a\" (qos 0, retain false)");
    let when = evaluate(&rule("json.missing > 1.0", "o", "'x'"), &trigger, &none).to_string();
    assert!(when.starts_with("does not fire: `when` failed, which counts as false ("), "{when}");
    let other = publish("b", b"", false);
    let Record::Publish(o) = &other else { unreachable!() };
    assert_eq!(evaluate(&rule("true", "o", "'x'"), &Trigger::of(o, b""), &none), Outcome::NoMatch);
}

#[test]
fn bad_documents_are_refused_with_what_is_wrong() {
    let refused = |bytes: &[u8]| RuleDocument::parse(bytes).unwrap_err();
    assert!(matches!(refused(&doc("bad name", "a", "true", "o", "'x'", false)), RuleError::Name(_)));
    assert!(matches!(refused(&doc(&"n".repeat(65), "a", "true", "o", "'x'", false)), RuleError::Name(_)));
    assert!(matches!(refused(&doc("r", "$share/g/a", "true", "o", "'x'", false)), RuleError::On { .. }));
    assert!(matches!(refused(&doc("r", "$SYS/#", "true", "o", "'x'", false)), RuleError::On { .. }));
    assert!(matches!(refused(&doc("r", "a/#/b", "true", "o", "'x'", false)), RuleError::On { .. }));
    assert!(matches!(refused(&doc("r", "a", "true", "o/{x}", "'x'", false)), RuleError::Topic { .. }));
    assert!(matches!(refused(&doc("r", "a", "true", "o/+", "'x'", false)), RuleError::Topic { .. }));
    assert!(matches!(refused(&doc("r", "a", "true &&", "o", "'x'", false)), RuleError::When(_)));
    assert!(matches!(refused(&doc("r", "a", "true", "o", "nosuch", false)), RuleError::Payload(_)));
    let nested = "levels.all(a, levels.exists(b, a == b))";
    assert!(matches!(refused(&doc("r", "a", nested, "o", "'x'", false)), RuleError::When(_)));
    let long = format!("'{}' == text", "x".repeat(5000));
    assert!(matches!(refused(&doc("r", "a", &long, "o", "'x'", false)), RuleError::When(_)));
    let mut big = doc("r", "a", "true", "o", "'x'", false);
    big.extend(std::iter::repeat_n(b'#', 17 * 1024));
    assert!(matches!(refused(&big), RuleError::TooLarge(_)));
    let qos = String::from_utf8(doc("r", "a", "true", "o", "'x'", false)).unwrap().replace("qos = 0", "qos = 3");
    assert!(matches!(refused(qos.as_bytes()), RuleError::Qos(3)));
    let extra = [doc("r", "a", "true", "o", "'x'", false), b"colour = \"red\"\n".to_vec()].concat();
    let err = refused(&extra);
    assert!(matches!(&err, RuleError::Toml(m) if m.contains("colour")), "{err}");
    let missing = String::from_utf8(doc("r", "a", "true", "o", "'x'", false)).unwrap().replace("retain = false\n", "");
    let err = refused(missing.as_bytes());
    assert!(matches!(&err, RuleError::Toml(m) if m.contains("retain")), "{err}");
    assert!(matches!(refused(&[0xff, 0xfe]), RuleError::NotUtf8));
}

#[test]
fn abort_restores_the_state_of_the_last_commit() {
    let mut rules = Rules::new(0);
    feed(&mut rules, &install(&doc("keep", "k", "retained('s') == ''", "o", "'x'", false)), b"");
    feed(&mut rules, &publish("s", b"1", true), b"1");
    rules.commit();
    let before = (rules.active(), rules.retained().clone(), rules.next_index());
    feed(&mut rules, &install(&doc("new", "n", "true", "s", "'2'", true)), b"");
    feed(&mut rules, &install(&doc("keep", "k", "true", "o", "'y'", false)), b"");
    feed(&mut rules, &remove("keep"), b"");
    feed(&mut rules, &publish("s", b"", true), b"");
    feed(&mut rules, &publish("n", b"", false), b"");
    feed(&mut rules, &publish("t", b"3", true), b"3");
    rules.abort();
    assert_eq!((rules.active(), rules.retained().clone(), rules.next_index()), before);
    // And the restored engine works: "keep" still sees s = "1".
    assert!(feed(&mut rules, &publish("k", b"", false), b"").is_empty());
}

#[test]
fn a_thousand_rules_cost_only_the_matching_ones() {
    let mut rules = Rules::new(0);
    for i in 0..1000 {
        feed(&mut rules, &install(&doc(&format!("r{i}"), &format!("site/{i}/+"), "true", "o/{1}", "'x'", false)), b"");
    }
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        assert_eq!(feed(&mut rules, &publish("site/7/t", b"", false), b"").len(), 1);
        assert!(feed(&mut rules, &publish("other/7/t", b"", false), b"").is_empty());
    }
    // A debug build; the point is that it is not 1000 × 1000 evaluations.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}

/// The sequencer's view: record bytes in, `Derived` records out, groups
/// committed or aborted.
#[cfg(feature = "store")]
#[test]
fn the_follower_trait() {
    use sealmq_audit::store::Follower;
    let mut rules = Rules::new(10);
    let follower: &mut dyn Follower = &mut rules;
    assert_eq!(follower.next_index(), 10);
    let installed = install(&doc("f", "a", "true", "b", "'x'", true)).encode().unwrap();
    assert!(follower.follow(10, &installed, None).is_empty());
    follower.commit();
    let trigger = publish("a", b"p", false).encode().unwrap();
    let derived = follower.follow(11, &trigger, Some(b"p"));
    assert_eq!(derived.len(), 1);
    assert_eq!((derived[0].index, derived[0].payload.as_slice()), (12, &b"x"[..]));
    assert_eq!(derived[0].record.cause.unwrap().trigger_index, 11);
    assert_eq!(follower.next_index(), 13, "the actions count as seen");
    // A record that does not decode: no actions, but it is seen.
    assert!(follower.follow(13, b"\x01\x09", None).is_empty());
    assert_eq!(follower.next_index(), 14);
    follower.abort();
    assert_eq!(follower.next_index(), 11);
    assert_eq!(rules.retained().get("b"), None, "the aborted action's retained state is undone");
    assert_eq!(rules.len(), 1, "the committed install stays");
}

/// The deepest expressions the limits allow evaluate on a 2 MiB thread (a
/// tokio worker's stack), in a debug build too.
#[test]
fn the_deepest_allowed_expressions_evaluate_on_a_small_stack() {
    let chain = vec!["1.0"; 31].join(" + ") + " > 0.0";
    let parens = format!("{}json.v{} > 0.0", "(".repeat(32), ")".repeat(32));
    for when in [chain, parens] {
        let document = doc("deep", "a", &when, "b", "'x'", false);
        let fired = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let mut rules = Rules::new(0);
                feed(&mut rules, &install(&document), b"");
                feed(&mut rules, &publish("a", b"{\"v\": 1}", false), b"{\"v\": 1}").len()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(fired, 1);
    }
}

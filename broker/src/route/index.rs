//! The in-process router: every subscription indexed by topic level, so a
//! publish is matched by walking its levels (not by testing every filter),
//! and handed to each matching session's [`Inbox`] as one shared
//! [`Message`].
//!
//! Written here rather than taken from rumqttd's router: that one keeps a
//! log per filter in its own thread, copies each message per filter and
//! overwrites what a slow reader has not read; the gateway already owns
//! sessions, queues and acknowledgements, and needs only the matching.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::{Delivery, Inbox, Message, SessionId, SubOptions};

/// One subscriber of a filter.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) inbox: Arc<Inbox>,
    pub(super) filter: Arc<str>,
    pub(super) options: SubOptions,
}

/// A shared subscription group: its share name, at its filter's node, so a
/// group is identified by name *and* filter (MQTT 5 §4.8.2).
#[derive(Debug)]
struct Group {
    name: Box<str>,
    members: Vec<Member>,
    next: AtomicUsize,
}

/// The subscribers of one filter (the external router keeps one per
/// distinct filter too).
#[derive(Debug, Default)]
pub(super) struct Subscribers {
    plain: Vec<Member>,
    groups: Vec<Group>,
}

impl Subscribers {
    pub(super) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    pub(super) fn insert(&mut self, group: Option<&str>, member: Member) {
        let id = member.inbox.id();
        let members = match group {
            None => &mut self.plain,
            Some(name) => match self.groups.iter().position(|g| &*g.name == name) {
                Some(i) => &mut self.groups[i].members,
                None => {
                    self.groups.push(Group { name: name.into(), members: Vec::new(), next: AtomicUsize::new(0) });
                    &mut self.groups.last_mut().expect("just pushed").members
                }
            },
        };
        match members.iter_mut().find(|m| m.inbox.id() == id) {
            Some(existing) => *existing = member,
            None => members.push(member),
        }
    }

    pub(super) fn remove(&mut self, group: Option<&str>, session: SessionId) -> bool {
        match group {
            None => remove_member(&mut self.plain, session),
            Some(name) => {
                let Some(i) = self.groups.iter().position(|g| &*g.name == name) else { return false };
                let removed = remove_member(&mut self.groups[i].members, session);
                if self.groups[i].members.is_empty() {
                    self.groups.swap_remove(i);
                }
                removed
            }
        }
    }

    /// Hands `message` to every plain subscriber and to one member of each
    /// group (round robin, skipping members whose inbox is full).
    pub(super) fn deliver(&self, message: &Arc<Message>, delivered: &mut usize) {
        for member in &self.plain {
            if member.options.no_local && member.is_publisher(message) {
                continue;
            }
            *delivered += usize::from(member.push(message));
        }
        for group in &self.groups {
            let n = group.members.len();
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            // The first member with room takes it; if none has, the chosen
            // one counts it as dropped.
            let chosen = (0..n).map(|k| &group.members[(start + k) % n]).find(|m| m.inbox.len() < m.inbox.limit());
            let member = chosen.unwrap_or(&group.members[start % n]);
            *delivered += usize::from(member.push(message));
        }
    }
}

fn remove_member(members: &mut Vec<Member>, session: SessionId) -> bool {
    let before = members.len();
    members.retain(|m| m.inbox.id() != session);
    members.len() != before
}

impl Member {
    fn push(&self, message: &Arc<Message>) -> bool {
        self.inbox.push(Delivery {
            message: Arc::clone(message),
            filter: Arc::clone(&self.filter),
            options: self.options,
        })
    }

    /// Whether the message was published by this member's own client (No Local).
    fn is_publisher(&self, message: &Message) -> bool {
        self.inbox.client_id() == &*message.from
    }
}

/// One topic level's node.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// The `+` child.
    plus: Option<Box<Node>>,
    /// Filters ending here.
    exact: Subscribers,
    /// Filters ending here with `/#` (or `#` alone, at the root): they match
    /// this level and everything below.
    rest: Subscribers,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.exact.is_empty() && self.rest.is_empty()
    }

    fn matches(&self, levels: &[&str], dollar_at_root: bool, message: &Arc<Message>, delivered: &mut usize) {
        // MQTT-4.7.2-1: wildcards at the first level never match `$` topics.
        if !dollar_at_root {
            self.rest.deliver(message, delivered);
        }
        let Some((level, below)) = levels.split_first() else {
            self.exact.deliver(message, delivered);
            return;
        };
        if let Some(child) = self.children.get(*level) {
            child.matches(below, false, message, delivered);
        }
        if let Some(plus) = &self.plus
            && !dollar_at_root
        {
            plus.matches(below, false, message, delivered);
        }
    }

    /// The node a filter's subscribers live at (created as needed), and
    /// whether they are `#` subscribers.
    fn node_mut(&mut self, filter: &str) -> (&mut Subscribers, bool) {
        let mut node = self;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                return (&mut node.rest, true);
            }
            node = match level {
                "+" => node.plus.get_or_insert_with(Default::default),
                _ => node.children.entry(level.into()).or_default(),
            };
            if levels.peek().is_none() {
                break;
            }
        }
        (&mut node.exact, false)
    }

    /// Removes a subscriber; prunes the nodes left empty. True if it was there.
    fn remove(&mut self, levels: &[&str], group: Option<&str>, session: SessionId) -> bool {
        let Some((level, below)) = levels.split_first() else {
            return self.exact.remove(group, session);
        };
        match *level {
            "#" => self.rest.remove(group, session),
            "+" => {
                let Some(plus) = self.plus.as_mut() else { return false };
                let removed = plus.remove(below, group, session);
                if plus.is_empty() {
                    self.plus = None;
                }
                removed
            }
            level => {
                let Some(child) = self.children.get_mut(level) else { return false };
                let removed = child.remove(below, group, session);
                if child.is_empty() {
                    self.children.remove(level);
                }
                removed
            }
        }
    }
}

/// Every subscription of every session, by topic level.
#[derive(Debug, Default)]
pub struct TopicIndex {
    root: RwLock<Node>,
}

/// A filter split into its share name (if shared) and the filter proper.
pub(super) fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}

impl TopicIndex {
    /// Subscribes `inbox`'s session to a valid `filter` (`$share/{name}/…`
    /// for a shared subscription), or replaces its options.
    pub fn subscribe(&self, inbox: &Arc<Inbox>, filter: &str, options: SubOptions) {
        let (group, inner) = split_shared(filter);
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let (subscribers, _) = root.node_mut(inner);
        subscribers.insert(group, Member { inbox: Arc::clone(inbox), filter: filter.into(), options });
    }

    /// Removes one subscription; true if it existed.
    pub fn unsubscribe(&self, session: SessionId, filter: &str) -> bool {
        let (group, inner) = split_shared(filter);
        let levels: Vec<&str> = inner.split('/').collect();
        self.root.write().unwrap_or_else(|p| p.into_inner()).remove(&levels, group, session)
    }

    /// Hands `message` to every matching subscription; returns how many
    /// deliveries were queued.
    pub fn publish(&self, message: &Arc<Message>) -> usize {
        let topic = message.topic_str();
        // Topics are at most a few dozen levels (`limits.max_topic_levels`).
        let levels: Vec<&str> = topic.split('/').collect();
        let mut delivered = 0;
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        root.matches(&levels, topic.starts_with('$'), message, &mut delivered);
        delivered
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::time::Instant;

    use super::*;
    use crate::codec::topic_matches;

    fn message(topic: &str, from: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::new(),
            properties: None,
            qos: 1,
            retain: false,
            index: Some(0),
            origin: None,
            from: from.into(),
            at: Instant::now(),
        })
    }

    fn options(qos: u8) -> SubOptions {
        SubOptions { qos, no_local: false, retain_as_published: false, id: None }
    }

    fn drain(inbox: &Inbox) -> Vec<(String, u8)> {
        std::iter::from_fn(|| inbox.pop()).map(|d| (d.message.topic_str().to_string(), d.options.qos)).collect()
    }

    #[test]
    fn matching_agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "+/+", "a/+/c", "a/b/#", "$SYS/#", "$SYS/+", "+/#", "/a", "/#",
            "a//b", "a/+/+",
        ];
        let topics = ["a", "a/b", "a/b/c", "b", "/a", "a//b", "$SYS/x", "$SYS", "x/b", "a/x/c", ""];
        let index = TopicIndex::default();
        let inboxes: Vec<Arc<Inbox>> =
            (0..filters.len()).map(|i| Arc::new(Inbox::new(i as u64, 1_000, "c".into(), Default::default()))).collect();
        for (filter, inbox) in filters.iter().zip(&inboxes) {
            index.subscribe(inbox, filter, options(1));
        }
        for topic in topics {
            index.publish(&message(topic, "p"));
            for (filter, inbox) in filters.iter().zip(&inboxes) {
                let got = drain(inbox).len();
                assert_eq!(got, usize::from(topic_matches(filter, topic)), "filter {filter:?}, topic {topic:?}");
            }
        }
    }

    #[test]
    fn overlapping_subscriptions_each_get_a_copy_at_their_qos() {
        let index = TopicIndex::default();
        let inbox = Arc::new(Inbox::new(1, 100, "c".into(), Default::default()));
        index.subscribe(&inbox, "t/#", options(0));
        index.subscribe(&inbox, "t/a", options(2));
        index.publish(&message("t/a", "p"));
        let mut got = drain(&inbox);
        got.sort();
        assert_eq!(got, vec![("t/a".into(), 0), ("t/a".into(), 2)]);
        // Subscribing again replaces the options.
        index.subscribe(&inbox, "t/a", options(1));
        index.publish(&message("t/a", "p"));
        assert_eq!(drain(&inbox).iter().filter(|(_, q)| *q == 1).count(), 1);
        assert!(index.unsubscribe(1, "t/a"));
        assert!(!index.unsubscribe(1, "t/a"));
        index.publish(&message("t/a", "p"));
        assert_eq!(drain(&inbox), vec![("t/a".into(), 0)]);
    }

    #[test]
    fn a_shared_group_is_its_name_and_filter_and_takes_turns() {
        let index = TopicIndex::default();
        let a = Arc::new(Inbox::new(1, 100, "a".into(), Default::default()));
        let b = Arc::new(Inbox::new(2, 100, "b".into(), Default::default()));
        let other_tenant = Arc::new(Inbox::new(3, 100, "x".into(), Default::default()));
        index.subscribe(&a, "$share/w/plant/#", options(1));
        index.subscribe(&b, "$share/w/plant/#", options(1));
        // Same share name, another filter: another group, never chosen for plant/….
        index.subscribe(&other_tenant, "$share/w/tenant-b/none", options(1));
        for _ in 0..10 {
            index.publish(&message("plant/x", "p"));
        }
        assert_eq!((drain(&a).len(), drain(&b).len(), drain(&other_tenant).len()), (5, 5, 0));
        assert!(index.unsubscribe(1, "$share/w/plant/#"));
        index.publish(&message("plant/x", "p"));
        assert_eq!((drain(&a).len(), drain(&b).len()), (0, 1));
    }

    #[test]
    fn no_local_skips_the_publishers_own_subscription() {
        let index = TopicIndex::default();
        let inbox = Arc::new(Inbox::new(1, 100, "me".into(), Default::default()));
        index.subscribe(&inbox, "t", SubOptions { no_local: true, ..options(1) });
        index.publish(&message("t", "me"));
        assert!(drain(&inbox).is_empty());
        index.publish(&message("t", "someone"));
        assert_eq!(drain(&inbox).len(), 1);
    }

    #[test]
    fn a_full_inbox_drops_and_counts_and_empty_nodes_are_pruned() {
        let index = TopicIndex::default();
        let inbox = Arc::new(Inbox::new(1, 2, "c".into(), Default::default()));
        index.subscribe(&inbox, "a/+/c/#", options(1));
        for _ in 0..5 {
            index.publish(&message("a/b/c/d", "p"));
        }
        assert_eq!((inbox.len(), inbox.dropped()), (2, 3));
        assert!(index.unsubscribe(1, "a/+/c/#"));
        assert!(index.root.read().unwrap().is_empty(), "every node pruned");
    }
}

//! CEL expressions (`when`, `publish.payload`), compiled once at install with
//! the pinned `cel` crate ([`CEL_VERSION`]) and checked against the
//! documented limits by walking cel's AST (macros expanded):
//!
//! - at most [`MAX_SOURCE_BYTES`] of source and [`MAX_NODES`] AST nodes;
//! - comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`)
//!   nested at most [`MAX_COMPREHENSION_DEPTH`] deep: one may iterate over a
//!   list, none inside another's body, so the work is linear in the
//!   payload's size;
//! - brackets nested at most [`MAX_DEPTH`] deep in the source (checked
//!   before cel parses it), the AST at most as deep, and runs of unary
//!   operators short: cel's parser and interpreter recurse;
//! - only the variables of `spec/rules.md` (and CEL's type names, and the
//!   variables a comprehension binds) may be referenced: a misspelt
//!   variable is refused at install instead of making `when` false forever;
//! - CEL's optional syntax (`a.?b`) is off: `cel-python` has no such thing.
//!
//! Unknown functions cannot be refused here (cel resolves functions only
//! when it runs): they make the expression error, so `when` is false and a
//! payload gives no action.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Env, Program};
use thiserror::Error;

/// The CEL implementation rules run on; part of what an auditor replays
/// against (shown by `sealmq rule list` and `/v1/rules`). Matches the exact
/// pin in `rules/Cargo.toml`.
pub const CEL_VERSION: &str = "cel 0.15.0";

/// Longest expression source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4 * 1024;
/// Most AST nodes in one expression, macros expanded.
pub const MAX_NODES: usize = 512;
/// Deepest nesting of comprehension macros.
pub const MAX_COMPREHENSION_DEPTH: usize = 1;
/// Deepest nesting of brackets in the source, and of the AST: cel's parser
/// and interpreter recurse (in a debug build, each bracket level of the
/// parser takes over 100 KiB of stack), so depth is bounded before parsing,
/// parsing runs on a stack of [`PARSE_STACK`] bytes, and evaluation on one
/// of [`crate::eval::EVAL_STACK`] when the caller's runs low.
pub const MAX_DEPTH: usize = 32;
/// The stack a parse runs on (reserved, committed only as used).
pub const PARSE_STACK: usize = 64 << 20;
/// Longest run of unary operators (`!`, `-`), which nest as deeply.
const MAX_UNARY_RUN: usize = 8;

/// The variables a rule's expressions see (`spec/rules.md`).
pub const VARIABLES: [&str; 8] = ["topic", "levels", "device", "signed", "received_ms", "payload", "text", "json"];
/// CEL's type names, which expressions may use as values (`type(x) == int`).
const TYPE_NAMES: [&str; 11] =
    ["bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint", "dyn"];

/// Standard CEL functions this build of `cel` leaves out (its `regex` and
/// `chrono` features are off): refused at install rather than failing at
/// every evaluation.
const UNSUPPORTED: [&str; 14] = [
    "matches",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "now",
];

/// Why an expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CelError {
    /// Longer than [`MAX_SOURCE_BYTES`].
    #[error("the expression is {0} bytes; at most 4096 are allowed")]
    TooLong(usize),
    /// Does not parse.
    #[error("does not compile: {0}")]
    Syntax(String),
    /// More than [`MAX_NODES`] nodes.
    #[error("the expression has more than 512 AST nodes (macros expanded)")]
    TooManyNodes,
    /// Comprehensions nested deeper than [`MAX_COMPREHENSION_DEPTH`].
    #[error("comprehension macros (all, exists, exists_one, map, filter) cannot be nested inside one another")]
    NestedComprehension,
    /// Nested deeper than [`MAX_DEPTH`] (brackets, unary operators, or AST).
    #[error("the expression nests more than 32 levels deep (brackets, unary operators or operator chains)")]
    TooDeep,
    /// A standard CEL function this implementation does not offer.
    #[error(
        "{0}() is not available to rules (no regular expressions, timestamps or durations; received_ms is the clock)"
    )]
    Unsupported(String),
    /// An identifier that is not one of the rule variables.
    #[error("unknown variable {0:?}; rules see topic, levels, device, signed, received_ms, payload, text, json")]
    UnknownVariable(String),
}

/// The environment every rule expression compiles and runs in: CEL's
/// standard library and macros, no optional syntax.
pub(crate) fn env() -> Arc<Env> {
    static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib().with_optional_support(false)));
    Arc::clone(&ENV)
}

/// A compiled expression.
#[derive(Debug)]
pub struct Expression {
    source: String,
    program: Program,
    uses_payload: bool,
}

impl Expression {
    /// Compiles `source` and checks the limits.
    pub fn compile(source: &str) -> Result<Self, CelError> {
        stacker::grow(PARSE_STACK, || Self::compile_here(source))
    }

    fn compile_here(source: &str) -> Result<Self, CelError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CelError::TooLong(source.len()));
        }
        check_nesting(source)?;
        let program = env().compile(source).map_err(|e| CelError::Syntax(one_line(&e.to_string())))?;
        let mut walk = Walk::default();
        walk.visit(program.expression(), 0)?;
        let uses_payload = ["payload", "text", "json"].iter().any(|v| walk.variables.contains(v));
        Ok(Self { source: source.to_string(), program, uses_payload })
    }

    /// The source as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled program.
    pub(crate) fn program(&self) -> &Program {
        &self.program
    }

    /// Does it read the trigger's payload (`payload`, `text` or `json`)?
    pub fn uses_payload(&self) -> bool {
        self.uses_payload
    }
}

/// Refuses sources that would nest too deeply for cel's recursive parser,
/// before it sees them. Counted on the raw text (brackets inside string
/// literals count too): a conservative bound, never a missed one.
fn check_nesting(source: &str) -> Result<(), CelError> {
    let mut depth = 0usize;
    let mut unary = 0usize;
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(CelError::TooDeep);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        match c {
            '!' | '-' => {
                unary += 1;
                if unary > MAX_UNARY_RUN {
                    return Err(CelError::TooDeep);
                }
            }
            c if c.is_whitespace() => {}
            _ => unary = 0,
        }
    }
    Ok(())
}

/// Parse errors span lines (a caret under the source); messages are one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The AST walk: node count, comprehension depth, free identifiers.
#[derive(Default)]
struct Walk {
    nodes: usize,
    /// The depth of the node being visited.
    level: usize,
    /// Names bound by enclosing comprehensions, innermost last.
    bound: Vec<String>,
    variables: Vec<&'static str>,
}

impl Walk {
    fn count(&mut self) -> Result<(), CelError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES { Err(CelError::TooManyNodes) } else { Ok(()) }
    }

    fn visit(&mut self, node: &IdedExpr, depth: usize) -> Result<(), CelError> {
        self.count()?;
        self.level += 1;
        if self.level > MAX_DEPTH {
            return Err(CelError::TooDeep);
        }
        let visited = self.visit_inner(node, depth);
        self.level -= 1;
        visited
    }

    fn visit_inner(&mut self, node: &IdedExpr, depth: usize) -> Result<(), CelError> {
        match &node.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => self.ident(name)?,
            Expr::Select(select) => self.visit(&select.operand, depth)?,
            Expr::Call(call) => {
                if UNSUPPORTED.contains(&call.func_name.as_str()) {
                    return Err(CelError::Unsupported(call.func_name.clone()));
                }
                if let Some(target) = &call.target {
                    self.visit(target, depth)?;
                }
                for arg in &call.args {
                    self.visit(arg, depth)?;
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.visit(element, depth)?;
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    self.count()?;
                    if let EntryExpr::MapEntry(e) = &entry.expr {
                        self.visit(&e.key, depth)?;
                        self.visit(&e.value, depth)?;
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    self.count()?;
                    match &entry.expr {
                        EntryExpr::StructField(f) => self.visit(&f.value, depth)?,
                        EntryExpr::MapEntry(e) => {
                            self.visit(&e.key, depth)?;
                            self.visit(&e.value, depth)?;
                        }
                    }
                }
            }
            Expr::Comprehension(c) => {
                if depth + 1 > MAX_COMPREHENSION_DEPTH {
                    return Err(CelError::NestedComprehension);
                }
                // The range and the accumulator's start are outside the loop.
                self.visit(&c.iter_range, depth)?;
                self.visit(&c.accu_init, depth)?;
                let before = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.iter().cloned());
                self.bound.push(c.accu_var.clone());
                for part in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.visit(part, depth + 1)?;
                }
                self.bound.truncate(before);
            }
        }
        Ok(())
    }

    fn ident(&mut self, name: &str) -> Result<(), CelError> {
        if self.bound.iter().any(|b| b == name) || TYPE_NAMES.contains(&name) {
            return Ok(());
        }
        match VARIABLES.iter().find(|v| **v == name) {
            Some(v) => {
                self.variables.push(v);
                Ok(())
            }
            None => Err(CelError::UnknownVariable(name.chars().take(64).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(Expression::compile("json.moisture < 30.0").is_ok());
        assert!(Expression::compile("levels.exists(l, l == 'x')").is_ok());
        assert_eq!(
            Expression::compile("levels.exists(l, levels.all(m, m == l))").unwrap_err(),
            CelError::NestedComprehension
        );
        assert!(matches!(Expression::compile(&"1 + ".repeat(1100)), Err(CelError::TooLong(_))));
        let many = format!("size([{}]) > 0", vec!["1"; 600].join(", "));
        assert_eq!(Expression::compile(&many).unwrap_err(), CelError::TooManyNodes);
        assert_eq!(Expression::compile("tpoic == 'a'").unwrap_err(), CelError::UnknownVariable("tpoic".into()));
        assert!(matches!(Expression::compile("json.moisture <"), Err(CelError::Syntax(_))));
        assert!(Expression::compile("type(json) == map").is_ok());
        assert_eq!(Expression::compile("text.matches('a+')").unwrap_err(), CelError::Unsupported("matches".into()));
        assert!(matches!(Expression::compile("timestamp(text) > 0"), Err(CelError::Unsupported(_))));
        assert!(!Expression::compile("topic == 'a'").unwrap().uses_payload());
        assert!(Expression::compile("text == 'a'").unwrap().uses_payload());
    }
}

#[cfg(test)]
mod deep {
    use super::*;

    /// Deep nesting within the source limit is refused, not a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        for source in [
            format!("{}1{}", "(".repeat(2000), ")".repeat(2000)),
            format!("{}true", "!".repeat(4000)),
            format!("{}1", "-".repeat(4000)),
            format!("{}1{}", "[".repeat(2000), "]".repeat(2000)),
            vec!["x"; 200].join(" + ").replace('x', "1"),
        ] {
            assert_eq!(Expression::compile(&source).unwrap_err(), CelError::TooDeep, "{}", &source[..10]);
        }
        // Within the limits, parsing works on this 2 MiB test thread (it
        // runs on a stack of its own).
        let deep = format!("{}1{} == 1", "(".repeat(32), ")".repeat(32));
        assert!(Expression::compile(&deep).is_ok());
        assert!(Expression::compile(&vec!["1"; 30].join(" + ")).is_ok());
        assert!(Expression::compile("text.contains('((((((((((((((((((((((((((((((((((')").is_err());
    }
}

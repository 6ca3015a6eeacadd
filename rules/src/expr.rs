//! CEL expressions (`when`, `publish.payload`), compiled once at install with
//! the pinned `cel` crate ([`CEL_VERSION`]) and checked against the
//! documented limits by walking cel's AST (macros expanded):
//!
//! - at most [`MAX_SOURCE_BYTES`] of source and [`MAX_NODES`] AST nodes;
//! - comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`)
//!   nested at most [`MAX_COMPREHENSION_DEPTH`] deep: one may iterate over a
//!   list, none inside another's body, so the work is linear in the
//!   payload's size;
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

/// The variables a rule's expressions see (`spec/rules.md`).
pub const VARIABLES: [&str; 8] = ["topic", "levels", "device", "signed", "received_ms", "payload", "text", "json"];
/// CEL's type names, which expressions may use as values (`type(x) == int`).
const TYPE_NAMES: [&str; 11] =
    ["bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint", "dyn"];

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
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CelError::TooLong(source.len()));
        }
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

/// Parse errors span lines (a caret under the source); messages are one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The AST walk: node count, comprehension depth, free identifiers.
#[derive(Default)]
struct Walk {
    nodes: usize,
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
        match &node.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => self.ident(name)?,
            Expr::Select(select) => self.visit(&select.operand, depth)?,
            Expr::Call(call) => {
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
        let many = vec!["1"; 300].join(" + ");
        assert_eq!(Expression::compile(&many).unwrap_err(), CelError::TooManyNodes);
        assert_eq!(Expression::compile("tpoic == 'a'").unwrap_err(), CelError::UnknownVariable("tpoic".into()));
        assert!(matches!(Expression::compile("json.moisture <"), Err(CelError::Syntax(_))));
        assert!(Expression::compile("type(json) == map").is_ok());
        assert!(!Expression::compile("topic == 'a'").unwrap().uses_payload());
        assert!(Expression::compile("text == 'a'").unwrap().uses_payload());
    }
}

//! Who the session is, as SQL reports it: under enforcement `current_user`, `session_user`,
//! `user`, `current_role` and `getpgusername()` name the agent, not the upstream login
//! Portcullis holds (as `session_authorization` already does). Each becomes the agent's id as
//! a `name` constant.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CastKind, DataType, Expr, Ident, ObjectName, Statement, Value, VisitMut, VisitorMut,
};

use crate::catalog::normalize;

/// SQL's names for the session's role: keywords in PostgreSQL, and their functions.
const LOGIN_NAMES: &[&str] = &[
    "current_user",
    "session_user",
    "user",
    "current_role",
    "getpgusername",
];

/// Replaces every reference to the session's role in `statement` with `agent`.
pub(crate) fn report_agent(statement: &mut Statement, agent: &str) {
    let _ = statement.visit(&mut AgentNames { agent });
}

struct AgentNames<'a> {
    agent: &'a str,
}

impl VisitorMut for AgentNames<'_> {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let names_login = match expr {
            Expr::Function(f) => {
                let name = f.name.0.last().and_then(|p| p.as_ident()).map(normalize);
                name.is_some_and(|n| LOGIN_NAMES.contains(&n.as_str()))
            }
            // Unquoted, these are keywords to PostgreSQL, whatever sqlparser makes of them.
            Expr::Identifier(i) => {
                i.quote_style.is_none() && LOGIN_NAMES.contains(&normalize(i).as_str())
            }
            _ => false,
        };
        if names_login {
            *expr = Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(Expr::Value(
                    Value::SingleQuotedString(self.agent.to_string()).into(),
                )),
                data_type: DataType::Custom(ObjectName::from(vec![Ident::new("name")]), vec![]),
                format: None,
            };
        }
        ControlFlow::Continue(())
    }
}

//! COPY guard: only `COPY … TO STDOUT` passes. `COPY FROM` (a write path not yet policy-checked)
//! and COPY to or from server files or programs are refused.

use sqlparser::ast::{CopyTarget, Statement};

use crate::Refusal;

pub(crate) fn check(statement: &Statement) -> Result<(), Refusal> {
    let Statement::Copy { to, target, .. } = statement else {
        return Ok(());
    };
    match (to, target) {
        (true, CopyTarget::Stdout) => Ok(()),
        (_, CopyTarget::File { .. }) => {
            Err(Refusal::Forbidden("COPY to or from a server file".into()))
        }
        (_, CopyTarget::Program { .. }) => Err(Refusal::Forbidden(
            "COPY to or from a server program".into(),
        )),
        _ => Err(Refusal::Unsupported("COPY FROM".into())),
    }
}

#[cfg(test)]
mod tests {
    use crate::{check, Protocol};

    #[test]
    fn copy_to_stdout_passes_and_the_rest_is_refused() {
        assert!(check("COPY t TO STDOUT", Protocol::Simple).is_ok());
        assert!(check(
            "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)",
            Protocol::Simple
        )
        .is_ok());
        for sql in [
            "COPY t FROM STDIN",
            "COPY t TO '/tmp/x'",
            "COPY t FROM '/etc/passwd'",
            "COPY t TO PROGRAM 'sh -c id'",
            "COPY t FROM PROGRAM 'id'",
        ] {
            assert!(check(sql, Protocol::Simple).is_err(), "{sql}");
        }
    }
}

//! Cedar policy loading, versioning and filter derivation.
//!
//! Not built yet (issue 3): nothing depends on this crate, and Portcullis enforces no policy
//! today beyond the statement gate in `rewriter`.

//! Which of PostgreSQL's own catalogs an agent may read, and which built-in functions it may
//! call. Catalogs: an allow-list of what clients use to introspect (psql `\d`, JDBC metadata,
//! ORMs' reflection) — never statistics (`pg_stats`, `pg_stat_*`: row counts and values; the
//! names in `pg_stat_user_indexes` are readable with its counters NULL), other sessions
//! (`pg_stat_activity`, `pg_locks`), or the source of views, rules, policies and functions
//! (`pg_policies` lists names with its expressions NULL). Functions: PostgreSQL's built-ins (loaded from `pg_catalog`) minus those that run
//! SQL text, touch files, large objects or the server, reveal source or statistics, or change
//! state outside the statement.

/// System relations an agent may read.
const READABLE: &[(&str, &str)] = &[
    // Names only (see HIDDEN_COLUMNS).
    ("pg_catalog", "pg_policies"),
    ("pg_catalog", "pg_stat_user_indexes"),
    ("pg_catalog", "pg_aggregate"),
    ("pg_catalog", "pg_am"),
    ("pg_catalog", "pg_amop"),
    ("pg_catalog", "pg_amproc"),
    ("pg_catalog", "pg_attrdef"),
    ("pg_catalog", "pg_attribute"),
    ("pg_catalog", "pg_available_extensions"),
    ("pg_catalog", "pg_cast"),
    ("pg_catalog", "pg_class"),
    ("pg_catalog", "pg_collation"),
    ("pg_catalog", "pg_constraint"),
    ("pg_catalog", "pg_conversion"),
    ("pg_catalog", "pg_cursors"),
    ("pg_catalog", "pg_database"),
    ("pg_catalog", "pg_depend"),
    ("pg_catalog", "pg_description"),
    ("pg_catalog", "pg_enum"),
    ("pg_catalog", "pg_extension"),
    ("pg_catalog", "pg_foreign_table"),
    ("pg_catalog", "pg_index"),
    ("pg_catalog", "pg_indexes"),
    ("pg_catalog", "pg_inherits"),
    ("pg_catalog", "pg_language"),
    ("pg_catalog", "pg_namespace"),
    ("pg_catalog", "pg_opclass"),
    ("pg_catalog", "pg_operator"),
    ("pg_catalog", "pg_opfamily"),
    ("pg_catalog", "pg_partitioned_table"),
    // RLS policy definitions (psql's \d lists them); Portcullis's own policy is not here.
    ("pg_catalog", "pg_policy"),
    ("pg_catalog", "pg_prepared_statements"),
    ("pg_catalog", "pg_publication"),
    ("pg_catalog", "pg_publication_namespace"),
    ("pg_catalog", "pg_publication_rel"),
    ("pg_catalog", "pg_range"),
    ("pg_catalog", "pg_roles"),
    ("pg_catalog", "pg_sequence"),
    ("pg_catalog", "pg_sequences"),
    ("pg_catalog", "pg_shdescription"),
    // Extended-statistics *definitions* (the values are in pg_statistic_ext_data: refused).
    ("pg_catalog", "pg_statistic_ext"),
    ("pg_catalog", "pg_tables"),
    ("pg_catalog", "pg_tablespace"),
    ("pg_catalog", "pg_timezone_abbrevs"),
    ("pg_catalog", "pg_timezone_names"),
    ("pg_catalog", "pg_trigger"),
    ("pg_catalog", "pg_ts_config"),
    ("pg_catalog", "pg_ts_dict"),
    ("pg_catalog", "pg_type"),
    ("pg_catalog", "pg_user"),
    ("information_schema", "applicable_roles"),
    ("information_schema", "attributes"),
    ("information_schema", "character_sets"),
    ("information_schema", "check_constraints"),
    ("information_schema", "collations"),
    ("information_schema", "column_privileges"),
    ("information_schema", "columns"),
    ("information_schema", "constraint_column_usage"),
    ("information_schema", "constraint_table_usage"),
    ("information_schema", "domains"),
    ("information_schema", "element_types"),
    ("information_schema", "enabled_roles"),
    ("information_schema", "information_schema_catalog_name"),
    ("information_schema", "key_column_usage"),
    ("information_schema", "referential_constraints"),
    ("information_schema", "role_table_grants"),
    ("information_schema", "schemata"),
    ("information_schema", "sequences"),
    ("information_schema", "table_constraints"),
    ("information_schema", "table_privileges"),
    ("information_schema", "tables"),
];

/// Whether an agent may read the system relation `schema.name`.
pub(crate) fn readable(schema: &str, name: &str) -> bool {
    READABLE.contains(&(schema, name))
}

/// Columns of readable catalogs that are statistics about protected tables' rows (the row
/// count estimate counts hidden rows too); an agent reads them as NULL.
const HIDDEN_COLUMNS: &[(&str, &str, &str)] = &[
    ("pg_catalog", "pg_class", "reltuples"),
    ("pg_catalog", "pg_class", "relpages"),
    ("pg_catalog", "pg_class", "relallvisible"),
    ("pg_catalog", "pg_sequences", "last_value"),
    // Tools read these for names (drizzle-kit): the policies' expressions and the indexes'
    // usage counters are not names.
    ("pg_catalog", "pg_policies", "qual"),
    ("pg_catalog", "pg_policies", "with_check"),
    ("pg_catalog", "pg_stat_user_indexes", "idx_scan"),
    ("pg_catalog", "pg_stat_user_indexes", "idx_tup_read"),
    ("pg_catalog", "pg_stat_user_indexes", "idx_tup_fetch"),
    ("pg_catalog", "pg_stat_user_indexes", "last_idx_scan"),
];

/// The system relation as an agent sees it: `None` to read it as is, else the SQL of a
/// subquery with the same columns, statistics columns NULL.
pub(crate) fn system_view(relation: &crate::Relation) -> Option<String> {
    let hidden = |col: &str| {
        HIDDEN_COLUMNS.contains(&(relation.schema.as_str(), relation.name.as_str(), col))
    };
    if !relation.columns.iter().any(|c| hidden(&c.name)) {
        return None;
    }
    let columns: Vec<String> = relation
        .columns
        .iter()
        .map(|c| {
            let name = crate::catalog::quote_ident(&c.name);
            if hidden(&c.name) {
                format!("NULL::{} AS {name}", c.sql_type)
            } else {
                name
            }
        })
        .collect();
    Some(format!(
        "SELECT {} FROM {}",
        columns.join(", "),
        relation.qualified()
    ))
}

/// The helper functions of `information_schema` that its views (and drivers' metadata queries,
/// such as pgjdbc's `getPrimaryKeys`) call: computed from their arguments and catalog rows a
/// reader of `information_schema` may see anyway, never from user tables.
pub(crate) const INFORMATION_SCHEMA_FUNCTIONS: &[&str] = &[
    "_pg_expandarray",
    "_pg_keysequal",
    "_pg_index_position",
    "_pg_truetypid",
    "_pg_truetypmod",
    "_pg_char_max_length",
    "_pg_char_octet_length",
    "_pg_numeric_precision",
    "_pg_numeric_precision_radix",
    "_pg_numeric_scale",
    "_pg_datetime_precision",
    "_pg_interval_type",
];

/// SQL-syntax functions sqlparser reports as calls but `pg_proc` does not list.
const SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "grouping",
    // `ARRAY(subquery)`
    "array",
];

/// Built-in functions an agent may not call, by exact name (besides
/// [`crate::functions::EXECUTES_SQL`], which run SQL text the rewriter never sees).
const DENIED_FUNCTIONS: &[&str] = &[
    // notifications (set_config is checked as SET is, in `settings`)
    "pg_notify",
    // source of views, rules and functions
    "pg_get_viewdef",
    "pg_get_ruledef",
    "pg_get_functiondef",
    "pg_get_function_sqlbody",
    // server administration
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_current_logfile",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "pg_export_snapshot",
    "setval",
    // sequences advance (a write) or tell how many rows were ever inserted
    "nextval",
    "pg_sequence_last_value",
    // sizes tell how many rows a table holds, the hidden ones included
    "pg_relation_size",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_tablespace_size",
    // statistics values
    "pg_mcv_list_items",
    // other sessions and server configuration
    "pg_lock_status",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_prepared_xact",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_show_all_file_settings",
    "pg_config",
    "pg_get_shmem_allocations",
    "pg_get_backend_memory_contexts",
    "pg_get_replication_slots",
    "pg_sleep_for",
    "pg_sleep_until",
    // where the upstream is and how it runs (stable, but not the agent's business)
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_backend_pid",
    "pg_tablespace_location",
    "pg_relation_filenode",
    "pg_relation_filepath",
    "pg_filenode_relation",
    "pg_listening_channels",
    // server settings (pg_settings is not readable either)
    "pg_show_all_settings",
    "pg_settings_get_flags",
    "pg_tablespace_databases",
    // cluster-wide transaction activity
    "txid_current",
    "pg_current_xact_id",
    "pg_current_snapshot",
    "txid_current_snapshot",
    "txid_current_if_assigned",
    "pg_current_xact_id_if_assigned",
];

/// Prefixes of denied built-in function names (families).
const DENIED_PREFIXES: &[&str] = &[
    "dblink",
    "lo_",
    "loread",
    "lowrite",
    "pg_read_",
    "pg_ls_",
    "pg_stat_",
    "pg_file_",
    "pg_create_",
    "pg_drop_",
    "pg_replication_",
    "pg_logical_",
    "pg_backup_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_",
    "pg_walfile_",
    "pg_copy_",
    "pg_advisory_",
    "pg_try_advisory_",
    "binary_upgrade_",
    "pg_control_",
];

/// Volatile built-ins an agent may call: they read nothing but the clock and the random
/// generator (or wait), or the catalog. Every other volatile built-in is outside the allow-list.
const VOLATILE_ALLOWED: &[&str] = &[
    "random",
    "setseed",
    "gen_random_uuid",
    "clock_timestamp",
    "timeofday",
    "pg_sleep",
    // changes a session setting; checked as SET is (`settings`)
    "set_config",
    // catalog lookups psql's \d makes (marked volatile, read only the partition tree)
    "pg_partition_ancestors",
    "pg_partition_tree",
];

/// The built-ins an agent may call, from `pg_catalog`'s names, each with whether all its
/// functions are volatile (and not aggregates or window functions): immutable and stable
/// functions, aggregates and window functions, and [`VOLATILE_ALLOWED`]. The deny rules
/// ([`function_refusal`]) still apply on top.
pub fn allowed_functions(names: Vec<(String, bool)>) -> Vec<String> {
    names
        .into_iter()
        .filter(|(name, volatile)| !volatile || VOLATILE_ALLOWED.contains(&name.as_str()))
        .map(|(name, _)| name)
        .collect()
}

/// Why an agent may not call the built-in `name`, if it may not. `builtin` says whether
/// `pg_catalog` has a function of that name.
pub(crate) fn function_refusal(name: &str, builtin: bool) -> Option<String> {
    if SYNTAX_FUNCTIONS.contains(&name) {
        return None;
    }
    if !builtin {
        return Some(format!(
            "function {name}() is not on Portcullis's allow-list of built-ins (user-defined \
             functions run with Portcullis's database rights, and volatile built-ins read \
             server state beyond the rows policy allows)"
        ));
    }
    if crate::functions::EXECUTES_SQL.contains(&name)
        || DENIED_FUNCTIONS.contains(&name)
        || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Some(format!(
            "function {name}() is not allowed through Portcullis"
        ));
    }
    None
}

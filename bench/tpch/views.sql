-- The benchmark's policy (bench/tpch/policy) written by hand as security_barrier views in
-- schema sb: the same row filter and the same mask expressions as Portcullis's fence uses
-- (rewriter/src/fence.rs: redact is '***'::<column type>, null is NULL::<column type>).
-- The nations are the agent's `nations` in policy/entities.json. bench/tpch.sh queries these
-- views with `SET search_path = sb, public` as a role that may read only them.
CREATE SCHEMA sb;

CREATE VIEW sb.customer WITH (security_barrier) AS
  SELECT c_custkey, c_name, '***'::character varying(40) AS c_address, c_nationkey, c_phone,
         c_acctbal, c_mktsegment, NULL::character varying(117) AS c_comment
  FROM public.customer
  WHERE c_nationkey IN (2, 3, 6, 7, 8, 9, 12, 13, 18, 19, 20, 21, 24);

CREATE VIEW sb.supplier WITH (security_barrier) AS
  SELECT s_suppkey, s_name, '***'::character varying(40) AS s_address, s_nationkey, s_phone,
         s_acctbal, s_comment
  FROM public.supplier
  WHERE s_nationkey IN (2, 3, 6, 7, 8, 9, 12, 13, 18, 19, 20, 21, 24);

CREATE VIEW sb.nation WITH (security_barrier) AS SELECT * FROM public.nation;
CREATE VIEW sb.region WITH (security_barrier) AS SELECT * FROM public.region;
CREATE VIEW sb.part WITH (security_barrier) AS SELECT * FROM public.part;
CREATE VIEW sb.partsupp WITH (security_barrier) AS SELECT * FROM public.partsupp;
CREATE VIEW sb.orders WITH (security_barrier) AS SELECT * FROM public.orders;
CREATE VIEW sb.lineitem WITH (security_barrier) AS SELECT * FROM public.lineitem;

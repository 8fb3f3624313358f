// pgjdbc through Portcullis: DatabaseMetaData, parameters, binary transfer, savepoints, errors,
// refusals, COPY TO STDOUT. Run: java -cp /usr/share/java/postgresql.jar JdbcClient.java URL USER PASS
// With PORTCULLIS_ENFORCED=1 the agent is support-bot under the finance example: the same
// calls, and only tenant 1's rows come back (SSNs redacted).
import java.io.StringWriter;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcClient {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("prepareThreshold", "-1"); // server-prepare at once, binary transfer
        boolean enforced = "1".equals(System.getenv("PORTCULLIS_ENFORCED"));
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData md = c.getMetaData();
            Set<String> tables = new HashSet<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check(tables.containsAll(List.of("customers", "tickets", "transfers")), "getTables: " + tables);
            List<String> cols = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "customers", "%")) {
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME"));
            }
            check(cols.get(0).equals("id") && cols.contains("ssn"), "getColumns: " + cols);
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "customers")) {
                check(rs.next() && rs.getString("COLUMN_NAME").equals("id"), "getPrimaryKeys");
            }

            try (PreparedStatement ps = c.prepareStatement("select name, created_at, tenant_id, ssn from customers where id = ?")) {
                for (int i = 1; i <= 6; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (enforced && 1 + (i % 3) != 1) {
                            check(!rs.next(), "another tenant's customer " + i + " is invisible");
                            continue;
                        }
                        check(rs.next() && rs.getString(1).equals("Customer " + i), "parameterized " + i);
                        check(rs.getTimestamp(2) != null && rs.getInt(3) == 1 + (i % 3), "binary columns " + i);
                        String ssn = rs.getString(4);
                        check(!enforced || "***".equals(ssn), "ssn redacted: " + ssn);
                    }
                }
            }

            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'jdbc-kept', 'b', 'open')");
                Savepoint sp = c.setSavepoint("sp");
                st.executeUpdate("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'jdbc-undone', 'b', 'open')");
                c.rollback(sp);
                c.commit();
            }
            c.setAutoCommit(true);
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("select string_agg(subject, ',') from tickets where subject like 'jdbc-%'")) {
                check(rs.next() && "jdbc-kept".equals(rs.getString(1)), "savepoint");
            }

            try (Statement st = c.createStatement()) {
                try {
                    st.executeQuery("select 1/0");
                    check(false, "division by zero must fail");
                } catch (SQLException e) {
                    check("22012".equals(e.getSQLState()), "22012: " + e.getSQLState());
                }
                try {
                    st.execute("set role postgres");
                    check(false, "SET ROLE must be refused");
                } catch (SQLException e) {
                    check("42501".equals(e.getSQLState()), "42501: " + e.getSQLState());
                }
                try (ResultSet rs = st.executeQuery("select 42")) {
                    check(rs.next() && rs.getInt(1) == 42, "good query after errors");
                }
            }

            CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
            StringWriter out = new StringWriter();
            copy.copyOut("COPY (select id from customers order by id) TO STDOUT", out);
            check(out.toString().trim().split("\n").length == (enforced ? 10 : 30), "copy out");
        }
        System.out.println("OK jdbc");
    }
}

// The reference MCP PostgreSQL server (@modelcontextprotocol/server-postgres) pointed at
// Portcullis, driven over stdio by the MCP SDK's client as an agent host would: list the table
// resources, read a table's schema, call the `query` tool. Under the finance example,
// support-bot sees tenant 1 only with SSNs redacted, and the server's known escape from its
// read-only transaction (`COMMIT; <write>`) still cannot write anything the policy forbids.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const serverPath = require.resolve("@modelcontextprotocol/server-postgres/dist/index.js");

async function connect(url) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [serverPath, url],
    stderr: "inherit",
  });
  const client = new Client({ name: "portcullis-test", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

// The tool's result: its rows, or the error (this server reports a failed query as a
// JSON-RPC error; other servers as a result with isError).
async function query(client, sql) {
  let res;
  try {
    res = await client.callTool({ name: "query", arguments: { sql } });
  } catch (e) {
    return { error: e.message };
  }
  if (res.isError) {
    return { error: res.content.map((c) => c.text).join("\n") };
  }
  return { rows: JSON.parse(res.content[0].text) };
}

const bot = await connect(process.env.PORTCULLIS_URL);
const auditor = await connect(process.env.PORTCULLIS_AUDITOR_URL);

// Resources: the tables of schema public, and each one's columns (information_schema).
const { resources } = await bot.listResources();
const names = resources.map((r) => r.name).sort();
for (const t of ["customers", "tickets", "transfers"]) {
  assert.ok(names.includes(`"${t}" database schema`), JSON.stringify(names));
}
const uri = resources.find((r) => r.name === '"customers" database schema').uri;
assert.ok(!uri.includes("support-secret"), "the resource URI carries no secret");
const schema = JSON.parse((await bot.readResource({ uri })).contents[0].text);
assert.deepEqual(
  schema.map((c) => c.column_name).sort(),
  ["created_at", "email", "id", "name", "ssn", "tenant_id", "tier"],
  JSON.stringify(schema),
);

// The query tool: rows and columns under each agent's policy.
const { tools } = await bot.listTools();
assert.deepEqual(tools.map((t) => t.name), ["query"]);
let r = await query(bot, "select count(*)::int as n, count(distinct tenant_id)::int as t from customers");
assert.deepEqual(r.rows, [{ n: 10, t: 1 }], JSON.stringify(r));
r = await query(bot, "select distinct ssn from customers");
assert.deepEqual(r.rows, [{ ssn: "***" }], JSON.stringify(r));
r = await query(auditor, "select count(*)::int as n from customers");
assert.deepEqual(r.rows, [{ n: 30 }], JSON.stringify(r));
r = await query(bot, "select * from pg_catalog.pg_authid");
assert.ok(r.error && /not readable/.test(r.error), JSON.stringify(r));

// The server's read-only transaction is not a boundary (one Query message may COMMIT it and
// go on); Portcullis is: statements after the COMMIT are still checked.
r = await query(bot, "COMMIT; DROP TABLE customers");
assert.ok(r.error && /DROP TABLE is not allowed/.test(r.error), JSON.stringify(r));
r = await query(
  bot,
  "COMMIT; insert into tickets (tenant_id, customer_id, subject, body, status, priority) " +
    "values (2, 2, 'via mcp', 'b', 'open', 2)",
);
assert.ok(r.error && /support-writes-own-tickets/.test(r.error), JSON.stringify(r));
r = await query(auditor, "select count(*)::int as n from tickets where subject = 'via mcp'");
assert.deepEqual(r.rows, [{ n: 0 }], JSON.stringify(r));
// (The server cannot return a multi-statement result, so only the effects are checked: a write
// the policy allows goes through after the COMMIT, one on another tenant's rows touches none.)
await query(bot, "COMMIT; update tickets set subject = 'via mcp ok' where id = (select min(id) from tickets)");
r = await query(auditor, "select count(*)::int as n, min(tenant_id) as t from tickets where subject = 'via mcp ok'");
assert.deepEqual(r.rows, [{ n: 1, t: 1 }], JSON.stringify(r));
await query(bot, "COMMIT; update customers set name = 'x' where tenant_id = 2");
r = await query(auditor, "select count(*)::int as n from customers where name = 'x'");
assert.deepEqual(r.rows, [{ n: 0 }], "another tenant's rows are untouched");

await bot.close();
await auditor.close();
console.log("OK mcp server-postgres enforced");

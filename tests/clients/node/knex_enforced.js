// knex (query builder, pg driver) through Portcullis enforcing the finance example, as
// support-bot: introspection (hasTable, hasColumn, columnInfo), withSchema, reads, joins,
// aggregates, inserts with RETURNING, upserts (onConflict().merge()), updates, deletes,
// nested transactions (savepoints), and the writes the policy forbids.
const assert = require("node:assert/strict");
const knex = require("knex");

const HIDDEN = Number(process.env.HIDDEN_TICKET);

function connect(url) {
  return knex({ client: "pg", connection: url, pool: { min: 0, max: 2 } });
}

async function refused(promise, pattern) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.code, "42501", e.message);
    assert.match(e.message, pattern);
    return;
  }
  assert.fail("expected a refusal");
}

(async () => {
  const db = connect(process.env.PORTCULLIS_URL);
  const auditor = connect(process.env.PORTCULLIS_AUDITOR_URL);

  // Introspection, as migrations and admin tools run it.
  assert.equal(await db.schema.hasTable("customers"), true);
  assert.equal(await db.schema.withSchema("public").hasTable("tickets"), true);
  assert.equal(await db.schema.hasColumn("customers", "ssn"), true);
  const info = await db("transfers").columnInfo();
  assert.equal(info.currency.type, "character");
  assert.equal(info.currency.maxLength, 3);

  // Reads.
  const [{ n }] = await db("customers").count({ n: "*" });
  assert.equal(Number(n), 10);
  const [{ n: all }] = await auditor("customers").count({ n: "*" });
  assert.equal(Number(all), 30);
  const rows = await db.withSchema("public").select("tenant_id", "ssn").from("customers");
  assert.ok(rows.length === 10 && rows.every((r) => r.tenant_id === 1 && r.ssn === "***"));
  const joined = await db("tickets as t")
    .join("customers as c", "c.id", "t.customer_id")
    .where("c.tier", "standard")
    .select("t.id", "c.tenant_id", "c.ssn")
    .orderBy("t.id")
    .limit(5);
  assert.ok(joined.length === 5 && joined.every((r) => r.tenant_id === 1 && r.ssn === "***"));
  const byStatus = await db("tickets").select("status").count({ n: "id" }).groupBy("status");
  const [{ n: tickets }] = await db("tickets").count({ n: "*" });
  assert.equal(byStatus.reduce((s, r) => s + Number(r.n), 0), Number(tickets));
  const [{ n: allTickets }] = await auditor("tickets").count({ n: "*" });
  assert.ok(Number(tickets) < Number(allTickets));
  assert.deepEqual(await db("tickets").where("tenant_id", 2).select("id"), []);
  const sub = await db("customers")
    .whereIn("id", db("tickets").select("customer_id").where("tenant_id", 3))
    .count({ n: "*" });
  assert.equal(Number(sub[0].n), 0);
  const raw = await db.raw("select count(*)::int as n from customers where tenant_id <> ?", [1]);
  assert.equal(raw.rows[0].n, 0);

  // Writes the policy allows.
  const [created] = await db("tickets")
    .insert({ tenant_id: 1, customer_id: 3, subject: "from knex", body: "b", status: "open" })
    .returning(["id", "priority"]);
  assert.equal(created.priority, 3, "the default, checked");
  const [merged] = await db("tickets")
    .insert({ id: created.id, tenant_id: 1, customer_id: 3, subject: "merged", body: "b", status: "open", priority: 2 })
    .onConflict("id")
    .merge(["subject"])
    .returning("subject");
  assert.equal(merged.subject, "merged");
  await db.transaction(async (trx) => {
    assert.equal(await trx("tickets").where("id", created.id).update({ status: "closed" }), 1);
    await trx.transaction(async (inner) => {
      await inner("tickets").where("id", created.id).update({ body: "inner" });
    });
  });
  const [after] = await db("tickets").where("id", created.id).select("status", "body");
  assert.deepEqual(after, { status: "closed", body: "inner" });

  // Writes it does not allow: invisible rows are untouched, forbidden rows refused.
  assert.equal(await db("tickets").where("id", HIDDEN).update({ status: "closed" }), 0);
  assert.equal(await db("tickets").where("id", HIDDEN).del(), 0);
  await refused(
    db("tickets").insert({ tenant_id: 2, customer_id: 2, subject: "x", body: "b", status: "open" }),
    /support-writes-own-tickets/,
  );
  await refused(
    db("tickets")
      .insert({ id: HIDDEN, tenant_id: 1, customer_id: 3, subject: "taken", body: "b", status: "open" })
      .onConflict("id")
      .merge(["subject"]),
    /conflicts with/,
  );
  const [hidden] = await auditor("tickets").where("id", HIDDEN).select("subject");
  assert.notEqual(hidden.subject, "taken");
  await refused(db("customers").where("id", 3).update({ ssn: "x" }), /may not read in clear/);
  await refused(
    db.transaction(async (trx) => {
      await trx("tickets").where("id", created.id).update({ subject: "rolled back" });
      await trx("tickets").where("id", created.id).update({ priority: 1 });
    }),
    /no-agent-priority-one/,
  );
  const [kept] = await db("tickets").where("id", created.id).select("subject");
  assert.equal(kept.subject, "merged", "the refused transaction changed nothing");
  assert.equal(await db("tickets").where("id", created.id).del(), 1);

  await db.destroy();
  await auditor.destroy();
  console.log("OK knex enforced");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});

// Drizzle ORM (node-postgres driver, extended protocol with parameters) through Portcullis
// enforcing the finance example, as support-bot: the select builder, joins, aggregates,
// relational queries (`db.query…findMany({ with })`, which Drizzle builds from LATERAL
// subqueries and json_build_array), inserts with RETURNING, onConflictDoUpdate, updates,
// deletes, transactions, and the writes the policy forbids.
import assert from "node:assert/strict";
import pg from "pg";
import { drizzle } from "drizzle-orm/node-postgres";
import { relations, eq, ne, and, count, sql, inArray } from "drizzle-orm";
import {
  pgTable,
  integer,
  serial,
  smallint,
  text,
  timestamp,
  numeric,
  char,
  boolean,
  jsonb,
  bigserial,
} from "drizzle-orm/pg-core";

const customers = pgTable("customers", {
  id: integer("id").primaryKey(),
  tenantId: integer("tenant_id").notNull(),
  name: text("name").notNull(),
  email: text("email").notNull(),
  ssn: text("ssn"),
  tier: text("tier").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull(),
});
const tickets = pgTable("tickets", {
  id: serial("id").primaryKey(),
  tenantId: integer("tenant_id").notNull(),
  customerId: integer("customer_id").notNull(),
  subject: text("subject").notNull(),
  body: text("body").notNull(),
  status: text("status").notNull(),
  priority: smallint("priority").notNull().default(3),
  openedAt: timestamp("opened_at", { withTimezone: true }).notNull().defaultNow(),
});
const transfers = pgTable("transfers", {
  id: bigserial("id", { mode: "number" }).primaryKey(),
  tenantId: integer("tenant_id").notNull(),
  customerId: integer("customer_id").notNull(),
  amount: numeric("amount", { precision: 12, scale: 2 }).notNull(),
  currency: char("currency", { length: 3 }).notNull(),
  iban: text("iban").notNull(),
  approved: boolean("approved").notNull(),
  metadata: jsonb("metadata"),
});
const customersRelations = relations(customers, ({ many }) => ({ tickets: many(tickets) }));
const ticketsRelations = relations(tickets, ({ one }) => ({
  customer: one(customers, { fields: [tickets.customerId], references: [customers.id] }),
}));
const schema = { customers, tickets, transfers, customersRelations, ticketsRelations };

const HIDDEN = Number(process.env.HIDDEN_TICKET);
const botPool = new pg.Pool({ connectionString: process.env.PORTCULLIS_URL, max: 2 });
const auditorPool = new pg.Pool({ connectionString: process.env.PORTCULLIS_AUDITOR_URL, max: 1 });
const db = drizzle(botPool, { schema });
const auditor = drizzle(auditorPool, { schema });

async function refused(promise, pattern) {
  try {
    await promise;
  } catch (e) {
    const cause = e.cause ?? e;
    assert.equal(cause.code, "42501", cause.message);
    assert.match(cause.message, pattern);
    return;
  }
  assert.fail("expected a refusal");
}

// The select builder.
const [{ n }] = await db.select({ n: count() }).from(customers);
assert.equal(n, 10);
const [{ n: all }] = await auditor.select({ n: count() }).from(customers);
assert.equal(all, 30);
const rows = await db.select({ t: customers.tenantId, ssn: customers.ssn }).from(customers);
assert.ok(rows.every((r) => r.t === 1 && r.ssn === "***"), JSON.stringify(rows));
const joined = await db
  .select({ id: tickets.id, tenant: customers.tenantId, ssn: customers.ssn })
  .from(tickets)
  .innerJoin(customers, eq(customers.id, tickets.customerId))
  .where(ne(customers.tenantId, 2))
  .orderBy(tickets.id)
  .limit(5);
assert.ok(joined.length === 5 && joined.every((r) => r.tenant === 1 && r.ssn === "***"));
const ibans = await db.select({ iban: transfers.iban, c: transfers.currency }).from(transfers);
assert.ok(ibans.length > 0 && ibans.every((r) => r.iban.startsWith("*") && r.c.length === 3));
const others = await db
  .select({ n: count() })
  .from(customers)
  .where(inArray(customers.id, db.select({ id: tickets.customerId }).from(tickets).where(eq(tickets.tenantId, 3))));
assert.equal(others[0].n, 0);

// Relational queries: LATERAL subqueries with JSON aggregation.
const withTickets = await db.query.customers.findMany({
  columns: { id: true, tenantId: true, ssn: true },
  with: { tickets: { columns: { id: true, tenantId: true }, limit: 2 } },
  orderBy: (c, { asc }) => [asc(c.id)],
});
assert.equal(withTickets.length, 10);
for (const c of withTickets) {
  assert.ok(c.tenantId === 1 && c.ssn === "***", JSON.stringify(c));
  assert.ok(c.tickets.length === 2 && c.tickets.every((t) => t.tenantId === 1), JSON.stringify(c));
}
const one = await db.query.tickets.findFirst({
  where: (t, { eq }) => eq(t.id, HIDDEN),
  with: { customer: true },
});
assert.equal(one, undefined, "another tenant's ticket is not found");

// Writes the policy allows.
const [created] = await db
  .insert(tickets)
  .values({ tenantId: 1, customerId: 3, subject: "from drizzle", body: "b", status: "open" })
  .returning({ id: tickets.id, priority: tickets.priority });
assert.equal(created.priority, 3);
const [merged] = await db
  .insert(tickets)
  .values({ id: created.id, tenantId: 1, customerId: 3, subject: "merged", body: "b", status: "open", priority: 2 })
  .onConflictDoUpdate({ target: tickets.id, set: { subject: sql`excluded.subject` } })
  .returning({ subject: tickets.subject });
assert.equal(merged.subject, "merged");
await db.transaction(async (tx) => {
  await tx.update(tickets).set({ status: "closed" }).where(eq(tickets.id, created.id));
  await tx.transaction(async (inner) => {
    await inner.update(tickets).set({ body: "inner" }).where(eq(tickets.id, created.id));
  });
});
const [after] = await db
  .select({ status: tickets.status, body: tickets.body })
  .from(tickets)
  .where(eq(tickets.id, created.id));
assert.deepEqual(after, { status: "closed", body: "inner" });

// Writes it does not allow.
const none = await db.update(tickets).set({ status: "closed" }).where(eq(tickets.id, HIDDEN)).returning();
assert.deepEqual(none, []);
await refused(
  db.insert(tickets).values({ tenantId: 2, customerId: 2, subject: "x", body: "b", status: "open" }),
  /support-writes-own-tickets/,
);
await refused(
  db
    .insert(tickets)
    .values({ id: HIDDEN, tenantId: 1, customerId: 3, subject: "taken", body: "b", status: "open" })
    .onConflictDoUpdate({ target: tickets.id, set: { subject: "taken" } }),
  /conflicts with/,
);
const [hidden] = await auditor.select({ s: tickets.subject }).from(tickets).where(eq(tickets.id, HIDDEN));
assert.notEqual(hidden.s, "taken");
await refused(
  db.update(tickets).set({ priority: 1 }).where(and(eq(tickets.id, created.id), eq(tickets.tenantId, 1))),
  /no-agent-priority-one/,
);
const deleted = await db.delete(tickets).where(eq(tickets.id, created.id)).returning({ id: tickets.id });
assert.deepEqual(deleted, [{ id: created.id }]);

await botPool.end();
await auditorPool.end();
console.log("OK drizzle enforced");

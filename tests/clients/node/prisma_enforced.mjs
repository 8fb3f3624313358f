// Prisma Client 7 (query compiler, @prisma/adapter-pg) through Portcullis enforcing the
// finance example, as support-bot: counts, relation loads (include), filters, groupBy and
// aggregates, create with a defaulted checked column, upsert, update, delete, interactive
// transactions and raw queries; and what the policy forbids, with the errors Prisma reports.
import assert from "node:assert/strict";
import { PrismaClient } from "@prisma/client";
import { PrismaPg } from "@prisma/adapter-pg";

const HIDDEN = Number(process.env.HIDDEN_TICKET);
const client = (url) => new PrismaClient({ adapter: new PrismaPg({ connectionString: url }) });
const show = (v) => JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString() : x));
const db = client(process.env.PORTCULLIS_URL);
const auditor = client(process.env.PORTCULLIS_AUDITOR_URL);

async function refused(promise, pattern) {
  try {
    await promise;
  } catch (e) {
    assert.match(e.message, /42501/, e.message);
    assert.match(e.message, pattern);
    return;
  }
  assert.fail("expected a refusal");
}

// Reads.
assert.equal(await db.customers.count(), 10);
assert.equal(await auditor.customers.count(), 30);
assert.equal(await db.customers.count({ where: { tenant_id: 2 } }), 0);
const loaded = await db.customers.findMany({
  include: { tickets: { take: 2, orderBy: { id: "asc" } }, transfers: { take: 1 } },
  orderBy: { id: "asc" },
});
assert.equal(loaded.length, 10);
for (const c of loaded) {
  assert.ok(c.tenant_id === 1 && c.ssn === "***", show(c));
  assert.ok(c.tickets.every((t) => t.tenant_id === 1));
  assert.ok(c.transfers.every((t) => t.iban.startsWith("*")));
}
const statuses = await db.tickets.groupBy({ by: ["status"], _count: { _all: true } });
assert.equal(
  statuses.reduce((s, g) => s + g._count._all, 0),
  await db.tickets.count(),
);
const sums = await db.transfers.aggregate({ _sum: { amount: true }, _count: true });
assert.ok(sums._count > 0);
assert.equal(await db.tickets.findUnique({ where: { id: HIDDEN } }), null);
const raw = await db.$queryRaw`select count(*)::int as n from customers where tenant_id <> ${1}`;
assert.deepEqual(raw, [{ n: 0 }]);

// Writes the policy allows.
const created = await db.tickets.create({
  data: { tenant_id: 1, customer_id: 3, subject: "from prisma", body: "b", status: "open" },
});
assert.equal(created.priority, 3, "the default, checked");
const upserted = await db.tickets.upsert({
  where: { id: created.id },
  create: { tenant_id: 1, customer_id: 3, subject: "new", body: "b", status: "open" },
  update: { subject: "upserted" },
});
assert.equal(upserted.subject, "upserted");
await db.$transaction(async (tx) => {
  await tx.tickets.update({ where: { id: created.id }, data: { status: "closed" } });
  await tx.tickets.updateMany({ where: { id: created.id }, data: { body: "tx" } });
});
const after = await db.tickets.findUnique({ where: { id: created.id } });
assert.ok(after.status === "closed" && after.body === "tx");
const bulk = `bulk ${created.id}`;
const many = await db.tickets.createMany({
  data: [
    { tenant_id: 1, customer_id: 3, subject: bulk, body: "b", status: "open", priority: 2 },
    { tenant_id: 1, customer_id: 6, subject: bulk, body: "b", status: "open", priority: 2 },
  ],
});
assert.equal(many.count, 2);

// Writes it does not allow. Another tenant's ticket is "not found" (P2025), as with RLS.
await assert.rejects(
  db.tickets.update({ where: { id: HIDDEN }, data: { subject: "x" } }),
  (e) => e.code === "P2025",
);
assert.equal((await db.tickets.updateMany({ where: { id: HIDDEN }, data: { subject: "x" } })).count, 0);
assert.equal((await db.tickets.deleteMany({ where: { id: HIDDEN } })).count, 0);
await refused(
  db.tickets.create({ data: { tenant_id: 2, customer_id: 2, subject: "x", body: "b", status: "open" } }),
  /support-writes-own-tickets/,
);
await refused(
  db.tickets.update({ where: { id: created.id }, data: { priority: 1 } }),
  /no-agent-priority-one/,
);
await refused(
  db.$transaction(async (tx) => {
    await tx.tickets.update({ where: { id: created.id }, data: { subject: "rolled back" } });
    await tx.tickets.create({ data: { tenant_id: 2, customer_id: 2, subject: "x", body: "b", status: "open" } });
  }),
  /support-writes-own-tickets/,
);
assert.equal((await db.tickets.findUnique({ where: { id: created.id } })).subject, "upserted");
await refused(db.customers.update({ where: { id: 3 }, data: { ssn: "1" } }), /may not read in clear/);
const hidden = await auditor.tickets.findUnique({ where: { id: HIDDEN } });
assert.notEqual(hidden.subject, "x");
// Only closed tickets may be deleted: the closed one goes, the two open ones stay.
assert.equal((await db.tickets.deleteMany({ where: { subject: { in: [bulk, "upserted"] } } })).count, 1);
assert.equal(await db.tickets.count({ where: { subject: bulk } }), 2);

await db.$disconnect();
await auditor.$disconnect();
console.log("OK prisma enforced");

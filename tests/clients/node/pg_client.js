// node-postgres through Portcullis: parameters, binary results, savepoints, errors, refusals,
// COPY TO STDOUT. With PORTCULLIS_ENFORCED=1 the agent is support-bot under the finance
// example: the same calls, and only tenant 1's rows come back.
const { Client } = require('pg');
const { to: copyTo } = require('pg-copy-streams');
const assert = require('assert');

async function main() {
  const client = new Client({ connectionString: process.env.PORTCULLIS_URL });
  await client.connect();

  const enforced = process.env.PORTCULLIS_ENFORCED === '1';
  // Tenant 1's customers (every third); all 30 without a policy.
  const visible = enforced ? [3, 6, 9, 12, 15, 18, 21, 24, 27, 30] : [...Array(30).keys()].map((i) => i + 1);
  let r = await client.query('select name from customers where id = $1', [7]);
  assert.deepStrictEqual(r.rows.map((x) => x.name), enforced ? [] : ['Customer 7']);

  // Binary-format results.
  r = await client.query('select min(id) as id from transfers where tenant_id = 1 and not approved');
  const tid = r.rows[0].id;
  r = await client.query({ text: 'select id, approved, iban from transfers where id = $1', values: [tid], binary: true });
  assert.strictEqual(r.rows[0].approved, false);
  assert.strictEqual(r.rows[0].iban.startsWith('*'), enforced);

  // Named prepared statement, reused.
  for (const i of visible.slice(0, 5)) {
    r = await client.query({ name: 'by-id', text: 'select id from customers where id = $1', values: [i] });
    assert.strictEqual(r.rows[0].id, i);
  }

  await client.query('begin');
  await client.query("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'node-kept', 'b', 'open')");
  await client.query('savepoint sp');
  await client.query("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'node-undone', 'b', 'open')");
  await client.query('rollback to savepoint sp');
  await client.query('commit');
  r = await client.query("select subject from tickets where subject like 'node-%' order by 1");
  assert.deepStrictEqual(r.rows.map((x) => x.subject), ['node-kept']);

  await assert.rejects(client.query('select 1/0'), (e) => e.code === '22012');
  await assert.rejects(client.query('set role postgres'), (e) => e.code === '42501');
  await assert.rejects(client.query('select $1::text from', ['x']), (e) => e.code === '42601');
  r = await client.query('select $1::int + 1 as n', [41]);
  assert.strictEqual(r.rows[0].n, 42);

  const chunks = [];
  await new Promise((resolve, reject) => {
    const stream = client.query(copyTo('COPY (select id from customers order by id) TO STDOUT'));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  assert.deepStrictEqual(Buffer.concat(chunks).toString().trim().split('\n').map(Number), visible);

  await client.end();
  console.log('OK node-pg');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

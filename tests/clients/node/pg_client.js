// node-postgres through Portcullis: parameters, binary results, savepoints, errors, refusals,
// COPY TO STDOUT.
const { Client } = require('pg');
const { to: copyTo } = require('pg-copy-streams');
const assert = require('assert');

async function main() {
  const client = new Client({ connectionString: process.env.PORTCULLIS_URL });
  await client.connect();

  let r = await client.query('select name from customers where id = $1', [7]);
  assert.strictEqual(r.rows[0].name, 'Customer 7');

  // Binary-format results.
  r = await client.query({ text: 'select id, approved from transfers where id = $1', values: [4], binary: true });
  assert.strictEqual(r.rows[0].approved, false);

  // Named prepared statement, reused.
  for (let i = 1; i <= 5; i++) {
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
  assert.strictEqual(Buffer.concat(chunks).toString().trim().split('\n').length, 30);

  await client.end();
  console.log('OK node-pg');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

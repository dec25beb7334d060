// Drives the Salesforce simulator with the real jsforce client: sObject Collections upsert and delete, Bulk 2.0 ingest and query, query.
//
// Usage: LEARNSYNC_NODE_PATH=<node_modules dir holding jsforce> node jsforce_check.mjs BASE_URL CLIENT_ID CLIENT_SECRET
// Exits 0 when every check passed, non-zero (with a message) otherwise.
import { createRequire } from 'node:module';
import path from 'node:path';
import assert from 'node:assert/strict';

// ES modules ignore NODE_PATH: resolve jsforce from the given node_modules directory explicitly.
const nodePath = process.env.LEARNSYNC_NODE_PATH;
if (!nodePath) {
  console.error('LEARNSYNC_NODE_PATH must name a node_modules directory containing jsforce');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nodePath), 'noop.js'));
const jsforce = require('jsforce');

const [baseUrl, clientId, clientSecret] = process.argv.slice(2);

const tokenResponse = await fetch(`${baseUrl}/services/oauth2/token`, {
  method: 'POST',
  body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }),
});
assert.equal(tokenResponse.status, 200);
const token = await tokenResponse.json();

const conn = new jsforce.Connection({ instanceUrl: token.instance_url, accessToken: token.access_token, version: '62.0' });

// sObject Collections upsert (jsforce uses PATCH composite/sobjects/{type}/{extId} for arrays).
const users = Array.from({ length: 10 }, (_, i) => ({
  attributes: { type: 'Docebo_User__c' },
  Docebo_User_Id__c: String(200 + i),
  Name: `JS User ${i}`,
  Active__c: true,
}));
const upserted = await conn.sobject('Docebo_User__c').upsert(users, 'Docebo_User_Id__c');
assert.equal(upserted.length, 10);
for (const result of upserted) {
  assert.equal(result.success, true, JSON.stringify(result));
}

// A per-record failure comes back in order.
const mixed = await conn.sobject('Docebo_User__c').upsert(
  [{ Docebo_User_Id__c: '300', Name: 'x'.repeat(81) }, { Docebo_User_Id__c: '301', Name: 'Fine' }],
  'Docebo_User_Id__c',
);
assert.equal(mixed[0].success, false);
assert.equal(mixed[0].errors[0].statusCode, 'STRING_TOO_LONG');
assert.equal(mixed[1].success, true);

// Bulk API 2.0 upsert.
const rows = ['Docebo_Course_Id__c,Name,Type__c,Credits__c'];
for (let i = 0; i < 20; i++) rows.push(`${700 + i},Course ${i},Webinar,1.5`);
rows.push('799,Bad,Online,1');
const results = await conn.bulk2.loadAndWaitForResults({
  object: 'Docebo_Course__c',
  operation: 'upsert',
  externalIdFieldName: 'Docebo_Course_Id__c',
  input: rows.join('\n') + '\n',
  pollInterval: 50,
  pollTimeout: 30000,
});
assert.equal(results.successfulResults.length, 20);
assert.equal(results.failedResults.length, 1);
assert.match(results.failedResults[0].sf__Error, /^INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:/);

// Query back, then delete two users through collections.
const queried = await conn.query("SELECT Id, Name FROM Docebo_User__c WHERE Docebo_User_Id__c IN ('200','201')");
assert.equal(queried.totalSize, 2);
const deleted = await conn.sobject('Docebo_User__c').destroy(queried.records.map((r) => r.Id));
assert.equal(deleted.length, 2);
assert.ok(deleted.every((r) => r.success));

// Bulk API 2.0 query of the courses loaded above (jsforce follows Sforce-Locator to the last set).
const courseStream = await conn.bulk2.query(
  'SELECT Id, Docebo_Course_Id__c, Type__c, Credits__c FROM Docebo_Course__c',
  { pollInterval: 50, pollTimeout: 30000 },
);
const courses = [];
for await (const record of courseStream) courses.push(record);
assert.equal(courses.length, 20);
assert.deepEqual(
  courses.map((c) => c.Docebo_Course_Id__c).sort(),
  Array.from({ length: 20 }, (_, i) => String(700 + i)),
);
assert.ok(courses.every((c) => c.Id.length === 18 && c.Type__c === 'Webinar' && String(c.Credits__c) === '1.5'));

console.log('jsforce checks passed');

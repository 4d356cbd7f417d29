// Validates manifests (a JSON array on stdin) with the published schemas' own validators (types, required
// fields, enums, patterns); prints one JSON array of error lists. argv[2]: the folder holding node_modules.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const pkg = group === "keda.sh" ? "keda" : "gateway-api";
  const file = join(root, "node_modules/@kubernetes-models", pkg, group, version, `${obj.kind}.js`);
  const mod = await import(pathToFileURL(file).href);
  try {
    new mod[obj.kind](obj).validate();
    out.push([]);
  } catch (err) {
    out.push([String(err.message)]);
  }
}
process.stdout.write(JSON.stringify(out));

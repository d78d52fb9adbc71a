// Validates rendered Prometheus Operator objects (PrometheusRule, ServiceMonitor) against the
// CRD schemas, as packaged by @kubernetes-models/prometheus-operator:
//   1. the package's generated validators (types, required fields, enums, patterns);
//   2. TypeScript's excess-property check against the package's declarations, which rejects
//      unknown fields (the generated validators accept them, as the API server would prune them).
//
// usage: node validate-crds.mjs NODE_PREFIX WORKDIR FILE.json...
// Prints `ok - ...` / `not ok - ...` lines; exits non-zero when one fails.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { basename, join } from "node:path";
import { execFileSync } from "node:child_process";
import { pathToFileURL } from "node:url";

const [prefix, workdir, ...files] = process.argv.slice(2);
const pkg = "@kubernetes-models/prometheus-operator";
const kinds = {
  PrometheusRule: "IPrometheusRule",
  ServiceMonitor: "IServiceMonitor",
};
const modelUrl = (kind) =>
  pathToFileURL(join(prefix, "node_modules", pkg, "monitoring.coreos.com/v1", `${kind}.js`)).href;

let failed = 0;
const report = (ok, what, why = "") => {
  if (!ok) failed++;
  console.log(`${ok ? "ok" : "not ok"} - ${what}${!ok && why ? ": " + why : ""}`);
};

const docs = [];
for (const file of files) {
  const doc = JSON.parse(readFileSync(file, "utf8"));
  const what = `[crd] ${basename(file, ".json")}`;
  if (!(doc.kind in kinds) || doc.apiVersion !== "monitoring.coreos.com/v1") {
    report(false, what, `unexpected ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  const mod = await import(modelUrl(doc.kind));
  try {
    new mod[doc.kind](doc).validate();
    report(true, `${what} passes the ${doc.kind} CRD schema`);
  } catch (e) {
    report(false, `${what} passes the ${doc.kind} CRD schema`, e.message);
  }
  docs.push({ doc, what });
}

// Unknown fields: one object literal per document, typed with the CRD's interface. WORKDIR is
// under NODE_PREFIX so that the package and its declarations resolve from node_modules.
mkdirSync(workdir, { recursive: true });
const lines = [];
for (const kind of Object.keys(kinds)) {
  lines.push(`import type { ${kinds[kind]} } from "${pkg}/monitoring.coreos.com/v1/${kind}";`);
}
docs.forEach(({ doc }, i) => {
  lines.push(`export const doc${i}: ${kinds[doc.kind]} = ${JSON.stringify(doc, null, 1)};`);
});
writeFileSync(join(workdir, "crds.ts"), lines.join("\n") + "\n");
writeFileSync(
  join(workdir, "tsconfig.json"),
  JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext",
      target: "es2022", skipLibCheck: true, types: [],
    },
    files: ["crds.ts"],
  }),
);
let tsOut = "";
try {
  execFileSync(process.execPath, [join(prefix, "node_modules/typescript/bin/tsc"), "-p", workdir], {
    encoding: "utf8",
  });
} catch (e) {
  tsOut = (e.stdout || "") + (e.stderr || "");
}
const source = readFileSync(join(workdir, "crds.ts"), "utf8").split("\n");
const errorsByDoc = new Map();
for (const m of tsOut.matchAll(/crds\.ts\((\d+),\d+\): error (TS\d+: .*)/g)) {
  // The object literal that contains the error line.
  let line = Number(m[1]) - 1;
  while (line >= 0 && !source[line].startsWith("export const doc")) line--;
  const idx = line >= 0 ? Number(source[line].match(/doc(\d+)/)[1]) : -1;
  errorsByDoc.set(idx, [...(errorsByDoc.get(idx) || []), m[2]]);
}
if (tsOut && errorsByDoc.size === 0) {
  report(false, "[crd] TypeScript check ran", tsOut.slice(0, 2000));
}
docs.forEach(({ doc, what }, i) => {
  const errs = errorsByDoc.get(i) || [];
  report(errs.length === 0, `${what} has no field unknown to the ${doc.kind} CRD`, errs.join("; "));
});
process.exit(failed ? 1 : 0);

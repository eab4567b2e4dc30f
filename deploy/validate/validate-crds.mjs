// Validates Kubernetes manifests against their schemas, offline. Run by
// validate.sh, which installs the packages this script loads and passes
// their location (--modules) and the kubernetes-validate binary.
//
// Every file is split into its YAML documents; each document is routed by
// apiVersion/kind:
//   - Kubernetes built-in kinds (core group, apps, batch, policy, autoscaling,
//     *.k8s.io): `kubernetes-validate --strict -k <version>` (authoritative,
//     rejects unknown fields), plus kubernetes-models' validate() as a second
//     opinion that lists every type error;
//   - Istio, KEDA and prometheus-operator kinds (PrometheusRule, ...):
//     `new Kind(obj).validate()` from @kubernetes-models/istio,
//     @kubernetes-models/keda and @kubernetes-models/prometheus-operator, then a strict pass
//     over the same schemas that rejects fields the schema does not declare
//     (what the API server does with strict field validation; the packages'
//     own validate() lets unknown fields through, so a typo would pass);
//   - anything else: an error. Nothing is skipped silently.
// OpenHQM-specific checks run on top: the filter's plugin configuration
// (schemas/openhqm-filter-config.schema.json) inside a WasmPlugin or an
// EnvoyFilter, `allow_on_headers_stop_iteration: true` on an EnvoyFilter's
// OpenHQM Wasm config, and the Istio cluster name format of `bridge_cluster`.
//
// Output: one line per document (`ok` or `FAIL`), one line per error naming
// file, line, document and the problem, then `<what>: N passed, N failed`.
// Exit status 1 if anything failed (or, with --self-test, if any broken
// manifest was accepted or failed for another reason than its `# expect:`).

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- arguments
const args = process.argv.slice(2);
const opt = { modules: null, kv: null, k8s: "1.33.0", root: process.cwd(), selfTest: false, files: [] };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const next = () => {
    if (i + 1 >= args.length) die(`${a} needs a value`);
    return args[++i];
  };
  if (a === "--modules") opt.modules = next();
  else if (a === "--kubernetes-validate") opt.kv = next();
  else if (a === "--k8s-version") opt.k8s = next();
  else if (a === "--root") opt.root = next();
  else if (a === "--self-test") opt.selfTest = true;
  else if (a.startsWith("--")) die(`unknown option ${a}`);
  else opt.files.push(a);
}
if (!opt.modules) die("--modules DIR is required (validate.sh passes it)");
if (!opt.kv) die("--kubernetes-validate PATH is required (validate.sh passes it)");
if (opt.files.length === 0) die("no files given");

function die(msg) {
  console.error(`validate-crds: ${msg}`);
  process.exit(2);
}

// The packages are installed under target/, not next to this script.
const req = createRequire(path.join(path.resolve(opt.modules), "package.json"));
const yaml = req("js-yaml");
const Ajv = req("ajv");

// -------------------------------------------------- YAML like Kubernetes reads it
// kubectl parses YAML 1.1: unquoted yes/no/on/off/y/n are booleans there but
// strings to YAML 1.2 parsers such as js-yaml. Read them as Kubernetes does.
const yaml11Bool = new yaml.Type("tag:yaml.org,2002:bool", {
  kind: "scalar",
  resolve: (s) => /^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/.test(s),
  construct: (s) => /^(y|Y|yes|Yes|YES|true|True|TRUE|on|On|ON)$/.test(s),
  predicate: (v) => typeof v === "boolean",
  represent: { lowercase: (v) => (v ? "true" : "false") },
  defaultStyle: "lowercase",
});
const K8S_YAML = yaml.CORE_SCHEMA.extend({ implicit: [yaml11Bool] });

/** Splits a file into documents: [{index, line, text}] (line is 1-based). */
function splitDocuments(text) {
  const lines = text.split(/\r?\n/);
  const docs = [];
  let cur = [];
  let start = 1;
  const flush = (endLine) => {
    const body = cur.join("\n");
    const meaningful = cur.findIndex((l) => l.trim() !== "" && !l.trim().startsWith("#"));
    if (meaningful >= 0) docs.push({ index: docs.length + 1, line: start + meaningful, firstLine: start, text: body });
    cur = [];
    start = endLine + 1;
  };
  lines.forEach((l, i) => {
    if (/^---(\s.*)?$/.test(l) || /^\.\.\.\s*$/.test(l)) {
      flush(i + 1);
      // `--- {a: b}` puts content on the separator line itself
      const rest = l.startsWith("---") ? l.slice(3).trim() : "";
      if (rest && !rest.startsWith("#")) {
        cur.push(rest);
        start = i + 1;
      }
    } else {
      cur.push(l);
    }
  });
  flush(lines.length);
  return docs;
}

// ------------------------------------------------------ schema registries
const CORE_GROUPS = new Set(["", "apps", "batch", "policy", "autoscaling"]);
const isCoreGroup = (g) => CORE_GROUPS.has(g) || g.endsWith(".k8s.io");
const groupOf = (apiVersion) => (apiVersion.includes("/") ? apiVersion.split("/")[0] : "");

/** The directory of an installed package. Some packages' `exports` hide
 * their package.json, so resolve the entry point and walk up to it. */
function pkgDir(name, from = req) {
  let dir = path.dirname(from.resolve(name));
  for (;;) {
    const pjPath = path.join(dir, "package.json");
    if (fs.existsSync(pjPath) && JSON.parse(fs.readFileSync(pjPath, "utf8")).name === name) return dir;
    const up = path.dirname(dir);
    if (up === dir) die(`cannot find the package.json of ${name}`);
    dir = up;
  }
}

function pkgInfo(name) {
  return JSON.parse(fs.readFileSync(path.join(pkgDir(name), "package.json"), "utf8"));
}

// The Istio, KEDA and prometheus-operator model packages keep their schemas as data and register
// them with @kubernetes-models/validate when a model validates for the first
// time. Wrap that registration to keep a copy for the strict pass. (CommonJS
// entry points: their `register` is looked up at call time, so the wrapper
// sees every call; the ES module builds would bind it at load time.)
const captured = new Map();
function captureRegistrations(fromPackage) {
  const pkgReq = createRequire(path.join(pkgDir(fromPackage), "package.json"));
  const v = pkgReq("@kubernetes-models/validate");
  if (v.__openhqmCapture) return;
  const orig = v.register;
  if (typeof orig !== "function") die(`@kubernetes-models/validate (used by ${fromPackage}) has no register(): the strict pass cannot get the schemas`);
  v.register = (id, schema) => {
    captured.set(id, schema);
    return orig(id, schema);
  };
  v.__openhqmCapture = true;
  // ObjectMeta comes from the apimachinery package, which may resolve its own copy
  const am = createRequire(path.join(pkgDir("@kubernetes-models/apimachinery", pkgReq), "package.json"));
  const v2 = am("@kubernetes-models/validate");
  if (v2 !== v && !v2.__openhqmCapture) {
    const o2 = v2.register;
    v2.register = (id, schema) => {
      captured.set(id, schema);
      return o2(id, schema);
    };
    v2.__openhqmCapture = true;
  }
}

/** apiVersion/kind -> {Model, source, schemaId} for every Istio, KEDA and prometheus-operator kind. */
const crdKinds = new Map();
const crdSources = [];
const CRD_PACKAGES = {
  "@kubernetes-models/istio": { product: "Istio", version: /istio\/istio\/([\d.]+)\// },
  "@kubernetes-models/keda": { product: "KEDA", version: /keda-([\d.]+)\.yaml/ },
  "@kubernetes-models/prometheus-operator": { product: "prometheus-operator", version: /prometheus-operator\/(?:releases\/download\/)?v([\d.]+)\// },
};
for (const [pkg, { product, version }] of Object.entries(CRD_PACKAGES)) {
  const pj = pkgInfo(pkg);
  const input = ((pj["crd-generate"] || {}).input || []).join(" ");
  const m = input.match(version);
  const source = `${product} ${m ? m[1] : "?"} CRDs, ${pkg} ${pj.version}`;
  crdSources.push(source);
  captureRegistrations(pkg);
  const dir = pkgDir(pkg);
  for (const group of fs.readdirSync(dir)) {
    const gdir = path.join(dir, group);
    if (!group.includes(".") || !fs.statSync(gdir).isDirectory()) continue;
    for (const version of fs.readdirSync(gdir)) {
      if (!fs.statSync(path.join(gdir, version)).isDirectory()) continue;
      const mod = req(`${pkg}/${group}/${version}`);
      for (const Model of Object.values(mod)) {
        if (typeof Model !== "function" || !Model.apiVersion || !Model.kind) continue;
        crdKinds.set(`${Model.apiVersion}/${Model.kind}`, {
          Model,
          source,
          schemaId: `${group}.${version}.${Model.kind}`,
        });
      }
    }
  }
}
if (crdKinds.size === 0) die("no Istio/KEDA/prometheus-operator models found in the installed packages");

const k8sModelsVersion = pkgInfo("kubernetes-models").version;
function coreModel(apiVersion, kind) {
  const [g, v] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const sub = g ? `kubernetes-models/${g}/${v}/${kind}` : `kubernetes-models/${v}/${kind}`;
  try {
    return req(sub)[kind] || null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------ strict pass
/** Copy of a schema where every object that lists its properties rejects others. */
function strictify(node, inCombinator) {
  if (Array.isArray(node)) return node.map((n) => strictify(n, inCombinator));
  if (!node || typeof node !== "object") return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    // Below a oneOf/anyOf/allOf branch, schemas may repeat part of a field's
    // properties (Istio's proto oneofs); the full declaration is outside the
    // branch, so nothing in a branch is made strict.
    if (k === "properties" && v && typeof v === "object") {
      out[k] = Object.fromEntries(Object.entries(v).map(([pk, pv]) => [pk, strictify(pv, inCombinator)]));
    } else if (k === "items" || (k === "additionalProperties" && typeof v === "object")) {
      out[k] = strictify(v, inCombinator);
    } else if (k === "oneOf" || k === "anyOf" || k === "allOf") {
      out[k] = strictify(v, true);
    } else {
      out[k] = v;
    }
  }
  const declared = out.properties && Object.keys(out.properties).length > 0;
  // An object with no declared properties is free-form (the generator turns
  // x-kubernetes-preserve-unknown-fields into `properties: {}`), e.g.
  // WasmPlugin.pluginConfig and EnvoyFilter patch values.
  if (declared && out.additionalProperties === undefined && !out["x-kubernetes-preserve-unknown-fields"] && !inCombinator) {
    out.additionalProperties = false;
  }
  return out;
}

let strictAjv = null;
let strictAjvSize = -1;
function strictValidator(schemaId) {
  if (!captured.has(schemaId)) return null;
  if (!strictAjv || strictAjvSize !== captured.size) {
    strictAjv = new Ajv({ allErrors: true, strict: false, validateFormats: false, logger: false });
    for (const [id, schema] of captured) strictAjv.addSchema(strictify(schema, false), id);
    strictAjvSize = captured.size;
  }
  return strictAjv.getSchema(schemaId);
}

const dotted = (p, base) => {
  const rel = (p || "").replace(/^\//, "").replace(/\//g, ".");
  if (base) return rel ? `${base}.${rel}` : base;
  return rel || "(document)";
};

/** Names X of a oneOf whose branches are all `{required: [X]}`, else null. */
function oneOfRequiredNames(schema) {
  if (!Array.isArray(schema)) return null;
  const names = schema.map((b) => (b && Array.isArray(b.required) && b.required.length === 1 && Object.keys(b).length === 1 ? b.required[0] : null));
  return names.every(Boolean) ? names : null;
}

function describeAjvErrors(errors, base) {
  const out = [];
  // "exactly one of these fields" alternatives: one message instead of one per branch
  const alternatives = new Set();
  for (const e of errors || []) {
    const names = e.keyword === "oneOf" ? oneOfRequiredNames(e.schema) : null;
    if (!names) continue;
    alternatives.add(e.schemaPath);
    const several = e.params && Array.isArray(e.params.passingSchemas);
    out.push(`${dotted(e.instancePath, base)}: ${several ? "set only one" : "needs one"} of ${names.join(", ")}`);
  }
  for (const e of errors || []) {
    if ([...alternatives].some((sp) => e.schemaPath === sp || e.schemaPath.startsWith(`${sp}/`))) continue;
    if (e.keyword === "oneOf" || e.keyword === "anyOf") continue; // the branch errors say more
    if (e.keyword === "type" && e.params && e.params.type === "null") continue; // nullable wrappers
    if (e.keyword === "additionalProperties") {
      out.push(`${dotted(e.instancePath, base)}: unknown field "${e.params.additionalProperty}" (not in the schema)`);
    } else if (e.keyword === "enum") {
      out.push(`${dotted(e.instancePath, base)}: ${e.message}: ${JSON.stringify(e.params.allowedValues)}`);
    } else {
      out.push(`${dotted(e.instancePath, base)}: ${e.message}`);
    }
  }
  if (out.length === 0 && errors && errors.length > 0) {
    // never let a failed validation pass for want of a message
    out.push(`${dotted(errors[0].instancePath, base)}: ${errors[0].message} (${errors[0].keyword})`);
  }
  return [...new Set(out)];
}

// ---------------------------------------------------- OpenHQM-specific checks
const filterSchema = JSON.parse(fs.readFileSync(path.join(here, "schemas", "openhqm-filter-config.schema.json"), "utf8"));
const plainAjv = new Ajv({ allErrors: true, strict: false, logger: false, verbose: true });
const validateFilterConfig = plainAjv.compile(filterSchema);
const ISTIO_CLUSTER = /^outbound\|\d+\|[^|]*\|[^|]+$/;
const WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

function checkFilterConfig(cfg, where, errors) {
  if (!validateFilterConfig(cfg)) {
    for (const m of describeAjvErrors(validateFilterConfig.errors, where)) errors.push(`${m} [openhqm filter config]`);
  }
  if (cfg && typeof cfg.bridge_cluster === "string" && !ISTIO_CLUSTER.test(cfg.bridge_cluster)) {
    errors.push(`${where}.bridge_cluster: "${cfg.bridge_cluster}" is not an Istio cluster name; under Istio it is outbound|<port>||<service FQDN> [openhqm]`);
  }
}

const isOpenhqmUrl = (u) => typeof u === "string" && /openhqm/i.test(u);

function openhqmChecks(doc, errors) {
  if (doc.kind === "WasmPlugin" && doc.spec && isOpenhqmUrl(doc.spec.url)) {
    if (!doc.spec.pluginConfig) errors.push("spec.pluginConfig: missing; the OpenHQM filter needs bridge_cluster and routes [openhqm]");
    else checkFilterConfig(doc.spec.pluginConfig, "spec.pluginConfig", errors);
  }
  if (doc.kind === "EnvoyFilter" && doc.spec && Array.isArray(doc.spec.configPatches)) {
    const extNames = new Set();
    doc.spec.configPatches.forEach((p, i) => {
      const v = p && p.patch && p.patch.value;
      if (!p || p.applyTo !== "EXTENSION_CONFIG" || !v) return;
      if (v.name) extNames.add(v.name);
      const tc = v.typed_config || v.typedConfig;
      if (!tc || tc["@type"] !== WASM_TYPE) return;
      const base = `spec.configPatches.${i}.patch.value.typed_config.config`;
      const c = tc.config || {};
      const vm = c.vm_config || c.vmConfig || {};
      const code = vm.code || {};
      const remote = code.remote || {};
      const uri = ((remote.http_uri || remote.httpUri || {}).uri) || ((code.local || {}).filename);
      if (!isOpenhqmUrl(uri)) return;
      const allow = c.allow_on_headers_stop_iteration ?? c.allowOnHeadersStopIteration;
      if (allow !== true) {
        errors.push(`${base}.allow_on_headers_stop_iteration: must be true for the OpenHQM filter (else captured requests with a body get 500 proxy_misconfigured) [openhqm]`);
      }
      const conf = c.configuration;
      const json = conf && typeof conf === "object" ? conf.value : conf;
      if (typeof json !== "string") {
        errors.push(`${base}.configuration: missing; expected a google.protobuf.StringValue holding the filter's JSON [openhqm]`);
        return;
      }
      let parsed;
      try {
        parsed = JSON.parse(json);
      } catch (e) {
        errors.push(`${base}.configuration.value: not valid JSON: ${e.message} [openhqm]`);
        return;
      }
      checkFilterConfig(parsed, `${base}.configuration.value`, errors);
    });
    doc.spec.configPatches.forEach((p, i) => {
      const v = p && p.patch && p.patch.value;
      const cd = v && (v.config_discovery || v.configDiscovery);
      if (p && p.applyTo === "HTTP_FILTER" && cd && v.name && extNames.size > 0 && !extNames.has(v.name)) {
        errors.push(`spec.configPatches.${i}.patch.value.name: "${v.name}" names no EXTENSION_CONFIG of this EnvoyFilter (${[...extNames].join(", ")}) [openhqm]`);
      }
    });
  }
}

// --------------------------------------------------------------- validation
const rel = (f) => path.relative(opt.root, path.resolve(f)) || f;
const results = []; // {file, doc, label, errors[], checks[]}
const coreQueue = []; // documents for kubernetes-validate
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "openhqm-validate-"));

for (const file of opt.files) {
  const name = rel(file);
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    results.push({ file: name, line: 0, label: "(file)", errors: [`cannot read: ${e.message}`], checks: [] });
    continue;
  }
  const docs = splitDocuments(text);
  if (docs.length === 0) {
    results.push({ file: name, line: 1, label: "(file)", errors: ["no Kubernetes document in this file"], checks: [] });
    continue;
  }
  for (const d of docs) {
    const r = { file: name, line: d.line, doc: d.index, label: `document ${d.index}`, errors: [], checks: [] };
    results.push(r);
    let obj;
    try {
      obj = yaml.load(d.text, { schema: K8S_YAML, filename: name });
    } catch (e) {
      const line = e.mark ? d.firstLine + e.mark.line : d.line;
      r.errors.push(`YAML (line ${line}): ${e.reason || e.message}`);
      continue;
    }
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
      r.errors.push("not a Kubernetes object (expected a mapping with apiVersion and kind)");
      continue;
    }
    const meta = obj.metadata && typeof obj.metadata === "object" ? obj.metadata : {};
    r.label = `${obj.kind || "?"} ${meta.namespace ? meta.namespace + "/" : ""}${meta.name || "?"}`;
    if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
      r.errors.push("apiVersion and kind must both be set (strings)");
      continue;
    }
    const key = `${obj.apiVersion}/${obj.kind}`;
    const group = groupOf(obj.apiVersion);
    if (isCoreGroup(group)) {
      // kubernetes-validate reads the document's own text (PyYAML, YAML 1.1, like kubectl)
      const tmpFile = path.join(tmp, `doc-${String(coreQueue.length).padStart(4, "0")}.yaml`);
      fs.writeFileSync(tmpFile, d.text + "\n");
      coreQueue.push({ r, tmpFile });
      r.checks.push(`kubernetes-validate --strict ${opt.k8s}`);
      const Model = coreModel(obj.apiVersion, obj.kind);
      if (Model) {
        r.checks.push(`kubernetes-models ${k8sModelsVersion}`);
        try {
          new Model(obj).validate();
        } catch (e) {
          for (const m of e.errors ? describeAjvErrors(e.errors) : [e.message]) r.errors.push(`${m} [kubernetes-models]`);
        }
      }
    } else if (crdKinds.has(key)) {
      const { Model, source, schemaId } = crdKinds.get(key);
      r.checks.push(source);
      try {
        new Model(obj).validate();
      } catch (e) {
        for (const m of e.errors ? describeAjvErrors(e.errors) : [e.message]) r.errors.push(`${m} [${source}]`);
      }
      const strict = strictValidator(schemaId);
      if (!strict) {
        r.errors.push(`internal: the schema ${schemaId} was not captured, so unknown fields cannot be checked; see captureRegistrations() in validate-crds.mjs`);
      } else if (!strict(obj)) {
        for (const m of describeAjvErrors(strict.errors.filter((e) => e.keyword === "additionalProperties"))) r.errors.push(`${m} [${source}, strict]`);
      }
    } else {
      const known = [...crdKinds.keys()].filter((k) => k.endsWith(`/${obj.kind}`));
      r.errors.push(
        `no schema for ${key}: neither a Kubernetes built-in kind nor in the pinned Istio/KEDA/prometheus-operator models` +
          (known.length ? ` (they know ${known.join(", ")})` : ""),
      );
      continue;
    }
    openhqmChecks(obj, r.errors);
  }
}

// One kubernetes-validate process for every built-in-kind document.
if (coreQueue.length > 0) {
  const run = spawnSync(opt.kv, ["--strict", "-k", opt.k8s, ...coreQueue.map((q) => q.tmpFile)], { encoding: "utf8" });
  if (run.error) die(`cannot run kubernetes-validate (${opt.kv}): ${run.error.message}`);
  const lines = `${run.stdout || ""}\n${run.stderr || ""}`.split("\n").filter((l) => l.trim());
  for (const q of coreQueue) {
    const mine = lines.filter((l) => l.includes(q.tmpFile));
    if (mine.length === 0) {
      q.r.errors.push(`kubernetes-validate gave no verdict for this document (exit ${run.status}): ${lines.slice(-3).join(" | ") || "no output"}`);
      continue;
    }
    for (const l of mine) {
      const msg = l.replace(q.tmpFile, "").replace(/\s+/g, " ").trim();
      if (/^INFO\b/.test(l) && / passed /.test(l)) continue;
      if (/^WARN\b/.test(l) && /Couldn't find schema/.test(l)) {
        q.r.errors.push(`kubernetes-validate has no schema for it: ${msg.replace(/^WARN /, "")}`);
      } else if (/^WARN\b/.test(l)) {
        q.r.errors.push(`kubernetes-validate warning: ${msg.replace(/^WARN /, "")}`);
      } else if (/^ERROR\b/.test(l)) {
        const m = l.match(/against version [^:]+: (.*)$/);
        q.r.errors.push(`${m ? m[1] : msg.replace(/^ERROR /, "")} [kubernetes-validate ${opt.k8s} strict]`);
      } else if (!/^INFO\b/.test(l)) {
        q.r.errors.push(`kubernetes-validate: ${msg}`);
      }
    }
  }
}
fs.rmSync(tmp, { recursive: true, force: true });

// ------------------------------------------------------------------ report
const where = (r) => `${r.file}:${r.line}`;
if (!opt.selfTest) {
  console.log(`schemas: Kubernetes ${opt.k8s} (kubernetes-validate, strict; kubernetes-models ${k8sModelsVersion}); ${crdSources.join("; ")}`);
  let failed = 0;
  for (const r of results) {
    if (r.errors.length === 0) {
      console.log(`ok    ${where(r)}  ${r.label}  (${r.checks.join(", ")})`);
    } else {
      failed++;
      console.log(`FAIL  ${where(r)}  ${r.label}`);
      for (const e of r.errors) console.log(`  ${where(r)}: ${r.label}: ${e}`);
    }
  }
  console.log(`manifests: ${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

// --self-test: every file must be rejected, and for the reason its
// `# expect: <text>` comments name (each text must appear in some error).
let passed = 0;
let failed = 0;
for (const file of opt.files) {
  const name = rel(file);
  const expects = [...fs.readFileSync(file, "utf8").matchAll(/^#\s*expect:\s*(.+?)\s*$/gm)].map((m) => m[1]);
  const errs = results.filter((r) => r.file === name).flatMap((r) => r.errors.map((e) => `${where(r)} ${r.label}: ${e}`));
  const missing = expects.filter((x) => !errs.some((e) => e.includes(x)));
  if (expects.length === 0) {
    failed++;
    console.log(`FAIL  ${name}: has no "# expect: <error text>" line`);
  } else if (errs.length === 0) {
    failed++;
    console.log(`FAIL  ${name}: was ACCEPTED, but it is broken (expected: ${expects.join("; ")})`);
  } else if (missing.length > 0) {
    failed++;
    console.log(`FAIL  ${name}: rejected, but not for the expected reason (missing: ${missing.join("; ")})`);
    for (const e of errs) console.log(`  got: ${e}`);
  } else {
    passed++;
    console.log(`ok    ${name}: rejected as expected`);
    for (const e of errs) console.log(`  ${e}`);
  }
}
console.log(`self-test: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

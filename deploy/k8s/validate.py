#!/usr/bin/env python3
"""Offline checks of deploy/k8s (and of the compose file's worker settings); run by validate.sh.

1. Every Kubernetes document under deploy/k8s/base and deploy/k8s/overlays is validated against
   the JSON schemas of Kubernetes TARGET_VERSION with `kubernetes-validate` in strict mode
   (unknown fields are errors).
2. Documents of custom kinds are handled explicitly, never skipped silently:
   - ServiceMonitor, ScaledObject, TriggerAuthentication are validated against the
     openAPIV3Schema of their CRDs, vendored unchanged in crd-schemas/ (source commit in each
     file's header), with unknown fields made errors as the API server's strict field
     validation does;
   - Kustomization files are not API objects: each is checked for its resources existing, and
     every manifest of its directory being listed (except *.example.yaml, deliberately not
     applied: see base/secrets.example.yaml).
   Any other kind is an error, so a new kind cannot slip through unvalidated.
3. Worker configuration against the code: every TOML key of the audit-config ConfigMap, every
   AUDIT_* variable and every `--flag` given to a worker container (in the manifests and in
   deploy/compose/compose.yaml) must exist in that worker's clap/serde `Config` as read from
   its Rust sources, so the manifests cannot drift from the options the binaries accept.
4. Overlays rendered: each overlay's kustomization (its resources, with the inline strategic
   merge `patches` applied as kustomize does: lists with a Kubernetes merge key merged by it,
   other lists replaced, `$patch: delete`) is checked as a whole: the patched documents against
   the schemas, every container's options against the sources (3), the KEDA checks (5), and
   the privacy wiring: key files (AUDIT_PRIVACY_*KEY_FILE[S]) only from Secret volumes, the
   rules file from a ConfigMap volume, no key as an environment literal, and the rules file
   (`rules.toml` of a ConfigMap) against enrich's rules structs, actions and field names.
5. KEDA ScaledObjects against the rest: their target Deployment exists, consumerGroup is that
   worker's group_id, the topic is a pipeline topic under AUDIT_TOPIC_PREFIX, the brokers are
   AUDIT_KAFKA_BROKERS, trigger keys are ones KEDA's kafka scaler reads, and every place that
   encodes the partition count (maxReplicaCount, the static chainer's replicas) agrees.
"""

from __future__ import annotations

import copy
import pathlib
import re
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

TARGET_VERSION = "1.33.0"

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
MANIFEST_DIRS = [HERE / "base", HERE / "overlays"]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"

CRD_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
}

# Worker binary -> the crate whose `pub struct Config` it loads.
WORKERS = {
    "ingest": "ingest",
    "enrich": "enrich",
    "chainer": "chainer",
    "sink-clickhouse": "sink-clickhouse",
    "sink-archive": "sink-archive",
}

# Options the manifests may use before they land in the code (work in progress elsewhere),
# e.g. {"chainer": {"--partitions", "AUDIT_CHAINER_PARTITIONS", "partitions"}}. The check
# accepts them while they are missing and says when they have landed, so the entry can go.
PENDING: dict[str, set[str]] = {}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)
    print(f"FAIL {msg}")


# ---------------------------------------------------------------------------------------------
# 1 + 2: schemas


def strict_schema(schema):
    """A copy of a CRD schema in which objects with declared properties reject other keys."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if (
            "properties" in s
            and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")
        ):
            s["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in s.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(s.get(key), dict):
                walk(s[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(key, []):
                walk(sub)

    walk(schema)
    return schema


def crd_validators():
    out = {}
    for (api_version, kind), name in CRD_FILES.items():
        crd = next(d for d in yaml.safe_load_all((HERE / "crd-schemas" / name).read_text()) if d)
        group = crd["spec"]["group"]
        for v in crd["spec"]["versions"]:
            if f"{group}/{v['name']}" == api_version:
                schema = strict_schema(v["schema"]["openAPIV3Schema"])
                # metadata is the API server's ObjectMeta, not described by the CRD.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                out[(api_version, kind)] = jsonschema.Draft7Validator(schema)
                break
        else:
            raise SystemExit(f"{name} has no version {api_version}")
    return out


def check_kustomization(path: pathlib.Path, doc: dict) -> None:
    listed = set()
    for res in doc.get("resources", []):
        target = (path.parent / res).resolve()
        if not target.exists():
            fail(f"{path}: resource {res} does not exist")
        listed.add(target)
    for f in sorted(path.parent.glob("*.yaml")):
        if f.name == "kustomization.yaml" or f.name.endswith(".example.yaml"):
            continue
        if f.resolve() not in listed:
            fail(f"{path}: {f.name} is in the directory but not in resources")


def validate_manifests() -> list[tuple[pathlib.Path, dict]]:
    validators = crd_validators()
    docs = []
    files = sorted(p for d in MANIFEST_DIRS for p in d.rglob("*.yaml"))
    if not files:
        fail("no manifests found")
    counts: dict[str, int] = {}
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            rel = path.relative_to(REPO)
            api_version, kind = doc.get("apiVersion"), doc.get("kind")
            name = doc.get("metadata", {}).get("name", "?")
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "Kustomization":
                check_kustomization(path, doc)
                continue
            docs.append((path, doc))
            if (api_version, kind) in validators:
                problems = sorted(
                    validators[(api_version, kind)].iter_errors(doc), key=lambda e: list(e.path)
                )
                for e in problems:
                    where = "/".join(str(p) for p in e.path)
                    fail(f"{rel}: {kind}/{name}: {where}: {e.message}")
                if not problems:
                    print(f"ok   {rel}: {kind}/{name} (CRD schema {CRD_FILES[(api_version, kind)]})")
                continue
            if "." in (api_version or "").split("/")[0] and not (api_version or "").startswith(
                ("apps/", "policy/", "networking.k8s.io/", "batch/", "autoscaling/")
            ):
                fail(f"{rel}: {kind}/{name}: custom kind without a vendored CRD schema")
                continue
            try:
                kubernetes_validate.validate(doc, TARGET_VERSION, strict=True)
                print(f"ok   {rel}: {kind}/{name} (Kubernetes {TARGET_VERSION}, strict)")
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                fail(f"{rel}: {kind}/{name}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{rel}: {kind}/{name}: no schema in Kubernetes {TARGET_VERSION}")
    print("documents by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return docs


# ---------------------------------------------------------------------------------------------
# 3: configuration against the Rust sources

# An attribute `#[...]`, possibly multi-line, with one level of nested brackets inside.
ATTR = r"#\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
STRUCT_RE = re.compile(
    r"#\[derive\(([^)]*)\)\]\s*(?:" + ATTR + r"\s*)*pub struct (\w+) \{(.*?)\n\}", re.S
)
FIELD_RE = re.compile(r"((?:\s*(?:///[^\n]*|" + ATTR + r"))*)\s*pub (\w+): ([^,\n]+),")


def rust_structs(crates: list[str]) -> dict[str, list[dict]]:
    """Clap structs of these crates: name -> fields {name, type, flatten, env, long, skip}."""
    out: dict[str, list[dict]] = {}
    for crate in crates:
        for rs in sorted((REPO / crate / "src").rglob("*.rs")):
            text = rs.read_text().split("#[cfg(test)]")[0]
            for derive, name, body in STRUCT_RE.findall(text):
                if "Parser" not in derive and "Args" not in derive:
                    continue
                fields = []
                for attrs, field, ty in FIELD_RE.findall(body):
                    env = re.search(r'env\s*=\s*"([^"]+)"', attrs)
                    long = re.search(r'long\s*=\s*"([^"]+)"', attrs)
                    has_long = re.search(r"\blong\b", attrs)
                    fields.append(
                        {
                            "name": field,
                            "type": ty.strip().split("::")[-1].split("<")[-1].rstrip(">"),
                            "flatten": "flatten" in attrs,
                            "skip": "serde(skip" in attrs,
                            "env": env.group(1) if env else None,
                            "long": long.group(1)
                            if long
                            else (field.replace("_", "-") if has_long else None),
                        }
                    )
                out[name] = fields
    return out


def worker_options(crate: str):
    """(toml tree, env names, flags) of a worker's Config."""
    structs = rust_structs(["worker-runtime", crate])
    if "Config" not in structs:
        raise SystemExit(f"{crate}: no `pub struct Config` found")
    envs, flags = set(), set()

    def tree(struct: str):
        node = {}
        for f in structs[struct]:
            if f["flatten"]:
                if f["type"] not in structs:
                    raise SystemExit(f"{crate}: flattened type {f['type']} not found")
                node[f["name"]] = tree(f["type"])
                continue
            if f["env"]:
                envs.add(f["env"])
            if f["long"]:
                flags.add("--" + f["long"])
            if not f["skip"]:
                node[f["name"]] = None
        return node

    return tree("Config"), envs, flags


def check_toml(where: str, data: dict, tree: dict, pending: set[str], path: str = "") -> None:
    for key, value in data.items():
        if key not in tree:
            if key in pending:
                print(f"note {where}: {path}{key} accepted as pending (not in the sources yet)")
                continue
            fail(f"{where}: unknown key {path}{key}")
        elif isinstance(value, dict) != isinstance(tree[key], dict):
            fail(f"{where}: {path}{key} is {'a section' if isinstance(value, dict) else 'a value'} here but not in Config")
        elif isinstance(value, dict):
            check_toml(where, value, tree[key], pending, f"{path}{key}.")


def check_container(where, worker, opts, env_names, args, pending):
    _, envs, flags = opts
    for name in env_names:
        if name.startswith("AUDIT_") and name not in envs:
            if name in pending:
                print(f"note {where}: {name} accepted as pending")
            else:
                fail(f"{where}: {worker} has no option with environment variable {name}")
    for a in args:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            if flag not in flags:
                if flag in pending:
                    print(f"note {where}: {flag} accepted as pending")
                else:
                    fail(f"{where}: {worker} has no flag {flag}")


def check_config(docs, compose: bool = True) -> None:
    opts = {w: worker_options(c) for w, c in WORKERS.items()}
    for w, names in PENDING.items():
        _, envs, flags = opts[w]
        landed = names & (envs | flags | set(opts[w][0]))
        for n in sorted(landed):
            print(f"note {n} now exists in {w}: remove it from PENDING in validate.py")
    checked = 0
    shared_env: dict[str, set[str]] = {}
    for path, doc in docs:
        rel = path.relative_to(REPO)
        if doc.get("kind") == "ConfigMap":
            data = doc.get("data", {})
            shared_env[doc["metadata"]["name"]] = set(k for k in data if not k.endswith(".toml"))
            if doc["metadata"]["name"] in RULES_CONFIGMAPS:
                check_rules(f"{rel}: ConfigMap/{doc['metadata']['name']}", data)
                continue
            for key, text in data.items():
                if key.endswith(".toml"):
                    worker = key[: -len(".toml")]
                    if worker not in opts:
                        fail(f"{rel}: {key}: not a worker's file")
                        continue
                    try:
                        parsed = tomllib.loads(text)
                    except tomllib.TOMLDecodeError as e:
                        fail(f"{rel}: {key}: {e}")
                        continue
                    check_toml(f"{rel}: {key}", parsed, opts[worker][0], PENDING.get(worker, set()))
                    checked += 1
    for path, doc in docs:
        rel = path.relative_to(REPO)
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            worker = pathlib.PurePath((c.get("command") or [""])[0]).name
            if worker not in opts:
                continue
            names = {e["name"] for e in c.get("env", [])}
            for ef in c.get("envFrom", []):
                names |= shared_env.get(ef.get("configMapRef", {}).get("name"), set())
            check_container(f"{rel}: {doc['kind']}/{doc['metadata']['name']}", worker,
                            opts[worker], names, c.get("args", []), PENDING.get(worker, set()))
            checked += 1
    if compose and COMPOSE.exists():
        compose = yaml.safe_load(COMPOSE.read_text())
        anchors_env = {}
        for name, svc in compose.get("services", {}).items():
            worker = svc.get("image", "") and name
            if name not in opts:
                continue
            env = svc.get("environment", {}) or anchors_env
            names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
            cmd = svc.get("command", [])
            cmd = cmd.split() if isinstance(cmd, str) else cmd
            check_container(f"{COMPOSE.relative_to(REPO)}: {name}", worker, opts[name], names,
                            cmd, PENDING.get(name, set()))
            checked += 1
    print(f"configuration: {checked} worker files/containers checked against the Rust sources")


# Trigger metadata keys of KEDA's kafka scaler (pkg/scalers/kafka_scaler.go, `keda:"name=..."`
# tags, at the commit the vendored CRDs come from). KEDA rejects unknown enum values but
# silently ignores unknown keys, so a misspelt key would otherwise go unnoticed.
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
    "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag",
    "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "fullMetadata", "version", "tls", "unsafeSsl", "sasl",
    "saslTokenProvider", "awsRegion",
}
TOPIC_NAMES = {"raw", "validated", "rejected", "enriched", "chained", "checkpoints",
               "context.users", "context.teams"}


def check_keda(docs) -> None:
    """Scaled objects against the rest: target, group, topic, brokers, and max = partitions."""
    before = len(errors)
    env, groups, deployments, partitions = {}, {}, set(), set()
    for _, doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if kind == "ConfigMap" and name == "audit-env":
            env = doc["data"]
        if kind == "ConfigMap" and name == "audit-config":
            for key, text in doc["data"].items():
                groups[key.removesuffix(".toml")] = tomllib.loads(text).get("group_id")
        if kind == "Deployment":
            deployments.add(name)
        if kind == "StatefulSet" and name == "chainer":
            # Static mode: one pod per partition.
            partitions.add(("StatefulSet/chainer replicas", doc["spec"]["replicas"]))
    prefix = env.get("AUDIT_TOPIC_PREFIX", "audit.")
    for path, doc in docs:
        if doc.get("kind") != "ScaledObject":
            continue
        rel, name = path.relative_to(REPO), doc["metadata"]["name"]
        spec = doc["spec"]
        target = spec["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"{rel}: ScaledObject/{name}: no Deployment {target}")
        partitions.add((f"ScaledObject/{name} maxReplicaCount", spec.get("maxReplicaCount")))
        for t in spec.get("triggers", []):
            if t.get("type") != "kafka":
                continue
            md = t.get("metadata", {})
            for key in sorted(set(md) - KEDA_KAFKA_METADATA):
                fail(f"{rel}: ScaledObject/{name}: unknown kafka trigger key {key}")
            if md.get("consumerGroup") != groups.get(target):
                fail(f"{rel}: ScaledObject/{name}: consumerGroup {md.get('consumerGroup')} "
                     f"but {target}.toml has group_id {groups.get(target)}")
            topic = md.get("topic", "")
            if not topic.startswith(prefix) or topic[len(prefix):] not in TOPIC_NAMES:
                fail(f"{rel}: ScaledObject/{name}: topic {topic} is not a pipeline topic with prefix {prefix}")
            if md.get("bootstrapServers") != env.get("AUDIT_KAFKA_BROKERS"):
                fail(f"{rel}: ScaledObject/{name}: bootstrapServers differ from AUDIT_KAFKA_BROKERS")
    counts = {n for _, n in partitions}
    if len(counts) > 1:
        fail("the partition count differs between: "
             + ", ".join(f"{what} = {n}" for what, n in sorted(partitions)))
    if len(errors) == before:
        print(f"keda: scaled objects consistent with config.yaml (partitions: {sorted(counts)})")


# ---------------------------------------------------------------------------------------------
# Privacy rules files (enrich/src/privacy/rules.rs) and the overlays as kustomize renders them

# ConfigMaps holding an enrich privacy rules file (`rules.toml`), not a worker's --config.
RULES_CONFIGMAPS = {"audit-privacy-rules"}
RULES_RS = REPO / "enrich" / "src" / "privacy" / "rules.rs"


def rules_schema():
    """(keys of RulesFile, FieldRuleSpec, TextRuleSpec; actions; field names) from rules.rs."""
    text = RULES_RS.read_text().split("#[cfg(test)]")[0]

    def fields(struct):
        m = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
        if not m:
            raise SystemExit(f"{RULES_RS}: no struct {struct}")
        return set(re.findall(r"pub (\w+):", m.group(1)))

    m = re.search(r"pub enum ActionKind \{(.*?)\}", text, re.S)
    actions = {re.sub(r"(?<!^)([A-Z])", r"_\1", v).lower() for v in re.findall(r"(\w+),", m.group(1))}
    names = set(re.findall(r'\("([a-z_.]+)", Field::', text))
    if not (actions and names):
        raise SystemExit(f"{RULES_RS}: actions or field names not found")
    return fields("RulesFile"), fields("FieldRuleSpec"), fields("TextRuleSpec"), actions, names


def check_rules(where: str, data: dict) -> None:
    top, field_keys, text_keys, actions, names = rules_schema()
    before = len(errors)
    if set(data) != {"rules.toml"}:
        fail(f"{where}: expected exactly one key, rules.toml (got {sorted(data)})")
        return
    try:
        rules = tomllib.loads(data["rules.toml"])
    except tomllib.TOMLDecodeError as e:
        fail(f"{where}: rules.toml: {e}")
        return

    def known(name):
        return name in names or (name.startswith("attributes.") and not name.startswith("attributes.audit."))

    for key in sorted(set(rules) - top):
        fail(f"{where}: rules.toml: unknown key {key}")
    for i, rule in enumerate(rules.get("field", [])):
        for key in sorted(set(rule) - field_keys):
            fail(f"{where}: rules.toml: field[{i}]: unknown key {key}")
        if rule.get("action") not in actions:
            fail(f"{where}: rules.toml: field[{i}]: action {rule.get('action')!r} not one of {sorted(actions)}")
        if not known(rule.get("field", "")):
            fail(f"{where}: rules.toml: field[{i}]: unknown field {rule.get('field')!r}")
    text = rules.get("text", {})
    for key in sorted(set(text) - text_keys):
        fail(f"{where}: rules.toml: [text]: unknown key {key}")
    for name in text.get("fields", []):
        if not known(name):
            fail(f"{where}: rules.toml: [text]: unknown field {name!r}")
    if len(errors) == before:
        print(f"ok   {where}: rules.toml against {RULES_RS.relative_to(REPO)}")


# Lists the Kubernetes API merges by a key in a strategic merge patch (patchMergeKey); every
# other list (envFrom, args, command, ...) is replaced whole by the patch's.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
}


def strategic_merge(base, patch, key=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = copy.deepcopy(base)
        new = []
        for item in patch:
            at = next((i for i, b in enumerate(out) if b.get(mk) == item.get(mk)), None)
            if at is None:
                new.append(copy.deepcopy(item))
            else:
                out[at] = strategic_merge(out[at], item)
        # kustomize puts the patch's new items first.
        return new + out
    return copy.deepcopy(patch)


def render(kdir: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    """The documents of a kustomization directory, with its inline patches applied."""
    kpath = kdir / "kustomization.yaml"
    kdoc = yaml.safe_load(kpath.read_text())
    docs = []
    for res in kdoc.get("resources", []):
        target = (kdir / res).resolve()
        if target.is_dir():
            docs.extend(render(target))
        else:
            docs.extend((target, d) for d in yaml.safe_load_all(target.read_text()) if d)
    for i, p in enumerate(kdoc.get("patches", [])):
        if "patch" not in p:
            fail(f"{kpath.relative_to(REPO)}: patches[{i}]: only inline patches are checked")
            continue
        patch = yaml.safe_load(p["patch"])
        kind = p.get("target", {}).get("kind", patch.get("kind"))
        name = p.get("target", {}).get("name", patch.get("metadata", {}).get("name"))
        hits = [j for j, (_, d) in enumerate(docs)
                if d.get("kind") == kind and d.get("metadata", {}).get("name") == name]
        if len(hits) != 1:
            fail(f"{kpath.relative_to(REPO)}: patches[{i}]: {len(hits)} {kind}/{name} to patch")
            continue
        j = hits[0]
        if patch.get("$patch") == "delete":
            del docs[j]
            continue
        merged = strategic_merge(docs[j][1], patch)
        docs[j] = (kpath, merged)
    return docs


KEY_FILE_VARS = {"AUDIT_PRIVACY_TOKEN_KEY_FILE", "AUDIT_PRIVACY_MASTER_KEY_FILE"}
KEY_LIST_VARS = {"AUDIT_PRIVACY_RETIRED_TOKEN_KEY_FILES", "AUDIT_PRIVACY_RETIRED_MASTER_KEY_FILES"}
KEY_LITERAL_VARS = {"AUDIT_PRIVACY_TOKEN_KEY", "AUDIT_PRIVACY_MASTER_KEY"}


def check_privacy_wiring(where: str, docs) -> None:
    """Key files only from Secret volumes, the rules from a ConfigMap, no key literals."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for _, d in docs if d.get("kind") == "ConfigMap"}
    for _, doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            env = {}
            for ef in c.get("envFrom", []):
                env.update(maps.get(ef.get("configMapRef", {}).get("name"), {}))
            for e in c.get("env", []):
                env[e["name"]] = e.get("value") if "value" in e else e.get("valueFrom")
            what = f"{where}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            before = len(errors)

            def source(path):
                for m in c.get("volumeMounts", []):
                    mp = m["mountPath"].rstrip("/") + "/"
                    if path.startswith(mp) or path == m["mountPath"]:
                        return volumes.get(m["name"], {})
                return {}

            for var in sorted(KEY_LITERAL_VARS & set(env)):
                if isinstance(env[var], str) and env[var]:
                    fail(f"{what}: {var} holds a key as a literal: use {var}_FILE and a Secret volume")
            paths = [(v, env[v]) for v in KEY_FILE_VARS if isinstance(env.get(v), str)]
            for v in KEY_LIST_VARS:
                for entry in (env.get(v) or "").split(","):
                    if entry.strip():
                        paths.append((v, entry.split("=", 1)[-1].strip()))
            for var, path in sorted(paths):
                if "secret" not in source(path):
                    fail(f"{what}: {var} = {path} is not on a Secret volume")
            rules = env.get("AUDIT_PRIVACY_RULES_FILE")
            if isinstance(rules, str) and rules:
                vol = source(rules)
                if vol.get("configMap", {}).get("name") not in RULES_CONFIGMAPS:
                    fail(f"{what}: AUDIT_PRIVACY_RULES_FILE = {rules} is not on a rules ConfigMap volume")
            if (paths or rules) and len(errors) == before:
                print(f"ok   {what}: privacy keys from Secret files, rules from a ConfigMap")


def check_overlays() -> None:
    for kpath in sorted((HERE / "overlays").glob("*/kustomization.yaml")):
        before = len(errors)
        rel = kpath.parent.relative_to(REPO)
        docs = render(kpath.parent)
        for path, doc in docs:
            if path != kpath:
                continue  # unpatched: validated as its own file above
            try:
                kubernetes_validate.validate(doc, TARGET_VERSION, strict=True)
                print(f"ok   {rel} (rendered): {doc['kind']}/{doc['metadata']['name']} "
                      f"(Kubernetes {TARGET_VERSION}, strict)")
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                fail(f"{rel} (rendered): {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
        check_config(docs, compose=False)
        check_keda(docs)
        check_privacy_wiring(f"{rel} (rendered)", docs)
        if len(errors) == before:
            print(f"overlay {rel}: OK ({len(docs)} documents rendered)")


def main() -> int:
    docs = validate_manifests()
    check_config(docs)
    check_keda(docs)
    check_overlays()
    if errors:
        print(f"\n{len(errors)} problem(s)")
        return 1
    print("\nmanifests: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

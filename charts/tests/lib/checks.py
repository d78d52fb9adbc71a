#!/usr/bin/env python3
"""Checks on the chart's rendered manifests, and extraction of what other tools test.

Every check prints one line, `ok - <what>` or `not ok - <what>: <why>`; charts/tests/run counts
them. Subcommands:

  render    CASE RENDERED VALUES...   structural checks of one rendered case against its values
  rules     RENDERED OUT              the PrometheusRule's groups as a Prometheus rule file
  crds      RENDERED OUTDIR CASE      PrometheusRule / ServiceMonitor documents as JSON files
  dashboard RENDERED OUT              the dashboard's queries as a rule file (for promtool)
  args      RENDERED PREFIX           the CronJob container's args, env and sync.yaml to files
  binary    CASE RENDERED BIN WORKDIR the real mirrorsync accepts the rendered sync.yaml and args
  schema    SCHEMA                    values.schema.json's config keys match mirrorsync's sync.yaml
  dashboard-coverage RULES TEST      every dashboard query (RULES) has a promql_expr_test in TEST
  exact     TEST OUT                  a promtool test file made exact: at every eval_time it names,
                                      every alert of its rule files that it does not list is
                                      expected not to fire
"""

import os

import hashlib
import json
import re
import sys

import yaml

# The metric names the README's "Observability" section documents.
CONTRACT_METRICS = {
    "mirrorsync_process_start_time_seconds",
    "mirrorsync_runs_total",
    "mirrorsync_config_last_reload_successful",
    "mirrorsync_config_last_reload_success_timestamp_seconds",
    "mirrorsync_run_last_success_timestamp_seconds",
    "mirrorsync_run_duration_seconds",
    "mirrorsync_run_tags",
    "mirrorsync_tag_in_sync",
    "mirrorsync_tag_last_synced_timestamp_seconds",
    "mirrorsync_tag_lag_seconds",
    "mirrorsync_blobs_total",
    "mirrorsync_bytes_copied_total",
    "mirrorsync_http_requests_total",
    "mirrorsync_ratelimit_remaining",
    "mirrorsync_ratelimit_remaining_timestamp_seconds",
    "mirrorsync_run_bytes_copied",
    "mirrorsync_run_blobs",
    "mirrorsync_run_http_requests",
    "mirrorsync_run_tags_failed",
    "mirrorsync_upload_flow",
    "mirrorsync_request_window",
    "mirrorsync_request_pace_per_second",
    "mirrorsync_lag_max_seconds",
    "mirrorsync_repository_lag_max_seconds",
    "mirrorsync_repository_tags_out_of_sync",
    "mirrorsync_tag_lag_distribution_seconds",
}
# The Pushgateway's own per-group metric, and Prometheus's own per-target one.
PUSHGATEWAY_METRICS = {"push_time_seconds", "up"}

# Keys mirrorsync's sync.yaml accepts (src/config/raw.rs; unknown keys are errors there).
SYNC_TOP = {"schedule", "timezone", "concurrency", "target", "docker_config", "registries", "images", "tag_series",
            "targets", "spool_dir", "spool_size"}
SYNC_TARGET = {
    "registry", "path", "prefix", "insecure", "ca_file", "auth", "requests_per_second", "burst",
    "bytes_per_second", "concurrency",
}
SYNC_AUTH = {"username", "password_env", "password_file"}
SYNC_REGISTRY = {
    "mirrors", "prefix", "auth", "insecure", "ca_file", "requests_per_second", "burst",
    "bytes_per_second", "concurrency", "rate_limit_reserve",
}
SYNC_IMAGE = {
    "source", "tags", "platforms", "platforms_mode", "target", "immutable", "referrers", "backup_tag",
    "prune", "targets",
}
SYNC_TAG_FILTER = {"regex", "exclude", "semver", "newest", "prerelease", "all"}
# Chart-only keys in values.config that the chart turns into sync.yaml keys.
CHART_ONLY = {"caBundle": "ca_file"}
CHART_AUTH = {"username", "existingSecret", "existingSecretPasswordKey", "mountAs"}

CONFIG_DIR = "/etc/mirrorsync"
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}

passed = 0
failed = 0


def check(what, cond, why=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok - {what}")
    else:
        failed += 1
        print(f"not ok - {what}{': ' + why if why else ''}")
    return cond


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, over):
    """Helm's merge of values files: maps merge key by key, everything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return over


def find(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def metric_names(expr):
    """Metric names in a PromQL expression (identifiers not followed by '(' and not in {} or [])."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\boffset\s+[0-9a-z]+", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        if m.group(0) in PROMQL_KEYWORDS:
            continue
        if m.start() > 0 and expr[m.start() - 1] == "$":
            continue
        names.add(m.group(0))
    return names


def seconds(text):
    m = re.fullmatch(r"(\d+)([smhdw])", text)
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def go_duration_seconds(text):
    total = 0
    for n, unit in re.findall(r"(\d+)(h|m|s)", text):
        total += int(n) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


# --------------------------------------------------------------------------------------------
def render_checks(case, rendered, value_files):
    docs = load_docs(rendered)
    values = {}
    for f in value_files:
        with open(f) as fh:
            values = merge(values, yaml.safe_load(fh) or {})
    mode = values["mode"]
    shards = int(values["shards"])
    p = f"[{case}]"

    # Labels on every object.
    for d in docs:
        labels = d["metadata"].get("labels", {})
        need = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "helm.sh/chart"]
        missing = [k for k in need if k not in labels]
        check(f"{p} {d['kind']}/{d['metadata']['name']} has the app.kubernetes.io labels", not missing,
              f"missing {missing}")

    nulls = []

    def walk(node, path):
        if node is None:
            nulls.append(path)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for d in docs:
        walk(d, f"{d['kind']}/{d['metadata']['name']}")
    check(f"{p} no field renders empty (null)", not nulls, f"{nulls}")

    # The workload.
    if mode == "cronjob":
        check(f"{p} mode cronjob renders one CronJob and no Deployment/Service",
              len(find(docs, "CronJob")) == 1 and not find(docs, "Deployment") and not find(docs, "Service"))
        cj = find(docs, "CronJob")[0]
        job = cj["spec"]["jobTemplate"]["spec"]
        pod_tpl = job["template"]
    else:
        check(f"{p} mode deployment renders one Deployment and one Service and no CronJob",
              len(find(docs, "Deployment")) == 1 and len(find(docs, "Service")) == 1 and not find(docs, "CronJob"))
        dep = find(docs, "Deployment")[0]
        pod_tpl = dep["spec"]["template"]
    pod = pod_tpl["spec"]
    containers = pod["containers"]
    check(f"{p} one container named mirrorsync", [c["name"] for c in containers] == ["mirrorsync"])
    c = containers[0]
    args = c["args"]
    env = {e["name"]: e for e in c.get("env", [])}

    # Pod Security Standard "restricted".
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(f"{p} restricted: runs as non-root",
          csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
          and csc.get("runAsUser", psc.get("runAsUser", 1)) != 0)
    check(f"{p} restricted: allowPrivilegeEscalation false", csc.get("allowPrivilegeEscalation") is False)
    check(f"{p} restricted: capabilities drop ALL, add none",
          "ALL" in csc.get("capabilities", {}).get("drop", []) and not csc.get("capabilities", {}).get("add"))
    check(f"{p} restricted: seccomp RuntimeDefault",
          csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault")
    check(f"{p} read-only root filesystem", csc.get("readOnlyRootFilesystem") is True)
    check(f"{p} no privileged, host namespaces or hostPath",
          not csc.get("privileged") and not pod.get("hostNetwork") and not pod.get("hostPID")
          and not pod.get("hostIPC") and not any("hostPath" in v for v in pod.get("volumes", [])))
    res = c.get("resources", {})
    check(f"{p} resources: cpu and memory requests, memory limit",
          "cpu" in res.get("requests", {}) and "memory" in res.get("requests", {}) and "memory" in res.get("limits", {}))
    check(f"{p} no service account token mounted", pod.get("automountServiceAccountToken") is False)
    sa = values["serviceAccount"]
    sas = find(docs, "ServiceAccount")
    if sa["create"]:
        check(f"{p} the pod runs as the ServiceAccount the chart creates",
              len(sas) == 1 and pod.get("serviceAccountName") == sas[0]["metadata"]["name"]
              == (sa["name"] or expected_fullname(values)))
    else:
        check(f"{p} no ServiceAccount created; the pod uses {sa['name'] or 'default'}",
              not sas and pod.get("serviceAccountName") == (sa["name"] or "default"))
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    check(f"{p} /tmp is a writable emptyDir",
          "/tmp" in mounts and isinstance(vols.get(mounts["/tmp"]["name"], {}).get("emptyDir"), dict)
          and not mounts["/tmp"].get("readOnly"))
    many = len((values["config"].get("targets") or [])) > 1 and not values["config"].get("spool_dir")
    spool_path = values["spool"]["mountPath"]
    spool_vol = vols.get(mounts.get(spool_path, {}).get("name"), {})
    check(f"{p} {'a writable spool emptyDir at ' + spool_path if many else 'no spool volume'}"
          f"{' (sizeLimit ' + str(values['spool']['sizeLimit']) + ')' if many else ''}",
          (isinstance(spool_vol.get("emptyDir"), dict) and not mounts[spool_path].get("readOnly")
           and spool_vol["emptyDir"].get("sizeLimit") == (values["spool"]["sizeLimit"] or None))
          if many else "spool" not in vols)
    size = values["tmp"]["sizeLimit"]
    check(f"{p} /tmp sizeLimit {size or 'none'}",
          "/tmp" in mounts and vols[mounts["/tmp"]["name"]].get("emptyDir", {}).get("sizeLimit") == (size or None))
    check(f"{p} image reference", c["image"] == expected_image(values), f"{c['image']} != {expected_image(values)}")

    # sync.yaml: rendered from values, mounted where --config points.
    cms = [d for d in find(docs, "ConfigMap") if "sync.yaml" in d.get("data", {})]
    check(f"{p} one ConfigMap with sync.yaml", len(cms) == 1)
    text = cms[0]["data"]["sync.yaml"]
    sync = yaml.safe_load(text)
    check(f"{p} --config {CONFIG_DIR}/sync.yaml", arg_value(args, "--config") == f"{CONFIG_DIR}/sync.yaml")
    cfg_mount = mounts.get(CONFIG_DIR)
    projected = vols.get(cfg_mount["name"], {}).get("projected", {}) if cfg_mount else {}
    provided = {}
    for src in projected.get("sources", []):
        for kind in ("configMap", "secret"):
            if kind in src:
                for item in src[kind].get("items", []):
                    provided[f"{CONFIG_DIR}/{item['path']}"] = (kind, src[kind]["name"], item["key"])
    check(f"{p} sync.yaml is mounted read-only from the ConfigMap",
          cfg_mount is not None and cfg_mount.get("readOnly") is True
          and provided.get(f"{CONFIG_DIR}/sync.yaml") == ("configMap", cms[0]["metadata"]["name"], "sync.yaml"))
    body = "\n".join(l for l in text.splitlines() if not l.startswith("#"))
    checksum = pod_tpl["metadata"].get("annotations", {}).get("checksum/config", "")
    check(f"{p} pod template checksum/config is the sha256 of sync.yaml",
          checksum == hashlib.sha256(body.rstrip("\n").encode()).hexdigest(), checksum)
    check_sync_keys(p, sync)
    cfg = values["config"]
    targets = cfg.get("targets") or []
    if targets:
        plain = [{k: v for k, v in t.items() if k not in ("auth", "caBundle")} for t in targets]
        got = [{k: v for k, v in t.items() if k not in ("auth", "ca_file")} for t in sync.get("targets", [])]
        check(f"{p} sync.yaml targets from values, and no target", got == plain and "target" not in sync,
              f"{got} != {plain}")
        spool = None if len(targets) < 2 else cfg.get("spool_dir") or values["spool"]["mountPath"]
        check(f"{p} sync.yaml spool_dir {spool}", sync.get("spool_dir") == spool, f"{sync.get('spool_dir')}")
        check(f"{p} sync.yaml spool_size from values", sync.get("spool_size") == cfg.get("spool_size"))
    else:
        check(f"{p} sync.yaml target.registry from values", sync["target"]["registry"] == cfg["target"]["registry"])
        check(f"{p} no targets/spool in sync.yaml with config.target", not {"targets", "spool_dir", "spool_size"} & set(sync))
    check(f"{p} sync.yaml images from values", sync["images"] == cfg["images"])
    check(f"{p} sync.yaml schedule/timezone/concurrency from values",
          sync["schedule"] == values["schedule"] and sync["timezone"] == values["timezone"]
          and sync["concurrency"] == cfg["concurrency"])
    check(f"{p} sync.yaml tag_series from values", sync.get("tag_series") == cfg.get("tag_series"),
          f"{sync.get('tag_series')} != {cfg.get('tag_series')}")
    for host, reg in (cfg.get("registries") or {}).items():
        plain = {k: v for k, v in reg.items() if k not in ("auth", "caBundle")}
        got = {k: v for k, v in sync["registries"][host].items() if k not in ("auth", "ca_file")}
        check(f"{p} sync.yaml registries.{host} from values", got == plain, f"{got} != {plain}")

    # Credentials: only from Secrets, every referenced file mounted, every variable set.
    check(f"{p} no password in sync.yaml", "password:" not in text and not re.search(r"\bpassword\s*:", text))
    if targets:
        scopes = [(f"targets[{i}] ({t['name']})", t, sync["targets"][i]) for i, t in enumerate(targets)]
        paths = [sync["targets"][i].get(k, "") for i in range(len(targets)) for k in ("ca_file",)]
        paths += [sync["targets"][i].get("auth", {}).get("password_file", "") for i in range(len(targets))]
        paths = [x for x in paths if x]
        check(f"{p} every target's files at paths of their own", len(paths) == len(set(paths)), f"{paths}")
    else:
        scopes = [("target", cfg["target"], sync["target"])]
    scopes += [(f"registries.{h}", r, sync["registries"][h]) for h, r in (cfg.get("registries") or {}).items()]
    for scope, v, s in scopes:
        auth = v.get("auth") or {}
        if auth:
            key = auth.get("existingSecretPasswordKey", "password")
            if auth.get("mountAs", "file") == "env":
                var = s["auth"].get("password_env", "")
                ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
                check(f"{p} {scope}: password_env {var} from Secret {auth['existingSecret']}/{key}",
                      ref == {"name": auth["existingSecret"], "key": key} and "password_file" not in s["auth"])
            else:
                path = s["auth"].get("password_file", "")
                check(f"{p} {scope}: password_file {path} mounted from Secret {auth['existingSecret']}/{key}",
                      provided.get(path) == ("secret", auth["existingSecret"], key) and "password_env" not in s["auth"])
            check(f"{p} {scope}: username from values", s["auth"].get("username") == auth["username"])
        else:
            check(f"{p} {scope}: no auth when none is configured", "auth" not in s)
        ca = v.get("caBundle") or {}
        if ca:
            kind = "configMap" if "configMap" in ca else "secret"
            want = (kind, ca[kind]["name"], ca[kind].get("key", "ca.crt"))
            check(f"{p} {scope}: ca_file mounted from {kind} {want[1]}/{want[2]}",
                  provided.get(s.get("ca_file", "")) == want)
        else:
            check(f"{p} {scope}: no ca_file when no caBundle", "ca_file" not in s)
    dc = values["dockerConfig"]
    if dc["existingSecret"]:
        check(f"{p} docker_config mounted from Secret {dc['existingSecret']}/{dc['key']}",
              provided.get(sync.get("docker_config", "")) == ("secret", dc["existingSecret"], dc["key"]))
    else:
        check(f"{p} no docker_config without dockerConfig.existingSecret", "docker_config" not in sync)
    check(f"{p} every projected item is used by sync.yaml",
          all(path == f"{CONFIG_DIR}/sync.yaml" or path in text for path in provided))
    check(f"{p} secrets reach the pod only through Secret references",
          all("value" not in e or not re.search(r"pass|token|secret", e["name"], re.I) for e in env.values()))
    check(f"{p} --log-format {values['logFormat']}", arg_value(args, "--log-format") == values["logFormat"])
    check(f"{p} extraArgs come last", args[len(args) - len(values["extraArgs"]):] == values["extraArgs"]
          if values["extraArgs"] else True)

    if mode == "cronjob":
        cjv = values["cronjob"]
        spec = cj["spec"]
        check(f"{p} CronJob name fits 52 characters", len(cj["metadata"]["name"]) <= 52)
        check(f"{p} CronJob schedule and timeZone from values",
              spec["schedule"] == values["schedule"] and spec["timeZone"] == values["timezone"])
        check(f"{p} concurrencyPolicy Forbid", spec["concurrencyPolicy"] == "Forbid")
        check(f"{p} history limits, startingDeadlineSeconds, suspend from values",
              spec["successfulJobsHistoryLimit"] == cjv["successfulJobsHistoryLimit"]
              and spec["failedJobsHistoryLimit"] == cjv["failedJobsHistoryLimit"]
              and spec["startingDeadlineSeconds"] == cjv["startingDeadlineSeconds"]
              and spec["suspend"] == cjv["suspend"])
        check(f"{p} restartPolicy Never", pod.get("restartPolicy") == "Never")
        check(f"{p} backoffLimit from values", job["backoffLimit"] == cjv["backoffLimit"])
        check(f"{p} args start with sync --once", args[:2] == ["sync", "--once"])
        md = arg_value(args, "--max-duration")
        check(f"{p} --max-duration {md} = activeDeadlineSeconds {job['activeDeadlineSeconds']} - margin",
              md is not None and go_duration_seconds(md) == job["activeDeadlineSeconds"] - cjv["maxDurationMarginSeconds"]
              and 0 < go_duration_seconds(md) < job["activeDeadlineSeconds"])
        pg = values["metrics"]["pushgateway"]
        url = pg["url"]
        if pg["existingSecret"]:
            ref = env.get("MIRRORSYNC_PUSHGATEWAY", {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(f"{p} the Pushgateway URL from Secret {pg['existingSecret']}/{pg['existingSecretKey']} "
                  "(MIRRORSYNC_PUSHGATEWAY), not in the args",
                  ref == {"name": pg["existingSecret"], "key": pg["existingSecretKey"]}
                  and "--pushgateway" not in args and (not url or url not in " ".join(args)))
            url = url or "from-secret"
        else:
            check(f"{p} --pushgateway {'from values' if url else 'absent without a URL'}",
                  arg_value(args, "--pushgateway") == (url or None) and "MIRRORSYNC_PUSHGATEWAY" not in env)
        check(f"{p} --instance {'stable: ' + expected_instance(values) if url else 'absent without a URL'}",
              arg_value(args, "--instance") == (expected_instance(values) if url else None))
        rules = job.get("podFailurePolicy", {}).get("rules", [])
        fail_codes = [r["onExitCodes"]["values"] for r in rules if r["action"] == "FailJob"]
        deferred = cjv["deferredExitCode"]
        want_codes = list(cjv["failJobOnExitCodes"] or [])
        if deferred and deferred not in want_codes:
            want_codes.append(deferred)
        check(f"{p} podFailurePolicy fails the Job at once on exit codes {want_codes}",
              fail_codes == ([want_codes] if want_codes else []))
        check(f"{p} --deferred-exit-code {deferred} from cronjob.deferredExitCode",
              arg_value(args, "--deferred-exit-code") == str(deferred))
        check(f"{p} a deferral (exit {deferred}) is {'a failed' if deferred else 'a successful'} Job",
              (deferred in sum(fail_codes, [])) == (deferred != 0))
        check(f"{p} no --metrics-addr in cronjob mode", "--metrics-addr" not in args)
        if shards > 1:
            par = cjv["parallelism"] or shards
            check(f"{p} sharded: Indexed Job with completions={shards}, parallelism={par}",
                  job.get("completionMode") == "Indexed" and job.get("completions") == shards
                  and job.get("parallelism") == par)
            check(f"{p} sharded: MIRRORSYNC_SHARDS={shards}, the index from JOB_COMPLETION_INDEX",
                  env.get("MIRRORSYNC_SHARDS", {}).get("value") == str(shards) and "--shard" not in args)
        else:
            check(f"{p} unsharded: a plain Job",
                  "completionMode" not in job and "completions" not in job and "MIRRORSYNC_SHARDS" not in env)
    else:
        port = values["metrics"]["port"]
        bind = values["metrics"]["bindAddress"]
        addr = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
        check(f"{p} one replica, Recreate strategy",
              dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate")
        check(f"{p} args: sync --metrics-addr {addr} without --once",
              args[0] == "sync" and "--once" not in args and arg_value(args, "--metrics-addr") == addr)
        check(f"{p} --run-now follows deployment.runNow", ("--run-now" in args) == values["deployment"]["runNow"])
        check(f"{p} no --max-duration/--pushgateway/--deferred-exit-code in deployment mode",
              "--max-duration" not in args and "--pushgateway" not in args
              and "--deferred-exit-code" not in args)
        cport = {pp["name"]: pp["containerPort"] for pp in c.get("ports", [])}
        check(f"{p} container port http-metrics = {port}", cport.get("http-metrics") == port)
        # /healthz is liveness only (a stuck scheduler); ready once /metrics answers.
        check(f"{p} liveness probe on /healthz, readiness on /metrics",
              c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/metrics")
        svc = find(docs, "Service")[0]
        sel = svc["spec"]["selector"]
        pod_labels = pod_tpl["metadata"]["labels"]
        check(f"{p} Service selects the pod", all(pod_labels.get(k) == v for k, v in sel.items())
              and all(dep["spec"]["selector"]["matchLabels"].get(k) == v for k, v in sel.items()))
        check(f"{p} Service port {values['metrics']['service']['port']} -> http-metrics",
              svc["spec"]["ports"][0]["port"] == values["metrics"]["service"]["port"]
              and svc["spec"]["ports"][0]["targetPort"] == "http-metrics")
        sms = find(docs, "ServiceMonitor")
        if values["metrics"]["serviceMonitor"]["enabled"]:
            sm = sms[0] if sms else {}
            check(f"{p} ServiceMonitor selects the Service's port",
                  bool(sm) and all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
                  and sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
                  and sm["spec"]["endpoints"][0]["path"] == "/metrics"
                  and sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]])
            want = values["metrics"]["serviceMonitor"]["additionalLabels"]
            check(f"{p} ServiceMonitor additionalLabels", bool(sm) and all(sm["metadata"]["labels"].get(k) == v for k, v in want.items()))
        else:
            check(f"{p} no ServiceMonitor unless enabled", not sms)

    fs_group = (values.get("podSecurityContext") or {}).get("fsGroup")
    mode_bits = projected.get("defaultMode")
    check(f"{p} mounted files are {'0440 (owner and fsGroup)' if fs_group else '0444 (no fsGroup)'}",
          mode_bits == (0o440 if fs_group else 0o444), f"{mode_bits}")
    network_policy_checks(p, docs, values, mode, pod_tpl)

    # Alerts.
    prs = find(docs, "PrometheusRule")
    pr_values = values["metrics"]["prometheusRule"]
    alerts = pr_values["alerts"]
    key_to_name = {
        "tagLagging": "MirrorsyncTagLagging", "noSuccessfulRun": "MirrorsyncNoSuccessfulRun",
        "metricsMissing": "MirrorsyncMetricsMissing", "tagsFailing": "MirrorsyncTagsFailing",
        "rateLimitLow": "MirrorsyncRateLimitLow", "pushgatewayStale": "MirrorsyncPushgatewayStale",
        "configReloadFailed": "MirrorsyncConfigReloadFailed", "down": "MirrorsyncDown",
    }
    want = {n for k, n in key_to_name.items() if alerts[k]["enabled"]}
    if mode != "cronjob":
        want.discard("MirrorsyncPushgatewayStale")
    else:
        want -= {"MirrorsyncConfigReloadFailed", "MirrorsyncDown", "MirrorsyncMetricsMissing"}
    if pr_values["enabled"] and want:
        check(f"{p} one PrometheusRule", len(prs) == 1)
        rules = [r for g in prs[0]["spec"]["groups"] for r in g["rules"]]
        names = {r["alert"] for r in rules}
        check(f"{p} alerts rendered: {sorted(want)}", names == want, f"got {sorted(names)}")
        for r in rules:
            used = metric_names(r["expr"])
            check(f"{p} {r['alert']} uses contract metrics only ({sorted(used)})",
                  used and used <= CONTRACT_METRICS | PUSHGATEWAY_METRICS)
            sel = pr_values["selector"] or (f'job="mirrorsync", instance="{expected_instance(values)}"'
                                            if mode == "cronjob" else f'job="{expected_fullname(values)}"')
            check(f"{p} {r['alert']} selects {sel}", sel in r["expr"])
            key = next(k for k, n in key_to_name.items() if n == r["alert"])
            check(f"{p} {r['alert']} severity from values",
                  r["labels"]["severity"] == alerts[key]["severity"]
                  and all(r["labels"].get(k) == v for k, v in pr_values["additionalRuleLabels"].items()))
            if pr_values["runbookUrl"]:
                check(f"{p} {r['alert']} runbook_url",
                      r["annotations"].get("runbook_url") == f"{pr_values['runbookUrl']}#{r['alert'].lower()}")
        interval = (duration_seconds(pr_values["runInterval"]) if pr_values["runInterval"]
                    else schedule_period(values["schedule"]))
        missed = alerts["noSuccessfulRun"]["missedRuns"]
        no_success = [r for r in rules if r["alert"] == "MirrorsyncNoSuccessfulRun"]
        if no_success:
            check(f"{p} MirrorsyncNoSuccessfulRun after {missed} × runInterval "
                  f"({pr_values['runInterval'] or 'derived from ' + repr(values['schedule'])}: {interval}s)",
                  interval is not None and all(f"> {missed * interval}" in r["expr"] or "for" in r
                                               for r in no_success)
                  and any(f"> {missed * interval}" in r["expr"] for r in no_success),
                  "; ".join(r["expr"] for r in no_success))
        by_name = {}
        for r in rules:
            by_name.setdefault(r["alert"], []).append(r)
        cjv = values["cronjob"]
        if "MirrorsyncTagsFailing" in by_name:
            want_for = alerts["tagsFailing"]["for"] or (
                human_duration(cjv["activeDeadlineSeconds"]) if mode == "cronjob" else "15m")
            check(f"{p} MirrorsyncTagsFailing for {want_for}"
                  f"{'' if alerts['tagsFailing']['for'] else ' (derived)'}",
                  by_name["MirrorsyncTagsFailing"][0].get("for") == want_for)
        if "MirrorsyncRateLimitLow" in by_name:
            window = duration_seconds(alerts["rateLimitLow"]["window"])
            check(f"{p} MirrorsyncRateLimitLow reads only readings younger than {window}s",
                  f"mirrorsync_ratelimit_remaining_timestamp_seconds" in by_name["MirrorsyncRateLimitLow"][0]["expr"]
                  and by_name["MirrorsyncRateLimitLow"][0]["expr"].rstrip().endswith(f"< {window}"))
        if "MirrorsyncPushgatewayStale" in by_name:
            due = (alerts["pushgatewayStale"]["missedRuns"] * interval + cjv["startingDeadlineSeconds"]
                   + cjv["activeDeadlineSeconds"])
            overdue, never = by_name["MirrorsyncPushgatewayStale"]
            shard_labels = [f"{i}-of-{shards}" for i in range(shards)] if shards > 1 else [""]
            check(f"{p} MirrorsyncPushgatewayStale: a push is due within {due}s, for {alerts['pushgatewayStale']['for']}",
                  overdue["expr"].endswith(f"> {due}") and overdue["for"] == alerts["pushgatewayStale"]["for"])
            check(f"{p} MirrorsyncPushgatewayStale: absent() per expected shard {shard_labels}",
                  all(f'shard="{sl}"}})' in never["expr"] for sl in shard_labels)
                  and never["expr"].count("absent(") == len(shard_labels))
        for key, name in (("down", "MirrorsyncDown"), ("metricsMissing", "MirrorsyncMetricsMissing"),
                          ("configReloadFailed", "MirrorsyncConfigReloadFailed"), ("tagLagging", "MirrorsyncTagLagging")):
            if name in by_name:
                check(f"{p} {name} for {alerts[key]['for']} from values", by_name[name][0].get("for") == alerts[key]["for"])
        for name, group in by_name.items():
            labelsets = [tuple(sorted(r["labels"].items())) for r in group]
            check(f"{p} {name}: its {len(group)} rule(s) carry distinct label sets", len(set(labelsets)) == len(group))
        ns = pr_values["namespace"]
        if ns:
            check(f"{p} PrometheusRule namespace {ns}", prs[0]["metadata"]["namespace"] == ns)
    else:
        check(f"{p} no PrometheusRule unless enabled with an alert on", not prs)

    dash_values = values["metrics"]["dashboard"]
    dash = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if dash_values["enabled"]:
        d = dash[0] if dash else {"metadata": {"labels": {}}, "data": {}}
        check(f"{p} dashboard ConfigMap carries the sidecar labels",
              all(d["metadata"]["labels"].get(k) == v for k, v in dash_values["labels"].items()))
        try:
            board = json.loads(d["data"]["mirrorsync.json"])
            ok = bool(board.get("panels"))
        except Exception as e:  # noqa: BLE001
            ok, board = False, {}
            print(f"# {e}")
        check(f"{p} dashboard JSON parses and has panels", ok)
        exprs = " ".join(t["expr"] for pnl in board.get("panels", []) for t in pnl.get("targets", []))
        # cronjob mode sums the per-run gauges over runs; the daemon's counters grow.
        per_run = ("mirrorsync_run_bytes_copied", "mirrorsync_run_http_requests") if mode == "cronjob" \
            else ("mirrorsync_bytes_copied_total", "mirrorsync_http_requests_total")
        for metric in ("mirrorsync_tag_lag_seconds",) + per_run:
            check(f"{p} dashboard shows {metric}", metric in exprs)
        check(f"{p} dashboard requests by code", "sum by (code)" in exprs)
        check(f"{p} dashboard uses contract metrics only",
              metric_names(exprs) <= CONTRACT_METRICS | PUSHGATEWAY_METRICS, f"{metric_names(exprs) - CONTRACT_METRICS}")
        check(f"{p} dashboard filters every query by namespace, job and instance",
              all('namespace=~"$namespace", job=~"$job", instance=~"$instance"' in t["expr"]
                  for pnl in board.get("panels", []) for t in pnl.get("targets", [])))
        tv = [v for v in board.get("templating", {}).get("list", []) if v.get("name") == "target_name"]
        check(f"{p} dashboard has a Target variable (target_name, multi, All = .* so unlabelled series show)",
              len(tv) == 1 and tv[0].get("multi") is True and tv[0].get("includeAll") is True
              and tv[0].get("allValue") == ".*")
        per_target = {"mirrorsync_run_last_success_timestamp_seconds", "mirrorsync_run_duration_seconds",
                      "mirrorsync_run_tags", "mirrorsync_tag_lag_seconds", "mirrorsync_bytes_copied_total",
                      "mirrorsync_blobs_total", "mirrorsync_run_blobs", "mirrorsync_run_bytes_copied",
                      "mirrorsync_lag_max_seconds", "mirrorsync_repository_tags_out_of_sync"}
        bad = []
        for pnl in board.get("panels", []):
            for t in pnl.get("targets", []):
                for m in re.finditer(r"(mirrorsync_[a-z_]+)\{([^}]*)\}", t["expr"]):
                    if (m.group(1) in per_target) != ('target_name=~"$target_name"' in m.group(2)):
                        bad.append(f"panel {pnl['id']}: {m.group(1)}")
        check(f"{p} dashboard filters exactly the per-target series by $target_name", not bad, f"{bad}")
        ident = f"{NAMESPACE}/{expected_fullname(values)}"
        uid = dash_values["uid"] or "mirrorsync-" + hashlib.sha256(ident.encode()).hexdigest()[:12]
        check(f"{p} dashboard uid {uid}, title unique per release",
              board.get("uid") == uid and board.get("title") == (dash_values["title"] or f"mirrorsync {ident}"),
              f"{board.get('uid')} {board.get('title')}")
    else:
        check(f"{p} no dashboard unless enabled", not dash)


def network_policy_checks(p, docs, values, mode, pod_tpl):
    np_values = values["networkPolicy"]
    nps = find(docs, "NetworkPolicy")
    if not np_values["enabled"]:
        check(f"{p} no NetworkPolicy unless enabled", not nps)
        return
    check(f"{p} one NetworkPolicy", len(nps) == 1)
    if not nps:
        return
    spec = nps[0]["spec"]
    pod_labels = pod_tpl["metadata"]["labels"]
    check(f"{p} NetworkPolicy selects the pods",
          all(pod_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items()))
    ingress = spec.get("ingress", [])
    if mode == "cronjob":
        check(f"{p} NetworkPolicy: no ingress in cronjob mode", "Ingress" in spec["policyTypes"] and not ingress)
    else:
        port = values["metrics"]["port"]
        check(f"{p} NetworkPolicy: ingress only to the metrics port {port}, from metricsFrom",
              len(ingress) == 1 and ingress[0]["ports"] == [{"port": port, "protocol": "TCP"}]
              and ingress[0].get("from", []) == np_values["metricsFrom"])
    egress = np_values["egress"]
    if egress:
        dns = [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}] if np_values["allowDNS"] else []
        check(f"{p} NetworkPolicy: egress only as in values{' plus DNS' if dns else ''}",
              "Egress" in spec["policyTypes"] and spec.get("egress") == egress + dns)
    else:
        check(f"{p} NetworkPolicy: egress open without egress rules", "Egress" not in spec["policyTypes"])


def expected_fullname(values):
    return values.get("fullnameOverride") or f"{RELEASE}-mirrorsync"


def expected_instance(values):
    return values["metrics"]["pushgateway"]["instance"] or expected_fullname(values)


def expected_image(values):
    img = values["image"]
    repo = f"{img['registry']}/{img['repository']}" if img["registry"] else img["repository"]
    if img["digest"]:
        return f"{repo}@{img['digest']}"
    return f"{repo}:{img['tag'] or APP_VERSION}"


def human_duration(seconds):
    h, rest = divmod(int(seconds), 3600)
    m, sec = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "")
    return out + (f"{sec}s" if sec or not out else "")


def duration_seconds(text):
    """<n>s|m|h|d|w in seconds."""
    m = re.fullmatch(r"(\d+)([smhdw])", text)
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def schedule_period(schedule):
    """The longest gap between passes of the simple schedule forms the chart derives runInterval
    from; None for the others."""
    s = schedule.strip()
    nick = {"@hourly": 3600, "@daily": 86400, "@midnight": 86400, "@weekly": 604800,
            "@monthly": 31 * 86400, "@yearly": 366 * 86400, "@annually": 366 * 86400}
    if s.lower() in nick:
        return nick[s.lower()]
    f = s.split()
    step = re.compile(r"\*/([1-9]\d*)")
    if len(f) == 6:
        m = step.fullmatch(f[0])
        if m and f[1:] == ["*"] * 5:
            return int(m.group(1))
        if not f[0].isdigit():
            return None
        f = f[1:]
    if len(f) != 5:
        return None
    minute, hour, dom, mon, dow = f
    if f == ["*"] * 5:
        return 60
    if step.fullmatch(minute) and f[1:] == ["*"] * 4:
        return int(step.fullmatch(minute).group(1)) * 60
    if not minute.isdigit() or (dom, mon) != ("*", "*"):
        return None
    if hour == "*" and dow == "*":
        return 3600
    if step.fullmatch(hour) and dow == "*":
        return int(step.fullmatch(hour).group(1)) * 3600
    if hour.isdigit() and dow == "*":
        return 86400
    if hour.isdigit() and re.fullmatch(r"[0-7]|[A-Za-z]{3}", dow):
        return 604800
    return None


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def check_sync_keys(p, sync):
    bad = []
    bad += [k for k in sync if k not in SYNC_TOP]
    bad += [f"target.{k}" for k in sync.get("target", {}) if k not in SYNC_TARGET]
    bad += [f"target.auth.{k}" for k in sync.get("target", {}).get("auth", {}) if k not in SYNC_AUTH]
    for i, t in enumerate(sync.get("targets") or []):
        bad += [f"targets[{i}].{k}" for k in t if k not in SYNC_TARGET | {"name"}]
        bad += [f"targets[{i}].auth.{k}" for k in t.get("auth", {}) if k not in SYNC_AUTH]
    if "target" in sync and "targets" in sync:
        bad.append("target and targets")
    for host, reg in (sync.get("registries") or {}).items():
        bad += [f"registries.{host}.{k}" for k in reg if k not in SYNC_REGISTRY]
        bad += [f"registries.{host}.auth.{k}" for k in reg.get("auth", {}) if k not in SYNC_AUTH]
    for i, img in enumerate(sync.get("images", [])):
        if isinstance(img, dict):
            bad += [f"images[{i}].{k}" for k in img if k not in SYNC_IMAGE]
            for j, tag in enumerate(img.get("tags", [])):
                if isinstance(tag, dict):
                    bad += [f"images[{i}].tags[{j}].{k}" for k in tag if k not in SYNC_TAG_FILTER]
    check(f"{p} sync.yaml has only keys mirrorsync knows", not bad, f"unknown {bad}")


# --------------------------------------------------------------------------------------------
def extract_rules(rendered, out):
    prs = find(load_docs(rendered), "PrometheusRule")
    with open(out, "w") as f:
        yaml.safe_dump({"groups": prs[0]["spec"]["groups"]}, f, sort_keys=False, allow_unicode=True, width=1000)


def extract_crds(rendered, outdir, case):
    n = 0
    for d in load_docs(rendered):
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            with open(f"{outdir}/{case}-{d['kind']}.json", "w") as f:
                json.dump(d, f, indent=1)
            n += 1
    print(n)


# What Grafana puts in place of the dashboard's variables, for promtool: every namespace, job,
# instance and target (".*" also matches a series without target_name); a one-day range;
# one-hour graph intervals.
DASHBOARD_VARS = {"$__rate_interval": "5m", "$__interval": "1h", "$__range": "1d",
                  '"$namespace"': '".*"', '"$job"': '".*"', '"$instance"': '".*"',
                  '"$target_name"': '".*"'}


def expand_dashboard_vars(expr):
    for k, v in DASHBOARD_VARS.items():
        expr = expr.replace(k, v)
    return expr


def dashboard_coverage(dashboard_rules_path, test_path):
    """Every recorded panel query of a rendered dashboard is evaluated by a promql_expr_test."""
    with open(dashboard_rules_path) as f:
        records = [r["record"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    with open(test_path) as f:
        tests = yaml.safe_load(f)["tests"]
    exprs = " ".join(c["expr"] for t in tests for c in t.get("promql_expr_test", []))
    missing = [r for r in records if not re.search(re.escape(r) + r"\b", exprs)]
    if missing:
        print(f"no promql_expr_test for {missing}")
        sys.exit(1)


def dashboard_rules(rendered, out):
    cm = [d for d in find(load_docs(rendered), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")][0]
    board = json.loads(cm["data"]["mirrorsync.json"])
    rules = []
    for pnl in board["panels"]:
        for t in pnl["targets"]:
            expr = expand_dashboard_vars(t["expr"])
            rules.append({"record": f"dashboard:panel{pnl['id']}_{t['refId'].lower()}", "expr": expr})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)


def export_args(rendered, prefix):
    """What a test outside Kubernetes needs to run the CronJob's container as Kubernetes would."""
    docs = load_docs(rendered)
    cj = find(docs, "CronJob")[0]
    c = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    with open(f"{prefix}-args.txt", "w") as f:
        f.write("".join(a + "\n" for a in args))
    with open(f"{prefix}-args.json", "w") as f:
        json.dump(args, f, indent=1)
        f.write("\n")
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    with open(f"{prefix}-env.json", "w") as f:
        json.dump(env, f, indent=1, sort_keys=True)
        f.write("\n")
    cm = [d for d in find(docs, "ConfigMap") if "sync.yaml" in d.get("data", {})][0]
    with open(f"{prefix}-sync.yaml", "w") as f:
        f.write(cm["data"]["sync.yaml"])


def binary_checks(case, rendered, binary, workdir):
    """The real mirrorsync accepts what the chart renders: `mirrorsync check` on sync.yaml (its
    /etc/mirrorsync paths moved under WORKDIR, with stand-ins for the mounted Secrets and
    ConfigMaps, and the Secret-fed variables set), and the container's args (parsed by running them
    with --help appended: clap refuses an unknown flag or a bad value before it gets to --help)."""
    import os
    import shutil
    import subprocess

    p = f"[{case}]"
    docs = load_docs(rendered)
    pod = [d for d in docs if d["kind"] in ("CronJob", "Deployment")][0]
    spec = pod["spec"]["jobTemplate"]["spec"]["template"]["spec"] if pod["kind"] == "CronJob" else pod["spec"]["template"]["spec"]
    c = spec["containers"][0]
    root = os.path.join(workdir, case)
    shutil.rmtree(root, ignore_errors=True)
    cfg_dir = root + CONFIG_DIR
    os.makedirs(cfg_dir)
    cm = [d for d in find(docs, "ConfigMap") if "sync.yaml" in d.get("data", {})][0]
    with open(os.path.join(cfg_dir, "sync.yaml"), "w") as f:
        f.write(cm["data"]["sync.yaml"].replace(CONFIG_DIR + "/", cfg_dir + "/"))
    for vol in spec["volumes"]:
        for src in vol.get("projected", {}).get("sources", []):
            for kind in ("secret", "configMap"):
                for item in src.get(kind, {}).get("items", []):
                    path = os.path.join(cfg_dir, item["path"])
                    if path.endswith("sync.yaml"):
                        continue
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    if path.endswith(".pem"):
                        made = shutil.which("openssl") and subprocess.run(
                            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                             "-nodes", "-subj", "/CN=mirrorsync chart test CA", "-days", "1",
                             "-keyout", os.devnull, "-out", path], capture_output=True).returncode == 0
                        if not made:
                            open(path, "w").write("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
                    elif path.endswith("config.json"):
                        open(path, "w").write('{"auths": {}}\n')
                    else:
                        open(path, "w").write("not-a-real-password\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSYNC_")}
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "from-a-secret")
    run = subprocess.run([binary, "check", "--config", os.path.join(cfg_dir, "sync.yaml")],
                         capture_output=True, text=True, env=env, cwd=root, timeout=60)
    check(f"{p} mirrorsync check accepts the rendered sync.yaml", run.returncode == 0,
          (run.stdout + run.stderr).strip().replace("\n", " | "))
    args = list(c["args"])
    run = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    check(f"{p} mirrorsync accepts the container args", run.returncode == 0 and "Usage" in run.stdout,
          (run.stderr or run.stdout).strip().replace("\n", " | ")[:500])


def schema_checks(schema_path):
    with open(schema_path) as f:
        schema = json.load(f)
    cfg = schema["properties"]["config"]["properties"]
    target = set(cfg["target"]["properties"])
    named = set(schema["definitions"]["namedTarget"]["properties"])
    reg = set(cfg["registries"]["additionalProperties"]["properties"])
    auth = set(schema["definitions"]["auth"]["properties"])
    img = set(schema["definitions"]["image"]["oneOf"][1]["properties"])
    tag_filter = set(schema["definitions"]["image"]["oneOf"][1]["properties"]["tags"]["items"]["oneOf"][1]["properties"])

    def to_sync(keys):
        return {CHART_ONLY.get(k, k) for k in keys}

    check("[schema] config.target keys are sync.yaml target keys", to_sync(target) <= SYNC_TARGET,
          f"{to_sync(target) - SYNC_TARGET}")
    check("[schema] config.targets[] keys are config.target's and name", named == target | {"name"},
          f"{named ^ (target | {'name'})}")
    check("[schema] config.registries.<host> keys are sync.yaml registry keys", to_sync(reg) <= SYNC_REGISTRY,
          f"{to_sync(reg) - SYNC_REGISTRY}")
    check("[schema] every sync.yaml registry key can be set", SYNC_REGISTRY <= to_sync(reg) | {"auth"},
          f"{SYNC_REGISTRY - to_sync(reg)}")
    check("[schema] auth takes credentials only from Secrets", auth == CHART_AUTH, f"{auth}")
    check("[schema] image entries take sync.yaml's keys", img == SYNC_IMAGE, f"{img ^ SYNC_IMAGE}")
    check("[schema] tag filters take sync.yaml's keys", tag_filter == SYNC_TAG_FILTER, f"{tag_filter ^ SYNC_TAG_FILTER}")
    check("[schema] every sync.yaml target key can be set",
          SYNC_TARGET - {"path"} <= to_sync(target) | {"auth"}, f"{SYNC_TARGET - {'path'} - to_sync(target)}")

    unclosed = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                unclosed.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "#")
    check("[schema] every object with properties rejects unknown keys", not unclosed, f"{unclosed}")


def exact_alert_tests(test_path, out):
    """Completes a promtool test file so that it asserts exactly which alerts fire: for each
    eval_time of a test, every alert name of the rule files without an entry gets `exp_alerts: []`.
    Rule file paths become absolute (the output lives elsewhere)."""
    here = os.path.dirname(os.path.abspath(test_path))
    with open(test_path) as f:
        doc = yaml.safe_load(f)
    doc["rule_files"] = [os.path.normpath(os.path.join(here, r)) for r in doc["rule_files"]]
    names = []
    for path in doc["rule_files"]:
        with open(path) as f:
            for g in yaml.safe_load(f)["groups"]:
                names += [r["alert"] for r in g["rules"] if "alert" in r and r["alert"] not in names]
    for t in doc["tests"]:
        cases = t.get("alert_rule_test", [])
        listed = {}
        for c in cases:
            listed.setdefault(c["eval_time"], set()).add(c["alertname"])
        for when, have in listed.items():
            cases += [{"eval_time": when, "alertname": n, "exp_alerts": []} for n in names if n not in have]
        t["alert_rule_test"] = cases
    with open(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False, allow_unicode=True, width=1000)


RELEASE = "mirror"
NAMESPACE = "mirror"
APP_VERSION = ""

if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "render":
        case, rendered, app_version, *files = rest
        APP_VERSION = app_version
        render_checks(case, rendered, files)
    elif cmd == "rules":
        extract_rules(*rest)
    elif cmd == "crds":
        extract_crds(*rest)
    elif cmd == "dashboard":
        dashboard_rules(*rest)
    elif cmd == "args":
        export_args(*rest)
    elif cmd == "binary":
        binary_checks(*rest)
    elif cmd == "schema":
        schema_checks(*rest)
    elif cmd == "exact":
        exact_alert_tests(*rest)
    elif cmd == "dashboard-coverage":
        dashboard_coverage(*rest)
    else:
        sys.exit(f"unknown command {cmd}")
    sys.exit(1 if failed else 0)

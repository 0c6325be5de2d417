"""The Kubernetes manifests in deploy/kubernetes/: valid against the Kubernetes API schemas
(kubernetes-validate, strict, every Kubernetes version it bundles) and the Prometheus
Operator CRDs (vendored in tests/k8s_schemas/), accepted by the real binary with the pod's
environment, and consistent with each other: probe and scrape ports, drain timing, label
selectors, port names, mounts."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, ROOT

K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "tests" / "k8s_schemas"
NAME_LABEL = "app.kubernetes.io/name"
# Where the image puts the app (deploy/docker/Dockerfile: COPY examples/app.py /srv/app/app.py),
# so `check` can import the very app the ConfigMap names.
IMAGE_APP_DIRS = {"/srv/app": ROOT / "examples"}
# The supervisor kills workers still alive graceful_timeout + 5 s after SIGTERM
# (docs/OPERATIONS.md); with HTTP/3 the front drains first: 2 x graceful_timeout + 6 s.
LIFESPAN_SHUTDOWN = 5
HTTP3_EXTRA = 6
MIN_MARGIN = 2
CRD_GROUP = "monitoring.coreos.com"

try:
    from kubernetes_validate.utils import all_versions as _all_versions

    # Each version is bundled twice (plain and strict schemas): one entry per minor version.
    K8S_VERSIONS = sorted({".".join(v.split(".")[:2]) for v in _all_versions()},
                          key=lambda v: tuple(int(x) for x in v.split(".")))
except ImportError:  # the test that needs it skips
    K8S_VERSIONS = ["1.25", "1.37"]


# ---------------------------------------------------------------------------- loading


def manifest_files():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = {p.name: load(p) for p in manifest_files()}


def docs(kind=None):
    for fname, items in ALL.items():
        for d in items:
            if kind is None or d["kind"] == kind:
                yield fname, d


def one(kind, name=None):
    found = [d for _, d in docs(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, "expected one %s%s, found %d" % (kind, " " + name if name else "", len(found))
    return found[0]


def deployment():
    return one("Deployment")


def pod_spec():
    return deployment()["spec"]["template"]["spec"]


def pod_labels():
    return deployment()["spec"]["template"]["metadata"]["labels"]


def container():
    (c,) = [c for c in pod_spec()["containers"] if c["name"] == "genro-asgi"]
    return c


def config_map():
    """The ConfigMap mounted as the config volume, and the key the --config path names."""
    c = container()
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1]
    mount = [m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mount) == 1, "--config %s is not under exactly one volume mount" % config_path
    volume = [v for v in pod_spec()["volumes"] if v["name"] == mount[0]["name"]][0]
    assert "configMap" in volume, "the --config file is not mounted from a ConfigMap"
    cm = one("ConfigMap", volume["configMap"]["name"])
    key = config_path[len(mount[0]["mountPath"].rstrip("/")) + 1:]
    assert key in cm["data"], "ConfigMap %s has no key %s (from --config %s)" % (
        cm["metadata"]["name"], key, config_path)
    return cm, key


def cpu(quantity):
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def container_ports():
    return container().get("ports", [])


def container_port(ref, protocol="TCP"):
    """The container port a probe/Service/monitor names (by name or number), or None."""
    for p in container_ports():
        if p.get("protocol", "TCP") != protocol:
            continue
        if (isinstance(ref, str) and p.get("name") == ref) or p["containerPort"] == ref:
            return p
    return None


def is_subset(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


# ----------------------------------------------------------------- the pod's environment


def pod_env():
    """GENRO_ASGI_* variables as the kubelet would set them from the container's env."""
    c = container()
    out = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        src = e["valueFrom"]
        if "resourceFieldRef" in src:
            ref = src["resourceFieldRef"]
            assert ref["resource"] == "requests.cpu", "only requests.cpu is resolved here: %s" % ref
            owner = [x for x in pod_spec()["containers"] if x["name"] == ref.get("containerName", c["name"])][0]
            # The kubelet rounds CPU up to a whole multiple of the divisor.
            value = math.ceil(cpu(owner["resources"]["requests"]["cpu"]) / cpu(ref.get("divisor", "1")))
            out[e["name"]] = str(value)
        elif "secretKeyRef" in src:
            out[e["name"]] = "placeholder-secret"
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            out[e["name"]] = one("ConfigMap", ref["name"])["data"][ref["key"]]
        elif "fieldRef" in src:
            out[e["name"]] = "placeholder-field"
        else:
            raise AssertionError("unhandled valueFrom in %s" % e)
    return out


def service_link_env(force=False):
    """The variables the kubelet injects for every Service of the namespace unless
    enableServiceLinks is false (pkg/kubelet/envvars): a Service named genro-asgi yields
    GENRO_ASGI_SERVICE_HOST, GENRO_ASGI_PORT, ..."""
    if pod_spec().get("enableServiceLinks", True) is False and not force:
        return {}
    out = {}
    for _, svc in docs("Service"):
        if svc["spec"].get("clusterIP") == "None":
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ip = "10.96.0.10"
        ports = svc["spec"]["ports"]
        out[name + "_SERVICE_HOST"] = ip
        out[name + "_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                out["%s_SERVICE_PORT_%s" % (name, p["name"].upper().replace("-", "_"))] = str(p["port"])
        first = ports[0]
        out[name + "_PORT"] = "%s://%s:%d" % (first.get("protocol", "TCP").lower(), ip, first["port"])
        for p in ports:
            proto = p.get("protocol", "TCP")
            prefix = "%s_PORT_%d_%s" % (name, p["port"], proto)
            out[prefix] = "%s://%s:%d" % (proto.lower(), ip, p["port"])
            out[prefix + "_PROTO"] = proto.lower()
            out[prefix + "_PORT"] = str(p["port"])
            out[prefix + "_ADDR"] = ip
    return out


# `check` names an environment source as "env NAME".
ENV_SOURCE = re.compile(r"^(?:env|environment variable) (GENRO_ASGI_\w+)$")
CHECK_LINE = re.compile(r"^\[(\w+)\] (\w+) = (.*?)\s+\(([^()]*)\)(?:\s+\(not active yet:.*\))?\s*$")


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """`genro-asgi check` on the ConfigMap's file with the pod's environment; returns
    (CompletedProcess, {(section, key): (value, source)})."""
    cm, key = config_map()
    tmp = tmp_path_factory.mktemp("k8s")
    path = tmp / key
    path.write_text(cm["data"][key])
    text = cm["data"][key]
    app_dir = re.search(r"^app_dir\s*=\s*(\S+)", text, re.M)
    assert app_dir and app_dir.group(1) in IMAGE_APP_DIRS, "app_dir should be the image's app folder"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRO_ASGI_")}
    env.update(service_link_env())
    env.update(pod_env())
    r = subprocess.run([BIN, "check", "--config", str(path),
                        "--set", "application.app_dir=%s" % IMAGE_APP_DIRS[app_dir.group(1)]],
                       capture_output=True, text=True, env=env, cwd=str(tmp), timeout=120)
    values = {}
    for line in r.stdout.splitlines():
        m = CHECK_LINE.match(line)
        if m:
            values[(m.group(1), m.group(2))] = (m.group(3).strip(), m.group(4))
    return r, values


def effective(checked, section, key):
    r, values = checked
    assert r.returncode == 0, r.stderr
    return values[(section, key)][0]


# ---------------------------------------------------------------------- schema checks


def builtin_docs():
    return [(f, d) for f, d in docs() if d["apiVersion"].split("/")[0] != CRD_GROUP]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_valid_for_kubernetes(version):
    pytest.importorskip("kubernetes_validate")
    files = [str(p) for p in manifest_files()]
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    passed = set()
    for line in out.splitlines():
        assert not line.startswith(("ERROR", "FATAL")), out
        if line.startswith("WARN"):
            # Only the Prometheus Operator's kinds have no schema here (checked below); a
            # built-in kind with a mistyped apiVersion would land here too.
            assert re.search(r"Couldn't find schema for kind (PodMonitor|ServiceMonitor) with api version "
                             + re.escape(CRD_GROUP) + "/v1 ", line), line
        m = re.match(r"INFO (\S+) passed for resource (\S+) against version ([\d.]+)$", line)
        if m:
            assert m.group(3) == version, line
            passed.add((pathlib.Path(m.group(1)).name, m.group(2)))
    expected = {(f, "%s/%s" % (d["kind"].lower(), d["metadata"]["name"])) for f, d in builtin_docs()}
    assert passed == expected, out


def strict(schema):
    """CRD schemas allow unknown fields (the API server prunes them, kubectl's strict field
    validation rejects them): reject them here as well."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


CRD_SCHEMAS = {
    "PodMonitor": "monitoring.coreos.com_podmonitors.openapi.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.openapi.yaml",
}


@pytest.mark.parametrize("kind", sorted(CRD_SCHEMAS))
def test_monitors_valid_for_prometheus_operator_crd(kind):
    jsonschema = pytest.importorskip("jsonschema")
    schema = strict(yaml.safe_load((SCHEMAS / CRD_SCHEMAS[kind]).read_text()))
    validator = jsonschema.Draft7Validator(schema)
    found = list(docs(kind))
    assert found, "no %s in deploy/kubernetes" % kind
    for fname, d in found:
        assert d["apiVersion"] == CRD_GROUP + "/v1", fname
        assert d["metadata"]["name"], fname
        errors = ["%s: %s" % ("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(d)]
        assert not errors, "%s (%s) against the %s CRD:\n%s" % (fname, d["metadata"]["name"], kind, "\n".join(errors))


def test_strict_crd_validation_rejects_unknown_fields():
    jsonschema = pytest.importorskip("jsonschema")
    schema = strict(yaml.safe_load((SCHEMAS / CRD_SCHEMAS["PodMonitor"]).read_text()))
    bad = {"apiVersion": CRD_GROUP + "/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
           "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "intervall": "15s"}]}}
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)


# ------------------------------------------------------------- the binary and the pod


def test_config_accepted_by_the_binary_with_the_pod_env(checked):
    r, values = checked
    assert r.returncode == 0, "genro-asgi check rejected the ConfigMap with the pod's env:\n%s%s" % (r.stdout, r.stderr)
    assert "ok: configuration valid and app importable" in r.stdout, r.stdout
    # Every GENRO_ASGI_* variable of the pod reached a key (the binary rejects unknown ones).
    env_sources = {m.group(1) for _, src in values.values() for m in [ENV_SOURCE.match(src)] if m}
    for name in pod_env():
        assert name in env_sources, "%s set no key:\n%s" % (name, r.stdout)


def test_service_links_are_tolerated_by_the_binary(tmp_path):
    """With enableServiceLinks left on (the Kubernetes default), the kubelet's variables
    for the Services here are skipped by name and value shape, and `check` says so."""
    links = service_link_env(force=True)
    assert any(name.startswith("GENRO_ASGI_") for name in links), links
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRO_ASGI_")}
    env.update(links)
    env.update(pod_env())
    cm, key = config_map()
    path = tmp_path / key
    path.write_text(cm["data"][key])
    r = subprocess.run([BIN, "check", "--config", str(path),
                        "--set", "application.app_dir=%s" % (ROOT / "examples")],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    note = [line for line in r.stdout.splitlines() if line.startswith("ignoring ")]
    assert note and all(name in note[0] for name in links if name.startswith("GENRO_ASGI_")), r.stdout


def test_workers_match_the_cpu_request(checked):
    workers = int(effective(checked, "server", "workers"))
    request = cpu(container()["resources"]["requests"]["cpu"])
    assert workers == math.ceil(request), "workers %d != CPU request %s" % (workers, request)


def test_probes_use_the_metrics_listener(checked):
    assert effective(checked, "metrics", "enabled") == "true"
    assert effective(checked, "metrics", "host") in ("0.0.0.0", "::"), "the kubelet probes the pod IP"
    export_port = int(effective(checked, "metrics", "export_port"))
    c = container()
    expected_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert probe in c, probe
    for probe, path in expected_paths.items():
        if probe not in c:
            continue
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get.get("scheme", "HTTP") == "HTTP", "the metrics listener is plain HTTP"
        port = container_port(get["port"])
        assert port is not None, "%s port %r is not a container port" % (probe, get["port"])
        assert port["containerPort"] == export_port, "%s probes %d, [metrics] export_port is %d" % (
            probe, port["containerPort"], export_port)
    assert effective(checked, "server", "host") in ("0.0.0.0", "::")
    http = container_port("http")
    assert http and http["containerPort"] == int(effective(checked, "server", "port"))


def test_prometheus_annotations(checked):
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    export_port = int(effective(checked, "metrics", "export_port"))
    assert int(annotations["prometheus.io/port"]) == export_port
    assert container_port(export_port) is not None, "the metrics port is not declared on the container"
    assert annotations["prometheus.io/path"] == effective(checked, "metrics", "endpoint")
    for kind, key in (("PodMonitor", "podMetricsEndpoints"), ("ServiceMonitor", "endpoints")):
        for _, mon in docs(kind):
            for ep in mon["spec"][key]:
                assert ep.get("path", "/metrics") == effective(checked, "metrics", "endpoint")


def test_termination_grace_covers_the_drain(checked):
    spec = pod_spec()
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pathlib.PurePath(command[0]).name == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop >= 1
    graceful = float(effective(checked, "server", "graceful_timeout"))
    if effective(checked, "http3", "enabled") == "true":
        needed = pre_stop + 2 * graceful + HTTP3_EXTRA + MIN_MARGIN
    else:
        needed = pre_stop + graceful + LIFESPAN_SHUTDOWN + MIN_MARGIN
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= needed, "terminationGracePeriodSeconds %s < preStop %s + graceful_timeout %s + ... = %s" % (
        grace, pre_stop, graceful, needed)


def test_read_only_root_with_writable_run_dir_and_tmp(checked):
    c = container()
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    writable = [m["mountPath"].rstrip("/") for m in c["volumeMounts"]
                if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")]
    run_dir = effective(checked, "server", "run_dir")
    assert run_dir, "set [server] run_dir: the default is under $XDG_RUNTIME_DIR or /tmp"
    for path in (run_dir, "/tmp"):
        assert any(path == w or path.startswith(w + "/") for w in writable), "%s is not on a writable emptyDir" % path


# --------------------------------------------------------------- selectors and ports


def test_every_object_has_the_name_label():
    for fname, d in docs():
        assert d["metadata"].get("labels", {}).get(NAME_LABEL) == "genro-asgi", fname


def test_selectors_match_the_pods():
    labels = pod_labels()
    spec = deployment()["spec"]
    assert is_subset(spec["selector"]["matchLabels"], labels)
    for c in pod_spec().get("topologySpreadConstraints", []):
        assert is_subset(c["labelSelector"]["matchLabels"], labels)
    for fname, svc in docs("Service"):
        assert svc["spec"]["selector"] and is_subset(svc["spec"]["selector"], labels), fname
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for fname, d in docs(kind):
            assert is_subset(d["spec"]["selector"]["matchLabels"], labels), fname
    for fname, hpa in docs("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", deployment()["metadata"]["name"]), fname


def test_service_target_ports_exist():
    deployment_text = (K8S / "deployment.yaml").read_text()
    for fname, svc in docs("Service"):
        for p in svc["spec"]["ports"]:
            proto = p.get("protocol", "TCP")
            target = p.get("targetPort", p["port"])
            if container_port(target, proto) is None:
                # service-http3.yaml goes with the commented-out http3 UDP port.
                assert fname == "service-http3.yaml" and proto == "UDP", "%s: %s/%s is not a container port" % (
                    fname, target, proto)
                assert re.search(r"#\s*- name: %s\n\s*#\s*containerPort: \d+\n\s*#\s*protocol: UDP" % target,
                                 deployment_text), "deployment.yaml has no commented %s UDP port" % target


def test_monitor_ports_exist():
    for fname, pm in docs("PodMonitor"):
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert container_port(ep["port"]) is not None, "%s: pod port %r" % (fname, ep["port"])
    for fname, sm in docs("ServiceMonitor"):
        services = [s for _, s in docs("Service")
                    if is_subset(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        assert services, "%s: its selector matches no Service" % fname
        for ep in sm["spec"]["endpoints"]:
            for s in services:
                ports = {p.get("name"): p for p in s["spec"]["ports"]}
                assert ep["port"] in ports, "%s: Service %s has no port %r" % (fname, s["metadata"]["name"], ep["port"])
                assert container_port(ports[ep["port"]]["targetPort"]) is not None


def test_kustomization():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    text = (K8S / "kustomization.yaml").read_text()
    for r in k["resources"]:
        assert (K8S / r).is_file(), r
    for p in manifest_files():
        assert re.search(r"^\s*#?\s*- %s$" % re.escape(p.name), text, re.M), "%s is not in kustomization.yaml" % p.name
    assert not {"podmonitor.yaml", "servicemonitor.yaml"} <= set(k["resources"]), "would scrape twice"
    image = container()["image"].rsplit(":", 1)[0]
    assert image in {i["name"] for i in k.get("images", [])}

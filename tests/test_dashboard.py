"""The Grafana dashboard (deploy/grafana/genro-asgi.json) and the metric list in
docs/OBSERVABILITY.md, checked against a real scrape: every metric and label the
dashboard queries exists, and every metric family the server exports is documented with
its type and labels (and nothing else is), so neither can drift from the code."""

import json
import re

import httpx

from conftest import ROOT, wait_for
from test_observability import metrics_server, samples, scrape

DASHBOARD = ROOT / "deploy" / "grafana" / "genro-asgi.json"
DOC = ROOT / "docs" / "OBSERVABILITY.md"

NAME = re.compile(r"\bgenro_asgi_[a-zA-Z0-9_]+\b(?!\.py)")
# A metric selector with its matchers: genro_asgi_x{a="b", c=~"d"}.
SELECTOR = re.compile(r"\b(genro_asgi_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
SUFFIXES = {"_bucket": ("histogram",), "_sum": ("histogram", "summary"), "_count": ("histogram", "summary")}
# Labels Prometheus adds to every series.
TARGET_LABELS = {"job", "instance"}
# What the dashboard must show (the panels the operators asked for).
MUST_SHOW = {
    "genro_asgi_requests_total",
    "genro_asgi_request_duration_seconds",
    "genro_asgi_requests_in_flight",
    "genro_asgi_requests_stuck",
    "genro_asgi_connections_active",
    "genro_asgi_request_body_bytes_total",
    "genro_asgi_response_body_bytes_total",
    "genro_asgi_worker_up",
    "genro_asgi_workers",
    "genro_asgi_worker_restarts_total",
    "genro_asgi_reloads_total",
    "genro_asgi_loop_lag_seconds",
    "genro_asgi_errors_total",
}


def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard):
    """Every panel, rows included, with the panels of collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard):
    """(panel title, expr) for every panel target."""
    return [(p["title"], t["expr"]) for p in all_panels(dashboard) if p["type"] != "row"
            for t in p["targets"]]


def families(text):
    """{family name: type} from the `# TYPE` lines of an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def family_of(name, kinds):
    """The family a sample name belongs to (`x_bucket` -> `x` for a histogram), or None."""
    if name in kinds:
        return name
    for suffix, allowed in SUFFIXES.items():
        base = name[: -len(suffix)]
        if name.endswith(suffix) and kinds.get(base) in allowed:
            return base
    return None


def labels_by_family(values, kinds):
    """{family: set of label names of its samples}."""
    out = {}
    for name, labels in values:
        family = family_of(name, kinds)
        if family is not None:
            out.setdefault(family, set()).update(label for label, _ in labels)
    return out


def test_dashboard_structure():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and dashboard["uid"]
    (ds_input,) = [i for i in dashboard["__inputs"] if i["name"] == "DS_PROMETHEUS"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"

    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids: %r" % ids
    boxes = []
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for other, box in boxes:
            overlap = (pos["x"] < box["x"] + box["w"] and box["x"] < pos["x"] + pos["w"]
                       and pos["y"] < box["y"] + box["h"] and box["y"] < pos["y"] + pos["h"])
            assert not overlap, "%r overlaps %r" % (panel["title"], other)
        boxes.append((panel["title"], pos))
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        targets = panel["targets"]
        assert targets, "panel %r has no targets" % panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]

    for title, expr in queries(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
        # Every selector follows the job/instance variables.
        selectors = SELECTOR.findall(expr)
        assert selectors and len(selectors) == len(NAME.findall(expr)), (title, expr)
        for name, matchers in selectors:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (title, expr)
        # Quantiles are taken over rates of buckets summed by `le`.
        if "histogram_quantile" in expr:
            assert all("le" in [l.strip() for l in g.split(",")] for g in GROUPING.findall(expr)), expr
            assert "_bucket{" in expr and "rate(" in expr, expr
        for name in NAME.findall(expr):
            if name.endswith("_bucket"):
                assert "histogram_quantile" in expr, "raw buckets graphed in %r" % title
            if name.endswith("_total") or name.endswith("_bucket"):
                assert re.search(r"\b(rate|increase)\(\s*%s\b" % name, expr), \
                    "counter %s not under rate()/increase() in %r" % (name, title)

    shown = set()
    for _, expr in queries(dashboard):
        for name in NAME.findall(expr):
            shown.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert MUST_SHOW <= shown, "not on the dashboard: %s" % sorted(MUST_SHOW - shown)


def test_dashboard_and_docs_match_a_real_scrape(server):
    s = metrics_server(server, workers=2)
    with httpx.Client(base_url=s.url, timeout=10) as h1:
        for _ in range(5):
            assert h1.get("/").status_code == 200
        assert h1.post("/echo", content=b"x" * 100).content == b"x" * 100
        assert h1.get("/status?code=404").status_code == 404
        assert h1.get("/raise").status_code == 500
    with httpx.Client(base_url=s.url, timeout=10, http1=False, http2=True) as h2:
        assert h2.get("/").http_version == "HTTP/2"

    def settled():
        text = scrape(s)
        values = samples(text)
        answered = sum(v for (n, _), v in values.items() if n == "genro_asgi_requests_total")
        lag = sum(v for (n, _), v in values.items() if n == "genro_asgi_loop_lag_seconds_count")
        return text if answered == 9 and lag > 0 else None

    text = wait_for(settled, timeout=10, what="the requests and a loop lag sample in the scrape")
    kinds = families(text)
    values = samples(text)
    labels = labels_by_family(values, kinds)
    assert kinds and all(name.startswith("genro_asgi_") for name in kinds), kinds
    assert set(labels) == set(kinds), "families without samples: %s" % sorted(set(kinds) - set(labels))

    # Every metric and label the dashboard queries exists.
    dashboard = load_dashboard()
    checked = list(queries(dashboard))
    checked += [("variable " + v["name"], v["definition"])
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for title, expr in checked:
        used = set()
        for name in NAME.findall(expr):
            family = family_of(name, kinds)
            assert family is not None, "%r queries %s, which the server does not export" % (title, name)
            used.add(family)
        known = set(TARGET_LABELS)
        for family in used:
            known |= labels[family]
        for name, matchers in SELECTOR.findall(expr):
            family = family_of(name, kinds)
            for label in MATCHER.findall(matchers):
                assert label in labels[family] | TARGET_LABELS, \
                    "%r: %s has no label %r" % (title, family, label)
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (l.strip() for l in grouping.split(","))):
                assert label in known, "%r groups by %r, which %s do not have" % (title, label, sorted(used))

    # The docs list every family with its type and labels, and no other.
    doc = DOC.read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\|\s*`(genro_asgi_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), set(re.findall(r"`([a-z_]+)`", m.group(3))))
    assert set(rows) == set(kinds), "documented %s, exported %s" % (
        sorted(set(rows) - set(kinds)), sorted(set(kinds) - set(rows)))
    for family, kind in kinds.items():
        documented_kind, documented_labels = rows[family]
        assert documented_kind == kind, "%s is a %s, documented as %s" % (family, kind, documented_kind)
        assert documented_labels == labels[family] - {"le"}, \
            "%s has labels %s, documented %s" % (family, sorted(labels[family] - {"le"}), sorted(documented_labels))
    for name in set(NAME.findall(doc)):
        assert family_of(name, kinds) is not None, "the docs name %s, which is not exported" % name

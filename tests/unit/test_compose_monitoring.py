"""docker-compose.yml's watching side, read like the rest (test_compose.py): Prometheus scrapes exactly the
four services on their settings ports, the Grafana dashboard uses only metrics the services expose, on
the provisioned datasource, Kafka UI points at the in-network listener; every image is pinned and the
header comment lists every published port."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.compose_files import (COMPOSE_FILE, ROOT, SERVICES, command_of, depends_on, env_of, has_healthcheck,
                                      healthcheck_text, load_compose, option, published, settings_class)


# ---------------------------------------------------------------- watching it: Prometheus, Grafana, Kafka UI

OPS = ROOT / "ops"
PROMETHEUS_FILE = OPS / "prometheus.yml"
GRAFANA_DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = OPS / "grafana" / "dashboards" / "cancelflow.json"
PROMETHEUS_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"  # the prom/prometheus image's --config.file
GRAFANA_DEFAULT_PROVISIONING = "/etc/grafana/provisioning"  # the grafana/grafana image's GF_PATHS_PROVISIONING

# What the dashboard must show, named as in the exposition (shared/metrics.py).
DASHBOARD_METRICS = {
    "cancelflow_messages_consumed_total", "cancelflow_messages_produced_total", "cancelflow_messages_failed_total",
    "cancelflow_messages_dead_lettered_total", "cancelflow_batch_processing_seconds", "cancelflow_consumer_lag",
    "cancelflow_outbox_backlog", "cancelflow_notifications_sent_total", "cancelflow_messages_duplicate_total",
}

# Series names prometheus_client exposes for one metric family, by type (no `_created`: nothing should chart it).
EXPOSITION_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                       "summary": ("", "_sum", "_count"), "info": ("_info",), "stateset": ("",), "enum": ("",)}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "count_values", "day_of_month", "day_of_week", "day_of_year", "delta",
    "deriv", "exp", "floor", "group", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "max", "max_over_time", "min", "min_over_time", "predict_linear",
    "present_over_time", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "stdvar_over_time", "sum", "sum_over_time",
    "time", "timestamp", "topk", "vector",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right"}
PROMQL_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exposed_metrics() -> dict[str, tuple[str, set[str]]]:
    """Series name as scraped -> (family name, label names), for every metric object in shared/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    module = importlib.import_module("shared.metrics")
    out: dict[str, tuple[str, set[str]]] = {}
    for obj in vars(module).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = set(obj._labelnames)
        for family in obj.describe():
            for suffix in EXPOSITION_SUFFIXES[family.type]:
                out[family.name + suffix] = (family.name, labels)
    return out


def promql_parts(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, function names, grouping labels) of one PromQL expression."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)   # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                                            # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                                           # ranges, subqueries
    grouping: set[str] = set()
    for match in PROMQL_GROUPING.finditer(text):
        grouping |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    text = PROMQL_GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                                          # Grafana variables
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        if re.match(r"\s*\(", text[match.end():]):
            functions.add(name)
        elif name.lower() not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions, grouping


def dashboard() -> dict:
    import json

    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_targets(node) -> list[dict]:
    """Every query (a dict with `expr`) anywhere in the dashboard: panels, rows' nested panels, templating."""
    found: list[dict] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node)
        for value in node.values():
            found += dashboard_targets(value)
    elif isinstance(node, list):
        for value in node:
            found += dashboard_targets(value)
    return found


def mounts(service_def: dict) -> list[tuple[Path, str]]:
    """Bind mounts as (absolute host path, container path)."""
    out: list[tuple[Path, str]] = []
    for volume in service_def.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "bind") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        else:
            parts = str(volume).split(":")
            if len(parts) < 2 or not parts[0].startswith((".", "/")):
                continue  # a named volume or an anonymous one
            source, target = parts[0], parts[1]
        out.append(((ROOT / source).resolve(), target))
    return out


def container_path(service_def: dict, host_path: Path) -> str | None:
    """Where a file of the repository appears inside the container (the most specific mount wins)."""
    host_path = host_path.resolve()
    best: tuple[int, str] | None = None
    for source, target in mounts(service_def):
        if host_path == source or source in host_path.parents:
            rest = host_path.relative_to(source).as_posix()
            path = target if rest == "." else f"{target.rstrip('/')}/{rest}"
            if best is None or len(source.parts) > best[0]:
                best = (len(source.parts), path)
    return None if best is None else best[1]


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest)."""
    image, _, digest = image.partition("@")
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
    else:
        repository, tag = image, None
    return repository, tag, digest or None


@pytest.mark.parametrize(("expr", "metrics", "functions", "grouping"), [
    ('sum by (service, topic) (rate(a_total{topic=~"x.*"}[$__rate_interval]))', {"a_total"}, {"sum", "rate"},
     {"service", "topic"}),
    ("histogram_quantile(0.95, sum(rate(h_bucket[5m])) by (le)) or vector(0)", {"h_bucket"},
     {"histogram_quantile", "sum", "rate", "vector"}, {"le"}),
    ("g offset 5m / on (service) group_left h", {"g", "h"}, set(), {"service"}),
])
def test_promql_parts_finds_metrics_functions_and_grouping_labels(expr, metrics, functions, grouping):
    assert promql_parts(expr) == (metrics, functions, grouping)


def test_prometheus_scrapes_exactly_the_four_services_on_their_settings_ports(compose):
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    default_interval = (config.get("global") or {}).get("scrape_interval", "1m")
    default_timeout = (config.get("global") or {}).get("scrape_timeout", "10s")
    targets: list[str] = []
    for job in config["scrape_configs"]:
        assert not [key for key in job if key.endswith("_sd_configs") and key != "static_configs"], job
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        assert job.get("scheme", "http") == "http", job["job_name"]
        interval = job.get("scrape_interval", default_interval)
        assert interval == "5s", f"{job['job_name']} scrapes every {interval}"
        assert duration_seconds(job.get("scrape_timeout", default_timeout)) <= duration_seconds(interval)
        for static in job.get("static_configs") or []:
            # The metrics carry a `service` label; a target label of that name would rename it exported_service.
            assert "service" not in (static.get("labels") or {}), job["job_name"]
            targets += [str(target) for target in static["targets"]]
    expected = [f"{service}:{settings_class(service).model_fields['http_port'].default}" for service in SERVICES]
    assert sorted(targets) == sorted(expected)
    for target in targets:
        host, _, port = target.partition(":")
        assert host in compose["services"], f"{target}: no compose service {host}"
        assert option(command_of(compose["services"][host]), "--port") == port, target


def test_prometheus_container_reads_the_ops_config_publishes_9090_and_is_health_checked(compose):
    prometheus = compose["services"]["prometheus"]
    assert image_parts(prometheus["image"])[0] in {"prom/prometheus", "quay.io/prometheus/prometheus"}
    assert published(prometheus).get(9090) == 9090
    config_path = option(command_of(prometheus), "--config.file") or PROMETHEUS_DEFAULT_CONFIG
    assert container_path(prometheus, PROMETHEUS_FILE) == config_path
    assert has_healthcheck(prometheus)
    assert re.search(r":9090/-/(healthy|ready)\b", healthcheck_text(prometheus)), healthcheck_text(prometheus)


def test_dashboard_uses_only_metrics_that_shared_metrics_exposes():
    exposed = exposed_metrics()
    targets = dashboard_targets(dashboard())
    assert targets, "the dashboard has no queries"
    for target in targets:
        metrics, functions, grouping = promql_parts(target["expr"])
        assert metrics, f"no metric in {target['expr']!r}"
        unknown = sorted(metrics - set(exposed))
        assert not unknown, f"{target['expr']!r} uses {unknown}, which shared/metrics.py does not expose"
        assert functions <= PROMQL_FUNCTIONS, f"{target['expr']!r}: unknown functions {functions - PROMQL_FUNCTIONS}"
        labels = set().union(*(exposed[name][1] for name in metrics))
        if any(name.endswith("_bucket") for name in metrics):
            labels.add("le")
        assert grouping <= labels, f"{target['expr']!r} groups by {sorted(grouping - labels)}, no such label"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat") or ""))
        assert legend <= (grouping or labels), f"{target['expr']!r}: legend uses {sorted(legend)}"


def test_dashboard_shows_every_pipeline_metric():
    exposed = exposed_metrics()
    families = {family for family, _ in exposed.values()}
    used: set[str] = set()
    exprs = [target["expr"] for target in dashboard_targets(dashboard())]
    for expr in exprs:
        used |= {exposed[name][0] for name in promql_parts(expr)[0] if name in exposed}
    wanted = {name.removesuffix("_total") if name.removesuffix("_total") in families else name
              for name in DASHBOARD_METRICS}
    assert wanted <= families, f"not in shared/metrics.py: {sorted(wanted - families)}"
    assert not wanted - used, f"no panel for {sorted(wanted - used)}"
    # Per service and topic where the metric has both labels; latency as p50 and p95.
    for name, (family, labels) in exposed.items():
        if family in used and {"service", "topic"} <= labels and name.endswith("_total"):
            assert any(name in promql_parts(e)[0] and {"service", "topic"} <= promql_parts(e)[2] for e in exprs), name
    for quantile in ("0.5", "0.95"):
        assert any(re.search(rf"histogram_quantile\(\s*{re.escape(quantile)}\s*,.*"
                             r"cancelflow_batch_processing_seconds_bucket", e) for e in exprs), quantile


def test_dashboard_queries_the_provisioned_prometheus_datasource(compose):
    sources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    prometheus_sources = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus_sources) == 1
    source = prometheus_sources[0]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and "prometheus" in compose["services"]
    assert url.port in published(compose["services"]["prometheus"]), "the datasource must use Prometheus' own port"
    assert source.get("uid"), "a fixed uid, so the dashboard can name it"

    board = dashboard()
    assert board.get("uid") and board.get("title")

    def check(node, inherited=None):
        """Every Prometheus datasource reference names the provisioned uid; every query has one (its own or its
        panel's)."""
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") != "grafana":
                assert ds.get("uid") == source["uid"], ds
            ds = ds if ds is not None else inherited
            if isinstance(node.get("expr"), str):
                assert isinstance(ds, dict) and ds.get("uid") == source["uid"], (node["expr"], ds)
            for value in node.values():
                check(value, ds)
        elif isinstance(node, list):
            for value in node:
                check(value, inherited)

    check(board)


def test_grafana_mounts_the_provisioning_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    assert image_parts(grafana["image"])[0] == "grafana/grafana"
    env = env_of(grafana)
    provisioning = env.get("GF_PATHS_PROVISIONING", GRAFANA_DEFAULT_PROVISIONING).rstrip("/")
    datasource_path = container_path(grafana, GRAFANA_DATASOURCES)
    provider_path = container_path(grafana, GRAFANA_PROVIDERS)
    assert datasource_path and datasource_path.rsplit("/", 1)[0] == f"{provisioning}/datasources", datasource_path
    assert provider_path and provider_path.rsplit("/", 1)[0] == f"{provisioning}/dashboards", provider_path

    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    dashboard_path = container_path(grafana, DASHBOARD_FILE)
    assert dashboard_path, "ops/grafana/dashboards is not mounted into grafana"
    assert any(p.get("type", "file") == "file" and p["options"]["path"].rstrip("/") == dashboard_path.rsplit("/", 1)[0]
               for p in providers), f"no file provider reads {dashboard_path}"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == dashboard_path


def test_grafana_is_anonymous_viewer_on_3000_after_prometheus(compose):
    grafana = compose["services"]["grafana"]
    env = env_of(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"].lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert published(grafana).get(3000) == 3000
    assert depends_on(grafana).get("prometheus") == "service_healthy"


def test_kafka_ui_points_at_the_in_network_kafka_listener(compose):
    kafka_ui = compose["services"]["kafka-ui"]
    assert image_parts(kafka_ui["image"])[0] in {"provectuslabs/kafka-ui", "kafbat/kafka-ui", "ghcr.io/kafbat/kafka-ui"}
    env = env_of(kafka_ui)
    assert env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:9092"
    advertised = env_of(compose["services"]["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{env['KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS']}" in advertised
    assert published(kafka_ui).get(8080) == 8080
    assert depends_on(kafka_ui).get("kafka") == "service_healthy"


@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.sasl.yml"])
def test_images_are_pinned(compose_file):
    services = load_compose(compose_file)["services"]
    for name, definition in services.items():
        if "image" not in definition:
            continue
        repository, tag, digest = image_parts(str(definition["image"]))
        assert tag or digest, f"{compose_file}: {name} runs {definition['image']} with no tag"
        assert tag != "latest", f"{compose_file}: {name} runs {definition['image']}"
        if "build" not in definition and not digest:
            assert re.search(r"\d", tag), f"{compose_file}: {name} runs {definition['image']}, not a version"


def test_header_comment_lists_every_published_host_port(compose):
    header = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    for name, definition in compose["services"].items():
        for host_port in published(definition).values():
            assert re.search(rf"\b{host_port}\b", text), f"the header does not mention {name}'s port {host_port}"

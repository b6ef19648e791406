"""The monitoring files of deploy/: the Grafana dashboard and Prometheus's alerts ask only for
metrics the service exposes at /metrics, Prometheus's configuration and rules pass promtool, and
Grafana's provisioning finds its data source and the dashboard where docker-compose.yml mounts them."""

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "songbook.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "songbook.yml"

# Series Prometheus makes itself, for every target: rules may use them, the service does not expose them.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# The series of a family besides its own name: a counter's _total, a histogram's _bucket, _sum and _count.
SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")

PROMQL_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
    | {"limitk", "limit_ratio"}
)
# Prometheus's functions, by name (start and end are the @ modifier's).
_FUNCTION_NAMES = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing end exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt start stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp
    vector year
"""
PROMQL_FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
    | {"atan2", "inf", "nan"}
)

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")  # range selectors and subqueries: [5m], [1h:1m]
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKENS = re.compile(r"(?P<number>\.?\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:(?P<selector>.*?)\s*,\s*)?\w+\s*\)")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the function names `expr` uses; labels, strings, durations, numbers,
    keywords and Grafana's variables are none of them."""
    for pattern in (_STRINGS, _GRAFANA_VARIABLES, _LABEL_MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    metrics: set[str] = set()
    functions: set[str] = set()
    for token in _TOKENS.finditer(expr):
        name = token["name"]
        if name is None:
            continue
        if token["call"]:
            functions.add(name)
        elif name.lower() not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions


def exposed_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers. A labelled metric with no child yet
    has only its `# HELP`/`# TYPE` lines: the parser reports it as a family without samples, and a
    counter's family under its name without `_total`; the suffixes stand for its series to come."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES)
        names.update(sample.name for sample in family.samples)
    return names


def load_yaml(path: Path) -> Any:
    # PyYAML comes with uvicorn[standard]; it has no type stubs here, hence the module as a value.
    yaml: ModuleType = pytest.importorskip("yaml", reason="PyYAML (a dependency of uvicorn[standard]) is missing")
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The dashboard's panels, those of collapsed rows included, without the rows themselves."""
    for panel in container.get("panels", []):
        if panel.get("type") == "row":
            yield from panels(panel)
        else:
            yield panel


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by where it is: panels' targets and variables."""
    board = dashboard()
    queries = {
        f"panel {panel['title']!r} target {target.get('refId')}": target["expr"]
        for panel in panels(board)
        for target in panel.get("targets", [])
        if target.get("expr")
    }
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            match = _LABEL_VALUES.fullmatch(variable["definition"].strip())
            assert match, f"variable {variable['name']}: only label_values(...) is read here"
            if match["selector"]:
                queries[f"variable {variable['name']}"] = match["selector"]
    return queries


def alert_queries() -> dict[str, str]:
    config = load_yaml(PROMETHEUS_CONFIG)
    queries: dict[str, str] = {}
    for rule_file in config.get("rule_files", []):
        for group in load_yaml(PROMETHEUS_CONFIG.parent / rule_file)["groups"]:
            for rule in group["rules"]:
                queries[f"{rule_file}: {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return queries


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = load_yaml(COMPOSE)["services"][name]
    return service


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: the path in the container, and what of the repository is there."""
    found: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            found[target] = (ROOT / source).resolve()
    return found


def test_promql_names_reads_only_metric_names() -> None:
    expr = """
        histogram_quantile(0.99, sum by (le, http_route) (
            rate(a_bucket{http_route=~"/songs/{song_id}|unmatched", instance=~"$instance"}[$__rate_interval] offset 1h)
        ))
        / on (instance) group_left (version) max without (le) (b_total[5m:30s]) > bool 1e3
        and ignoring (x) c unless sum(d{le="+Inf"}) * Inf or ${bare} + [[old]]
    """

    assert promql_names(expr) == ({"a_bucket", "b_total", "c", "d"}, {"histogram_quantile", "sum", "rate", "max"})


def test_exposed_names_include_the_families_without_samples() -> None:
    exposition = (
        "# HELP songbook_db_errors_total Errors.\n# TYPE songbook_db_errors_total counter\n"
        "# HELP build_info Build.\n# TYPE build_info gauge\n"
        "# HELP d Duration.\n# TYPE d histogram\n"
        'd_bucket{le="+Inf"} 1.0\nd_count 1.0\nd_sum 0.5\n'
    )

    names = exposed_names(exposition)

    assert {"songbook_db_errors_total", "build_info", "d_bucket", "d_sum", "d_count"} <= names


def test_every_dashboard_panel_has_a_query_of_known_functions() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        exprs = [target.get("expr", "") for target in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        assert all(expr.strip() for expr in exprs), f"panel {panel['title']!r} has an empty query"
    for where, expr in dashboard_queries().items():
        metrics, functions = promql_names(expr)
        assert metrics, f"{where} names no metric: {expr}"
        assert functions <= PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS, f"{where}: unknown function in {expr}"


async def test_the_dashboard_and_the_alerts_ask_only_for_metrics_the_service_exposes(
    client: httpx.AsyncClient,
) -> None:
    # A route and an unmatched path first, so that the labelled request series exist.
    await client.get("/songs")
    await client.get("/nonexistent")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")  # Prometheus's text format
    exposed = exposed_names(response.text)
    queries = {**dashboard_queries(), **alert_queries()}
    missing = {
        where: sorted(name for name in promql_names(expr)[0] if name not in exposed | SCRAPE_SERIES)
        for where, expr in queries.items()
    }
    assert {where: names for where, names in missing.items() if names} == {}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus, which ships it)")
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_and_its_rules_pass_promtool() -> None:
    run_promtool("check", "config", str(PROMETHEUS_CONFIG))  # checks the rule files it names, too
    for rule_file in load_yaml(PROMETHEUS_CONFIG).get("rule_files", []):
        run_promtool("check", "rules", str(PROMETHEUS_CONFIG.parent / rule_file))


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query made a recording rule, Grafana's variables given values, for promtool to parse."""

    def with_values(expr: str) -> str:
        expr = re.sub(r"\$\{?__(?:rate_interval|interval|range)\}?", "5m", expr)
        return _GRAFANA_VARIABLES.sub(".*", expr)  # the others are label values, in matchers

    rules = [
        {"record": f"songbook_dashboard:query_{number}", "expr": with_values(expr)}
        for number, expr in enumerate(dashboard_queries().values())
    ]
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML

    run_promtool("check", "rules", str(rule_file))


def test_prometheus_scrapes_the_web_replicas_with_its_config_and_rules_mounted() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    web = compose_service("web")
    port = web["command"][web["command"].index("--port") + 1]
    sd_configs = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert sd_configs
    for sd in sd_configs:
        assert sd["names"] == ["web"]
        assert str(sd["port"]) == port

    prometheus = compose_service("prometheus")
    mounted = mounts(prometheus)
    assert mounted["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    for rule_file in config.get("rule_files", []):
        in_container = PurePosixPath("/etc/prometheus") / rule_file
        assert mounted[str(in_container)] == (PROMETHEUS_CONFIG.parent / rule_file).resolve()


def test_grafana_provisioning_finds_the_data_source_and_the_dashboards() -> None:
    grafana = compose_service("grafana")
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning/datasources"] == DATASOURCES.parent
    assert mounted["/etc/grafana/provisioning/dashboards"] == DASHBOARD_PROVIDERS.parent

    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert mounted[provider["options"]["path"]] == DASHBOARDS
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounted[str(home.parent)] == DASHBOARDS
    assert (DASHBOARDS / home.name).is_file()

    [datasource] = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert compose_service("prometheus")["image"].startswith("prom/prometheus")
    board = dashboard()
    used = [panel["datasource"] for panel in panels(board)]
    used += [target["datasource"] for panel in panels(board) for target in panel["targets"]]
    used += [variable["datasource"] for variable in board["templating"]["list"] if variable["type"] == "query"]
    assert {(source["type"], source["uid"]) for source in used} == {("prometheus", datasource["uid"])}


def test_the_monitoring_services_run_only_in_their_profile_and_listen_only_locally() -> None:
    for name in ("prometheus", "grafana"):
        service = compose_service(name)
        assert service["profiles"] == ["monitoring"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])

"""deploy/*.yaml: validated offline against the DaskJob CRD that dask-kubernetes ships and
against Kubernetes' own schemas (kubernetes-validate), then checked for the wiring the schemas
cannot see (selectors, named ports, shared volumes, commands the image can run)."""

from __future__ import annotations

import copy
import posixpath
import re
import shlex
from collections.abc import Iterator
from functools import cache
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes

from daskmm.cli import _parser
from daskmm.jobs.spec import validate as validate_job_file
from tests.deploy import dockerfile as dfm

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="needs kubernetes-validate (pip install -e .[test])")
pytest.importorskip("dask_kubernetes", reason="needs dask-kubernetes (pip install -e .[test])")

DEPLOY = dfm.DEPLOY
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml"))
# The fully generated CRD (the helm chart's copy); operator/customresources/daskjob.yaml is a
# template whose PodSpecs are `python://` references filled in at release time.
CRD_FILE = "operator/deployment/helm/dask-kubernetes-operator/crds/daskjob.yaml"
CRD_TEMPLATE = "operator/customresources/daskjob.yaml"
K8S_VERSION = kubernetes_validate.latest_version()
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ------------------------------------------------------------------ loading
def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest file."""
    return [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every document under deploy/."""
    return [(p.name, d) for p in MANIFESTS for d in documents(p)]


def daskjobs() -> list[Any]:
    """pytest params: every DaskJob under deploy/, with its file name as id."""
    return [pytest.param(d, id=f"{name}:{d['metadata']['name']}")
            for name, d in all_documents() if d.get("kind") == "DaskJob"]


@cache
def crd() -> dict[str, Any]:
    """The DaskJob CustomResourceDefinition shipped in the dask-kubernetes package."""
    return yaml.load(files("dask_kubernetes").joinpath(CRD_FILE).read_text(), Loader=Loader)


def crd_version(name: str) -> dict[str, Any]:
    """The CRD's entry for API version ``name`` (e.g. ``v1``)."""
    versions = {v["name"]: v for v in crd()["spec"]["versions"]}
    assert name in versions, f"the DaskJob CRD has no version {name!r} ({sorted(versions)})"
    return versions[name]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema that rejects what the API server would:
    ``nullable`` allows null; unknown fields are errors (as with kubectl's default strict
    field validation), except where ``x-kubernetes-preserve-unknown-fields`` keeps them."""
    s = dict(schema)
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = strict(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(x) for x in s[key]]
    return s


@cache
def daskjob_validator(version: str) -> jsonschema.Validator:
    """A validator for DaskJob objects of this API version (apiVersion, kind and metadata are
    implicit in a CRD's schema: the API server checks them itself)."""
    schema = copy.deepcopy(crd_version(version)["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    return jsonschema.Draft4Validator(strict(schema))


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Why the API server would refuse this DaskJob: wrong group/version/kind or a schema
    violation (each as ``path: message``)."""
    spec = crd()["spec"]
    group, _, version = doc.get("apiVersion", "").partition("/")
    if group != spec["group"] or doc.get("kind") != spec["names"]["kind"]:
        return [f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} is not "
                f"{spec['group']}/*, {spec['names']['kind']}"]
    served = [v["name"] for v in spec["versions"] if v.get("served")]
    if version not in served:
        return [f"version {version!r} is not served (served: {served})"]
    errors = daskjob_validator(version).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in errors)


def k8s_error(obj: dict[str, Any]) -> str | None:
    """Kubernetes' own schema (strict: unknown fields are errors) on a plain object; None if
    it validates."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{obj['kind']} {'.'.join(map(str, e.path))}: {e.message}"
    return None


def pods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DaskJob's three PodSpecs by role: job, worker, scheduler."""
    cluster = doc["spec"]["cluster"]["spec"]
    return {"job": doc["spec"]["job"]["spec"], "worker": cluster["worker"]["spec"],
            "scheduler": cluster["scheduler"]["spec"]}


def as_k8s_objects(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Pods and the Service the operator makes of a DaskJob (as far as the schemas go)."""
    name = doc["metadata"]["name"]
    for role, spec in pods(doc).items():
        meta = dict(doc["metadata"], name=f"{name}-{role}")
        yield {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    yield {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-scheduler"},
           "spec": doc["spec"]["cluster"]["spec"]["scheduler"]["service"]}


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The container called ``name``."""
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container named {name!r}"
    return found[0]


def command_line(c: dict[str, Any]) -> list[str]:
    """A container's command and args as one list."""
    return list(c.get("command", [])) + list(c.get("args", []))


def daskmm_run_argv(c: dict[str, Any]) -> list[str]:
    """The ``daskmm run ...`` words a container executes, directly or via ``sh -c``."""
    argv = command_line(c)
    if argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"], ["/bin/bash", "-c"], ["bash", "-c"]):
        argv = shlex.split(argv[2])
    at = [k for k in range(len(argv) - 1) if argv[k:k + 2] == ["daskmm", "run"]]
    assert at, f"container {c['name']!r} does not run `daskmm run`: {command_line(c)}"
    words = argv[at[0]:]
    end = [k for k, w in enumerate(words) if w in ("&&", "||", ";", "|")]
    return words[:end[0]] if end else words


def quantity_bytes(q: str | int) -> int:
    """A Kubernetes memory quantity (``4Gi``, ``512M``, ``1e9``) in bytes."""
    m = re.fullmatch(r"([0-9.e+]+)([KMGTPE]i?)?", str(q))
    assert m, f"not a memory quantity: {q!r}"
    unit = m.group(2) or ""
    power = "KMGTPE".index(unit[0]) + 1 if unit else 0
    return int(float(m.group(1)) * (1024 if unit.endswith("i") else 1000) ** power)


def cpu_cores(q: str | int | float) -> float:
    """A Kubernetes CPU quantity (``2``, ``"1"``, ``500m``) in cores."""
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def option(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    for k, w in enumerate(argv):
        if w == flag and k + 1 < len(argv):
            return argv[k + 1]
        if w.startswith(flag + "="):
            return w.split("=", 1)[1]
    return None


def wiring_problems(doc: dict[str, Any]) -> list[str]:
    """What the schemas cannot see but a running DaskJob needs."""
    problems = []
    name = doc["metadata"]["name"]
    p = pods(doc)
    sched = container(p["scheduler"], "scheduler")
    sched_ports = {pt["name"]: pt["containerPort"] for pt in sched.get("ports", [])}
    service = doc["spec"]["cluster"]["spec"]["scheduler"]["service"]
    # the operator names a DaskJob's cluster after the job and labels its scheduler pod so
    want = {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    if service.get("selector") != want:
        problems.append(f"service selector {service.get('selector')} is not {want}")
    ports = {pt["name"]: pt for pt in service.get("ports", [])}
    if ports.get("tcp-comm", {}).get("port") != 8786:
        problems.append("the service has no tcp-comm port 8786 (DASK_SCHEDULER_ADDRESS)")
    for pt in ports.values():
        target = pt.get("targetPort", pt.get("port"))
        if target not in sched_ports and target not in sched_ports.values():
            problems.append(f"service port {pt['name']} targets {target!r}, not a scheduler "
                            f"container port ({sorted(sched_ports)})")
    if sched_ports.get("tcp-comm") != 8786 or sched_ports.get("http-dashboard") != 8787:
        problems.append(f"scheduler ports {sched_ports} are not tcp-comm 8786, "
                        "http-dashboard 8787 (dask scheduler's defaults)")
    for probe in ("readinessProbe", "livenessProbe"):
        get = sched.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/health" or get.get("port") not in ("http-dashboard", 8787):
            problems.append(f"scheduler {probe} is not GET /health on the dashboard")
    images = {c["image"] for pod in p.values() for c in pod["containers"]}
    if len(images) != 1:
        problems.append(f"job, scheduler and workers should run one image, not {images}")
    # shared storage: the runner and the workers see the same claim at the same paths
    mounts = {}
    for role in ("job", "worker"):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in p[role].get("volumes", []) if "persistentVolumeClaim" in v}
        c = container(p[role], role)
        mounts[role] = {(m["mountPath"], claims[m["name"]], m.get("subPath"))
                        for m in c.get("volumeMounts", []) if m["name"] in claims}
    if not mounts["job"] or not mounts["job"] <= mounts["worker"]:
        problems.append(f"the job's shared mounts {sorted(mounts['job'])} are not all mounted "
                        f"the same way in the workers ({sorted(mounts['worker'])})")
    return problems


# ------------------------------------------------------------------ the CRD itself
def test_crd_is_complete_and_matches_the_template() -> None:
    """The helm copy is the generated CRD (no unresolved references) for the same resource as
    the operator's template."""
    text = files("dask_kubernetes").joinpath(CRD_FILE).read_text()
    assert "python://" not in text and "$ref" not in text
    template = yaml.load(files("dask_kubernetes").joinpath(CRD_TEMPLATE).read_text(),
                         Loader=Loader)
    for key in ("group", "names", "scope"):
        assert crd()["spec"][key] == template["spec"][key]
    job_spec = crd_version("v1")["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert job_spec["properties"]["job"]["properties"]["spec"]["properties"]["containers"]


def test_manifests_exist() -> None:
    """The example DaskJob and its storage are there."""
    names = {p.name for p in MANIFESTS}
    assert {"daskjob-example.yaml", "pvc.yaml"} <= names
    assert any(d["metadata"]["name"] == "daskmm-example" for _, d in all_documents()
               if d["kind"] == "DaskJob")


# ------------------------------------------------------------------ DaskJobs
@pytest.mark.parametrize("doc", daskjobs())
def test_daskjob_validates_against_the_crd(doc: dict[str, Any]) -> None:
    """apiVersion/kind are the CRD's and the object fits its schema, unknown fields included."""
    assert crd_errors(doc) == []


@pytest.mark.parametrize("doc", daskjobs())
def test_daskjob_pods_and_service_validate_against_kubernetes(doc: dict[str, Any]) -> None:
    """The job, worker and scheduler PodSpecs as v1 Pods, the scheduler service as a v1
    Service (with the DaskJob's metadata as ObjectMeta)."""
    assert [e for e in map(k8s_error, as_k8s_objects(doc)) if e] == []


@pytest.mark.parametrize("doc", daskjobs())
def test_daskjob_wiring(doc: dict[str, Any]) -> None:
    """Selector, named ports, probes, one image, shared volume; a name the operator accepts."""
    from dask_kubernetes.constants import VALID_CLUSTER_NAME

    assert VALID_CLUSTER_NAME.match(doc["metadata"]["name"])
    assert wiring_problems(doc) == []


@pytest.mark.parametrize("doc", daskjobs())
def test_dask_commands_parse(doc: dict[str, Any]) -> None:
    """``dask scheduler`` / ``dask worker`` are subcommands distributed provides, their options
    parse, and the worker's memory limit and dashboard match its container."""
    import click

    subcommands = {e.name: e for e in entry_points(group="dask_cli")}
    for role in ("scheduler", "worker"):
        c = container(pods(doc)[role], role)
        argv = command_line(c)
        assert argv[:2] == ["dask", role], argv
        assert "dask" in dfm.provided_scripts()
        main = subcommands[role].load()
        # `$(VAR)` is expanded by the kubelet; click only has to accept the options
        with main.make_context(f"dask {role}", argv[2:]) as ctx:
            assert isinstance(ctx, click.Context)
        if role == "worker":
            limits = c["resources"]["limits"]
            assert parse_bytes(option(argv, "--memory-limit")) == quantity_bytes(limits["memory"])
            assert int(option(argv, "--nthreads")) <= max(1.0, cpu_cores(limits["cpu"]))
            assert option(argv, "--name") == "$(DASK_WORKER_NAME)"
            dash = int(option(argv, "--dashboard-address").rsplit(":", 1)[-1])
            assert {"name": "http-dashboard", "containerPort": dash, "protocol": "TCP"} \
                in c["ports"]


@pytest.mark.parametrize("doc", daskjobs())
def test_job_runs_a_valid_job_file(doc: dict[str, Any]) -> None:
    """The runner executes ``daskmm run FILE``; FILE is in the image or in a mounted ConfigMap,
    is a valid daskmm job, and everything the job writes lands on the shared volume."""
    df = dfm.load()
    pod = pods(doc)["job"]
    c = container(pod, "job")
    argv = daskmm_run_argv(c)
    args = _parser().parse_args(argv[1:])
    assert args.command == "run" and args.scheduler is None  # the operator's address is used
    if command_line(c)[:1] in (["/bin/sh"], ["sh"]):  # the wait-for-scheduler snippet compiles
        words = shlex.split(command_line(c)[2])
        for k in range(len(words) - 2):
            if words[k:k + 2] == ["python", "-c"]:
                compile(words[k + 2], "<python -c>", "exec")
    job_path = args.job
    assert posixpath.isabs(job_path)
    repo_job = df.source_of(job_path)
    if repo_job is not None:
        raw = yaml.safe_load(repo_job.read_text())
    else:  # a job file from a ConfigMap volume
        mount = next(m for m in c["volumeMounts"] if job_path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        cm_name = volume["configMap"]["name"]
        configmaps = {d["metadata"]["name"]: d for _, d in all_documents()
                      if d["kind"] == "ConfigMap"}
        assert cm_name in configmaps, f"ConfigMap {cm_name!r} is not under deploy/"
        raw = yaml.safe_load(configmaps[cm_name]["data"][posixpath.relpath(job_path,
                                                                           mount["mountPath"])])
        for key in ("data", "output"):  # relative paths would resolve into the read-only mount
            assert posixpath.isabs(raw[key]) or "://" in raw[key], (key, raw[key])
    validate_job_file(raw, job_path)
    base = posixpath.dirname(job_path)

    def in_image(p: str) -> str:
        return p if "://" in p else posixpath.normpath(posixpath.join(base, p))

    shared = {m["mountPath"] for m in c["volumeMounts"] if m["name"] in
              {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}}

    def on_shared(p: str) -> bool:
        return any(p.startswith(s + "/") for s in shared)

    # written with local file operations (the runner renames what the workers wrote): these
    # must be on the volume the runner and the workers share
    written = [in_image(raw["output"])]
    if "ingest" in raw:
        written.append(in_image(raw["ingest"]["out"]))
    if "simulate" in raw:
        written.append(in_image(raw["data"]))
    else:  # input data: a URL, on the shared volume, or copied into the image
        data = in_image(raw["data"])
        assert "://" in data or on_shared(data) or (df.source_of(data) or Path("/-")).exists()
    assert all(on_shared(p) for p in written), (written, shared)


# ------------------------------------------------------------------ plain Kubernetes objects
@pytest.mark.parametrize("name,doc", [pytest.param(n, d, id=f"{n}:{d['kind']}")
                                      for n, d in all_documents() if d["kind"] != "DaskJob"])
def test_plain_objects_validate_against_kubernetes(name: str, doc: dict[str, Any]) -> None:
    """ConfigMaps, PersistentVolumeClaims, ...: Kubernetes' own schema."""
    assert k8s_error(doc) is None


def all_pod_specs() -> list[dict[str, Any]]:
    """Every PodSpec under deploy/: the DaskJobs' three and those of plain Pods."""
    specs = [d["spec"] for _, d in all_documents() if d["kind"] == "Pod"]
    for param in daskjobs():
        specs.extend(pods(param.values[0]).values())
    return specs


def test_claims_and_configmaps_used_are_defined() -> None:
    """Every PersistentVolumeClaim and ConfigMap a pod mounts is defined under deploy/."""
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in all_documents()}
    for spec in all_pod_specs():
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) \
                    in defined
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in defined


def test_one_image_everywhere() -> None:
    """All containers run the same image (one name to replace with your registry's)."""
    images = {c["image"] for spec in all_pod_specs() for c in spec["containers"]}
    assert len(images) == 1, images


def test_container_ports_are_exposed_by_the_image() -> None:
    """The ports the pods declare are the ones the Dockerfile exposes."""
    exposed = dfm.load().exposed
    for param in daskjobs():
        for pod in pods(param.values[0]).values():
            for c in pod["containers"]:
                assert {p["containerPort"] for p in c.get("ports", [])} <= exposed


# ------------------------------------------------------------------ the checks can fail
@pytest.fixture
def example() -> dict[str, Any]:
    """A fresh copy of the example DaskJob to break."""
    return next(d for d in documents(DEPLOY / "daskjob-example.yaml") if d["kind"] == "DaskJob")


def test_crd_rejects_a_misspelt_field(example: dict[str, Any]) -> None:
    """``spec.job.spc`` is an unknown field."""
    example["spec"]["job"]["spc"] = example["spec"]["job"].pop("spec")
    errors = crd_errors(example)
    assert any(e.startswith("spec.job:") and "'spc'" in e for e in errors), errors


def test_crd_rejects_wrong_types_and_missing_fields(example: dict[str, Any]) -> None:
    """replicas must be an integer, a resource quantity a string; spec.cluster is required."""
    example["spec"]["cluster"]["spec"]["worker"]["replicas"] = "two"
    worker = example["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]
    worker["resources"]["limits"]["memory"] = 4.5
    errors = crd_errors(example)
    assert any(e.startswith("spec.cluster.spec.worker.replicas:") for e in errors), errors
    assert any(e.startswith("spec.cluster.spec.worker.spec.containers.0.resources.limits.memory")
               for e in errors), errors
    del example["spec"]["cluster"]
    assert any("'cluster' is a required property" in e for e in crd_errors(example))


def test_crd_rejects_numeric_probe_and_target_ports(example: dict[str, Any]) -> None:
    """The generated CRD types int-or-string ports as strings, so numbers are refused (see
    dask/dask-kubernetes#778): the manifests use the ports' names."""
    scheduler = example["spec"]["cluster"]["spec"]["scheduler"]
    scheduler["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = 8787
    scheduler["service"]["ports"][0]["targetPort"] = 8786
    errors = crd_errors(example)
    assert len(errors) == 2 and all("is not of type 'string'" in e for e in errors), errors


def test_crd_rejects_a_wrong_api_version(example: dict[str, Any]) -> None:
    """Only the CRD's group, served versions and kind are accepted."""
    assert crd_errors({**example, "apiVersion": "kubernetes.dask.org/v2"})
    assert crd_errors({**example, "apiVersion": "dask.org/v1"})
    assert crd_errors({**example, "kind": "DaskCluster"})


def test_kubernetes_rejects_bad_pod_specs(example: dict[str, Any]) -> None:
    """A misspelt container field and a port given as a string fail Kubernetes' schema."""
    worker = example["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]
    worker["imagePullPolicyy"] = worker.pop("imagePullPolicy")
    errors = [e for e in map(k8s_error, as_k8s_objects(example)) if e]
    assert len(errors) == 1 and "imagePullPolicyy" in errors[0], errors
    worker["imagePullPolicy"] = worker.pop("imagePullPolicyy")
    worker["ports"][0]["containerPort"] = "8788"
    errors = [e for e in map(k8s_error, as_k8s_objects(example)) if e]
    assert len(errors) == 1 and "containerPort" in errors[0], errors


def test_wiring_check_catches_mistakes(example: dict[str, Any]) -> None:
    """A selector for another cluster, an unknown target port and a worker without the shared
    volume are reported."""
    scheduler = example["spec"]["cluster"]["spec"]["scheduler"]
    scheduler["service"]["selector"]["dask.org/cluster-name"] = "other"
    scheduler["service"]["ports"][0]["targetPort"] = "comm"
    example["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]["volumeMounts"] = []
    problems = wiring_problems(example)
    assert len(problems) == 3, problems

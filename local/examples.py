"""The example NeuronInference files, found where the package is installed.

The repository's ``examples/`` folder is packaged as ``neuronplace.examples`` (data only: YAML
files, no Python), so a wheel install carries them too. :func:`example_files` is the one way to
find them: ``neuronplace demo`` applies them and the tests read them from here, never from a path
relative to a source file.

The files are written for EKS: their NeuronInferences tolerate the Neuron nodes' taint
(``aws.amazon.com/neuron``), not kwok's. What runs them on simulated nodes adds kwok's toleration
itself (:func:`on_simulated_nodes`), so no file carries a toleration that means nothing on a real
cluster.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from neuronplace.local.fleet import KWOK_TAINT
from neuronplace.placement.names import KIND

PACKAGE = "neuronplace.examples"
_copied: Path | None = None


def _resources() -> list[Traversable]:
    try:
        entries = list(resources.files(PACKAGE).iterdir())
    except NotADirectoryError:
        # An editable install on Python 3.11: the package is a namespace package whose path also
        # holds setuptools' import hook, which importlib.resources cannot read. Its folders can.
        import importlib

        folders = [Path(entry) for entry in importlib.import_module(PACKAGE).__path__ if Path(entry).is_dir()]
        entries = [entry for folder in folders for entry in folder.iterdir()]
    # A namespace package may span several folders (a checkout on PYTHONPATH before an installed
    # copy): one file per name, the first on the path, as an import would pick.
    found: dict[str, Traversable] = {}
    for entry in entries:
        if entry.name.endswith(".yaml") and entry.is_file():
            found.setdefault(entry.name, entry)
    return [found[name] for name in sorted(found)]


def example_files() -> list[Path]:
    """Every example YAML file, sorted by name, as a path on the file system (an installed package
    is a folder; a zipped one is copied to a temporary folder once)."""
    entries = _resources()
    if not entries:
        raise FileNotFoundError(f"no example YAML files in the package {PACKAGE}")
    if all(isinstance(entry, Path) for entry in entries):
        return [Path(entry) for entry in entries]
    global _copied
    if _copied is None:
        _copied = Path(tempfile.mkdtemp(prefix="neuronplace-examples-"))
        for entry in entries:
            with resources.as_file(entry) as path:
                shutil.copyfile(path, _copied / entry.name)
    return [_copied / entry.name for entry in entries]


def example_file(name: str) -> Path:
    """One example by file name, e.g. ``"spread.yaml"``."""
    for path in example_files():
        if path.name == name:
            return path
    raise FileNotFoundError(f"no example {name!r} in {PACKAGE}")


def example_resources() -> list[dict]:
    """Every object of every example file, in file order."""
    return [document for path in example_files() for document in yaml.safe_load_all(path.read_text()) if document]


def kwok_toleration() -> dict:
    """The toleration of the taint every simulated node carries."""
    return {"key": KWOK_TAINT["key"], "operator": "Equal", "value": KWOK_TAINT["value"], "effect": KWOK_TAINT["effect"]}


def on_simulated_nodes(document: dict) -> dict:
    """``document`` as the demo and the tests apply it: a NeuronInference also tolerates kwok's taint
    (a copy; the file's own tolerations stay); any other object is returned unchanged."""
    if document.get("kind") != KIND:
        return document
    copy = yaml.safe_load(yaml.safe_dump(document))
    tolerations = copy["spec"].setdefault("placement", {}).setdefault("tolerations", [])
    if kwok_toleration() not in tolerations:
        tolerations.append(kwok_toleration())
    return copy

"""The preset registry and the layering it allows: ``config.py`` imports no method (statically, not
even inside a function) and the package has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sbdiff
from sbdiff import SbdiffError
from sbdiff.config import Config, config_from_dict, preset_sections
from sbdiff.methods import DSB, Method, register
from sbdiff.registry import REGISTRY, method_class

SRC = Path(sbdiff.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of sbdiff it imports}``, from every import statement in the file (module
    level or inside a function); ``from .pkg import name`` counts as importing ``pkg.name`` when that
    is a module, else ``pkg``."""
    mods = _modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                out.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names)
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_config_imports_no_method_and_there_is_no_cycle():
    graph = import_graph()
    assert "sbdiff.config" in graph and "sbdiff.methods.dsb" in graph
    assert not [m for m in graph["sbdiff.config"] if m.startswith("sbdiff.methods")], graph["sbdiff.config"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_registry_holds_the_presets_and_their_sections():
    assert list(REGISTRY)[:4] == ["sgm", "dsb", "vsdm", "sbfbsde"]
    assert method_class("dsb") is DSB and DSB.name == "dsb"
    assert list(preset_sections())[:3] == ["dsb", "vsdm", "sbfbsde"]  # then the auto-imported presets (dsbm)
    assert set(Config().to_dict()) >= {"data", "train", "dsb", "vsdm", "sbfbsde", "dsbm"}
    with pytest.raises(SbdiffError, match="unknown method 'gan'; choose from sgm, dsb"):
        method_class("gan")


def test_a_name_is_registered_once():
    with pytest.raises(SbdiffError, match="'dsb' is already registered"):
        @register("dsb")
        class Other(Method):
            pass
    assert REGISTRY["dsb"] is DSB
    with pytest.raises(SbdiffError, match="identifier"):
        register("no good")


def test_explicit_value_survives_the_method_defaults():
    """The bug of issue 23: an explicit value equal to the generic default was replaced by the
    method's default (``train.ema_decay = 0.999`` became DSB's 0.99)."""
    cfg = config_from_dict({"method": "dsb", "train": {"ema_decay": 0.999}, "model": {"hidden": 256}}).validate()
    assert cfg.train.ema_decay == 0.999 and cfg.model.hidden == 256 and cfg.model.blocks == 2
    unset = config_from_dict({"method": "dsb"}).validate()
    assert (unset.train.ema_decay, unset.model.hidden, unset.model.blocks) == (0.99, 128, 2)
    code = Config()
    code.method = "dsb"
    code.train.ema_decay = 0.999  # set in code: explicit too
    assert code.validate().train.ema_decay == 0.999


def test_resolution_is_layered_and_repeatable():
    cfg = config_from_dict({"method": "dsb"}).validate()
    cfg.method = "sgm"  # the keys DSB's defaults set go back to the generic defaults
    assert (cfg.validate().train.ema_decay, cfg.model.hidden) == (0.999, 256)
    img = config_from_dict({"method": "vsdm", "data": {"data": "digits"}}).validate()
    first = img.to_dict()
    assert (img.train.batch_size, img.train.ema_decay, img.vsdm.paths, img.vsdm.encoder) == (128, 0.995, 128, "diagonal")
    assert img.validate().to_dict() == first  # validating again changes nothing
    mine = config_from_dict({"method": "dsb", "data": {"data": "digits"}, "train": {"ema_decay": 0.5}}).validate()
    assert (mine.train.ema_decay, mine.train.batch_size, mine.model.hidden) == (0.5, 128, 128)  # user > images > method
    peer = config_from_dict({}).validate(defaults_of="dsb")
    assert peer.method == "sgm" and (peer.model.hidden, peer.train.ema_decay) == (128, 0.99)

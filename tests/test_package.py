"""Package-level contracts: light imports, CLI help on every command, packaged data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

TORCH_FREE = ["mtl", "mtl.config", "mtl.errors", "mtl.io", "mtl.data.chunk", "mtl.geometry", "mtl.cli", "mtl.gpu"]


def _imports_torch(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_modules_do_not_import_torch():
    assert _imports_torch(TORCH_FREE) == []


def test_runtime_imports_neither_torch_nor_the_exporter():
    """The vehicle runtime depends on the artefact contract (mtl.contract), never on mtl.export."""
    code = (
        "import json, sys\n"
        "import mtl.runtime\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'torch' or k == 'mtl.export'\n"
        "                        or k.startswith('mtl.export.') or k == 'onnx' or k.startswith('onnx.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_runtime_all_lists_exactly_its_public_names():
    """``mtl.runtime.__all__`` names every public object the package binds (and nothing else)."""
    import inspect

    import mtl.runtime as rt

    public = {n for n, v in vars(rt).items()
              if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"}   # __future__ import
    assert sorted(rt.__all__) == sorted(public) and len(set(rt.__all__)) == len(rt.__all__)
    assert all(getattr(rt, n) is not None for n in rt.__all__)
    assert {"Pipeline", "iter_frames", "RuntimeFrame", "Result", "overlay", "BACKENDS"} <= set(rt.__all__)


def test_optional_torch_free_modules_do_not_import_torch():
    import importlib.util

    def exists(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # parent package missing
            return False

    present = [m for m in ("mtl.metrics", "mtl.data.a2d2", "mtl.data.synth", "mtl.data.convert", "mtl.data.inspect",
                           "mtl.viz", "mtl.contract", "mtl.draw", "mtl.report", "mtl.runtime.scoring") if exists(m)]
    if not present:
        pytest.skip("no optional torch-free modules installed")
    assert _imports_torch(present) == []


def _all_commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


def test_every_command_has_help():
    from mtl.cli import main

    runner = CliRunner()
    paths = list(_all_commands(main))
    assert ("data",) in paths
    for path in paths:
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Usage:" in res.output


def test_packaged_class_table_matches_a2d2_palette(a2d2_sample):
    from mtl.config import ClassesConfig, a2d2_classes

    table = a2d2_classes()
    real = json.loads((a2d2_sample / "class_list.json").read_text())
    assert table["a2d2_colours"] == real
    mapping = ClassesConfig.a2d2_default().a2d2_name_to_sem_id()
    # every A2D2 class name maps to a training class or ignore
    assert set(mapping) == set(real.values())
    assert mapping["Car 3"] == ClassesConfig.a2d2_default().sem_classes.index("car")
    assert mapping["Ego car"] == 255


def test_packaged_calibration_matches_cams_lidars(a2d2_sample):
    from mtl.config import CameraConfig

    real = json.loads((a2d2_sample / "cams_lidars.json").read_text())["cameras"]["front_center"]
    cam = CameraConfig.a2d2_front_center()
    assert [list(r) for r in cam.cam_matrix] == real["CamMatrix"]
    assert [list(r) for r in cam.cam_matrix_original] == real["CamMatrixOriginal"]
    assert list(cam.distortion) == real["Distortion"][0]
    assert list(cam.resolution_wh) == real["Resolution"]


def test_config_round_trip_and_override(tmp_path):
    from mtl.config import Config
    from mtl.errors import ConfigError

    cfg = Config().override(**{"loss.lambda_sem": 2.5, "train.epochs": 3})
    assert cfg.loss.lambda_sem == 2.5 and cfg.train.epochs == 3
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    p = tmp_path / "partial.json"
    p.write_text(json.dumps({"train": {"batch_size": 7}}))
    assert Config.load(p).train.batch_size == 7
    with pytest.raises(ConfigError, match="loss.no_such_key: unknown config key"):
        Config().override(**{"loss.no_such_key": 1})
    p.write_text(json.dumps({"train": {"bogus": 1}}))
    with pytest.raises(ConfigError, match="train.bogus: unknown config key"):
        Config.load(p)


# ------------------------------------------------------------------------------------ import graph


def _mtl_import_graph() -> dict[str, set[str]]:
    """module -> the mtl modules it imports, from the source of every module under mtl/ (``ast``; imports
    inside functions and ``TYPE_CHECKING`` blocks count too: a lazy import is still a dependency)."""
    import ast
    from pathlib import Path

    import mtl

    root = Path(mtl.__file__).parent
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        package = name.split(".") if is_pkg else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (base, node.module or "") if p)
                # ``from pkg import submodule`` imports the submodule; ``from mod import name`` the module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white / grey / black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_cycle_finder_on_hand_made_graphs():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"a"}}) == ["a", "a"]


def test_mtl_import_graph_is_acyclic_and_the_runtime_never_reaches_the_exporter():
    graph = _mtl_import_graph()
    # the parser sees real edges (absolute, relative, ``from . import submodule``, lazy imports)
    assert "mtl.export.variants" in graph["mtl.bench"] and "mtl.export.variants" in graph["mtl.cli.deploy"]
    assert {"mtl.export.parity", "mtl.export.options", "mtl.export.onnx_io"} <= graph["mtl.export.run"]
    assert "mtl.export.onnx_export" in graph["mtl.export.parity"]          # torch_reference, imported lazily
    assert "mtl.export.parity" not in graph["mtl.export.onnx_export"]
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"

    seen: set[str] = set()
    todo = [m for m in graph if m == "mtl.runtime" or m.startswith("mtl.runtime.")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "mtl.contract" in seen
    assert not [m for m in seen if m == "mtl.export" or m.startswith("mtl.export.")]


def test_variant_table_and_export_options_import_neither_torch_nor_onnx():
    """The CLI and ``mtl bench`` import the variant table at start-up."""
    code = (
        "import json, sys\n"
        "import mtl.cli, mtl.export.variants, mtl.export.options\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'onnx', 'onnxruntime'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_config_reads_the_metric_score_cut_from_its_old_place():
    """Checkpoints, ONNX metadata and config files written before the move keep loading: the old
    ``train.eval_score_threshold`` becomes ``decode.eval_score_threshold``; the new key wins over the old."""
    from mtl.config import Config
    from mtl.errors import ConfigError

    new = Config().to_dict()
    assert new["decode"]["eval_score_threshold"] == 0.05 and "eval_score_threshold" not in new["train"]
    old = json.loads(json.dumps(new))
    del old["decode"]["eval_score_threshold"]
    old["train"]["eval_score_threshold"] = 0.07
    before = json.dumps(old)
    cfg = Config.from_dict(old)
    assert cfg.decode.eval_score_threshold == 0.07 and json.dumps(old) == before          # input untouched
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict({"train": {"eval_score_threshold": 0.2}}).decode.eval_score_threshold == 0.2
    both = {"train": {"eval_score_threshold": 0.2}, "decode": {"eval_score_threshold": 0.01}}
    assert Config.from_dict(both).decode.eval_score_threshold == 0.01
    with pytest.raises(ConfigError, match="train.eval_score_threshold: unknown config key"):
        Config().override(**{"train.eval_score_threshold": 0.1})

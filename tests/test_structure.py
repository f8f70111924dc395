"""The layers of docs/architecture.md hold: no import cycle, and no import climbs back up."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from import_graph import LIBRARY_LAYERS, cycles, graph, library_layer  # noqa: E402

LAYERS = {"ediff_core": set(), "server": {"ediff_core"}, "demo": {"ediff_core", "server"}, "app": {"ediff_core", "server", "demo"}}


def test_no_import_cycle_among_the_project_modules():
    assert cycles(graph()) == []


def test_each_layer_imports_only_the_layers_below_it():
    climbs = [(s, t) for s, ts in graph().items() for t in ts if t.split(".")[0] not in LAYERS[s.split(".")[0]] | {s.split(".")[0]}]
    assert climbs == []


def test_the_library_folders_import_only_their_own_and_those_below():
    """data < encoders < core < features < pipeline < tools: core never imports a feature or a tool."""
    lib = {s: ts for s, ts in graph().items() if s.startswith("ediff_core.")}
    assert {s.split(".")[1] for s in lib} == set(LIBRARY_LAYERS)
    climbs = [(s, t) for s, ts in lib.items() for t in ts if t.startswith("ediff_core.") and library_layer(t) > library_layer(s)]
    assert climbs == []


def test_the_checker_sees_a_cycle_and_a_climb():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    edges = graph()
    assert "ediff_core.core.request" in edges["server.schemas"]  # runtime imports are read, so a climb would show


def test_every_front_end_is_derived_from_the_one_request_schema():
    from ediff_core.tools.cli import build_parser
    from ediff_core.core.request import API_FIELDS, REQUEST_FIELDS
    from ediff_core.core.samplers import SAMPLERS
    from server.schemas import GenerateBody, PaintBody, StyleBody

    generate = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "generate")[1]
    dests = {a.dest for a in generate._actions}
    assert all(name in dests or f"no_{name}" in dests for name in REQUEST_FIELDS)
    props = GenerateBody.model_json_schema()["properties"]
    assert set(API_FIELDS) <= set(props)
    assert props["sampler"]["anyOf"][0]["enum"] == list(SAMPLERS)
    assert props["seed"]["maximum"] == REQUEST_FIELDS["seed"].hi
    assert "style_strength" in StyleBody.model_fields and "pww_weight" in PaintBody.model_fields


def test_the_public_names_load_from_the_package_on_first_use():
    """``from ediff_core import EDiffPipeline, ...`` works, and importing the package loads no torch."""
    import subprocess

    import ediff_core

    code = "import sys, ediff_core; assert 'torch' not in sys.modules, 'import ediff_core loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    for name in ediff_core.__all__:
        value = getattr(ediff_core, name)
        assert name.isupper() and len(value) > 0 or value.__name__ == name
    with __import__("pytest").raises(AttributeError, match="no attribute 'Pipeline'"):
        ediff_core.Pipeline  # noqa: B018

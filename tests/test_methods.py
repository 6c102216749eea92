"""The method registry agrees with the proto, the formula homes, the server and the README."""

from __future__ import annotations

from pathlib import Path

from onnxcam import methods
from onnxcam.client import method_value
from onnxcam.proto import explainer_pb2 as pb
from server import gradient_free
from server import methods as server_methods

ROOT = Path(__file__).resolve().parent.parent


def test_every_method_has_one_proto_value_and_every_value_a_method():
    values = {pb.Method.Value(m.enum) for m in methods.METHODS}
    assert len(values) == len(methods.METHODS) == len(set(methods.names()))
    assert set(pb.Method.keys()) - {m.enum for m in methods.METHODS} == {"METHOD_UNSPECIFIED", "METHOD_NONE"}
    assert server_methods.NAME_BY_ENUM == {pb.Method.Value(m.enum): m.name for m in methods.METHODS}


def test_every_gradient_free_method_is_served_and_priced():
    for method in methods.of_kind(methods.Kind.GRADIENT_FREE):
        assert callable(getattr(gradient_free, f"serve_{method.name}")), method.name
        rows = gradient_free.forward_count(method.name, 16, 7, 7)
        assert (rows > 0) == (method.runs is not methods.Graph.NONE), method.name
    assert gradient_free.forward_count("ablationcam", 16, 7, 7, linear=True) == 0  # the closed form


def test_every_sampled_method_has_a_sampler_on_its_graph():
    from onnxcam import sampling

    assert set(sampling.SAMPLERS) == set(methods.names(methods.Kind.SAMPLED))
    for method in methods.of_kind(methods.Kind.SAMPLED):
        sampler = sampling.SAMPLERS[method.name]
        assert sampler.graph is method.runs and sampler.graph in sampling.GRAPH_FILES, method.name
        assert method.rule is None or sampler.rule == method.rule, method.name
        assert sampling.rows_needed(method.name, sampling.Settings(), 2, 224, 224) > 1, method.name


def test_graph_methods_have_a_formula():
    import pytest

    pytest.importorskip("torch")
    from exporter import cam_formulas

    assert set(cam_formulas.FORMULAS) == set(methods.names(methods.Kind.GRAPH))


def test_clients_spell_every_method():
    for method in methods.METHODS:
        for spelling in (method.name, method.enum, method.name.replace("_", "-")):
            assert method_value(spelling) == pb.Method.Value(method.enum)


def test_the_readme_method_table_is_the_registrys():
    assert methods.markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")

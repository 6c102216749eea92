"""``onnxcam evaluate`` end to end: annotations in three formats, bad input reported by file and line,
metrics.json in the promised shape with values recomputed here from the graphs, the HTML report,
a running server measured over gRPC giving the local numbers, and no torch anywhere on the way.

The fast tests use the tiny exported model (32 x 32 input, 10 classes) on small generated photos;
the slow one runs the default model on a bundled photo against the torch references.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_server_helpers import encode, make_repository, rgb_image, running_server

from onnxcam import annotations, metrics
from onnxcam.cli import main
from onnxcam.evaluate import SUMMARY_KEYS
from onnxcam.evaluate_maps import BASELINES, prepare
from server import imaging
from server.model_info import load_model_info

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["gradcam", "gradcampp", "eigencam", "saliency", "occlusion"]
CSV = """image,label,x1,y1,x2,y2
a.png,3,4,4,30,30
a.png,3,20,10,44,36
b.png,thing 1,,,,
c.png,7,0,0,37,37
d.png,2,5,5,500,20
missing.png,1,,,,
a.png,zebra,,,,
corrupt.png,1,,,,
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for n, (name, (h, w)) in enumerate({"a.png": (40, 48), "b.png": (48, 40), "c.png": (37, 37),
                                        "d.png": (44, 60)}.items()):
        (folder / name).write_bytes(encode(rgb_image(h, w, seed=n)))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "ann.csv").write_text(CSV)
    return folder


def run_cli(*args: str) -> int:
    return main(["-q", "evaluate", *args])


@pytest.fixture(scope="module")
def local_report(tiny_model_dir: Path, photos: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert run_cli("--models", str(tiny_model_dir), "--images", str(photos), "--annotations", str(photos / "ann.csv"),
                   "--methods", ",".join(METHODS), "--out", str(out), "--steps", "20", "--threads", "1") == 0
    return out


def test_metrics_json_has_the_promised_shape(local_report: Path, capsys) -> None:
    data = json.loads((local_report / "metrics.json").read_text())
    assert data["model"] == "tiny" and data["images"] == 4 and data["items"] == 4
    assert list(data["methods"]) == METHODS and list(data["baselines"]) == list(BASELINES)
    for summary in [*data["methods"].values(), *data["baselines"].values()]:
        assert all(isinstance(summary[k], float) for k in SUMMARY_KEYS)  # a.png and c.png have boxes
        for key in ("average_drop", "increase_in_confidence", "pointing_game", "energy_pointing_game",
                    "localization_accuracy"):
            assert 0 <= summary[key] <= 100
        assert all(0 <= summary[k] <= 1 for k in ("deletion_auc", "insertion_auc", "localization_iou"))
        assert summary["items"] == 4 and summary["items_with_boxes"] == 2
    assert len(data["per_image"]) == 4 * (len(METHODS) + len(BASELINES))
    row = data["per_image"][0]
    assert {"image": "a.png", "label": 3, "method": "gradcam", "label_source": "annotation", "boxes": 2}.items() <= \
        row.items()
    assert isinstance(row["score"], float) and isinstance(row["explanation_score"], float)
    b_rows = [r for r in data["per_image"] if r["image"] == "b.png"]
    assert {r["label"] for r in b_rows} == {1} and all(r["pointing_hit"] is None and r["iou"] is None for r in b_rows)
    assert {r["boxes"] for r in data["per_image"] if r["image"] == "d.png"} == {0}  # its only box was outside
    assert len(data["curves"]["gradcam"]["deletion"]) == data["settings"]["curve_points"] == 21


def test_bad_input_is_named_by_file_and_line_and_counted(local_report: Path, photos: Path) -> None:
    data = json.loads((local_report / "metrics.json").read_text())
    skipped = data["skipped"]
    assert (skipped["images"], skipped["annotation_rows"], skipped["boxes"]) == (2, 1, 1)
    problems = "\n".join(skipped["problems"])
    csv = photos / "ann.csv"
    assert f"{csv}:6: d.png: box (5, 5, 500, 20) lies outside the 60x44 image" in problems
    assert f"{csv}:7: missing.png: cannot read image" in problems
    assert f"{csv}:8: a.png: unknown label 'zebra'" in problems
    assert f"{csv}:9: corrupt.png:" in problems and "the image is skipped" in problems


def test_summaries_are_the_formulas_over_the_rows(local_report: Path) -> None:
    data = json.loads((local_report / "metrics.json").read_text())
    for method in METHODS + list(BASELINES):
        rows = [r for r in data["per_image"] if r["method"] == method]
        summary = {**data["methods"], **data["baselines"]}[method]
        pairs = [(r["score"], r["explanation_score"]) for r in rows]
        assert summary["average_drop"] == pytest.approx(np.mean([max(0, y - o) / y for y, o in pairs]) * 100)
        assert summary["increase_in_confidence"] == pytest.approx(np.mean([o > y for y, o in pairs]) * 100)
        assert summary["deletion_auc"] == pytest.approx(np.mean([r["deletion_auc"] for r in rows]))
        boxed = [r for r in rows if r["boxes"]]
        assert summary["pointing_game"] == pytest.approx(100 * np.mean([r["pointing_hit"] for r in boxed]))
        assert summary["localization_accuracy"] == pytest.approx(100 * np.mean([r["iou"] >= 0.5 for r in boxed]))


def test_values_equal_a_recomputation_from_the_graphs(local_report: Path, tiny_model_dir: Path, photos: Path) -> None:
    """Item 0 (a.png, class 3) redone by hand: the server's preprocessing, forward.onnx for the
    scores, explainer.onnx's cam_gradcam for the map, the measures of onnxcam.metrics."""
    data = json.loads((local_report / "metrics.json").read_text())
    row = next(r for r in data["per_image"] if r["image"] == "a.png" and r["method"] == "gradcam")
    info = load_model_info(tiny_model_dir)
    prepared = imaging.prepare_image(imaging.decode((photos / "a.png").read_bytes(), 10**8), info.preprocess)
    forward = ort.InferenceSession(str(tiny_model_dir / "forward.onnx"))
    explainer = ort.InferenceSession(str(tiny_model_dir / "explainer.onnx"))

    def score(rows: np.ndarray) -> np.ndarray:
        return metrics.softmax(forward.run(["logits"], {"pixels": rows})[0])[:, 3]

    pixels = prepared.pixels
    (cam,) = explainer.run(["cam_gradcam"], {"pixels": pixels[None], "target": np.array([3])})
    saliency = prepare(cam[0], info.input_size, prepared.geometry)
    tie_break = np.random.default_rng([0, 0, 1]).permutation(pixels[0].size)
    assert row["score"] == pytest.approx(score(pixels[None])[0], rel=1e-5)
    explained = metrics.explanation_input(pixels, saliency.at_input)
    assert row["explanation_score"] == pytest.approx(score(explained[None])[0], rel=1e-5)
    deletion = metrics.deletion_curve(score, pixels, saliency.at_input, 20, tie_break=tie_break)
    insertion = metrics.insertion_curve(score, pixels, saliency.at_input, 20, tie_break=tie_break)
    assert row["deletion_auc"] == pytest.approx(metrics.auc(deletion), abs=1e-6)
    assert row["insertion_auc"] == pytest.approx(metrics.auc(insertion), abs=1e-6)
    boxes = [(4.0, 4.0, 30.0, 30.0), (20.0, 10.0, 44.0, 36.0)]
    assert row["pointing_hit"] == metrics.pointing_hit(saliency.at_image, boxes)
    assert row["energy"] == pytest.approx(metrics.energy_share(saliency.at_image, boxes))
    assert row["iou"] == pytest.approx(metrics.localization_iou(saliency.at_image, boxes))


def test_html_report_has_the_table_curves_and_examples(local_report: Path) -> None:
    page = (local_report / "index.html").read_text()
    assert "<table>" in page and "center_gaussian <small>(baseline)</small>" in page
    for method in METHODS:
        assert (local_report / "pictures" / f"curves_{method}.png").stat().st_size > 1000
        assert f"pictures/curves_{method}.png" in page
        assert (local_report / "pictures" / f"{method}_best_0.jpg").is_file()
        assert (local_report / "pictures" / f"{method}_worst_0.jpg").is_file()
    assert "lies outside the 60x44 image" in page


def test_without_annotations_the_top1_is_explained(tiny_model_dir: Path, photos: Path, tmp_path: Path,
                                                   capsys) -> None:
    assert run_cli("--models", str(tiny_model_dir), "--images", str(photos), "--methods", "gradcam", "--out",
                   str(tmp_path), "--steps", "10", "--threads", "1") == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["images"] == 4 and data["skipped"]["images"] == 1  # corrupt.png
    assert all(r["label"] == r["predicted"] and r["label_source"] == "top1" for r in data["per_image"])
    assert all(data["methods"]["gradcam"][k] is None for k in ("pointing_game", "energy_pointing_game",
                                                                "localization_iou", "localization_accuracy"))
    out = capsys.readouterr().out
    assert "gradcam" in out and "random *" in out and "center_gaussian *" in out  # the summary table


def test_a_running_server_gives_the_local_numbers(tiny_model_dir: Path, photos: Path, local_report: Path,
                                                  tmp_path: Path) -> None:
    """--server: maps and every score over gRPC (scores are float32 on the wire)."""
    repository = make_repository(tiny_model_dir, tmp_path / "repo")
    with running_server(repository) as server:
        assert run_cli("--server", server.address, "--model", "tiny", "--images", str(photos), "--annotations",
                       str(photos / "ann.csv"), "--methods", ",".join(METHODS), "--out", str(tmp_path / "out"),
                       "--steps", "20") == 0
    local = json.loads((local_report / "metrics.json").read_text())
    remote = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert remote["settings"]["source"].startswith("server ")
    for group in ("methods", "baselines"):
        for name, values in local[group].items():
            for key in SUMMARY_KEYS:
                assert remote[group][name][key] == pytest.approx(values[key], rel=1e-4, abs=1e-5), (name, key)


def test_bad_arguments_fail_with_a_message(tiny_model_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    assert run_cli("--models", str(tiny_model_dir), "--images", str(photos), "--methods", "gradcam,nosuch",
                   "--out", str(tmp_path)) == 1
    assert "unknown method 'nosuch'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,3\n")
    assert run_cli("--models", str(tiny_model_dir), "--images", str(photos), "--annotations", str(bad),
                   "--out", str(tmp_path)) == 1
    assert f"{bad}:1: the header must name image and label" in capsys.readouterr().err
    assert run_cli("--models", str(tmp_path), "--images", str(photos), "--out", str(tmp_path)) == 1
    assert "has 0 models" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_model_dir: Path, photos: Path, local_report: Path,
                                                        tmp_path: Path) -> None:
    """Stopped while the second item runs, a --resume run takes the first from the checkpoint and ends
    with the numbers of the uninterrupted run."""
    from onnxcam import evaluate, evaluate_sources
    from onnxcam.client import ExplainerClient

    class Stop(Exception):
        pass

    def stop_at_second_item(done: int, total: int, what: str) -> None:
        if what == "b.png: explaining":
            raise Stop

    loaded = annotations.load(photos / "ann.csv", annotations.Classes([f"thing {i}" for i in range(10)]))
    settings = evaluate.Settings(steps=20)
    with evaluate_sources.local_server(tiny_model_dir, threads=1) as address, \
            ExplainerClient(address, timeout=None) as client:
        view = evaluate_sources.model_view(client, "tiny")
        scorer = evaluate_sources.LocalScorer(tiny_model_dir / "forward.onnx", 1)
        stamp = evaluate.fingerprint(view, METHODS, settings, loaded.items, "test")
        checkpoint = evaluate.Checkpoint(tmp_path / "checkpoint", stamp, resume=False)
        with pytest.raises(Stop):
            evaluate.evaluate(loaded.items, photos, client, view, scorer, METHODS, settings,
                              progress=stop_at_second_item, checkpoint=checkpoint)
        assert [p.name for p in sorted((tmp_path / "checkpoint").glob("item-*"))] == ["item-000000.pickle"]
        with pytest.raises(ValueError, match="other settings"):
            evaluate.Checkpoint(tmp_path / "checkpoint", "another run", resume=True)
        seen: list[str] = []
        outcome = evaluate.evaluate(loaded.items, photos, client, view, scorer, METHODS, settings,
                                    progress=lambda done, total, what: seen.append(what),
                                    checkpoint=evaluate.Checkpoint(tmp_path / "checkpoint", stamp, resume=True))
    assert "a.png: from the checkpoint" in seen and "a.png: explaining" not in seen
    resumed = evaluate.report_json(outcome, "test")
    local = json.loads((local_report / "metrics.json").read_text())
    assert resumed["per_image"] == local["per_image"]


# ----------------------------------------------------------------------------------------------
# annotation formats


LABELS = ["tench, Tinca tinca", "crane", "crane", "tiger cat", "wallaby, brush kangaroo"]


def test_csv_merges_boxes_and_resolves_names(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("image,label,x1,y1,x2,y2\nx.jpg,Tinca tinca,1,2,3,4\nx.jpg,0,5,6,7,8\ny.jpg,crane,,,,\n"
                    "y.jpg,wallaby,1,2,3\nz.jpg,9,,,,\nz.jpg,4,3,3,1,1\n")
    loaded = annotations.load(path, annotations.Classes(LABELS))
    x = next(i for i in loaded.items if i.image == "x.jpg")
    assert x.label == 0 and [b.box for b in x.boxes] == [(1, 2, 3, 4), (5, 6, 7, 8)] and x.where == f"{path}:2"
    assert {(i.image, i.label) for i in loaded.items} == {("x.jpg", 0), ("y.jpg", 4), ("z.jpg", 4)}
    messages = [str(p) for p in loaded.problems]
    assert messages[0].startswith(f"{path}:4: y.jpg: label 'crane' is ambiguous: classes 1, 2")
    assert messages[1] == f"{path}:5: y.jpg: give all four of x1, y1, x2, y2 or none; the box is skipped"
    assert messages[2].startswith(f"{path}:6: z.jpg: label 9 is out of range: the model has 5 classes")
    assert "box (3, 3, 1, 1) is empty" in messages[3] and loaded.has_boxes
    assert [p.skipped for p in loaded.problems] == ["row", "box", "row", "box"]


def test_voc_folder_boxes_are_one_based(tmp_path: Path) -> None:
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "1.xml").write_text(
        "<annotation>\n  <filename>1.jpg</filename>\n  <object>\n    <name>tiger cat</name>\n"
        "    <bndbox><xmin>1</xmin><ymin>11</ymin><xmax>50</xmax><ymax>60</ymax></bndbox>\n  </object>\n"
        "  <object>\n    <name>dog</name>\n  </object>\n</annotation>\n")
    (tmp_path / "voc" / "2.xml").write_text("<annotation>\n<filename>2.jpg</filename>\n<object>\n</annotation>")
    loaded = annotations.load(tmp_path / "voc", annotations.Classes(LABELS))
    assert [(i.image, i.label, [b.box for b in i.boxes]) for i in loaded.items] == [("1.jpg", 3, [(0, 10, 50, 60)])]
    messages = [str(p) for p in loaded.problems]
    assert messages[0].startswith(f"{tmp_path / 'voc' / '1.xml'}:7: 1.jpg: unknown label 'dog'")
    assert messages[1].startswith(f"{tmp_path / 'voc' / '2.xml'}:4: unreadable XML")


def test_coco_json_with_a_class_map(tmp_path: Path) -> None:
    classes_file = tmp_path / "classes.json"
    classes_file.write_text(json.dumps({"cat": 3, "kangaroo": 4}))
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "p.jpg"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [{"image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40]},
                        {"image_id": 7, "category_id": 2, "bbox": [0, 0, 1, 1]},
                        {"image_id": 8, "category_id": 1, "bbox": [0, 0, 1, 1]},
                        {"image_id": 7, "category_id": 1, "bbox": [0, 0, -1, 1]}]}))
    classes = annotations.Classes(LABELS, annotations.read_class_map(classes_file))
    loaded = annotations.load(path, classes)
    assert [(i.image, i.label, [b.box for b in i.boxes]) for i in loaded.items] == [("p.jpg", 3, [(10, 20, 40, 60)])]
    messages = [str(p) for p in loaded.problems]
    assert messages[0] == f"{path}: categories[1]: category 2: unknown label 'dog': not in the class map"
    assert messages[1].startswith(f"{path}: annotations[1]: p.jpg: category 2: unknown label 'dog'")
    assert messages[2] == f"{path}: annotations[2]: image_id 8 is not in 'images'"
    assert messages[3].startswith(f"{path}: annotations[3]: p.jpg: box (0, 0, -1, 1) is empty")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  1,\n}')
    with pytest.raises(annotations.AnnotationError, match=f"{broken}:3: not valid JSON"):
        annotations.load(broken, classes)


def test_boxes_are_checked_against_the_image() -> None:
    item = annotations.Item("x.jpg", 1, [annotations.LabelledBox((-0.5, 0, 100.5, 50), "f:2"),
                                         annotations.LabelledBox((0, 0, 120, 50), "f:3")])
    kept, problems = annotations.checked_boxes(item, 100, 80)
    assert kept == [(0.0, 0.0, 100.0, 50.0)]
    assert [str(p) for p in problems] == ["f:3: x.jpg: box (0, 0, 120, 50) lies outside the 100x80 image; "
                                          "the box is skipped"]


# ----------------------------------------------------------------------------------------------
# torch-free


NO_TORCH = r'''
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("torch", "torchvision", "functorch"):
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test)", name=fullname)
        return None

sys.meta_path.insert(0, NoTorch())
from onnxcam.cli import main
code = main(["-q", "evaluate", "--models", sys.argv[1], "--images", sys.argv[2], "--annotations", sys.argv[3],
             "--methods", "gradcam,ablationcam", "--out", sys.argv[4], "--steps", "10", "--threads", "1"])
print(json.dumps({"code": code, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
'''


def test_evaluate_runs_without_torch(tiny_model_dir: Path, photos: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(tiny_model_dir), str(photos), str(photos / "ann.csv"),
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "torch": []}
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert list(data["methods"]) == ["gradcam", "ablationcam"] and (tmp_path / "index.html").is_file()


# ----------------------------------------------------------------------------------------------
# the default model against the torch references


@pytest.mark.slow
def test_default_model_numbers_equal_the_references(default_model_built: Path, tmp_path: Path) -> None:
    """EfficientNet-Lite0 on the bundled cat photo, Grad-CAM, 25 steps, through the CLI: the per-image
    Average Drop term equals pytorch-grad-cam's DropInConfidence and the deletion and insertion AUCs the
    RISE authors' code, both on the torch model with the same map. RISE orders equal pixels its own way,
    so it is given a map with our order as its values (the evaluation breaks ties at random)."""
    torch = pytest.importorskip("torch")
    from exporter import sources

    sources._torchvision()
    pytest.importorskip("pytorch_grad_cam")

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "chelsea.jpg").write_bytes((ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg").read_bytes())
    folder = default_model_built / "efficientnet_lite0"
    assert run_cli("--models", str(default_model_built), "--model", "efficientnet_lite0", "--images", str(photos),
                   "--methods", "gradcam", "--out", str(tmp_path / "out"), "--steps", "25", "--threads", "1") == 0
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    row = data["per_image"][0]
    info = load_model_info(folder)
    prepared = imaging.prepare_image(imaging.decode((photos / "chelsea.jpg").read_bytes(), 10**8), info.preprocess)
    explainer = ort.InferenceSession(str(folder / "explainer.onnx"))
    (cam,) = explainer.run(["cam_gradcam"], {"pixels": prepared.pixels[None], "target": np.array([row["label"]])})
    saliency = prepare(cam[0], info.input_size, prepared.geometry).at_input
    order = metrics.pixel_order(saliency, np.random.default_rng([0, 0, 1]).permutation(saliency.size))
    ranks = np.empty(saliency.size, np.float64)
    ranks[order] = np.arange(saliency.size, 0, -1)  # RISE's flip(argsort) of these is our order

    model = sources.build_arch("efficientnet_lite0").eval()
    tensor = torch.from_numpy(prepared.pixels[None].copy())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many threads thrash when other jobs share the cores
    try:
        _compare_with_references(model, tensor, saliency, ranks, row, data)
    finally:
        torch.set_num_threads(threads)


def _compare_with_references(model, tensor, saliency: np.ndarray, ranks: np.ndarray, row: dict, data: dict) -> None:
    import torch
    from metric_references import RiseCausalMetric, rise_auc, rise_blur, softmax_model
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    with torch.no_grad():
        assert int(model(tensor).argmax()) == row["label"] == row["predicted"]  # RISE scores the top-1
        y = float(torch.softmax(model(tensor), 1)[0, row["label"]])
    drop = DropInConfidence()(tensor, saliency[None], [ClassifierOutputSoftmaxTarget(row["label"])], model)[0]
    assert row["drop"] == pytest.approx(drop / y * 100, abs=1e-3)
    step = metrics.step_pixels(saliency.size, 25)
    probabilities = softmax_model(model)
    deletion = RiseCausalMetric(probabilities, "del", step, torch.zeros_like).single_run(tensor.clone(), ranks)
    insertion = RiseCausalMetric(probabilities, "ins", step, rise_blur).single_run(tensor.clone(), ranks)
    assert len(deletion) == data["settings"]["curve_points"] == 26
    assert row["deletion_auc"] == pytest.approx(rise_auc(deletion), abs=1e-5)
    assert row["insertion_auc"] == pytest.approx(rise_auc(insertion), abs=1e-5)

